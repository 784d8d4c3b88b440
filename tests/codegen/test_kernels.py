"""Every op's compiled kernel against its numpy reference (`odc.ir.ops`), on shapes drawn by
hypothesis: sizes around the 16-lane vector width (not multiples of it), batch 1, broadcasting.
Each example compiles one graph holding several instances."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
side = st.integers(1, 37)  # 1, below, at and above one and two vectors of 16 lanes
small = st.integers(1, 9)


def arrays(seed, *shapes, positive=False):
    rng = np.random.default_rng(seed)
    out = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    return [np.abs(a) + 0.1 for a in out] if positive else out


@SETTINGS
@given(st.lists(side, min_size=1, max_size=4), st.integers(0, 2**31))
def test_unary(check_ops, shape, seed):
    (x,) = arrays(seed, shape)
    x.flat[0] = 0.0  # sign and relu at zero
    (pos,) = arrays(seed, shape, positive=True)
    cases = [(op, [x], {}) for op in ("relu", "tanh", "sigmoid", "exp", "abs", "neg", "sign")]
    cases += [(op, [pos], {}) for op in ("log", "sqrt")]
    check_ops(cases, rtol=2e-6, atol=1e-6)


@st.composite
def broadcast_pair(draw):
    full = draw(st.lists(side, min_size=1, max_size=4))
    def operand():
        shape = [1 if draw(st.booleans()) else d for d in full]
        return shape[draw(st.integers(0, len(shape))):]
    return operand(), operand()


@SETTINGS
@given(broadcast_pair(), st.integers(0, 2**31))
def test_binary_broadcasting(check_ops, shapes, seed):
    a, b = arrays(seed, *shapes)
    (nonzero,) = arrays(seed + 1, shapes[1], positive=True)
    cases = [(op, [a, b], {}) for op in ("add", "sub", "mul")] + [("div", [a, nonzero], {})]
    check_ops(cases, rtol=2e-6, atol=1e-6)


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), small, st.integers(0, 2**31))
def test_matmul_and_linear(check_ops, m, k, n, batch, seed):
    a, b, lead, x, w, bias = arrays(seed, (m, k), (k, n), (batch, m, k), (m, k), (n, k), (n,))
    check_ops([("matmul", [a, b], {}), ("matmul", [lead, b], {}),
               ("linear", [x, w, bias], {}), ("linear", [x, w], {})], rtol=1e-5, atol=1e-5)


@st.composite
def conv_case(draw):
    n, c, o = draw(small), draw(st.integers(1, 6)), draw(st.integers(1, 20))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride, pad = draw(st.integers(1, 3)), draw(st.integers(0, 6))  # padding may exceed the kernel
    h = draw(st.integers(max(1, kh - 2 * pad), 20))
    w = draw(st.integers(max(1, kw - 2 * pad), 36))
    return n, c, o, h, w, kh, kw, stride, pad


@SETTINGS
@given(conv_case(), st.integers(0, 2**31))
def test_conv2d_and_gradients(check_ops, case, seed):
    n, c, o, h, w, kh, kw, stride, pad = case
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    x, wt, bias, dy = arrays(seed, (n, c, h, w), (o, c, kh, kw), (o,), (n, o, ho, wo))
    sp = {"stride": stride, "pad": pad}
    check_ops([("conv2d", [x, wt, bias], sp), ("conv2d", [x, wt], sp),
               ("conv2d_grad_input", [dy, wt], {**sp, "size": [h, w]}),
               ("conv2d_grad_weight", [dy, x], {**sp, "kernel": [kh, kw]})], rtol=1e-5, atol=1e-4)


@SETTINGS
@given(small, st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(0, 3),
       st.integers(0, 3), st.integers(0, 2**31))
def test_pooling_and_gradients(check_ops, n, c, k, stride, extra_h, extra_w, seed):
    h, w = k + extra_h * 5, k + extra_w * 11
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    x, dy = arrays(seed, (n, c, h, w), (n, c, ho, wo))
    x[..., :1, :] = 0.0  # ties: the gradient goes to the first maximum
    cases = []
    for s in (k, stride):  # windows that tile the input, and overlapping or sparse ones
        ho, wo = (h - k) // s + 1, (w - k) // s + 1
        (g,) = arrays(seed + s, (n, c, ho, wo))
        pk = {"kernel": k, "stride": s}
        cases += [("maxpool2d", [x], pk), ("avgpool2d", [x], pk), ("maxpool2d_grad", [g, x], pk),
                  ("avgpool2d_grad", [g], {**pk, "size": [h, w]})]
    check_ops(cases, rtol=1e-5, atol=1e-6)


@st.composite
def reduction_case(draw):
    shape = draw(st.lists(side, min_size=1, max_size=4))
    axes = draw(st.lists(st.integers(0, len(shape) - 1), unique=True, max_size=len(shape)))
    attrs = {"keepdims": draw(st.booleans())}
    if axes or draw(st.booleans()):
        attrs["axis"] = axes if len(axes) != 1 else axes[0] - len(shape) * draw(st.booleans())
    return shape, attrs


@SETTINGS
@given(reduction_case(), st.integers(0, 2**31))
def test_reductions(check_ops, case, seed):
    shape, attrs = case
    (x,) = arrays(seed, shape)
    check_ops([(op, [x], attrs) for op in ("sum", "mean", "max")], rtol=1e-5, atol=1e-5)


@SETTINGS
@given(st.lists(side, min_size=1, max_size=3), st.data(), st.integers(0, 2**31))
def test_softmax_family(check_ops, shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    (x,) = arrays(seed, shape)
    x *= 30  # large logits: only a max-subtracted exponential stays finite
    check_ops([("softmax", [x], {"axis": axis}), ("log_softmax", [x], {"axis": axis})],
              rtol=1e-5, atol=1e-6)


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 50), st.integers(0, 2**31))
def test_losses_and_one_hot(check_ops, rows, classes, seed):
    logits, a, b = arrays(seed, (rows, classes), (rows, classes), (rows, classes))
    labels = np.random.default_rng(seed).integers(0, classes, rows)
    check_ops([("cross_entropy", [logits * 10, labels.astype(np.int32)], {}),
               ("cross_entropy", [logits, labels.astype(np.int64)], {}),
               ("mse", [a, b], {}), ("one_hot", [labels.astype(np.int32)], {"classes": classes})],
              rtol=1e-5, atol=1e-6)


@SETTINGS
@given(small, st.integers(1, 5), st.integers(1, 9), st.integers(1, 20), st.integers(0, 2**31))
def test_batchnorm2d(check_ops, n, c, h, w, seed):
    x, gamma, beta = arrays(seed, (n, c, h, w), (c,), (c,))
    check_ops([("batchnorm2d", [x * 3 + 1, gamma, beta], {})], rtol=1e-4, atol=1e-5)


@SETTINGS
@given(st.lists(side, min_size=1, max_size=4), st.data(), st.integers(0, 2**31))
def test_layout(check_ops, shape, data, seed):
    perm = data.draw(st.permutations(range(len(shape))))
    (x,) = arrays(seed, shape)
    target = [int(np.prod(shape))] if len(shape) > 1 else [1, shape[0]]
    wide = [data.draw(st.integers(1, 3))] + shape
    check_ops([("transpose", [x], {"perm": list(perm)}), ("reshape", [x], {"shape": target}),
               ("broadcast_to", [x], {"shape": wide}), ("dropout", [x], {"p": 0.5})])


def test_label_out_of_range_is_a_user_error(check_ops):
    from odc.errors import OdcError
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(OdcError, match="label"):
        check_ops([("cross_entropy", [logits, np.array([0, 3], np.int32)], {})])


def test_every_op_has_a_lowering():
    from odc.codegen.kernels import LOWER, elementwise
    from odc.ir import ops
    from odc.ir.passes.fuse import ALIASES
    handled = set(LOWER) | set(elementwise.OPS) | set(ALIASES) | {"input", "param", "state", "const"}
    assert set(ops.OPS) <= handled, f"no code generation for {sorted(set(ops.OPS) - handled)}"
