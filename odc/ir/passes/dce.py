"""Dead-code elimination.

A node is live if an output depends on it, or if it is a function argument (arguments are the
function's signature and are never removed). Liveness is the set of ancestors of the outputs in
the DiGraph, found by one backward search from all of them; everything else is deleted.
"""
from __future__ import annotations

from odc.ir.graph import ARG_OPS, Graph

name = "dce"
summary = "remove the nodes that no output needs (arguments stay)"


def run(g: Graph) -> Graph:
    g = g.copy()
    live = {v for _, v in g.outputs}
    stack = list(live)
    while stack:
        for a in g.nx.predecessors(stack.pop()):
            if a not in live:
                live.add(a)
                stack.append(a)
    dead = [i for i in g.nx.nodes if i not in live and g.node(i).op not in ARG_OPS]
    g.remove_all(dead)
    return g
