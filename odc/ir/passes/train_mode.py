"""Training mode: the forward graph as it runs in a training step.

1. Every `dropout(x) {p}` becomes `mul(x, %dropoutK.mask)`, where the mask is a new `input`
   (attribute `dropout=p`) that the runtime draws for each step: each element is 0 with
   probability p and 1/(1-p) otherwise, as in PyTorch (K counts the dropouts in order).
2. Every `batchnorm2d` keeps normalising with the batch's statistics, and gets the running
   statistics as `state` arguments (`<P>.running_mean`, `<P>.running_var`, made as the
   inference pass makes them); their next values become outputs `new.<state>`, after the
   logits: (1 - momentum) * running + momentum * batch statistic, with momentum 0.1 and the
   unbiased batch variance (sum of squared deviations / (n - 1)), as PyTorch's train mode.

The graph is in training form (`done`) when it has no dropout and every batch norm has its
running statistics; autodiff requires that form, so dumps show the masks and the statistics
before any gradient.
"""
from __future__ import annotations

from odc.ir.graph import Graph
from odc.ir.passes import dce, inference
from odc.ir.ops.core import Emit, count

name = "train-mode"
summary = "dropout becomes a product with a mask input; batch norms update their running statistics"


def done(g: Graph) -> bool:
    states = {s.name for s in g.args_of("state")}
    return all(n.op != "dropout" and (n.op != "batchnorm2d" or f"{_prefix(g, n)}.running_mean" in states)
               for n in g.nodes())


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
    for bn in [g.node(i) for i in g.order() if g.node(i).op == "batchnorm2d"]:
        if f"{_prefix(g, bn)}.running_mean" in states:
            continue
        e = Emit(g, bn.span)
        x, axes, dt = bn.args[0], [0, 2, 3], g.type(bn.args[0]).dtype
        mean = e("mean", x, axis=axes)
        xc = e("sub", x, e("reshape", mean, shape=[1, g.type(mean).shape[0], 1, 1]))
        n_minus_1 = e("sub", count(e, g.type(x).shape, axes, dt), e.const(1, dt))
        var = e("div", e("sum", e("mul", xc, xc), axis=axes), n_minus_1)
        for state, batch in zip(inference.running_stats(g, bn), (mean, var)):
            new = e("add", e("mul", state, e.const(1 - inference.MOMENTUM, dt)),
                    e("mul", batch, e.const(inference.MOMENTUM, dt)))
            out.append((f"new.{g.node(state).name}", new))
    return out
