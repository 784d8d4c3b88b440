"""Inference mode, for the graph behind `Model.forward`.

An op with running statistics (catalog trait `training="state"`: `batchnorm1d(x, gamma, beta)`,
`batchnorm2d(...)`) normalises with the batch's statistics while training; at inference it
uses the running statistics the training steps kept, as PyTorch's eval mode does. Each such op
whose parameters are `<P>.weight` and `<P>.bias` becomes

    (x - rm) / sqrt(rv + eps) * gamma + beta

in elementwise ops, where eps is the node's (1e-5 unless it says otherwise), rm and rv are the
state arguments `<P>.running_mean` (zeros at the start) and `<P>.running_var` (ones), and rm,
rv, gamma and beta are reshaped to lie along the op's channel axis (the catalog's
`odc.ir.ops.norm.running(op)`): [1, C, 1, 1] for batchnorm2d, [1, F] for batchnorm1d. The
train-mode pass creates the same states in the training step and outputs their next values
(the node's momentum, the unbiased batch variance, as PyTorch). `layernorm` is the same in
training and evaluation, and `dropout` is the identity here: neither changes.
"""
from __future__ import annotations

from odc.ir.graph import Graph, Node
from odc.ir.passes import dce
from odc.ir.ops import Emit, get
from odc.ir.ops.norm import eps, running

name = "inference"
summary = "batch norms normalise with their running statistics, as in evaluation"


def running_stats(g: Graph, bn: Node) -> tuple[int, int]:
    """New state arguments for `bn`'s running mean and variance."""
    prefix = g.node(bn.args[1]).name.rsplit(".", 1)[0]
    return tuple(g.add("state", attrs={"init": init}, type=g.type(bn.args[1]), span=bn.span,
                       name=f"{prefix}.{stat}")
                 for stat, init in (("running_mean", "zeros"), ("running_var", "ones")))


def run(g: Graph) -> Graph:
    g = g.copy()
    for nid in [i for i in g.order() if get(g.node(i).op).training == "state"]:
        bn = g.node(nid)
        x, gamma, beta = bn.args
        e = Emit(g, bn.span)
        c = running(bn.op).per_channel(len(g.type(x).shape), g.type(gamma).shape[0])
        mean, var = (e("reshape", s, shape=c) for s in running_stats(g, bn))
        std = e("sqrt", e("add", var, e.const(eps(bn.attrs), g.type(x).dtype)))
        y = e("div", e("sub", x, mean), std)
        g.replace_uses(nid, e("add", e("mul", y, e("reshape", gamma, shape=c)), e("reshape", beta, shape=c)))
        g.remove(nid)
    return dce.run(g)
