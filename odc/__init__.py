"""odc: a model compiler for deep learning."""
from odc.version import __version__  # noqa: F401

from odc.errors import CompileError, OdcError  # noqa: E402,F401
from odc.program import Model, Program, load, load_checkpoint  # noqa: E402,F401
