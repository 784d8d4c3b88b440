"""The numpy reference interpreter: runs any graph node by node with each op's numpy reference.

It is the oracle compiled code is tested against, and an executor for `odc.Program.compile`.
Floating-point values are computed in one precision chosen per run (float32 or float64),
whatever the graph's declared float types, so the same graph serves finite-difference checks in
float64 and comparisons with compiled float32 code. A graph with symbolic sizes is first
specialised to the sizes of the arrays it is fed.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from odc.errors import OdcError
from odc.ir import ops
from odc.ir.dtypes import NP_DTYPES
from odc.ir.graph import ARG_OPS, Graph
from odc.ir.passes import shape_infer


def bindings(g: Graph, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """The sizes of `g`'s symbols in the shapes of the arguments in `feeds`; raises OdcError on
    a mismatch."""
    found: dict[str, int] = {}
    for a in g.args_of():
        if a.name not in feeds:
            continue
        shape = np.shape(feeds[a.name])
        ok = len(shape) == a.type.rank and all(
            found.setdefault(d, n) == n if isinstance(d, str) else d == n
            for d, n in zip(a.type.shape, shape))
        if not ok:
            where = "" if not found else " with " + ", ".join(f"{k}={v}" for k, v in found.items())
            raise OdcError(f"{a.op} '{a.name}' expects {a.type}{where}, "
                           f"got an array of shape [{', '.join(map(str, shape))}]")
    return found


def compile_graph(g: Graph, dtype=np.float32) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """An executor: a function from argument arrays (by name) to output arrays (by name)."""
    return lambda feeds: run(g, feeds, dtype)


def run(g: Graph, feeds: dict[str, np.ndarray], dtype=np.float32) -> dict[str, np.ndarray]:
    missing = [f"{a.op} '{a.name}' of {a.type}" for a in g.args_of() if a.name not in feeds]
    if missing:
        raise OdcError(f"no value given for {', '.join(missing)}")
    g = shape_infer.run(g, bindings(g, feeds))
    order = g.order()
    last_use = {a: i for i, nid in enumerate(order) for a in g.node(nid).args}
    keep = {v for _, v in g.outputs}
    values: dict[int, np.ndarray] = {}
    for i, nid in enumerate(order):
        n = g.node(nid)
        if n.op in ARG_OPS:
            v = np.asarray(feeds[n.name])
        else:
            v = ops.evaluate(n.op, [values[a] for a in n.args], n.attrs)
        values[nid] = np.asarray(v, dtype=dtype if n.type.is_float else NP_DTYPES[n.type.dtype])
        for a in set(n.args):
            if last_use[a] == i and a not in keep:
                del values[a]
    return {name: values[v] for name, v in g.outputs}
