"""Pooling of language v2 — maxpool2d and avgpool2d with rectangular windows, per-axis strides
and padding, global_avgpool2d and adaptive_avgpool2d — exact to PyTorch:
(a) the compiled kernels against the numpy references, on geometries drawn by hypothesis (output
    widths at and around multiples of the vector width, windows that tile, overlap or leave
    gaps, padding up to half the kernel, windows too large for the unrolled code, adaptive
    windows of varying size, max-pool ties and windows of -inf), many cases per compiled graph;
(b) the numpy references and the derivative rules (run by the interpreter in float64 and by the
    compiled code in float32) against torch.nn.functional's max_pool2d, avg_pool2d
    (count_include_pad=True) and adaptive_avg_pool2d with autograd;
(c) the derivative rules against finite differences, away from ties;
(d) an inception-style .od model: loss, every gradient and the logits of the compiled code and of
    the interpreter against a torch.nn twin with its weights;
(e) each diagnosis at its line and column, and what the built-ins lower to."""
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import odc
from odc import codegen
from odc.codegen.kernels import lower_group
from odc.codegen.kernels.pool import vector_path
from odc.codegen.lower import PARALLEL_COST
from odc.frontend import parse_source
from odc.ir import interp, ops
from odc.ir.graph import Graph, TensorType
from odc.ir.ops import Emit
from odc.ir.ops.pool import Window
from odc.ir.passes.autodiff import backprop
from odc.ir.passes.fuse import groups
from odc.ir.printer import print_graph
from odc.ir.textparse import parse_graph
from planned import compile_graph, planned

sys.path.insert(0, str(Path(__file__).parents[1] / "ir"))
from test_vjp import check_vjp  # noqa: E402 (the finite-difference check of tests/ir)
from tests.diagnostics import single, where  # noqa: E402
from tests.oracle import check_twin, rel_err  # noqa: E402


def examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


EDGES = sorted({1, 2, 3} | {m + d for m in (8, 16, 24, 32) for d in (-1, 0, 1)})
side = st.one_of(st.integers(1, 30), st.sampled_from(EDGES))  # output widths: vector tails




def out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


# -- (a) compiled kernels against the references ----------------------------------------------------
@st.composite
def window(draw, kind):
    """A pooling geometry and input size. kind: "tile" (kernel == stride, no padding: the
    gradients' vector path), "padded" (any strides, padding up to half the kernel), "large"
    (windows or strides beyond the unrolled vector code: the looped path)."""
    if kind == "large":  # many inputs, or a row segment of many vectors
        kh, kw, sw = ((draw(st.integers(7, 10)), draw(st.integers(10, 12)), draw(st.integers(1, 12)))
                      if draw(st.booleans()) else (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(10, 12))))
        sh = draw(st.integers(1, 4))
    else:
        kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        sh, sw = (kh, kw) if kind == "tile" else (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    ph, pw = (0, 0) if kind == "tile" else (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    ho, wo = draw(st.integers(1, 7)), draw(side)
    # inputs that no window reaches: up to stride - 1 more rows and columns
    h = max(1, (ho - 1) * sh + kh - 2 * ph + draw(st.integers(0, sh - 1)))
    w = max(1, (wo - 1) * sw + kw - 2 * pw + draw(st.integers(0, sw - 1)))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 4)), h, w,
            {"kernel": [kh, kw], "stride": [sh, sw], "pad": [ph, pw]}, draw(st.sampled_from(["normal", "ties", "-inf"])))


