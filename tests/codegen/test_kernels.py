"""Every op's compiled kernel against its numpy reference (`odc.ir.ops`), on shapes drawn by
hypothesis.

Each example draws a list of cases, one for each op of the test with shapes of its own, and
compiles them into one graph: one JIT compile per example. (Its time goes to LLVM, about in
proportion to the number of kernels; an op drawn per case instead would follow hypothesis's
preference for the first of a list and leave some ops with few cases.)

Sizes (`side`) are anything up to 40, or one below, at or one above a multiple of 8 up to 48
(the vector widths are 8 and 16 f32 lanes), 1 included. Convolutions and pooling draw their
output widths that way and derive the input's, with rows and columns that no window reaches;
convolutions have strides up to 4 and padding up to 6 (both above the kernel size too, and an
input may be smaller than the kernel), pooling windows tile the input, overlap or leave gaps
between them (pooling has no padding)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odc.ir import ops


def examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


EDGES = sorted({1, 2, 3} | {m + d for m in (8, 16, 24, 32, 40, 48) for d in (-1, 0, 1)})
side = st.one_of(st.integers(1, 40), st.sampled_from(EDGES))
small = st.integers(1, 5)
seeds = st.integers(0, 2**31)


def shapes(min_dims=1, max_dims=4):
    return st.lists(side, min_size=min_dims, max_size=max_dims)


def one_per_op(ops, case):
    """A list of pairs (op, a draw of case(op)), one for each op: every example checks every op
    on shapes of its own."""
    return st.tuples(*(case(op) for op in ops)).map(lambda drawn: list(zip(ops, drawn)))


def normal(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# -- elementwise ----------------------------------------------------------------------------
POSITIVE = ("log", "sqrt")  # defined on positive inputs only


@examples(30)
@given(one_per_op(("relu", "tanh", "sigmoid", "exp", "log", "abs", "neg", "sign", "sqrt"),
                  lambda op: st.tuples(shapes(), st.sampled_from([1.0, 40.0]))), seeds)
def test_unary(check_ops, drawn, seed):
    rng, cases = np.random.default_rng(seed), []
    for op, (shape, scale) in drawn:  # scale 40: exp overflows to inf and underflows to 0
        x = normal(rng, shape, scale)
        if op in POSITIVE:
            x = np.abs(x) + np.float32(0.1)
        else:
            x.flat[0] = 0.0  # sign and relu at zero
        cases.append((op, [x], {}))
    with np.errstate(over="ignore"):  # numpy's exp, too, overflows to inf
        check_ops(cases, rtol=2e-6, atol=1e-6)


@st.composite
def broadcast_pair(draw):
    full = draw(shapes())

    def operand():
        shape = [1 if draw(st.booleans()) else d for d in full]
        return shape[draw(st.integers(0, len(shape))):]  # rank 0 up to the full rank
    return operand(), operand()


@examples(80)
@given(one_per_op(("add", "sub", "mul", "div"), lambda op: broadcast_pair()), seeds)
def test_binary_broadcasting(check_ops, drawn, seed):
    rng, cases = np.random.default_rng(seed), []
    for op, (sa, sb) in drawn:
        b = normal(rng, sb)
        cases.append((op, [normal(rng, sa), np.abs(b) + np.float32(0.1) if op == "div" else b], {}))
    check_ops(cases, rtol=2e-6, atol=1e-6)


@examples(30)
@given(broadcast_pair(), seeds)
def test_where_takes_one_operand_and_ignores_the_other(check_ops, pair, seed):
    """Even a NaN or an infinity in the operand not chosen stays out of the result."""
    rng = np.random.default_rng(seed)
    a, b = normal(rng, pair[0]), normal(rng, pair[1])
    cond = (normal(rng, pair[1]) > 0).astype(np.float32)
    a.flat[0], b.flat[-1] = np.nan, np.inf
    check_ops([("where", [cond, a, b], {})], rtol=0, atol=0)


# -- matrix products ------------------------------------------------------------------------
@examples(30)
@given(one_per_op(("matmul", "batched matmul", "linear"),
                  lambda op: st.tuples(side, side, side, st.lists(small, min_size=1, max_size=2),
                                       st.booleans())), seeds)
def test_matmul_and_linear(check_ops, drawn, seed):
    rng, cases = np.random.default_rng(seed), []
    for op, (m, k, n, lead, bias) in drawn:
        if op.endswith("matmul"):
            lead = lead if op == "batched matmul" else []
            cases.append(("matmul", [normal(rng, (*lead, m, k)), normal(rng, (k, n))], {}))
        else:
            b = [normal(rng, (n,))] if bias else []
            cases.append(("linear", [normal(rng, (m, k)), normal(rng, (n, k)), *b], {}))
    check_ops(cases, rtol=1e-5, atol=1e-5)


# -- convolution ----------------------------------------------------------------------------
@st.composite
def conv_case(draw):
    # output channels go in register tiles of a few channels, not in vectors: up to 20 covers them
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 20))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride, pad = draw(st.integers(1, 4)), draw(st.integers(0, 6))

    def size(k, outputs):
        out = draw(outputs)
        return max(1, (out - 1) * stride + k - 2 * pad + draw(st.integers(0, stride - 1)))
    return n, c, o, size(kh, st.integers(1, 12)), size(kw, side), kh, kw, stride, pad, draw(st.booleans())


@examples(40)
@given(one_per_op(("conv2d", "conv2d_grad_input", "conv2d_grad_weight"), lambda op: conv_case()), seeds)
def test_conv2d_and_gradients(check_ops, drawn, seed):
    rng, cases = np.random.default_rng(seed), []
    for op, (n, c, o, h, w, kh, kw, stride, pad, bias) in drawn:
        ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
        sp = {"stride": stride, "pad": pad}
        x, wt, dy = normal(rng, (n, c, h, w)), normal(rng, (o, c, kh, kw)), normal(rng, (n, o, ho, wo))
        cases.append({"conv2d": ("conv2d", [x, wt, *([normal(rng, (o,))] if bias else [])], sp),
                      "conv2d_grad_input": ("conv2d_grad_input", [dy, wt], {**sp, "size": [h, w]}),
                      "conv2d_grad_weight": ("conv2d_grad_weight", [dy, x], {**sp, "kernel": [kh, kw]})}[op])
    check_ops(cases, rtol=1e-5, atol=1e-4)


# -- pooling --------------------------------------------------------------------------------
@st.composite
def pool_case(draw, windows):
    """Windows that tile the input (stride = kernel: the gradients' vector path), overlap
    (stride < kernel) or leave gaps (stride > kernel)."""
    k = draw(st.integers(2 if windows == "overlap" else 1, 5))
    stride = k if windows == "tile" else draw(st.integers(1, k - 1) if windows == "overlap" else
                                              st.integers(k + 1, k + 3))
    ho, wo = draw(st.integers(1, 12)), draw(side)
    h = (ho - 1) * stride + k + draw(st.integers(0, stride - 1))
    w = (wo - 1) * stride + k + draw(st.integers(0, stride - 1))
    return draw(st.integers(1, 3)), draw(st.integers(1, 4)), h, w, k, stride, draw(st.booleans())


POOLS = [(op, windows) for op in ("maxpool2d", "maxpool2d_grad", "avgpool2d", "avgpool2d_grad")
         for windows in ("tile", "overlap", "gaps")]


@examples(16)
@given(one_per_op(POOLS, lambda op: pool_case(op[1])), seeds)
def test_pooling_and_gradients(check_ops, drawn, seed):
    rng, cases = np.random.default_rng(seed), []
    for (op, _), (n, c, h, w, k, stride, ties) in drawn:
        # ties: a few integer values, so that windows often hold several maxima (the gradient
        # goes to the first in row-major order)
        x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float32) if ties else normal(rng, (n, c, h, w))
        ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
        pk = {"kernel": k, "stride": stride}
        dy = normal(rng, (n, c, ho, wo))
        cases.append({"maxpool2d": ("maxpool2d", [x], pk), "avgpool2d": ("avgpool2d", [x], pk),
                      "maxpool2d_grad": ("maxpool2d_grad", [dy, x], pk),
                      "avgpool2d_grad": ("avgpool2d_grad", [dy], {**pk, "size": [h, w]})}[op])
    check_ops(cases, rtol=1e-5, atol=1e-6)


# -- reductions and normalisations ----------------------------------------------------------
@st.composite
def reduction_case(draw):
    shape = draw(shapes())
    axes = draw(st.lists(st.integers(0, len(shape) - 1), unique=True, max_size=len(shape)))
    attrs = {"keepdims": draw(st.booleans())}
    if axes or draw(st.booleans()):
        attrs["axis"] = axes if len(axes) != 1 else axes[0] - len(shape) * draw(st.booleans())
    return shape, attrs


@examples(50)
@given(one_per_op(("sum", "mean", "max"), lambda op: reduction_case()), seeds)
def test_reductions(check_ops, drawn, seed):
    rng, cases = np.random.default_rng(seed), []
    for op, (shape, attrs) in drawn:
        # a sum takes multiples of 1/4 in [-2, 2], which float32 adds exactly in any order: the
        # kernel reassociates, and the rounding error of a sum of a million normal floats
        # depends on the order and exceeds the tolerance (mean's is divided by the count)
        x = (rng.integers(-8, 9, shape) / 4).astype(np.float32) if op == "sum" else normal(rng, shape)
        cases.append((op, [x], attrs))
    check_ops(cases, rtol=1e-5, atol=1e-5)


@st.composite
def axis_case(draw):
    shape = draw(shapes(max_dims=3))
    return shape, draw(st.integers(-len(shape), len(shape) - 1))


@examples(60)
@given(one_per_op(("softmax", "log_softmax"), lambda op: axis_case()), seeds)
def test_softmax_family(check_ops, drawn, seed):
    rng = np.random.default_rng(seed)
    # large logits: only a max-subtracted exponential stays finite
    check_ops([(op, [normal(rng, shape, 30.0)], {"axis": axis}) for op, (shape, axis) in drawn],
              rtol=1e-5, atol=1e-6)


@examples(50)
@given(one_per_op(("cross_entropy", "one_hot", "mse"),
                  lambda op: st.tuples(side, st.one_of(st.integers(1, 50), st.sampled_from(EDGES)),
                                       st.sampled_from((np.int32, np.int64)))), seeds)
def test_losses_and_one_hot(check_ops, drawn, seed):
    rng, cases = np.random.default_rng(seed), []
    for op, (rows, classes, label_type) in drawn:
        labels = rng.integers(0, classes, rows).astype(label_type)
        if op == "cross_entropy":
            cases.append(("cross_entropy", [normal(rng, (rows, classes), 10.0), labels], {}))
        elif op == "mse":
            cases.append(("mse", [normal(rng, (rows, classes)), normal(rng, (rows, classes))], {}))
        else:
            cases.append(("one_hot", [labels], {"classes": classes}))
    check_ops(cases, rtol=1e-5, atol=1e-6)


@examples(40)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 9), side),
                min_size=1, max_size=2), seeds)
def test_batchnorm2d_training_form(check_ops, drawn, seed):
    """The kernels of a batch norm's training step: statistics, normalisation, gradient sums."""
    rng = np.random.default_rng(seed)
    cases = []
    for n, c, h, w in drawn:
        x = normal(rng, (n, c, h, w), 3.0) + 1
        stats = ops.evaluate("batchnorm_stats", [x.astype(np.float64)], {}).astype(np.float32)
        cases += [("batchnorm_stats", [x], {}),
                  ("batchnorm_train", [x, normal(rng, c), normal(rng, c), stats], {}),
                  ("batchnorm_grad_sums", [normal(rng, (n, c, h, w)), x, stats], {})]
    check_ops(cases, rtol=1e-4, atol=1e-4)


# -- layout ---------------------------------------------------------------------------------
@st.composite
def layout_case(draw, op):
    """(shape, attrs, element type) of a case of op."""
    shape, dtype = draw(shapes()), np.float32
    if op == "transpose":  # of floats or integers: it moves any element type
        attrs = {"perm": list(draw(st.permutations(range(len(shape)))))}
        dtype = draw(st.sampled_from((np.float32, np.int32, np.int64)))
    elif op == "reshape":
        numel = int(np.prod(shape))
        attrs = {"shape": draw(st.sampled_from([[numel], [1, numel], [numel, 1], shape[::-1], [-1],
                                                [shape[0], -1], [-1, shape[-1]]]))}
    elif op == "broadcast_to":  # new leading dimensions, and size-1 dimensions stretched
        shape = [1 if draw(st.booleans()) else d for d in shape]
        attrs = {"shape": draw(st.lists(small, max_size=2))
                 + [draw(st.integers(1, 20)) if d == 1 else d for d in shape]}
    else:
        attrs = {"p": draw(st.sampled_from([0.0, 0.5, 0.9]))}
    return shape, attrs, dtype


@examples(40)
@given(one_per_op(("transpose", "reshape", "broadcast_to", "dropout"), layout_case), seeds)
def test_layout(check_ops, drawn, seed):
    rng, cases = np.random.default_rng(seed), []
    for op, (shape, attrs, dtype) in drawn:
        x = normal(rng, shape) if dtype == np.float32 else rng.integers(-2**31, 2**31, shape).astype(dtype)
        cases.append((op, [x], attrs))
    check_ops(cases)


def test_label_out_of_range_is_a_user_error(check_ops):
    from odc.errors import OdcError
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(OdcError, match="label"):
        check_ops([("cross_entropy", [logits, np.array([0, 3], np.int32)], {})])


def test_every_op_has_a_lowering():
    from odc.codegen.kernels import LOWER
    from odc.ir import ops
    handled = set(LOWER) | {name for name, d in ops.OPS.items()
                            if d.codegen in ("alias", "arg", "const", "rewritten") or d.scalar is not None}
    assert set(ops.OPS) <= handled, f"no code generation for {sorted(set(ops.OPS) - handled)}"
