"""The IR verifier: structural invariants every pass must preserve.

Checks that the graph is acyclic; every op is registered; every node's operands exist and its
edges match its operand list; every node has a type and that type is what the op's type rule
gives for its operands (after any symbol bindings), the rule itself not failing on them (a
missing attribute, an operand too few: IR written by hand); argument names are unique; outputs
name existing nodes. Values are named as the printed IR names them. Violations are compiler
bugs (or malformed text IR), reported as `IRVerificationError`.
"""
from __future__ import annotations

import networkx as nx

from odc.ir import ops
from odc.ir.graph import ARG_OPS, Graph
from odc.ir.printer import format_attrs, value_names


class IRVerificationError(Exception):
    pass


def verify(g: Graph) -> Graph:
    problems = []
    try:
        g.order()  # kept by the graph: free when a pass has asked for it
        shown = value_names(g)
    except nx.NetworkXUnfeasible:
        problems.append("the graph has a cycle")
        shown = {}
    names = set()
    for nid in g.nx.nodes:
        n = g.node(nid)
        where = f"{shown.get(nid, f'node {nid}')} ({n.op})"
        if n.id != nid:
            problems.append(f"{where}: node id {n.id} differs from its key")
        if n.op not in ops.OPS:
            problems.append(f"{where}: unknown op")
            continue
        if n.type is None:
            problems.append(f"{where}: no type")
        missing = [a for a in n.args if a not in g.nx]
        if missing:
            problems.append(f"{where}: operands {missing} are not in the graph")
            continue
        if set(g.nx.predecessors(nid)) != set(n.args):
            problems.append(f"{where}: edges {sorted(g.nx.predecessors(nid))} differ from operands {list(n.args)}")
        if n.op in ARG_OPS:
            if not n.name or n.name in names:
                problems.append(f"{where}: argument name {n.name!r} missing or repeated")
            names.add(n.name)
        elif n.type is not None and all(g.type(a) is not None for a in n.args):
            try:
                t = ops.get(n.op).infer([g.type(a) for a in n.args], n.attrs)
                if t != n.type:
                    problems.append(f"{where}: type {n.type} but its operands give {t}")
            except ops.ShapeError as e:
                problems.append(f"{where}: {e.message}")
            except KeyError as e:
                problems.append(f"{where}: no attribute {e.args[0]}")
            except Exception as e:  # the rule met operands or attributes that its op never has
                problems.append(f"{where}: {n.op} does not take {len(n.args)} operand{'s' * (len(n.args) != 1)}"
                                f" with {format_attrs(n.attrs).strip() or 'no attributes'} ({type(e).__name__}: {e})")
    for name, v in g.outputs:
        if v not in g.nx:
            problems.append(f"output {name} names a missing node")
    if problems:
        raise IRVerificationError(f"IR of @{g.name} is malformed:\n  " + "\n  ".join(problems))
    return g