def pool_input(rng, n, c, h, w, values):
    if values == "ties":  # a few integers: windows often hold several maxima
        return rng.integers(-2, 3, (n, c, h, w)).astype(np.float32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    if values == "-inf":  # a plane of -inf: its max-pool gradient goes to each window's first input
        x[0, 0] = -np.inf
    return x


POOLS = [(op, kind) for op in ("maxpool2d", "maxpool2d_grad", "avgpool2d", "avgpool2d_grad")
         for kind in ("tile", "padded", "large")]


@st.composite
def adaptive(draw):
    """Input and output sizes: windows of varying size (non-divisible), more outputs than
    inputs, or divisible sizes."""
    h, w = draw(st.integers(1, 20)), draw(side)
    return draw(st.integers(1, 3)), draw(st.integers(1, 4)), h, w, [draw(st.integers(1, 9)), draw(st.integers(1, 20))]


@examples(40)
@given(st.tuples(*(window(kind) for _, kind in POOLS)), st.lists(adaptive(), min_size=2, max_size=2),
       st.integers(0, 2**31))
def test_kernels_match_the_references(check_ops, drawn, adaptives, seed):
    rng, cases = np.random.default_rng(seed), []
    for (op, kind), (n, c, h, w, attrs, values) in zip(POOLS, drawn):
        assert vector_path(Window.of(attrs)) == (kind != "large")  # the kinds take the kernels' paths
        x = pool_input(rng, n, c, h, w, values if op.startswith("max") else "normal")
        (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["pad"]
        dy = rng.standard_normal((n, c, out_size(h, kh, sh, ph), out_size(w, kw, sw, pw))).astype(np.float32)
        cases.append({"maxpool2d": ("maxpool2d", [x], attrs), "avgpool2d": ("avgpool2d", [x], attrs),
                      "maxpool2d_grad": ("maxpool2d_grad", [dy, x], attrs),
                      "avgpool2d_grad": ("avgpool2d_grad", [dy], {**attrs, "size": [h, w]})}[op])
    for n, c, h, w, size in adaptives:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        dy = rng.standard_normal((n, c, *size)).astype(np.float32)
        cases += [("adaptive_avgpool2d", [x], {"size": size}), ("adaptive_avgpool2d_grad", [dy], {"size": [h, w]})]
    check_ops(cases, rtol=1e-5, atol=1e-5)


def test_kernels_on_edge_cases(check_ops):
    """Padding on one axis only, windows of padding and one input, a 1x1 output, the shortest
    attribute forms, and a max-pool whose ties the gradient must break in row-major order."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 17)).astype(np.float32)
    ties = np.array([[[[1, 3, 0], [3, 3, 2], [0, 1, 3]]]], np.float32)
    cases = [("maxpool2d", [x], {"kernel": 3, "stride": 1, "pad": [0, 1]}),
             ("maxpool2d", [x], {"kernel": [2, 4], "stride": [1, 3], "pad": [1, 2]}),
             ("avgpool2d", [x], {"kernel": [2, 4], "stride": [1, 3], "pad": [1, 2]}),
             ("avgpool2d", [x], {"kernel": [5, 17], "stride": 1}),
             ("maxpool2d", [x], {"kernel": [5, 17], "stride": 1}),
             ("maxpool2d_grad", [np.ones((1, 1, 2, 2), np.float32), ties], {"kernel": 2, "stride": 1}),
             ("maxpool2d_grad", [np.ones((1, 1, 2, 2), np.float32), ties], {"kernel": 2, "stride": 2, "pad": 1}),
             ("adaptive_avgpool2d", [x], {"size": [7, 3]})]
    check_ops(cases, rtol=1e-6, atol=1e-6)
    # the first maximum of each window, in row-major order
    np.testing.assert_array_equal(ops.evaluate("maxpool2d_grad", cases[5][1], cases[5][2])[0, 0],
                                  [[0, 2, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(ops.evaluate("maxpool2d_grad", cases[6][1], cases[6][2])[0, 0],
                                  [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_kernels_split_across_threads(op_graph):
    """Kernels big enough to run on several threads give the same numbers as on one."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 16, 23, 29)).astype(np.float32)
    attrs = {"kernel": [3, 2], "stride": [2, 1], "pad": 1}
    dy = rng.standard_normal((6, 16, 12, 30)).astype(np.float32)
    cases = [("maxpool2d", [x], attrs), ("avgpool2d", [x], attrs), ("maxpool2d_grad", [dy, x], attrs),
             ("avgpool2d_grad", [dy], {**attrs, "size": [23, 29]}), ("adaptive_avgpool2d", [x], {"size": [5, 7]}),
             ("adaptive_avgpool2d_grad", [dy], {"size": [23, 29]})]
    g, feeds = op_graph(cases)
    g = planned(g)
    assert all(k.cost > PARALLEL_COST and k.extent > 1 for k in map(partial(lower_group, g), groups(g)))
    for threads in (1, 4):
        out = codegen.compile_graph(g, threads=threads)(feeds)
        for i, (op, arrays, a) in enumerate(cases):
            np.testing.assert_allclose(out[f"o{i}"], ops.evaluate(op, arrays, a), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{op} on {threads} threads")


# -- (b) references and derivative rules against torch ---------------------------------------------
def draw_cases(seed: int, count: int) -> list:
    """(op, input shape, attrs, values) cases of maxpool2d, avgpool2d and adaptive_avgpool2d."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        kh, kw = (int(k) for k in rng.integers(1, 6, 2))
        sh, sw = (int(s) for s in rng.integers(1, 5, 2))
        ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
        h, w = int(rng.integers(max(1, kh - 2 * ph), 19)), int(rng.integers(max(1, kw - 2 * pw), 19))
        shape = [int(rng.integers(1, 3)), int(rng.integers(1, 4)), h, w]
        attrs = {"kernel": [kh, kw], "stride": [sh, sw], "pad": [ph, pw]}
        cases.append(("maxpool2d", shape, attrs, str(rng.choice(["normal", "ties", "-inf"]))))
        cases.append(("avgpool2d", shape, attrs, "normal"))
        size = [int(rng.integers(1, h + 4)), int(rng.integers(1, w + 4))]  # more outputs than inputs too
        cases.append(("adaptive_avgpool2d", shape, {"size": size}, "normal"))
    return cases


def torch_op(torch, op, x, attrs):
    F = torch.nn.functional
    if op == "adaptive_avgpool2d":
        return F.adaptive_avg_pool2d(x, attrs["size"])
    k, s, p = (tuple(attrs[a]) for a in ("kernel", "stride", "pad"))
    if op == "maxpool2d":
        return F.max_pool2d(x, k, s, p)
    return F.avg_pool2d(x, k, s, p, count_include_pad=True)


def gradient_graph(cases, dtype: str) -> Graph:
    """For each case i: y_i = op(x_i) and the gradient of sum(y_i * c_i) by the derivative rules."""
    g = Graph("grads")
    e = Emit(g)
    for i, (op, shape, attrs, _) in enumerate(cases):
        x = g.add("input", type=TensorType(dtype, tuple(shape)), name=f"x{i}")
        y = e(op, x, **attrs)
        c = g.add("input", type=g.type(y), name=f"c{i}")
        g.outputs += [(f"y{i}", y), (f"d{i}", backprop(g, e("sum", e("mul", y, c)), [x])[x])]
    return g


def check_against_torch(torch, cases, seed, compiled):
    dtype = np.float32 if compiled else np.float64
    g = gradient_graph(cases, "f32" if compiled else "f64")
    rng = np.random.default_rng(seed)
    feeds = {}
    for i, (op, shape, attrs, values) in enumerate(cases):
        feeds[f"x{i}"] = pool_input(rng, *shape, values).astype(dtype)
        feeds[f"c{i}"] = rng.standard_normal(g.type(dict(g.outputs)[f"y{i}"]).shape).astype(dtype)
    with np.errstate(invalid="ignore"):  # sum(y * c) of windows of -inf: inf - inf
        out = compile_graph(g)(feeds) if compiled else interp.run(g, feeds, np.float64)
    tol = 1e-5 if compiled else 1e-12
    for i, (op, shape, attrs, values) in enumerate(cases):
        x = torch.tensor(feeds[f"x{i}"], requires_grad=True)
        y = torch_op(torch, op, x, attrs)
        what = (op, shape, attrs, values)
        if not compiled:  # the numpy reference itself
            np.testing.assert_array_equal(np.isinf(ops.evaluate(op, [feeds[f"x{i}"]], attrs)), np.isinf(y.detach().numpy()))
            assert rel_err(np.nan_to_num(ops.evaluate(op, [feeds[f"x{i}"]], attrs), neginf=0),
                           np.nan_to_num(y.detach().numpy(), neginf=0)) <= tol, what
        y.backward(torch.tensor(feeds[f"c{i}"]))
        assert out[f"y{i}"].shape == tuple(y.shape), what
        assert rel_err(np.nan_to_num(out[f"y{i}"], neginf=0), np.nan_to_num(y.detach().numpy(), neginf=0)) <= tol, what
        assert rel_err(out[f"d{i}"], x.grad.numpy()) <= tol, what


@pytest.mark.parametrize("seed", range(12))
def test_references_and_derivative_rules_match_torch(torch, seed):
    check_against_torch(torch, draw_cases(1000 + seed, 3), seed, compiled=False)


@pytest.mark.parametrize("seed", range(2))
def test_compiled_gradients_match_torch(torch, seed):
    check_against_torch(torch, draw_cases(2000 + seed, 5), seed, compiled=True)


def test_torch_refuses_the_padding_odc_refuses(torch):
    """PyTorch allows padding up to half the kernel, and no more: odc's rule."""
    x = torch.zeros(1, 1, 8, 8)
    torch.nn.functional.max_pool2d(x, (4, 3), padding=(2, 1))
    torch.nn.functional.avg_pool2d(x, (4, 3), padding=(2, 1))
    for f in (torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d):
        with pytest.raises(RuntimeError, match="pad should be at most half"):
            f(x, (4, 3), padding=(2, 2))
    parse_source(program("x = maxpool2d(image, [4, 3], pad=[2, 1]) + avgpool2d(image, [4, 3], pad=[2, 1])", RETURN),
                 "t.od")
    d = single(program("x = maxpool2d(image, [4, 3], pad=[2, 2])", RETURN))
    assert d.message.startswith("maxpool2d: padding 2 is more than half of kernel [4, 3] on the width")


# -- (c) the derivative rules against finite differences --------------------------------------------
FD = settings(max_examples=10, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def distinct(draw, shape):
    """Values at least 0.05 apart: no ties, and no finite-difference step crosses one."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.05 - 1.0).astype(np.float64)


@pytest.mark.parametrize("op", ["maxpool2d", "avgpool2d"])
@FD
@given(data=st.data())
def test_pool_rules_against_finite_differences(op, data):
    kh, kw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    ph, pw = data.draw(st.integers(0, kh // 2)), data.draw(st.integers(0, kw // 2))
    h, w = data.draw(st.integers(max(1, kh - 2 * ph), 6)), data.draw(st.integers(max(1, kw - 2 * pw), 6))
    x = distinct(data.draw, (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), h, w))
    check_vjp(op, [x], {"kernel": [kh, kw], "stride": [sh, sw], "pad": [ph, pw]}, symbolic=(0,))


@FD
@given(data=st.data())
def test_adaptive_rule_against_finite_differences(data):
    h, w = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 7))
    x = distinct(data.draw, (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), h, w))
    check_vjp("adaptive_avgpool2d", [x], {"size": [data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))]},
              symbolic=(0,))


# -- (d) a model against a torch.nn twin -------------------------------------------------------------
INCEPTION = """
model Inception(classes = 5):
    input image: f32[N, 3, 11, 13]
    x = relu(conv2d(image, out=6, kernel=3, pad=1))
    a = relu(conv2d(x, out=4, kernel=1))                        # 1x1 branch
    b = relu(conv2d(x, out=3, kernel=3, pad=1))                 # 3x3 branch
    c = conv2d(maxpool2d(x, 3, stride=1, pad=1), out=2, kernel=1)   # pool branch
    d = avgpool2d(x, 3, stride=1, pad=1)                        # padding counts in the average
    y: f32[N, 15, 11, 13] = concat([a, b, c, d], axis=1)
    z: f32[N, 15, 6, 7] = maxpool2d(y, [3, 2], stride=2, pad=[1, 1])
    g: f32[N, 15] = global_avgpool2d(z)
    t: f32[N, 15, 4, 3] = adaptive_avgpool2d(z, [4, 3])         # windows of 1 to 3 rows and columns
    s: f32[N, 15, 3, 7] = adaptive_avgpool2d(z, [3, 7])         # divisible: an avgpool2d
    return dense(concat([g, flatten(t), flatten(s)], axis=1), classes)
"""


def inception_twin(torch):
    nn = torch.nn
    m = nn.ModuleDict({"conv2d1": nn.Conv2d(3, 6, 3, padding=1), "conv2d2": nn.Conv2d(6, 4, 1),
                       "conv2d3": nn.Conv2d(6, 3, 3, padding=1), "conv2d4": nn.Conv2d(6, 2, 1),
                       "dense1": nn.Linear(15 + 15 * 12 + 15 * 21, 5),
                       "pool3": nn.MaxPool2d(3, 1, 1), "avg3": nn.AvgPool2d(3, 1, 1),
                       "pool32": nn.MaxPool2d((3, 2), 2, (1, 1)), "global": nn.AdaptiveAvgPool2d(1),
                       "adaptive43": nn.AdaptiveAvgPool2d((4, 3)), "adaptive37": nn.AdaptiveAvgPool2d((3, 7))})
    return m.double()


def inception_forward(torch, m, image):
    x = torch.relu(m["conv2d1"](image))
    branches = [torch.relu(m["conv2d2"](x)), torch.relu(m["conv2d3"](x)), m["conv2d4"](m["pool3"](x)), m["avg3"](x)]
    z = m["pool32"](torch.cat(branches, dim=1))
    return m["dense1"](torch.cat([m["global"](z).flatten(1), m["adaptive43"](z).flatten(1),
                                  m["adaptive37"](z).flatten(1)], dim=1))


@pytest.mark.parametrize("executor", ["compiled", "interpreter"])
def test_model_matches_a_torch_twin(torch, tmp_path, executor):
    path = tmp_path / "inception.od"
    path.write_text(INCEPTION)
    model = odc.load(path).compile(executor=None if executor == "compiled" else interp.compile_graph, seed=4)
    m = inception_twin(torch)
    params = dict(m.named_parameters())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 3, 11, 13)).astype(np.float32), rng.integers(0, 5, 3)
    check_twin(torch, model, params, lambda t: inception_forward(torch, m, t), x, y)
    x1 = x[:1]  # another batch size: the graphs are compiled again for it
    assert rel_err(model.forward(x1), inception_forward(torch, m, torch.tensor(x1, dtype=torch.float64))
                   .detach().numpy()) <= 1e-4


# -- (e) diagnoses and lowering ---------------------------------------------------------------------
HEAD = ["model M(classes = 10):", "    input image: f32[N, 1, 28, 28]"]


def program(*body: str) -> str:
    return "\n".join(HEAD + [f"    {b}" for b in body]) + "\n"



RETURN = "return dense(flatten(x), classes)"


@pytest.mark.parametrize("body,line,needle,message,hint", [
    (["x = maxpool2d(image, 3, stride=2, pad=2)"], 3, "maxpool2d",
     "maxpool2d: padding 2 is more than half of kernel 3; PyTorch allows at most 1",
     "use pad=1 or a larger kernel: a window would otherwise hold padding only"),
    (["x = avgpool2d(image, [3, 5], pad=[1, 3])"], 3, "avgpool2d",
     "avgpool2d: padding [1, 3] is more than half of kernel [3, 5] on the width; PyTorch allows at most [1, 2]",
     "use pad=[1, 2] or a larger kernel: a window would otherwise hold padding only"),
    (["x = maxpool2d(image, [2, 1], pad=[2, 1])"], 3, "maxpool2d",
     "maxpool2d: padding [2, 1] is more than half of kernel [2, 1] on the height and the width; "
     "PyTorch allows at most [1, 0]",
     "use pad=[1, 0] or a larger kernel: a window would otherwise hold padding only"),
    (["x = avgpool2d(image, 3, pad=-1)"], 3, "-1",
     "avgpool2d: pad must be an integer >= 0 or a pair [h, w] of them, got the number -1", None),
    (["x = maxpool2d(image, [2, 2, 2])"], 3, "[2, 2, 2]",
     "maxpool2d: k must be a positive integer or a pair [h, w] of them, got a list", None),
    (["x = maxpool2d(image, 2, stride=[0, 1])"], 3, "[0, 1]",
     "maxpool2d: stride must be a positive integer or a pair [h, w] of them, got a list", None),
    (["x = global_avgpool2d(flatten(image))"], 3, "global_avgpool2d",
     "global_avgpool2d expects a 4-D input [batch, channels, height, width], got f32[N, 784]", None),
    (["x = adaptive_avgpool2d(flatten(image), 3)"], 3, "adaptive_avgpool2d",
     "adaptive_avgpool2d expects a 4-D input [batch, channels, height, width], got f32[N, 784]", None),
    (["x = adaptive_avgpool2d(image, [0, 3])"], 3, "[0, 3]",
     "adaptive_avgpool2d: size must be a positive integer or a pair [h, w] of them, got a list", None),
])
def test_diagnoses(body, line, needle, message, hint):
    src = program(*body, RETURN)
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, line, needle)
    assert d.message == message
    assert d.hint == hint


@pytest.mark.parametrize("body,needle,message,sizes", [
    # padding helps, but not enough: 7 + 2 rows are fewer than 10
    (["x = maxpool2d(image, [4, 2], stride=[4, 2])", "x = maxpool2d(x, [10, 3], pad=[1, 1])"], "maxpool2d",
     "maxpool2d with kernel [10, 3], stride [10, 3], padding 1 shrinks the height of 7 to 0; input f32[N, 1, 7, 14]",
     "7x14 (maxpool2d, line 3)"),
    (["x = maxpool2d(image, 4)", "x = avgpool2d(x, 10, stride=2, pad=1)"], "avgpool2d",
     "avgpool2d with kernel 10, stride 2, padding 1 shrinks a spatial size of 7 to 0; input f32[N, 1, 7, 7]",
     "7x7 (maxpool2d, line 3)"),
    (["x = avgpool2d(image, [4, 1], stride=[4, 1])", "x = maxpool2d(x, 8)"], "maxpool2d",
     "maxpool2d with kernel 8, stride 8 shrinks the height of 7 to 0; input f32[N, 1, 7, 28]",
     "7x28 (avgpool2d, line 3)"),
])
def test_a_window_larger_than_its_padded_input_names_the_sizes_on_the_way(body, needle, message, sizes):
    src = program(*body, RETURN)
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 4, needle)
    assert d.message == message
    assert d.notes == [f"the image sizes up to here: 28x28 (the input, line 2) -> {sizes}"]
    assert d.hint == "use a smaller window, or remove a pooling or strided layer before this one"


def nodes(*body: str) -> list:
    g = parse_source(program(*body, RETURN), "t.od").models["M"]
    return [(n.op, n.attrs, n.type.shape) for n in g.nodes() if n.op not in ("input", "param", "reshape", "linear")]


def test_the_builtins_lower_to_their_ir():
    assert nodes("x = maxpool2d(image, 3, stride=1, pad=1)") == [
        ("maxpool2d", {"kernel": 3, "stride": 1, "pad": 1}, ("N", 1, 28, 28))]
    assert nodes("x = avgpool2d(image, [3, 2], stride=[2, 2], pad=[1, 0])") == [
        ("avgpool2d", {"kernel": [3, 2], "stride": 2, "pad": [1, 0]}, ("N", 1, 14, 14))]
    assert nodes("x = maxpool2d(image, [4, 2])") == [("maxpool2d", {"kernel": [4, 2], "stride": [4, 2]}, ("N", 1, 7, 14))]
    assert nodes("x = maxpool2d(image, 2, pad=0)") == [("maxpool2d", {"kernel": 2, "stride": 2}, ("N", 1, 14, 14))]
    # global_avgpool2d is a mean; adaptive_avgpool2d an avgpool2d where the sizes divide, else its own op
    assert nodes("x = global_avgpool2d(image)") == [("mean", {"axis": [2, 3]}, ("N", 1))]
    assert nodes("x = adaptive_avgpool2d(image, 1)") == [("mean", {"axis": [2, 3], "keepdims": True}, ("N", 1, 1, 1))]
    assert nodes("x = adaptive_avgpool2d(image, [7, 4])") == [("avgpool2d", {"kernel": [4, 7], "stride": [4, 7]},
                                                               ("N", 1, 7, 4))]
    assert nodes("x = adaptive_avgpool2d(image, [5, 28])") == [("adaptive_avgpool2d", {"size": [5, 28]}, ("N", 1, 5, 28))]
    assert nodes("x = adaptive_avgpool2d(image, 30)") == [("adaptive_avgpool2d", {"size": [30, 30]}, ("N", 1, 30, 30))]


def test_pooling_attributes_survive_the_text_ir():
    src = program("x = maxpool2d(image, [3, 2], stride=[1, 2], pad=1)", "x = adaptive_avgpool2d(x, [5, 6])", RETURN)
    g = parse_source(src, "t.od").models["M"]
    text = print_graph(g)
    assert "maxpool2d(%image) {kernel=[3, 2], pad=1, stride=[1, 2]} : f32[N, 1, 28, 15]" in text
    assert "adaptive_avgpool2d(%0) {size=[5, 6]} : f32[N, 1, 5, 6]" in text
    assert print_graph(parse_graph(text)) == text
