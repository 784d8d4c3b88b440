"""The fusion and memory-planning passes: which nodes share a kernel, which values share memory,
and that a fused, planned graph computes what the numpy reference interpreter computes."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import odc
from planned import compile_graph
from odc.ir import ops
from odc.ir.printer import print_graph
from odc.ir.graph import Graph, TensorType
from odc.ir.passes import fuse, plan_memory, shape_infer
from odc.program import init_param
from odc.ir import interp

ROOT = Path(__file__).resolve().parents[2]


def node(g, op, *args, **attrs):
    return g.add(op, args, attrs, ops.get(op).infer([g.type(a) for a in args], attrs))


def arg(g, name, *shape, kind="input"):
    return g.add(kind, type=TensorType("f32", shape), name=name)


def feeds_for(g, seed=0):
    rng = np.random.default_rng(seed)
    return {a.name: rng.standard_normal(a.type.shape).astype(np.float32) for a in g.args_of()}


def group_of(g, nid):
    return g.node(nid).attrs.get("fuse")


def assert_matches_interpreter(g, feeds=None, atol=1e-5):
    feeds = feeds or feeds_for(g)
    got = compile_graph(g)(feeds)
    want = interp.run(g, feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=atol, err_msg=name)


def test_bias_and_relu_become_the_epilogue_of_linear():
    g = Graph("dense")
    x, w, b = arg(g, "x", 5, 7), arg(g, "w", 4, 7, kind="param"), arg(g, "b", 4, kind="param")
    y = node(g, "linear", x, w)
    s = node(g, "add", y, b)
    z = node(g, "relu", s)
    g.outputs = [("z", z)]
    f = fuse.run(g)
    (k,) = fuse.groups(f)
    assert k.anchor == y and set(k.nodes) == {y, s, z} and set(k.stored) == {y, z}
    assert "fuse=0" in print_graph(f)
    feeds = feeds_for(g)
    np.testing.assert_allclose(compile_graph(g)(feeds)["z"],
                               np.maximum(feeds["x"] @ feeds["w"].T + feeds["b"], 0), rtol=1e-5, atol=1e-6)


def test_momentum_update_is_one_kernel_with_two_results():
    g = Graph("sgd")
    p, v, grad = arg(g, "p", 3, 33, kind="param"), arg(g, "v", 3, 33, kind="state"), arg(g, "g", 3, 33)
    v2 = node(g, "add", node(g, "mul", v, node(g, "const", value=0.9)), grad)
    p2 = node(g, "add", node(g, "mul", v2, node(g, "const", value=-0.01)), p)
    g.outputs = [("new.p", p2), ("new.v", v2)]
    (k,) = fuse.groups(fuse.run(g))
    assert set(k.stored) == {p2, v2} and k.anchor is None
    assert_matches_interpreter(g)


def test_fusion_never_makes_a_kernel_depend_on_itself():
    # c = a + sum(a): joining c to a's kernel would need the sum inside that kernel
    g = Graph("cycle")
    x = arg(g, "x", 4, 21)
    a = node(g, "relu", x)
    s = node(g, "sum", a, axis=1, keepdims=True)
    c = node(g, "add", a, s)
    g.outputs = [("c", c)]
    f = fuse.run(g)
    assert group_of(f, c) is None or group_of(f, c) != group_of(f, a)
    assert_matches_interpreter(g)


def test_an_epilogue_never_computes_its_anchors_operand():
    g = Graph("anchor")
    x, w = arg(g, "x", 6, 6), arg(g, "w", 6, 6, kind="param")
    a = node(g, "relu", x)
    m = node(g, "matmul", a, w)
    c = node(g, "add", m, a)
    g.outputs = [("c", c)]
    f = fuse.run(g)
    assert group_of(f, m) == group_of(f, c) is not None
    assert group_of(f, a) != group_of(f, m)
    assert_matches_interpreter(g)


def chain_graph(n=6):
    """x -> relu -> transpose -> relu -> transpose ...: every value is stored (a transpose is
    its own kernel), each dies right after its user."""
    g = Graph("chain")
    v = arg(g, "x", 20, 20)
    for i in range(n):
        v = node(g, "transpose", node(g, "relu", v), perm=[1, 0])
    g.outputs = [("y", v)]
    return g


def test_intermediate_values_reuse_memory():
    g = chain_graph()
    planned = plan_memory.run(fuse.run(g))
    arena = [n for n in planned.nodes() if "arena" in n.attrs]
    assert len(arena) == 11  # 6 relus and 5 transposes; the last transpose is the output
    assert planned.meta["arena_bytes"] <= 2 * 20 * 20 * 4  # two live buffers at a time
    assert_matches_interpreter(g)


def test_relu_of_a_convolution_is_computed_in_place():
    g = Graph("conv")
    x, w = arg(g, "x", 2, 3, 9, 9), arg(g, "w", 4, 3, 3, 3, kind="param")
    c = node(g, "conv2d", x, w, pad=1)
    r = node(g, "relu", c)
    g.outputs = [("y", node(g, "maxpool2d", r, kernel=2))]
    planned = plan_memory.run(fuse.run(g))
    assert planned.node(c).attrs["arena"] == planned.node(r).attrs["arena"]
    assert all("arena" not in n.attrs for n in planned.args_of())
    assert_matches_interpreter(g)


def lenet(kind: str, batch: int) -> Graph:
    return shape_infer.run(odc.load(ROOT / "models" / "lenet5.od").lower(kind), {"N": batch})


def test_no_two_live_values_share_memory():
    """An independent check of the plan of a whole training step: recompute each arena value's
    live range from the kernels' order and reads; values live at the same step must not
    overlap in the arena unless they are one buffer updated in place."""
    g = plan_memory.run(fuse.run(lenet("train", 4)))
    kernels = fuse.groups(g)
    step = {m: i for i, k in enumerate(kernels) for m in k.nodes}
    readers: dict[int, list[int]] = {}
    for i, k in enumerate(kernels):
        for m in k.nodes:
            for a in g.node(m).args:
                readers.setdefault(fuse.base_of(g, a), []).append(i)
    copied = {fuse.base_of(g, v) for _, v in g.outputs}
    values = [n.id for n in g.nodes() if "arena" in n.attrs]
    live = {v: (step[v], max(readers.get(v, [step[v]]) + ([len(kernels)] if v in copied else [])))
            for v in values}
    span = {v: (g.node(v).attrs["arena"], g.node(v).attrs["arena"] + plan_memory.nbytes(g, v))
            for v in values}
    assert max(e for _, e in span.values()) <= g.meta["arena_bytes"]
    shared = 0
    for i, u in enumerate(values):
        for v in values[i + 1:]:
            (su, eu), (sv, ev) = live[u], live[v]
            if su <= ev and sv <= eu and span[u][0] < span[v][1] and span[v][0] < span[u][1]:
                # in place: the same buffer, the first value dying where the second is made
                assert span[u] == span[v] and (eu == sv or ev == su), (g.node(u), g.node(v))
                shared += 1
    assert shared > 0
    total = sum(plan_memory.nbytes(g, v) for v in values)
    assert g.meta["arena_bytes"] < total


def test_fused_and_unfused_lenet_agree_with_the_interpreter():
    g = lenet("train", 3)
    rng = np.random.default_rng(1)
    feeds = {a.name: init_param(a, rng) for a in g.args_of()}  # PyTorch's initial scales
    feeds["image"] = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    feeds["label"] = np.array([0, 46, 7], np.int32)
    fused = compile_graph(g)(feeds)
    unfused = compile_graph(plan_memory.run(g))(feeds)  # every node its own kernel
    want = interp.run(g, feeds)
    for name in want:
        np.testing.assert_allclose(fused[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(unfused[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_symbolic_graph_is_left_for_code_generation_to_plan():
    g = Graph("sym")
    x = g.add("input", type=TensorType("f32", ("N", 4)), name="x")
    r = g.add("relu", [x], type=TensorType("f32", ("N", 4)))
    g.outputs = [("y", g.add("transpose", [r], {"perm": [1, 0]}, TensorType("f32", (4, "N"))))]
    planned = plan_memory.run(fuse.run(g))
    assert "arena_bytes" not in planned.meta and "arena" not in print_graph(planned)
    concrete = shape_infer.run(planned, {"N": 3})
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 6
    np.testing.assert_array_equal(compile_graph(concrete)(x=x)["y"], np.maximum(x, 0).T)


@st.composite
def random_graph(draw):
    """A random DAG over [6, 20] values: elementwise ops (with broadcast operands), products
    that can anchor epilogues, reductions, transposes; several values are returned."""
    g = Graph("random")
    vals = [arg(g, "x", 6, 20), arg(g, "y", 6, 20), arg(g, "w", 20, 20, kind="param")]
    b = arg(g, "b", 20, kind="param")
    for _ in range(draw(st.integers(4, 14))):
        pick = lambda: vals[draw(st.integers(0, len(vals) - 1))]  # noqa: E731
        a = pick()
        if g.type(a).shape == (20, 20):
            a = node(g, "matmul", vals[0], a)
        op = draw(st.sampled_from(["relu", "neg", "tanh", "add", "mul", "sub", "add_bias", "matmul",
                                   "linear", "rowsum", "transpose2"]))
        if op in ("relu", "neg", "tanh"):
            v = node(g, op, a)
        elif op in ("add", "mul", "sub"):
            other = pick()
            v = node(g, op, a, other if g.type(other).shape == g.type(a).shape else a)
        elif op == "add_bias":
            v = node(g, "add", a, b)
        elif op == "matmul":
            v = node(g, "matmul", a, vals[2])
        elif op == "linear":
            v = node(g, "linear", a, vals[2], b)
        elif op == "rowsum":
            v = node(g, "mul", a, node(g, "sum", a, axis=1, keepdims=True))
        else:
            v = node(g, "transpose", node(g, "relu", node(g, "transpose", a, perm=[1, 0])), perm=[1, 0])
        vals.append(v)
    returned = draw(st.lists(st.integers(3, len(vals) - 1), min_size=1, max_size=4, unique=True))
    g.outputs = [(f"out{i}", vals[i]) for i in sorted(set(returned) | {len(vals) - 1})]
    return g


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_graph())
def test_random_graphs_compute_what_the_interpreter_computes(g):
    feeds = feeds_for(g, seed=2)
    feeds["w"] *= 0.2
    assert_matches_interpreter(g, feeds, atol=1e-4)


def test_crossed_epilogues_of_two_anchors_do_not_make_kernels_depend_on_each_other(tmp_path):
    """A gated layer: `a * sigmoid(b)` may join a's kernel and `b * tanh(a)` b's, but not both,
    or each kernel would need the other's result."""
    src = tmp_path / "glu.od"
    src.write_text("model M():\n    input image: f32[N, 8]\n    a = dense(image, 8)\n    b = dense(image, 8)\n"
                   "    return dense(a * sigmoid(b), 10) + dense(b * tanh(a), 10)\n")
    prog = odc.load(src)
    fuse.groups(prog.lower("train", {"N": 5}))  # raises if the kernels form a cycle
    compiled, reference = prog.compile(seed=1), prog.compile(executor=interp.compile_graph, seed=1)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    y = np.array([0, 3, 9, 1, 2])
    np.testing.assert_allclose(compiled.forward(x), reference.forward(x), rtol=1e-5, atol=1e-6)
    assert compiled.train_step(x, y) == pytest.approx(reference.train_step(x, y), rel=1e-5)
    for k in compiled.params:
        np.testing.assert_allclose(compiled.params[k], reference.params[k], rtol=1e-5, atol=1e-6)
