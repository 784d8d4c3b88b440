"""Shared fixtures. The IR verifier runs after every pass in every test (``ODC_VERIFY_EACH``),
and in the subprocesses the tests start."""
import os

import pytest

os.environ["ODC_VERIFY_EACH"] = "1"


@pytest.fixture(scope="session")
def torch():
    """PyTorch, the oracle of the numerical tests: missing, it fails the test."""
    try:
        import torch
    except ImportError:
        pytest.fail("torch is not installed: pip install torch==2.13.0 (a test dependency)")
    torch.set_num_threads(1)
    return torch


@pytest.fixture(params=["compiled", "interpreter"])
def executor(request):
    """What compiles a model's graphs: the generated code (None, the default) or the numpy
    interpreter (the oracle of the kernel tests); a test that takes it runs on both."""
    from odc.ir import interp
    return None if request.param == "compiled" else interp.compile_graph
