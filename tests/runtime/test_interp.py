"""The reference interpreter: precision per run, specialisation to the fed sizes, user errors."""
import numpy as np
import pytest

from odc.errors import OdcError
from odc.ir.graph import Graph, TensorType
from odc.runtime import interp


def softmax_graph():
    g = Graph("g")
    x = g.add("input", type=TensorType("f32", ("N", 3)), name="x")
    g.outputs = [("y", g.add("softmax", (x,), {"axis": -1}, TensorType("f32", ("N", 3))))]
    return g


def test_precision_is_chosen_per_run():
    x = np.array([[0.0, 1e-9, 2e-9]])
    y32 = interp.run(softmax_graph(), {"x": x}, np.float32)["y"]
    y64 = interp.run(softmax_graph(), {"x": x}, np.float64)["y"]
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    assert y64[0, 2] > y64[0, 0] and y32[0, 2] == y32[0, 0]  # exp(1e-9) rounds to 1 in f32


def test_any_batch_size():
    for n in (1, 4):
        x = np.random.default_rng(n).standard_normal((n, 3))
        y = interp.run(softmax_graph(), {"x": x}, np.float64)["y"]
        np.testing.assert_allclose(y, np.exp(x) / np.exp(x).sum(1, keepdims=True), rtol=1e-12)


def test_feeding_errors():
    with pytest.raises(OdcError, match=r"no value given for input 'x' of f32\[N, 3\]"):
        interp.run(softmax_graph(), {})
    with pytest.raises(OdcError, match=r"input 'x' expects f32\[N, 3\] with N=2, got an array of shape \[2, 4\]"):
        interp.run(softmax_graph(), {"x": np.zeros((2, 4))})
