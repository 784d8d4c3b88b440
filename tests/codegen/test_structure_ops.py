"""The structure ops of language v2 — concat, pad, slice, dense on [N, T, F], matmul with
broadcast batch axes — exact to PyTorch:
(a) the compiled kernels against the numpy references, on random shapes whose sizes are not
    multiples of the vector width, many cases per compiled graph;
(b) the numpy references against torch.cat, F.pad, slicing, F.linear and torch.matmul, and the
    derivative rules (run by the interpreter in float64 and by the compiled code in float32)
    against torch's autograd;
(c) a small .od model using all of them: loss, every gradient and the logits of the compiled code
    against a torch.nn twin with its weights;
(d) each derivative rule against finite differences;
(e) each diagnosis at its line and column."""
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
from odc.codegen.lower import PARALLEL_COST
from odc.frontend import parse_source
from odc.ir import interp, ops
from odc.ir.graph import Graph, TensorType
from odc.ir.ops import Emit
from odc.ir.passes.autodiff import backprop
from odc.ir.passes.fuse import groups
from planned import compile_graph, planned

sys.path.insert(0, str(Path(__file__).parents[1] / "ir"))
from test_vjp import check_vjp  # noqa: E402 (the finite-difference check of tests/ir)
from tests.diagnostics import single, where  # noqa: E402
from tests.oracle import check_twin, rel_err  # noqa: E402


# -- random cases ---------------------------------------------------------------------------------
def sizes(rng, n: int, hi: int = 19) -> list[int]:
    """n sizes in [1, hi], none a multiple of 8 (so never a whole number of vectors)."""
    choices = [s for s in range(1, hi + 1) if s % 8]
    return [int(s) for s in rng.choice(choices, n)]


def concat_case(rng):
    rank = int(rng.integers(1, 5))
    shape = sizes(rng, rank, 11)
    axis = int(rng.integers(-rank, rank))
    branches = []
    for size in sizes(rng, int(rng.integers(1, 5)), 13):
        s = list(shape)
        s[axis] = size
        branches.append(s)
    return "concat", branches, {"axis": axis}


def pad_case(rng):
    rank = int(rng.integers(1, 5))
    shape = sizes(rng, rank, 11)
    pads = []
    for d in reversed(shape[rank - int(rng.integers(1, rank + 1)):]):
        before = int(rng.integers(-d + 1, 5))  # a negative amount crops, as F.pad
        pads += [before, int(rng.integers(max(1 - d - before, -d - min(before, 0)), 5))]
    return "pad", [shape], {"pads": pads, "value": float(np.round(rng.standard_normal(), 2))}


def slice_case(rng):
    rank = int(rng.integers(1, 5))
    shape = sizes(rng, rank, 23)
    axis = int(rng.integers(-rank, rank))
    size = shape[axis]
    while True:
        start, stop = (int(v) for v in rng.integers(-size - 3, size + 4, 2))
        step = int(rng.integers(1, 5))
        if len(range(*slice(start, stop, step).indices(size))):
            return "slice", [shape], {"axis": axis, "start": start, "stop": stop, "step": step}


def matmul_case(rng):
    """Batch shapes that broadcast: leading axes dropped or set to 1 on either side."""
    full = sizes(rng, int(rng.integers(0, 4)), 5)

    def batch():
        lead = int(rng.integers(0, len(full) + 1))
        return [1 if rng.random() < 0.3 else d for d in full[lead:]]
    m, k, n = sizes(rng, 3, 37)
    return "matmul", [batch() + [m, k], batch() + [k, n]], {}


def linear_case(rng):
    n, t, f, o = sizes(rng, 4, 37)
    return "linear", [[n, t, f], [o, f], [o]][:3 if rng.random() < 0.7 else 2], {}


CASES = [concat_case, pad_case, slice_case, matmul_case, linear_case]


def draw_cases(seed: int, per_op: int):
    rng = np.random.default_rng(seed)
    return [make(rng) for make in CASES for _ in range(per_op)]


def arrays_of(seed: int, shapes, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]




