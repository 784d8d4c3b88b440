"""The compiled kernels of the image input's ops (warp, from_u8, per_channel) against their numpy
references (`odc.ir.ops.augment`), on sizes that are not multiples of the vector width, u8 and
f32 images, one to three maps per warp: rotations, flips, integer shifts and arbitrary affine
maps (scaled, sheared, far outside the image)."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planned import compile_graph
from odc.ir import ops
from odc.ir.graph import Graph, TensorType

DTYPE = {np.dtype(np.uint8): "u8", np.dtype(np.float32): "f32"}
EDGES = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33]
side = st.one_of(st.integers(1, 20), st.sampled_from(EDGES))


def graph(cases) -> tuple[Graph, dict]:
    """One graph holding each (op, operand arrays, attrs) case; case i returns o{i}."""
    g, feeds = Graph("cases"), {}
    for i, (op, arrays, attrs) in enumerate(cases):
        ids = []
        for j, a in enumerate(arrays):
            feeds[f"a{i}_{j}"] = a
            ids.append(g.add("input", type=TensorType(DTYPE[a.dtype], a.shape), name=f"a{i}_{j}"))
        g.outputs.append((f"o{i}", g.add(op, ids, dict(attrs), ops.get(op).infer([g.type(x) for x in ids], attrs))))
    return g, feeds


def compare(cases):
    g, feeds = graph(cases)
    out = compile_graph(g)(feeds)
    for i, (op, arrays, attrs) in enumerate(cases):
        np.testing.assert_array_equal(out[f"o{i}"], ops.evaluate(op, arrays, dict(attrs)),
                                      err_msg=f"{op} on {[a.shape for a in arrays]}")


def random_map(rng, kind: str, n: int, h: int, w: int) -> np.ndarray:
    if kind == "rotate":
        t = rng.uniform(-np.pi, np.pi, n)
        cx, cy, c, s = (w - 1) / 2, (h - 1) / 2, np.cos(t), np.sin(t)
        rows = [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy]
    elif kind == "flip":
        fu, fv = rng.random(n) < 0.5, rng.random(n) < 0.5
        rows = [np.where(fu, -1, 1), 0 * fu, np.where(fu, w - 1, 0), 0 * fv, np.where(fv, -1, 1), np.where(fv, h - 1, 0)]
    elif kind == "shift":
        rows = [1, 0, rng.integers(-w, w + 1, n), 0, 1, rng.integers(-h, h + 1, n)]
    else:  # any affine map, ties included (halves), positions far outside the image
        rows = [rng.choice([-1.5, -0.5, 0.5, 1, 2], n), rng.uniform(-1, 1, n), rng.uniform(-2 * w, 2 * w, n),
                rng.uniform(-1, 1, n), rng.choice([-1, 0.5, 1.5], n), rng.choice([-0.5, 0.5, h / 2], n)]
    return np.stack([np.broadcast_to(np.asarray(r, np.float64), (n,)) for r in rows], 1).reshape(n, 2, 3).astype(np.float32)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 4), side, side, st.booleans(),
                          st.lists(st.sampled_from(["rotate", "flip", "shift", "affine"]), min_size=1, max_size=3)),
                min_size=1, max_size=4),
       st.integers(0, 2**31))
def test_warp_equals_its_reference(cases, seed):
    rng, built = np.random.default_rng(seed), []
    for n, c, h, w, u8, kinds in cases:
        x = (rng.integers(0, 256, (n, c, h, w), dtype=np.uint8) if u8
             else rng.standard_normal((n, c, h, w)).astype(np.float32))
        built.append(("warp", [x, *[random_map(rng, k, n, h, w) for k in kinds]], {}))
    compare(built)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(st.lists(st.lists(side, min_size=1, max_size=4), min_size=1, max_size=3), st.integers(0, 2**31))
def test_from_u8_equals_its_reference(shapes, seed):
    rng = np.random.default_rng(seed)
    compare([("from_u8", [rng.integers(0, 256, s, dtype=np.uint8)], {}) for s in shapes])


def test_from_u8_covers_every_byte():
    compare([("from_u8", [np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)], {})])


def test_per_channel_holds_its_values():
    compare([("per_channel", [], {"values": [0.5, -1.25, 3.0]}), ("per_channel", [], {"values": [2.0]})])
