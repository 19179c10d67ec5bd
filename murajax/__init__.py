"""murajax: a JAX/Flax functional training library for the MURA radiograph dataset."""

__version__ = "0.1.0"