# -- (a) compiled kernels against the references ----------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_kernels_match_the_references(check_ops, seed):
    cases = [(op, arrays_of(seed * 100 + i, shapes), attrs) for i, (op, shapes, attrs) in
             enumerate(draw_cases(seed, 5))]
    check_ops(cases, rtol=1e-5, atol=1e-5)


def test_kernels_on_edge_cases(check_ops):
    a = arrays_of(7, [(2, 3, 5), (2, 1, 5), (17, 9), (9, 17), (1, 1, 1), (40, 3)])
    x, y, m, w, one, tall = a
    cases = [("concat", [x], {"axis": 1}),  # one branch
             ("concat", [x, y, x], {"axis": 1}),  # a branch twice
             ("concat", [tall, tall], {"axis": 0}),  # along the parallel axis
             ("pad", [one], {"pads": [0, 0, 3, 0, 0, 2], "value": -1.0}),  # the first axis padded
             ("pad", [x], {"pads": [-2, -2], "value": 0.0}),  # only a crop
             ("pad", [x], {"pads": [6, -5], "value": 1.5}),  # all fill: the crop takes all of x
             ("pad", [x], {"pads": [], "value": 0.0}),  # nothing
             ("slice", [m], {"axis": 0, "start": -100, "stop": 100, "step": 1}),  # the whole axis
             ("slice", [m], {"axis": -2, "start": 16, "stop": 17, "step": 5}),  # one element
             ("matmul", [m, w], {}),
             ("matmul", [a[3][None, :, :2].copy(), arrays_of(8, [(5, 1, 2, 3)])[0]], {}),  # a's batch all 1
             ]
    check_ops(cases, rtol=1e-5, atol=1e-5)
    cases = [("concat", [np.arange(6, dtype=np.int32).reshape(2, 3), np.ones((2, 1), np.int32)], {"axis": 1}),
             ("slice", [np.arange(10, dtype=np.int64)], {"axis": 0, "start": 1, "stop": -1, "step": 3}),
             ("pad", [np.arange(6, dtype=np.int32).reshape(2, 3)], {"pads": [1, 1], "value": 7.0})]
    check_ops(cases, rtol=0, atol=0)


