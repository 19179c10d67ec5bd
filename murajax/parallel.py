"""Data parallelism over every device, and across hosts: `train.parallelism` 'jit' or 'pmap'.

The train step (`train.train_step`) is one pure function, `state, batch -> state, metrics`;
this module only changes where its inputs live and how it is compiled:

- 'jit': one `jax.sharding.Mesh` with a single axis "data" over `jax.devices()` (every
  process's devices). The state is replicated (`NamedSharding(mesh, P())`), the global batch
  sharded on its leading axis (`NamedSharding(mesh, P("data"))`), and the *unchanged* step
  is jitted with those shardings: XLA inserts the all-reduces, BatchNorm included.
- 'pmap': `jax.pmap` over this process's devices with `axis_name="data"`; the state carries a
  leading device axis, each device gets `B_local / local_devices` rows, and the step pmeans
  gradients, BatchNorm statistics and metrics over the axis (`train_step(axis_name=...)`).
  The step builds its model with BatchNorm over the axis (`models.layers.with_bn_axis`), so
  BatchNorm normalises with the statistics of the whole global batch: 'pmap' computes what
  'jit' computes.

Either way each process hands over the batch the input pipeline gives it: its contiguous
share `[p * B / P, (p + 1) * B / P)` of every global batch of `train.batch_size` rows, and
the global batch is the concatenation of the processes' shares in process order, exactly as
one process would have read it. Outside the step the state is "host-local": ordinary arrays
on this process's first device (`unreplicate`), which is what evaluation, reports and
checkpoints see, so checkpoints have the same structure whatever the parallelism and a run
resumes under the other mode. `replicate` turns host-local arrays into global ones again
(orbax needs those to save from several processes, see `murajax.checkpoint`).

Dropout: 'jit' draws each example's mask as one device would; 'pmap' folds the device index
into the key (devices must not share masks), so with dropout the two modes draw different,
equally distributed masks. BatchNorm with a `mask` (padding views) averages the devices'
masked statistics in 'pmap', which equals the global ones only when devices hold equally many
real rows.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from murajax import executable_cache
from murajax.config import Config, check_choice, invalid

PARALLELISMS: tuple[str, ...] = ("jit", "pmap")
"""How the train step runs on the devices (`train.parallelism`; see the module docstring)."""

AXIS = "data"  # the one mesh axis, and pmap's axis name

Batch = Mapping[str, Any]
StepFn = Callable[..., tuple[Any, dict[str, jax.Array]]]


# --------------------------------------------------------------------------- devices


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis ("data") mesh over `devices` (default: `jax.devices()`, all processes')."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def local_devices(mesh: Mesh) -> list[jax.Device]:
    """The devices of `mesh` that this process drives, in mesh order."""
    return list(mesh.local_devices)


def _check_parallelism(parallelism: str) -> None:
    check_choice("train.parallelism", parallelism, PARALLELISMS)


def check_batch_size(
    batch_size: int,
    parallelism: str,
    *,
    device_count: int,
    local_device_count: int,
    process_count: int,
    field: str = "train.batch_size",
) -> None:
    """Raises a one-line `ConfigError` unless a global batch of `batch_size` rows splits
    evenly: over the processes (each reads its share), and over every device ('jit': the
    global batch over all devices; 'pmap': each process's share over its devices)."""
    _check_parallelism(parallelism)
    where = f"(train.parallelism={parallelism!r})"
    if batch_size % process_count:
        valid = f"a multiple of the number of processes ({process_count}) {where}"
        raise invalid(field, batch_size, valid)
    if parallelism == "jit" and batch_size % device_count:
        raise invalid(
            field, batch_size, f"a multiple of the number of devices ({device_count}) {where}"
        )
    if parallelism == "pmap" and (batch_size // process_count) % local_device_count:
        valid = (
            f"a multiple of processes x devices per process"
            f" ({process_count} x {local_device_count}) {where}"
        )
        raise invalid(field, batch_size, valid)


def check_config(config: Config) -> None:
    """`check_batch_size` for `config.train` on this run's devices and processes (call it
    after `jax.distributed.initialize`, before any compute)."""
    check_batch_size(
        config.train.batch_size,
        config.train.parallelism,
        device_count=jax.device_count(),
        local_device_count=jax.local_device_count(),
        process_count=jax.process_count(),
    )


# --------------------------------------------------------------------------- placing data


def _numeric(x: Any) -> bool:
    return np.asarray(x).dtype.kind not in "OSU"


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf as one global array replicated on `mesh` (`NamedSharding(mesh, P())`).

    Leaves are host-local values (numpy, or jax arrays on this process's devices), the same
    on every process; arrays already replicated on `mesh` are kept. Typed PRNG keys work.
    """
    sharding = NamedSharding(mesh, P())
    devices = local_devices(mesh)

    def put(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            raise ValueError(f"cannot replicate a global array sharded as {x.sharding}")
        copies = [jax.device_put(x, device) for device in devices]
        return jax.make_array_from_single_device_arrays(copies[0].shape, sharding, copies)

    return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
    """Every replicated leaf as a host-local array on this process's first device of it.

    The inverse of `replicate` (no copy: the first local replica's buffer)."""

    def first(x: Any) -> Any:
        return x.addressable_shards[0].data if isinstance(x, jax.Array) else x

    return jax.tree.map(first, tree)


def shard_batch(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
    """This process's share of a global batch as global arrays sharded on the leading axis
    over `mesh` (`NamedSharding(mesh, P("data"))`): the rows of process p's share go to its
    devices, so the global array is the processes' shares concatenated in process order.

    Every array leaf is sharded on its leading axis (images (B, H, W, C) or (B, V, H, W, C),
    labels, masks, ...); string leaves (ids, paths) are dropped: a step cannot take them.
    """
    sharding = NamedSharding(mesh, P(AXIS))
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in batch.items()
        if _numeric(v)
    }


def stack(tree: Any, mesh: Mesh) -> Any:
    """pmap's replicated layout: every leaf with a leading axis of this process's devices of
    `mesh`, one identical copy on each (`NamedSharding(local mesh, P("data"))`)."""
    devices = local_devices(mesh)
    sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))

    def put(row: jax.Array) -> jax.Array:
        copies = [jax.device_put(row, device) for device in devices]
        return jax.make_array_from_single_device_arrays(
            (len(devices), *row.shape[1:]), sharding, copies
        )

    rows = _add_axis(jax.tree.map(jnp.asarray, unreplicate(tree)))
    return jax.tree.map(put, rows)


def unstack(tree: Any) -> Any:
    """The first device's copy of every leaf of a `stack`ed (pmap) pytree, host-local."""
    return _drop_axis(jax.tree.map(lambda x: x.addressable_shards[0].data, tree))


# One compilation for a whole state, rather than one eager op per distinct leaf shape.
_add_axis = jax.jit(lambda tree: jax.tree.map(lambda x: x[None], tree))
_drop_axis = jax.jit(lambda tree: jax.tree.map(lambda x: x[0], tree))


def split_batch(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
    """pmap's batch layout: this process's share reshaped to (local devices, rows per device,
    ...), device d holding the d-th contiguous block of rows (string leaves are dropped)."""
    devices = local_devices(mesh)
    sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))
    n = len(devices)
    out = {}
    for k, v in batch.items():
        if not _numeric(v):
            continue
        v = np.asarray(v)
        if v.shape[0] % n:
            raise ValueError(f"batch[{k!r}] has {v.shape[0]} rows, not a multiple of {n} devices")
        out[k] = jax.device_put(v.reshape(n, v.shape[0] // n, *v.shape[1:]), sharding)
    return out


# --------------------------------------------------------------------------- the step


class DataParallel(NamedTuple):
    """A train step placed on devices, and the conversions around it.

    `step(device_state, device_batch) -> (device_state, metrics)` donates the state;
    `put_state(host_state)` / `host_state(device_state)` convert the state (host-local, as
    `create_train_state` and checkpoints give it) to and from the step's layout;
    `put_batch(local_batch)` places this process's share of a global batch. Metrics come
    back as scalars, the same on every device and process.
    """

    parallelism: str
    mesh: Mesh
    step: StepFn
    put_state: Callable[[Any], Any]
    put_batch: Callable[[Batch], dict[str, jax.Array]]
    host_state: Callable[[Any], Any]


def data_parallel(
    step_fn: StepFn,
    parallelism: str,
    mesh: Mesh | None = None,
    *,
    cache_identity: str | None = None,
) -> DataParallel:
    """Compiles `step_fn(state, batch, *, axis_name=None) -> (state, metrics)` for
    `parallelism` over `mesh` (default: `make_mesh()`, every device of every process).
    With `cache_identity` (what determines `step_fn`'s program beyond its arguments' shapes:
    `murajax.executable_cache`), 'jit' keeps the compiled step on disk where the persistent
    compilation cache is on, and a rerun loads it without tracing.

    'jit': `jax.jit(step_fn, in_shardings=(replicated, sharded on "data"), out_shardings=
    replicated, donate_argnums=0)`. 'pmap': `jax.pmap(step_fn(axis_name="data"),
    axis_name="data", donate_argnums=0)` over this process's devices of `mesh`, metrics
    unmapped (they are pmeaned).
    """
    _check_parallelism(parallelism)
    mesh = make_mesh() if mesh is None else mesh
    if parallelism == "jit":
        replicated = NamedSharding(mesh, P())
        step = jax.jit(
            step_fn,
            in_shardings=(replicated, NamedSharding(mesh, P(AXIS))),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
        )
        if cache_identity is not None:
            step = executable_cache.CachedExecutable(step, f"{parallelism}\n{cache_identity}")
        return DataParallel(
            parallelism,
            mesh,
            step,
            put_state=functools.partial(replicate, mesh=mesh),
            put_batch=functools.partial(shard_batch, mesh=mesh),
            host_state=unreplicate,
        )
    step = jax.pmap(
        functools.partial(step_fn, axis_name=AXIS),
        axis_name=AXIS,
        out_axes=(0, None),
        donate_argnums=0,
        devices=list(mesh.devices.flat) if jax.process_count() > 1 else local_devices(mesh),
    )
    return DataParallel(
        parallelism,
        mesh,
        step,
        put_state=functools.partial(stack, mesh=mesh),
        put_batch=functools.partial(split_batch, mesh=mesh),
        host_state=unstack,
    )
