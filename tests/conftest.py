"""Shared fixtures."""
import os

import pytest


@pytest.fixture(scope="session")
def torch():
    """PyTorch, the oracle of the numerical tests. Missing, it skips the test, except under CI
    (CI=true), where a missing oracle is a failure."""
    try:
        import torch
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("torch is not installed: pip install torch==2.13.0 (a test dependency)")
        pytest.skip("torch is not installed")
    torch.set_num_threads(1)
    return torch
