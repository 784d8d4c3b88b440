"""The graph IR as Graphviz `dot` text (`odc dump-ir --format dot`): one box per node with its
op, attributes and type, arguments as ellipses, outputs as plain labels, and edges from operand
to user, labelled with the operand's position where an op has several."""
from __future__ import annotations

from odc.ir.graph import ARG_OPS, Graph
from odc.ir.printer import format_attrs


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(g: Graph) -> str:
    lines = [f"digraph {_quote(g.name)} {{", "  node [shape=box, fontname=monospace];"]
    for nid in g.order():
        n = g.node(nid)
        if n.op in ARG_OPS:
            label, shape = f"{n.op} %{n.name}: {n.type}", ", shape=ellipse"
        else:
            label, shape = f"{n.op}{format_attrs(n.attrs)}\n{n.type}", ""
        lines.append(f"  n{nid} [label={_quote(label)}{shape}];")
        for i, a in enumerate(n.args):
            lines.append(f"  n{a} -> n{nid}" + (f" [label={i}];" if len(n.args) > 1 else ";"))
    for i, (name, v) in enumerate(g.outputs):
        lines.append(f"  out{i} [label={_quote(name)}, shape=plaintext];")
        lines.append(f"  n{v} -> out{i};")
    lines.append("}")
    return "\n".join(lines) + "\n"
