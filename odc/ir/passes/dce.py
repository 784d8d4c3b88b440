"""Dead-code elimination.

A node is live if an output depends on it, or if it is a function argument (arguments are the
function's signature and are never removed). Liveness is the set of ancestors of the outputs in
the DiGraph; everything else is deleted.
"""
from __future__ import annotations

import networkx as nx

from odc.ir.graph import ARG_OPS, Graph

name = "dce"
summary = "remove the nodes that no output needs (arguments stay)"


def run(g: Graph) -> Graph:
    g = g.copy()
    live = set()
    for _, v in g.outputs:
        live.add(v)
        live |= nx.ancestors(g.nx, v)
    dead = [i for i in g.nx.nodes if i not in live and g.node(i).op not in ARG_OPS]
    g.nx.remove_nodes_from(dead)
    return g
