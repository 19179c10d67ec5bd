"""The pieces of `python -m experiments.benchmark`: murajax's train steps against their peers.

- `workloads`: what is measured (the models, sizes and batches; their murajax configs, from
  which the peers read the same architecture) and analytic FLOP counts;
- `timing`: the one step-timing loop every framework uses (compile, warm-up, median);
- `murajax_step`, `keras_peer`, `torch_peer`: one measurement each, in its own process
  (`python -m experiments.bench.worker JOB`), so that thread pools never mix; `matmul`: the
  machine's matmul peak; `data_parallel`: 'jit' and 'pmap' on 2 fake CPU devices;
- `runner`: starts those processes in round-robin order, and the input-pipeline and matmul
  jobs; `table`: ratios and the printed tables;
- `suite`: the whole benchmark in its order (`suite.run(Settings(...))`), the JSON file and
  the printed report; `experiments/benchmark.py` is its flags.

Only `workloads` and `timing` are imported by every worker: neither imports jax, TensorFlow
or torch.
"""
