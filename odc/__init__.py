"""odc: a model compiler for deep learning."""
__version__ = "0.1.0"

from odc.errors import CompileError, OdcError  # noqa: E402,F401
from odc.program import Model, Program, load  # noqa: E402,F401
from odc.runtime.checkpoint import load_checkpoint  # noqa: E402,F401
