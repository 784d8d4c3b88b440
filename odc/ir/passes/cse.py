"""Common-subexpression elimination: one node for each distinct computation.

Every op of the catalog is a pure function of its operands and attributes (randomness comes in
as inputs: dropout masks, augmentation draws), so two nodes with the same op, the same operands
and the same attributes compute the same value. Walking the graph in topological order, each
node gets a key (op, operands, attributes, type), operands already replaced by their
representatives; a node whose key was seen before has its uses (outputs included) moved to the
first node with that key and is removed. One walk suffices: by the time a node is visited its
operands are final. Function arguments are never merged (each is its own value).

Passes that build parts of a graph independently leave such duplicates: the train-mode pass and
the gradient of a batch norm both take `batchnorm_stats` of the same input, and the gradients of
several users of one value repeat its scalar constants and reshapes.
"""
from __future__ import annotations

from odc.ir.graph import ARG_OPS, Graph

name = "cse"
summary = "merge nodes that compute the same op of the same operands and attributes"


def run(g: Graph) -> Graph:
    g = g.copy()
    seen: dict[tuple, int] = {}
    for nid in g.order():
        n = g.node(nid)
        if n.op in ARG_OPS:
            continue
        key = (n.op, n.args, repr(sorted(n.attrs.items())), n.type)
        first = seen.setdefault(key, nid)
        if first != nid:
            g.replace_uses(nid, first)
            g.remove(nid)
    return g