def test_kernels_split_across_threads(op_graph):
    """Kernels big enough to run on several threads give the same numbers as on one."""
    shapes = {"concat0": [(30, 700), (17, 700)], "concat1": [(40, 300), (40, 401)], "pad": [(40, 3, 200)],
              "slice": [(100, 1300)], "matmul": [(6, 3, 40, 65), (3, 65, 29)],
              "linear": [(6, 200, 65), (29, 65), (29,)]}
    attrs = {"concat0": {"axis": 0}, "concat1": {"axis": 1}, "pad": {"pads": [3, -1, 1, 2, -5, 2], "value": 1.0},
             "slice": {"axis": 1, "start": 5, "stop": -7, "step": 3}}
    cases = [(name.rstrip("01"), arrays_of(i, shapes[name]), attrs.get(name, {})) for i, name in enumerate(shapes)]
    g, feeds = op_graph(cases)
    g = planned(g)
    assert all(k.cost > PARALLEL_COST and k.extent > 1 for k in map(partial(lower_group, g), groups(g)))
    for threads in (1, 4):
        out = codegen.compile_graph(g, threads=threads)(feeds)
        for i, (op, arrays, a) in enumerate(cases):
            np.testing.assert_allclose(out[f"o{i}"], ops.evaluate(op, arrays, a), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{op} on {threads} threads")


# -- (b) references and derivative rules against torch ---------------------------------------------
def torch_op(torch, op, xs, attrs):
    F = torch.nn.functional
    if op == "concat":
        return torch.cat(xs, dim=attrs["axis"])
    if op == "pad":
        return F.pad(xs[0], attrs["pads"], value=attrs["value"])
    if op == "slice":
        ax = attrs["axis"] % xs[0].dim()
        return xs[0][(slice(None),) * ax + (slice(attrs["start"], attrs["stop"], attrs["step"]),)]
    if op == "linear":
        return F.linear(*xs)
    return torch.matmul(*xs)


def gradient_graph(cases, dtype: str) -> Graph:
    """For each case i: y_i = op(x_i_j...) and the gradients of sum(y_i * c_i) by the derivative rules."""
    g = Graph("grads")
    e = Emit(g)
    for i, (op, shapes, attrs) in enumerate(cases):
        ids = [g.add("input", type=TensorType(dtype, tuple(s)), name=f"x{i}_{j}") for j, s in enumerate(shapes)]
        y = e(op, *ids, **attrs)
        c = g.add("input", type=g.type(y), name=f"c{i}")
        grads = backprop(g, e("sum", e("mul", y, c)), ids)
        g.outputs += [(f"y{i}", y)] + [(f"d{i}_{j}", grads[x]) for j, x in enumerate(ids)]
    return g


def check_against_torch(torch, cases, seed, compiled):
    dtype = np.float32 if compiled else np.float64
    g = gradient_graph(cases, "f32" if compiled else "f64")
    feeds = {}
    for i, (op, shapes, attrs) in enumerate(cases):
        for j, a in enumerate(arrays_of(seed + i, shapes, dtype)):
            feeds[f"x{i}_{j}"] = a
        feeds[f"c{i}"] = arrays_of(seed + 500 + i, [g.type(dict(g.outputs)[f"y{i}"]).shape], dtype)[0]
    out = compile_graph(g)(feeds) if compiled else interp.run(g, feeds, np.float64)
    tol = 1e-5 if compiled else 1e-12
    for i, (op, shapes, attrs) in enumerate(cases):
        xs = [torch.tensor(feeds[f"x{i}_{j}"], requires_grad=True) for j in range(len(shapes))]
        y = torch_op(torch, op, xs, attrs)
        if not compiled:  # the numpy reference itself
            ref = ops.evaluate(op, [feeds[f"x{i}_{j}"] for j in range(len(shapes))], attrs)
            assert rel_err(ref, y.detach().numpy()) <= tol, (op, shapes, attrs)
        y.backward(torch.tensor(feeds[f"c{i}"]))
        assert out[f"y{i}"].shape == tuple(y.shape), (op, shapes, attrs)
        assert rel_err(out[f"y{i}"], y.detach().numpy()) <= tol, (op, shapes, attrs)
        for j, x in enumerate(xs):
            assert rel_err(out[f"d{i}_{j}"], x.grad.numpy()) <= tol, (op, shapes, attrs, j)


@pytest.mark.parametrize("seed", range(20))
def test_references_and_derivative_rules_match_torch(torch, seed):
    check_against_torch(torch, draw_cases(1000 + seed, 2), seed, compiled=False)


@pytest.mark.parametrize("seed", range(2))
def test_compiled_gradients_match_torch(torch, seed):
    check_against_torch(torch, draw_cases(2000 + seed, 3), seed, compiled=True)


# -- (c) a model against a torch.nn twin -------------------------------------------------------------
MIXER = """
model Mixer(classes = 5):
    input image: f32[N, 3, 9, 9]
    a = relu(conv2d(image, out=4, kernel=3, pad=1))
    b = tanh(conv2d(image, out=2, kernel=1))
    x: f32[N, 9, 9, 9] = concat([a, b, image], axis=1)
    x = pad(x, [1, 2, -1, 1], value=0.5)                 # F.pad order: last axis first; -1 crops
    x: f32[N, 9, 9, 6] = slice(x, 3, -11, 100, step=2)
    x: f32[N, 9, 7, 6] = slice(x, -2, 1, -1)
    t = reshape(x, [N, 9, 42])                           # 9 channels of 42 tokens
    t = t + dense(gelu(dense(t, 16)), 42)                # token mixing: dense on [N, T, F]
    u = transpose(t, [0, 2, 1])
    u = u + dense(relu(dense(u, 12)), 9, bias=false)     # channel mixing
    s = softmax(u @ transpose(u, [0, 2, 1]), axis=-1)    # [N, 42, 42]: both operands batched
    u = matmul(s, u)
    param w: f32[2, 1, 9, 4] = normal(0.3)
    v = sum(u @ w, axis=0)                               # batch axes [N] and [2, 1] broadcast
    return dense(mean(v, axis=1), classes)
"""


def mixer_twin(torch):
    nn = torch.nn
    m = nn.ModuleDict({"conv2d1": nn.Conv2d(3, 4, 3, padding=1), "conv2d2": nn.Conv2d(3, 2, 1),
                       "dense1": nn.Linear(42, 16), "dense2": nn.Linear(16, 42), "dense3": nn.Linear(9, 12),
                       "dense4": nn.Linear(12, 9, bias=False), "dense5": nn.Linear(4, 5)})
    m.w = nn.Parameter(torch.zeros(2, 1, 9, 4))
    return m.double()


def mixer_forward(torch, m, image):
    F = torch.nn.functional
    x = torch.cat([torch.relu(m["conv2d1"](image)), torch.tanh(m["conv2d2"](image)), image], dim=1)
    x = F.pad(x, [1, 2, -1, 1], value=0.5)[..., -11:100:2][:, :, 1:-1]
    t = x.reshape(x.shape[0], 9, 42)
    t = t + m["dense2"](F.gelu(m["dense1"](t)))
    u = t.transpose(1, 2)
    u = u + m["dense4"](torch.relu(m["dense3"](u)))
    u = torch.softmax(u @ u.transpose(1, 2), dim=-1) @ u
    return m["dense5"]((u @ m.w).sum(0).mean(1))


@pytest.mark.parametrize("executor", ["compiled", "interpreter"])
def test_model_matches_a_torch_twin(torch, tmp_path, executor):
    path = tmp_path / "mixer.od"
    path.write_text(MIXER)
    model = odc.load(path).compile(executor=None if executor == "compiled" else interp.compile_graph, seed=4)
    m = mixer_twin(torch)
    params = dict(m.named_parameters())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 3, 9, 9)).astype(np.float32), rng.integers(0, 5, 3)
    check_twin(torch, model, params, lambda t: mixer_forward(torch, m, t), x, y)
    x1 = x[:1]  # another batch size: the graphs are compiled again for it
    assert rel_err(model.forward(x1), mixer_forward(torch, m, torch.tensor(x1, dtype=torch.float64))
                   .detach().numpy()) <= 1e-4


