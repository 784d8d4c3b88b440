"""Fixtures of the code generation tests: graphs of independent op instances compiled at once
(one JIT compile checks many shapes) and compared with the ops' numpy references."""
import numpy as np
import pytest

from planned import compile_graph
from odc.ir import ops
from odc.ir.graph import Graph, TensorType

DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Compiled code goes to a throwaway cache, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ODC_CACHE_DIR", str(tmp_path_factory.mktemp("odc-cache")))
        yield


def build_op_graph(cases) -> tuple[Graph, dict]:
    """One graph holding an instance of each (op, operand arrays, attrs) case; case i reads
    inputs a{i}_{j} and returns o{i}."""
    g = Graph("cases")
    feeds = {}
    for i, (op, arrays, attrs) in enumerate(cases):
        ids = []
        for j, a in enumerate(arrays):
            name = f"a{i}_{j}"
            feeds[name] = a
            ids.append(g.add("input", type=TensorType(DTYPES[a.dtype], a.shape), name=name))
        t = ops.get(op).infer([g.type(x) for x in ids], attrs)
        g.outputs.append((f"o{i}", g.add(op, ids, dict(attrs), t)))
    return g, feeds


def compile_and_compare(cases, rtol=1e-5, atol=1e-5):
    """Compiles all cases in one executable and compares each with `ops.evaluate`."""
    g, feeds = build_op_graph(cases)
    out = compile_graph(g)(feeds)
    for i, (op, arrays, attrs) in enumerate(cases):
        ref = ops.evaluate(op, arrays, dict(attrs))
        got = out[f"o{i}"]
        assert got.shape == ref.shape, (op, attrs, got.shape, ref.shape)
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol,
                                   err_msg=f"{op} {attrs} on {[a.shape for a in arrays]}")


@pytest.fixture(scope="session")
def op_graph():
    return build_op_graph


@pytest.fixture(scope="session")
def check_ops():
    return compile_and_compare
