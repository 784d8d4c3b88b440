"""Shared fixtures."""

import pytest


@pytest.fixture(scope="session")
def torch():
    """PyTorch, the oracle of the numerical tests: missing, it fails the test."""
    try:
        import torch
    except ImportError:
        pytest.fail("torch is not installed: pip install torch==2.13.0 (a test dependency)")
    torch.set_num_threads(1)
    return torch
