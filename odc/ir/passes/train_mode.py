"""Training mode: the forward graph as it runs in a training step.

1. Every `dropout(x) {p}` becomes `mul(x, %dropoutK.mask)`, where the mask is a new `input`
   (attribute `dropout=p`) that the runtime draws for each step: each element is 0 with
   probability p and 1/(1-p) otherwise, as in PyTorch (K counts the dropouts in order).
2. Every op with running statistics (catalog trait `training="state"`: `batchnorm1d`,
   `batchnorm2d`) keeps normalising with the batch's statistics, and gets the running
   statistics as `state` arguments (`<P>.running_mean`, `<P>.running_var`, made as the
   inference pass makes them); their next values become outputs `new.<state>`, after the
   logits: (1 - momentum) * running + momentum * batch statistic, with the node's momentum
   (0.1 unless it says otherwise) and the unbiased batch variance (sum of squared deviations
   / (n - 1)), as PyTorch's train mode. The statistics are per channel over the other axes,
   as the catalog's `odc.ir.ops.norm.running(op)` says (channel axis 1: [N, C, H, W] over
   N, H, W; [N, F] over N).

The graph is in training form (`done`) when it has no dropout and every batch norm has its
running statistics; autodiff requires that form, so dumps show the masks and the statistics
before any gradient.
"""
from __future__ import annotations

from odc.ir.graph import Graph
from odc.ir.passes import dce, inference
from odc.ir.ops import get
from odc.ir.ops.core import Emit, count
from odc.ir.ops.norm import momentum, running

name = "train-mode"
summary = "dropout becomes a product with a mask input; batch norms update their running statistics"


def done(g: Graph) -> bool:
    states = {s.name for s in g.args_of("state")}
    return all(n.op != "dropout" and (not _keeps_state(n) or f"{_prefix(g, n)}.running_mean" in states)
               for n in g.nodes())


def _keeps_state(n) -> bool:
    return get(n.op).training == "state"


def run(g: Graph) -> Graph:
    g = g.copy()
    _dropout_masks(g)
    g.outputs += _running_stats(g)
    return dce.run(g)


def _prefix(g: Graph, bn) -> str:
    return g.node(bn.args[1]).name.rsplit(".", 1)[0]


def _dropout_masks(g: Graph) -> None:
    for k, nid in enumerate([i for i in g.order() if g.node(i).op == "dropout"], start=1):
        n = g.node(nid)
        mask = g.add("input", attrs={"dropout": n.attrs.get("p", 0.5)}, type=n.type, span=n.span,
                     name=f"dropout{k}.mask")
        g.replace_uses(nid, g.add("mul", (n.args[0], mask), type=n.type, span=n.span))
        g.remove(nid)


def _running_stats(g: Graph) -> list[tuple[str, int]]:
    out = []
    states = {s.name for s in g.args_of("state")}
    for bn in [g.node(i) for i in g.order() if _keeps_state(g.node(i))]:
        if f"{_prefix(g, bn)}.running_mean" in states:
            continue
        e = Emit(g, bn.span)
        x, dt, lay = bn.args[0], g.type(bn.args[0]).dtype, running(bn.op)
        shape = g.type(x).shape
        axes, m = lay.axes(len(shape)), momentum(bn.attrs)
        mean = e("mean", x, axis=axes)
        xc = e("sub", x, e("reshape", mean, shape=lay.per_channel(len(shape), g.type(mean).shape[0])))
        n_minus_1 = e("sub", count(e, shape, axes, dt), e.const(1, dt))
        var = e("div", e("sum", e("mul", xc, xc), axis=axes), n_minus_1)
        for state, batch in zip(inference.running_stats(g, bn), (mean, var)):
            new = e("add", e("mul", state, e.const(1 - m, dt)), e("mul", batch, e.const(m, dt)))
            out.append((f"new.{g.node(state).name}", new))
    return out
