"""Training mode: the forward graph as it runs in a training step.

1. Every `dropout(x) {p}` becomes `mul(x, %dropoutK.mask)`, where the mask is a new `input`
   (attribute `dropout=p`) that the runtime draws for each step: each element is 0 with
   probability p and 1/(1-p) otherwise, as in PyTorch (K counts the dropouts in order).
2. Every op with running statistics (catalog trait `training="state"`: `batchnorm1d`,
   `batchnorm2d`) becomes its training form `batchnorm_train(x, weight, bias, stats)`, which
   normalises with the batch's statistics `stats = batchnorm_stats(x)` (see
   `odc.ir.ops.norm`), and gets the running statistics as `state` arguments (`<P>.running_mean`, `<P>.running_var`, made as the
   inference pass makes them); their next values become outputs `new.<state>`, after the
   logits: (1 - momentum) * running + momentum * batch statistic, with the node's momentum
   (0.1 unless it says otherwise) and the unbiased batch variance (sum of squared deviations
   / (n - 1)), as PyTorch's train mode. The statistics are per channel over the other axes,
   as the catalog's `odc.ir.ops.norm.running(op)` says (channel axis 1: [N, C, H, W] over
   N, H, W; [N, F] over N), from the same `stats` (mean and biased variance; the unbiased
   variance is n / (n - 1) times the biased one).

The graph is in training form (`done`) when it has neither dropout nor an op with running
statistics; autodiff requires that form, so dumps show the masks and the statistics before any
gradient.
"""
from __future__ import annotations

from odc.ir.graph import Graph
from odc.ir.passes import dce, inference
from odc.ir.ops import get
from odc.ir.ops.core import Emit, count
from odc.ir.ops.norm import momentum, row, running

name = "train-mode"
summary = "dropout becomes a product with a mask input; batch norms normalise with batchnorm_stats and update running statistics"


def done(g: Graph) -> bool:
    return all(n.op != "dropout" and not _keeps_state(n) for n in g.nodes())


def _keeps_state(n) -> bool:
    return get(n.op).training == "state"


def run(g: Graph) -> Graph:
    g = g.copy()
    _dropout_masks(g)
    running = _running_stats(g)  # (it rewrites g.outputs: the batch norms' users)
    g.outputs = g.outputs + running
    return dce.run(g)


def _dropout_masks(g: Graph) -> None:
    for k, nid in enumerate([i for i in g.order() if g.node(i).op == "dropout"], start=1):
        n = g.node(nid)
        mask = g.add("input", attrs={"dropout": n.attrs.get("p", 0.5)}, type=n.type, span=n.span,
                     name=f"dropout{k}.mask")
        g.replace_uses(nid, g.add("mul", (n.args[0], mask), type=n.type, span=n.span))
        g.remove(nid)


def _running_stats(g: Graph) -> list[tuple[str, int]]:
    out = []
    for bn in [g.node(i) for i in g.order() if _keeps_state(g.node(i))]:
        e = Emit(g, bn.span)
        x, dt, lay = bn.args[0], g.type(bn.args[0]).dtype, running(bn.op)
        stats = e("batchnorm_stats", x)
        n = count(e, g.type(x).shape, lay.axes(g.type(x).rank), dt)
        mean, var = row(e, stats, 0), e("div", e("mul", row(e, stats, 1), n), e("sub", n, e.const(1, dt)))
        m = momentum(bn.attrs)
        for state, batch in zip(inference.running_stats(g, bn), (mean, var)):
            new = e("add", e("mul", state, e.const(1 - m, dt)), e("mul", batch, e.const(m, dt)))
            out.append((f"new.{g.node(state).name}", new))
        g.replace_uses(bn.id, e("batchnorm_train", *bn.args, stats, **{k: v for k, v in bn.attrs.items() if k == "eps"}))
        g.remove(bn.id)
    return out
