"""Experiment configs: each module's `get_config(arg=None)` returns a `murajax.config.Config`."""
