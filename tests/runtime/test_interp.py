"""The reference interpreter: precision per run, specialisation to the fed sizes, user errors."""
import numpy as np
import pytest

from odc.errors import OdcError
from odc.ir.graph import Graph, TensorType
from odc.ir import interp


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


def lenet5_by_hand(x, p):
    """LeNet-5 of models/lenet5.od written out in plain numpy loops (no odc code)."""
    def conv(x, w, b, pad):
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        n, c, h, wd = x.shape
        o, _, k, _ = w.shape
        out = np.zeros((n, o, h - k + 1, wd - k + 1))
        for i in range(k):
            for j in range(k):
                patch = x[:, :, i:i + h - k + 1, j:j + wd - k + 1]  # n, c, H', W'
                out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
        return out + b[None, :, None, None]

    def pool(x):
        n, c, h, w = x.shape
        return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))

    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = pool(relu(conv(x, p["conv2d1.weight"], p["conv2d1.bias"], 2)))
    x = pool(relu(conv(x, p["conv2d2.weight"], p["conv2d2.bias"], 0)))
    x = x.reshape(len(x), -1)
    x = relu(x @ p["dense1.weight"].T + p["dense1.bias"])
    x = relu(x @ p["dense2.weight"].T + p["dense2.bias"])
    return x @ p["dense3.weight"].T + p["dense3.bias"]


def test_lenet5_forward_equals_a_forward_written_by_hand():
    import odc
    from pathlib import Path
    prog = odc.load(Path(__file__).parents[2] / "models" / "lenet5.od")
    model = prog.compile(executor=interp.compile_graph)
    params = {k: v.astype(np.float64) for k, v in model.params.items()}
    x = np.random.default_rng(0).random((3, 1, 28, 28))
    g = prog.lower("forward", {"N": 3})
    logits = interp.run(g, {"image": x, **params}, np.float64)["logits"]
    np.testing.assert_allclose(logits, lenet5_by_hand(x, params), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.forward(x.astype(np.float32)), logits, rtol=1e-4, atol=1e-5)
