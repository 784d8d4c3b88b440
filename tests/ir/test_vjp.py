"""Every op's VJP rule against central finite differences, in float64, on random shapes,
strides, paddings and odd sizes.

For an op y = f(x0, x1, ...) and a random cotangent c, the scalar L = sum(y * c) is built into a
graph and differentiated by `autodiff.backprop`; every element of dL/dxi is compared with
(L(xi + h) - L(xi - h)) / 2h computed by the reference interpreter.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from odc.ir.graph import Graph, TensorType
from odc.ir.passes import dce
from odc.ir.passes.autodiff import backprop
from odc.ir import ops
from odc.ir.ops import Emit
from odc.ir import interp

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
H = 1e-6
UNARY = ["relu", "tanh", "sigmoid", "exp", "log", "sqrt", "abs", "neg", "sign", "dropout", "relu6", "leaky_relu",
         "elu", "selu", "gelu", "silu", "softplus", "mish", "hardtanh", "hardsigmoid", "hardswish", "clip", "erf",
         "pow"]
# attributes of the ops that take some: each set is checked
ATTRS = {"dropout": [{"p": 0.5}], "leaky_relu": [{"slope": 0.2}, {"slope": -1.5}], "elu": [{"alpha": 1.0}, {"alpha": 0.3}],
         "gelu": [{"approximate": "none"}, {"approximate": "tanh"}], "hardtanh": [{"lo": -1.0, "hi": 1.0},
                                                                                 {"lo": -0.5, "hi": 2.0}],
         "clip": [{"lo": -0.7, "hi": 0.4}], "pow": [{"exponent": 3.0}, {"exponent": 2.5}, {"exponent": -1.0}]}
BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "gt", "ge"]
REDUCTIONS = ["sum", "mean", "max"]
SOFTMAXES = ["softmax", "log_softmax"]
POOLS = ["maxpool2d", "avgpool2d"]
# each has a test of its own below (batchnorm1d and layernorm: in test_norms.py)
OTHERS = ["matmul", "linear", "conv2d", "batchnorm2d", "batchnorm1d", "layernorm", "reshape", "transpose",
          "broadcast_to", "cross_entropy", "mse"]
OTHERS += ["concat", "pad", "slice"]  # in tests/codegen/test_structure_ops.py
OTHERS += ["where"]
OTHERS += ["adaptive_avgpool2d"]  # in tests/codegen/test_pool_v2.py
OTHERS += ["batchnorm_train"]  # in test_norms.py, with its statistics


def test_every_rule_is_tested():
    assert sorted(UNARY + BINARY + REDUCTIONS + SOFTMAXES + POOLS + OTHERS) == sorted(name for name, d in ops.OPS.items() if d.vjp is not None)


def check_vjp(op, arrays, attrs=None, symbolic=()):
    """`symbolic`: indices of the operands whose first size is the symbol N."""
    arrays = [np.array(a) for a in arrays]
    g = Graph("vjp")
    ids = []
    for i, a in enumerate(arrays):
        dt = "i32" if a.dtype.kind == "i" else "f64"
        shape = ("N",) + a.shape[1:] if i in symbolic else a.shape
        ids.append(g.add("input", type=TensorType(dt, shape), name=f"x{i}"))
    e = Emit(g)
    y = e(op, *ids, **(attrs or {}))
    cot = g.add("input", type=g.type(y), name="cot")
    loss = e("sum", e("mul", y, cot))
    wrt = [i for i, a in zip(ids, arrays) if a.dtype.kind == "f"]
    grads = backprop(g, loss, wrt)
    g.outputs = [("loss", loss)] + [(f"d{w}", grads[w]) for w in wrt if w in grads]
    loss_only = g.copy()
    loss_only.outputs = [("loss", loss)]
    loss_only = dce.run(loss_only)

    n = arrays[symbolic[0]].shape[0] if symbolic else None
    feeds = {f"x{i}": a for i, a in enumerate(arrays)}
    rng = np.random.default_rng(0)
    feeds["cot"] = rng.standard_normal([n if d == "N" else d for d in g.type(y).shape])
    out = interp.run(g, feeds, np.float64)
    for w in wrt:
        i = ids.index(w)
        analytic = out.get(f"d{w}", np.zeros_like(arrays[i]))
        assert analytic.shape == arrays[i].shape
        fd = np.zeros_like(arrays[i])
        for idx in np.ndindex(arrays[i].shape):
            vals = []
            for sign in (1, -1):
                x = arrays[i].copy()
                x[idx] += sign * H
                vals.append(interp.run(loss_only, {**feeds, f"x{i}": x}, np.float64)["loss"])
            fd[idx] = (vals[0] - vals[1]) / (2 * H)
        np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-6, err_msg=f"{op} operand {i}")


def randn(draw, *shapes, low=None):
    """Random float64 arrays; with `low`, magnitudes are at least `low` (away from kinks)."""
    out = []
    for shape in shapes:
        a = draw(st.integers(0, 2**32 - 1))
        x = np.random.default_rng(a).standard_normal(shape)
        if low is not None:
            x = np.sign(x) * (low + np.abs(x))
        out.append(x)
    return out


small = st.integers(1, 4)


@pytest.mark.parametrize("op", UNARY)
@SETTINGS
@given(data=st.data())
def test_unary(op, data):
    shape = data.draw(st.lists(small, min_size=0, max_size=3))
    (x,) = randn(data.draw, shape, low=0.1)
    if op in ("log", "sqrt", "pow"):
        x = np.abs(x)
    if op in ("hardsigmoid", "hardswish", "relu6", "softplus"):  # over their kinks too
        x = x * 4
    for attrs in ATTRS.get(op, [{}]):
        check_vjp(op, [x], attrs, symbolic=(0,) if shape else ())


def broadcastable(draw):
    """Two shapes that broadcast together: axes dropped or set to 1 on either side."""
    full = draw(st.lists(small, min_size=1, max_size=3))
    def shrink(shape):
        lead = draw(st.integers(0, len(shape)))
        return [1 if draw(st.booleans()) else d for d in shape[lead:]]
    return (shrink(full), full) if draw(st.booleans()) else (full, shrink(full))


@pytest.mark.parametrize("op", BINARY)
@SETTINGS
@given(data=st.data())
def test_binary_with_broadcasting(op, data):
    a_shape, b_shape = broadcastable(data.draw)
    a, b = randn(data.draw, a_shape, b_shape, low=0.5 if op == "div" else None)
    if op in ("maximum", "minimum", "gt", "ge"):  # no ties (kinks) even when both draws are equal
        b = b + 0.25
    check_vjp(op, [a, b])


@SETTINGS
@given(data=st.data())
def test_where(data):
    """The gradient goes to a where the condition holds and to b elsewhere; none to the condition
    (a mask of 0s and 1s, as the optimizer pass makes)."""
    a_shape, b_shape = broadcastable(data.draw)
    a, b = randn(data.draw, a_shape, b_shape)
    cond = (randn(data.draw, data.draw(st.sampled_from([a_shape, b_shape, []])))[0] > 0).astype(np.float64)
    check_vjp("where", [cond, a, b])


@SETTINGS
@given(data=st.data())
def test_matmul(data):
    lead = data.draw(st.lists(small, min_size=1, max_size=2))
    m, k = data.draw(small), data.draw(small)
    a, b = randn(data.draw, lead + [k], [k, m])
    check_vjp("matmul", [a, b], symbolic=(0,) if len(lead) == 1 else ())


@SETTINGS
@given(data=st.data(), bias=st.booleans())
def test_linear(data, bias):
    n, i, o = data.draw(small), data.draw(small), data.draw(small)
    xs = randn(data.draw, [n, i], [o, i], [o])
    check_vjp("linear", xs if bias else xs[:2], symbolic=(0,))


@SETTINGS
@given(data=st.data(), bias=st.booleans())
def test_conv2d(data, bias):
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    stride, pad = data.draw(st.integers(1, 3)), data.draw(st.integers(0, 2))
    h, w = data.draw(st.integers(max(1, kh - 2 * pad), 7)), data.draw(st.integers(max(1, kw - 2 * pad), 7))
    n, c, o = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    xs = randn(data.draw, [n, c, h, w], [o, c, kh, kw], [o])
    check_vjp("conv2d", xs if bias else xs[:2], {"stride": stride, "pad": pad}, symbolic=(0,))


@pytest.mark.parametrize("op", POOLS)
@SETTINGS
@given(data=st.data())
def test_pool(op, data):
    k = data.draw(st.integers(1, 3))
    stride = data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(k, 7)), data.draw(st.integers(k, 7))
    (x,) = randn(data.draw, [data.draw(st.integers(1, 2)), data.draw(small), h, w])
    check_vjp(op, [x], {"kernel": k, "stride": stride}, symbolic=(0,))


@SETTINGS
@given(data=st.data())
def test_batchnorm2d(data):
    c = data.draw(st.integers(1, 3))
    x, gamma, beta = randn(data.draw, [data.draw(st.integers(2, 3)), c, data.draw(small), data.draw(small)],
                            [c], [c])
    check_vjp("batchnorm2d", [x, gamma, beta], {"eps": 1e-5}, symbolic=(0,))


@SETTINGS
@given(data=st.data())
def test_reshape_and_transpose(data):
    shape = data.draw(st.lists(small, min_size=2, max_size=4))
    (x,) = randn(data.draw, shape)
    check_vjp("reshape", [x], {"shape": ["N", -1]}, symbolic=(0,))
    perm = data.draw(st.permutations(range(len(shape))))
    check_vjp("transpose", [x], {"perm": list(perm)})


@pytest.mark.parametrize("op", REDUCTIONS)
@SETTINGS
@given(data=st.data())
def test_reductions(op, data):
    shape = data.draw(st.lists(small, min_size=1, max_size=3))
    axis = data.draw(st.none() | st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1,
                                          max_size=len(shape), unique_by=lambda a: a % len(shape)))
    (x,) = randn(data.draw, shape)
    check_vjp(op, [x], {"axis": axis, "keepdims": data.draw(st.booleans())}, symbolic=(0,))


def test_max_shares_the_gradient_among_ties():
    """Where the maximum is not unique, each maximum gets an equal share (as torch.amax)."""
    g = Graph("ties")
    x = g.add("input", type=TensorType("f64", (2, 3)), name="x")
    e = Emit(g)
    loss = e("sum", e("max", x, axis=1))
    g.outputs = [("dx", backprop(g, loss, [x])[x])]
    dx = interp.run(g, {"x": np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]])}, np.float64)["dx"]
    np.testing.assert_array_equal(dx, [[0, 0.5, 0.5], [1, 0, 0]])


@pytest.mark.parametrize("op", SOFTMAXES)
@SETTINGS
@given(data=st.data())
def test_softmax(op, data):
    shape = data.draw(st.lists(small, min_size=1, max_size=3))
    (x,) = randn(data.draw, shape)
    check_vjp(op, [x], {"axis": data.draw(st.integers(-len(shape), len(shape) - 1))}, symbolic=(0,))


@SETTINGS
@given(data=st.data())
def test_broadcast_to(data):
    small_shape, full = broadcastable(data.draw)
    if len(small_shape) > len(full):
        small_shape, full = full, small_shape
    (x,) = randn(data.draw, small_shape)
    check_vjp("broadcast_to", [x], {"shape": [max(a, b) for a, b in zip(
        [1] * (len(full) - len(small_shape)) + list(small_shape), full)]})


@SETTINGS
@given(data=st.data())
def test_losses(data):
    n, k = data.draw(small), data.draw(st.integers(2, 5))
    logits, target = randn(data.draw, [n, k], [n, k])
    labels = np.random.default_rng(n * k).integers(0, k, n).astype(np.int32)
    check_vjp("cross_entropy", [logits, labels], symbolic=(0, 1))
    check_vjp("mse", [logits, target], symbolic=(0, 1))

