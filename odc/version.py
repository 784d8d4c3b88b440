"""The version of odc: one place, read by the package, the JIT cache key and checkpoints."""
__version__ = "0.1.0"