# -- (d) the derivative rules against finite differences --------------------------------------------
FD = settings(max_examples=10, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
small = st.integers(1, 4)


def randn(draw, *shapes):
    return [np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(s) for s in shapes]


@FD
@given(st.data())
def test_concat_rule(data):
    rank = data.draw(st.integers(2, 4))
    shape = data.draw(st.lists(small, min_size=rank, max_size=rank))
    axis = data.draw(st.integers(1, rank - 1))  # not the batch axis, which is N
    axis -= rank * data.draw(st.booleans())  # or counted from the end
    branches = []
    for size in data.draw(st.lists(small, min_size=1, max_size=3)):
        s = list(shape)
        s[axis] = size
        branches.append(s)
    check_vjp("concat", randn(data.draw, *branches), {"axis": axis}, symbolic=tuple(range(len(branches))))


@FD
@given(st.data())
def test_pad_rule(data):
    rank = data.draw(st.integers(2, 4))
    shape = data.draw(st.lists(small, min_size=rank, max_size=rank))
    pads = []
    for d in reversed(shape[rank - data.draw(st.integers(1, rank - 1)):]):  # not the batch axis
        before = data.draw(st.integers(-d + 1, 3))
        pads += [before, data.draw(st.integers(max(1 - d - before, -d - min(before, 0)), 3))]
    check_vjp("pad", randn(data.draw, shape), {"pads": pads, "value": 0.5}, symbolic=(0,))


@FD
@given(st.data())
def test_slice_rule(data):
    rank = data.draw(st.integers(2, 4))
    shape = data.draw(st.lists(st.integers(1, 7), min_size=rank, max_size=rank))
    axis = data.draw(st.integers(1, rank - 1))
    size = shape[axis]
    start, stop = data.draw(st.integers(-size - 2, size + 2)), data.draw(st.integers(-size - 2, size + 2))
    step = data.draw(st.integers(1, 4))
    if not len(range(*slice(start, stop, step).indices(size))):
        start, stop = 0, size
    check_vjp("slice", randn(data.draw, shape), {"axis": axis, "start": start, "stop": stop, "step": step},
              symbolic=(0,))


@FD
@given(st.data())
def test_batched_matmul_rule(data):
    full = data.draw(st.lists(small, min_size=1, max_size=3))
    m, k, n = data.draw(small), data.draw(small), data.draw(small)

    def batch():
        return [1 if data.draw(st.booleans()) else d for d in full[data.draw(st.integers(0, len(full))):]]
    check_vjp("matmul", randn(data.draw, batch() + [m, k], batch() + [k, n]))


@pytest.mark.parametrize("shapes,symbolic", [([(3, 2, 4), (3, 4, 2)], (0, 1)), ([(3, 2, 4), (1, 4, 2)], (0,)),
                                             ([(2, 4), (3, 4, 2)], (1,)), ([(3, 2, 2, 4), (4, 3)], (0,))])
def test_matmul_rule_with_a_symbolic_batch(shapes, symbolic):
    """N in the batch axes: the rule must not fold N into rows (a size odc cannot express)."""
    check_vjp("matmul", randn_fixed(shapes), symbolic=symbolic)


@pytest.mark.parametrize("symbolic", [(), (0,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_rule_on_three_axes(symbolic, bias):
    xs = randn_fixed([(2, 3, 4), (5, 4), (5,)])
    check_vjp("linear", xs if bias else xs[:2], symbolic=symbolic)


def randn_fixed(shapes):
    rng = np.random.default_rng(11)
    return [rng.standard_normal(s) for s in shapes]


# -- (e) diagnoses -----------------------------------------------------------------------------------
def program(*body: str, image: str = "f32[N, 1, 28, 28]", ret: str = "dense(flatten(x), classes)") -> str:
    lines = ["model M(classes = 10):", f"    input image: {image}"] + [f"    {b}" for b in body]
    return "\n".join(lines + [f"    return {ret}"]) + "\n"



@pytest.mark.parametrize("body,needle,message", [
    (["y = maxpool2d(image, 2)", "x = concat([image, y], axis=1)"], "concat",
     "concat: branch 2 is f32[N, 1, 14, 14] but branch 1 is f32[N, 1, 28, 28]; they may differ only on axis 1"),
    (["y = conv2d(image, out=3, kernel=1)", "x = concat([image, y, flatten(image)])"], "concat",
     "concat: branch 3 is f32[N, 784] but branch 1 is f32[N, 1, 28, 28]; they need the same number of axes"),
    (["y = relu(image)", "x = concat([image, y], axis=0)"], "concat",
     "concat along axis 0 needs sizes known at compile time there, but branch 1 is f32[N, 1, 28, 28]"),
    (["y = relu(image)", "x = concat([image, y], axis=4)"], "concat",
     "concat: axis 4 is out of range for a 4-D tensor"),
    (["y = relu(image)", "x = concat([image, 3])"], "[image", "concat: tensors must be a list of tensors, e.g. [a, b], "
                                                              "got a list"),
    (["y = relu(image)", "x = pad(image, [1, 2, 3])"], "pad",
     "pad takes pairs [before, after, ...] starting at the last axis, got 3 numbers [1, 2, 3]"),
    (["y = relu(image)", "x = pad(image, [1, 1, 1, 1, 0, 0, 0, 0, 2, 2])"], "pad",
     "pad [1, 1, 1, 1, 0, 0, 0, 0, 2, 2] pads 5 axes, but f32[N, 1, 28, 28] has 4"),
    (["y = relu(image)", "x = pad(image, [2, 3, -14, -14])"], "pad",
     "pad [2, 3, -14, -14] leaves axis 2 of f32[N, 1, 28, 28] with 0 elements (28 - 14 - 14)"),
    (["y = relu(image)", "x = pad(image, [30, -29])"], "pad",
     "pad [30, -29] crops 29 elements from axis 3 of f32[N, 1, 28, 28], which has 28"),
    (["y = relu(image)", "x = pad(image, [0, 0, 0, 0, 0, 0, 1, 0])"], "pad",
     "pad [0, 0, 0, 0, 0, 0, 1, 0] pads axis 0 of f32[N, 1, 28, 28], whose size is known only at run time"),
    (["y = relu(image)", "x = pad(image, [1, 0.5])"], "[1, 0.5]", "pad: pads must be a list of integers, got a list"),
    (["y = relu(image)", "x = slice(image, 2, 20, 10)"], "slice",
     "slice [20:10] of axis 2 of f32[N, 1, 28, 28] is empty (that axis has 28 elements)"),
    (["y = relu(image)", "x = slice(image, -1, 30, 50, step=3)"], "slice",
     "slice [30:50:3] of axis 3 of f32[N, 1, 28, 28] is empty (that axis has 28 elements)"),
    (["y = relu(image)", "x = slice(image, 0, 0, 2)"], "slice",
     "slice of axis 0 of f32[N, 1, 28, 28], whose size is known only at run time"),
    (["y = relu(image)", "x = slice(image, 2, 0, 5, step=0)"], "0)", "slice: step must be a positive integer, "
                                                                    "got the number 0"),
    (["y = relu(image)", "x = slice(image, 4, 0, 5)"], "4,", "slice: axis 4 is out of range for a 4-D tensor"),
    (["param w: f32[3, 28, 5] = xavier", "x = reshape(image, [N, 28, 28]) @ w"], "reshape",
     "matmul batch dimensions do not broadcast: f32[N, 28, 28] @ f32[3, 28, 5] ([N] vs [3])"),
    (["param v: f32[28] = ones", "x = reshape(image, [N, 28, 28]) @ v"], "reshape",
     "matmul expects matrices or batches of them, [..., m, k] @ [..., k, n], got f32[N, 28, 28] @ f32[28]"),
    (["param w: f32[1, 27, 5] = xavier", "x = matmul(reshape(image, [N, 28, 28]), w)"], "matmul",
     "matmul inner dimensions differ: f32[N, 28, 28] @ f32[1, 27, 5] (28 vs 27)"),
])
def test_diagnoses(body, needle, message):
    src = program(*body)
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 4, needle)
    assert d.message == message
    assert d.hint or "must be" in message or "out of range" in message


def test_concat_hint_and_the_matmul_hint_for_batches():
    d = single(program("y = maxpool2d(image, 2)", "x = concat([image, y], axis=1)"))
    assert d.hint == ("bring the branches to the same sizes on every axis but 1 (e.g. with pad, slice or pooling), "
                      "or concatenate along another axis")
    d = single(program("param w: f32[1, 27, 5] = xavier", "x = matmul(reshape(image, [N, 28, 28]), w)"))
    assert d.hint == "the last dimension of the left operand must equal the second-to-last of the right"


def test_dense_on_three_axes_needs_a_known_last_axis():
    src = program("x = dense(image, 4)", image="f32[N, 3, F]", ret="dense(flatten(x), classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "dense")
    assert d.message == "dense needs a known size of the last axis to create its weights, got f32[N, 3, F]"


def test_dense_on_four_axes_keeps_the_flatten_hint():
    d = single(program("x = dense(image, 4)"))
    assert d.message == "dense expects a 2-D input [batch, features], got f32[N, 1, 28, 28]"
    assert d.hint == "insert flatten(x) before dense"


def test_the_ops_lower_to_their_ir():
    src = program("t = reshape(image, [N, 28, 28])", "t = dense(t, 7)",
                  "x = slice(pad(concat([t, t], axis=-1), [1, -2], value=2), 1, -5, 100, step=2)")
    g = parse_source(src, "t.od").models["M"]
    by_op = {n.op: n for n in g.nodes()}
    lin = [n for n in g.nodes() if n.op == "linear"][0]
    assert lin.type.shape == ("N", 28, 7) and g.type(lin.args[1]).shape == (7, 28)
    assert by_op["concat"].attrs == {"axis": -1} and by_op["concat"].type.shape == ("N", 28, 14)
    assert by_op["pad"].attrs == {"pads": [1, -2], "value": 2.0} and by_op["pad"].type.shape == ("N", 28, 13)
    assert by_op["slice"].attrs == {"axis": 1, "start": -5, "stop": 100, "step": 2}
    assert by_op["slice"].type.shape == ("N", 3, 13)
