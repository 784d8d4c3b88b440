"""Inference mode, for the graph behind `Model.forward`.

`batchnorm2d(x, gamma, beta)` normalises with the batch's statistics while training; at
inference it uses the running statistics the training steps kept, as PyTorch's eval mode does.
Each `batchnorm2d` whose parameters are `<P>.weight` and `<P>.bias` becomes

    (x - rm) / sqrt(rv + eps) * gamma + beta

in elementwise ops, where rm and rv are the state arguments `<P>.running_mean` (zeros at the
start) and `<P>.running_var` (ones), reshaped to [1, C, 1, 1]. The autodiff pass creates the
same states in the training step and outputs their next values (momentum 0.1, the unbiased
batch variance, as PyTorch). `dropout` needs no change: it is the identity here.
"""
from __future__ import annotations

from odc.ir.graph import Graph, Node
from odc.ir.passes import dce
from odc.ir.ops import Emit

name = "inference"
summary = "batch norms normalise with their running statistics, as in evaluation"


MOMENTUM = 0.1  # PyTorch's: running = (1 - MOMENTUM) * running + MOMENTUM * batch statistic


def running_stats(g: Graph, bn: Node) -> tuple[int, int]:
    """New state arguments for `bn`'s running mean and variance."""
    prefix = g.node(bn.args[1]).name.rsplit(".", 1)[0]
    return tuple(g.add("state", attrs={"init": init}, type=g.type(bn.args[1]), span=bn.span,
                       name=f"{prefix}.{stat}")
                 for stat, init in (("running_mean", "zeros"), ("running_var", "ones")))


def run(g: Graph) -> Graph:
    g = g.copy()
    for nid in [i for i in g.order() if g.node(i).op == "batchnorm2d"]:
        bn = g.node(nid)
        x, gamma, beta = bn.args
        e = Emit(g, bn.span)
        c4 = [1, g.type(gamma).shape[0], 1, 1]
        mean, var = (e("reshape", s, shape=c4) for s in running_stats(g, bn))
        std = e("sqrt", e("add", var, e.const(bn.attrs.get("eps", 1e-5), g.type(x).dtype)))
        y = e("div", e("sub", x, mean), std)
        g.replace_uses(nid, e("add", e("mul", y, e("reshape", gamma, shape=c4)), e("reshape", beta, shape=c4)))
        g.remove(nid)
    return dce.run(g)
