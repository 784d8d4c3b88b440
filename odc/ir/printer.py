"""The textual form of the IR, read back by `odc.ir.textparse`.

    func @LeNet5(
        input %image: f32[N, 1, 28, 28]  loc("models/lenet5.od":4:5),
        param %conv2d1.weight: f32[6, 1, 5, 5] {init=kaiming}  loc("models/lenet5.od":5:14),
        ...
    ) {
      %0 = conv2d(%image, %conv2d1.weight, %conv2d1.bias) {pad=2, stride=1} : f32[N, 6, 28, 28]  loc("models/lenet5.od":5:14)
      ...
      return %9 as logits
    }

Arguments print by name; other values are numbered in print order, so the text depends only on
the graph's structure and not on internal node ids. Quoted strings (source paths, string
attributes that are not plain names) are JSON strings, so any path prints and parses back.
Floats print as Python's `repr` (``inf``, ``-inf`` and ``nan`` included), and a string that
would read as a number, a boolean or such a float is quoted.

The entries of ``graph.meta`` that belong to the IR (`FUNC_ATTRS`: what memory planning
leaves for code generation) print as function attributes after the arguments,
``) attributes {arena_bytes=4096} {``; the rest of the meta (the train recipe, the model's
hyper-parameters) belongs to the source program and is not printed.
"""
from __future__ import annotations

import json
import re

from odc.ir.graph import ARG_OPS, Graph, Node

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*$")
_WORDS = ("true", "false", "inf", "nan")  # names the parser reads as something else than a string
FUNC_ATTRS = ("arena_bytes",)


def format_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return v if _IDENT.match(v) and v not in _WORDS else json.dumps(v, ensure_ascii=False)
    return str(v)


def format_attrs(attrs: dict) -> str:
    if not attrs:
        return ""
    return " {" + ", ".join(f"{k}={format_value(attrs[k])}" for k in sorted(attrs)) + "}"


def _loc(node: Node) -> str:
    s = node.span
    return f"  loc({json.dumps(s.path, ensure_ascii=False)}:{s.line}:{s.col})" if s is not None else ""


def value_names(g: Graph) -> dict[int, str]:
    """The name each node prints as: ``%name`` for an argument, ``%0``, ``%1``, ... for the
    other nodes in print order (messages about a graph can name values as its text does)."""
    names = {a.id: f"%{a.name}" for a in g.args_of()}
    counter = 0
    for nid in g.order():
        if nid not in names:
            names[nid] = f"%{counter}"
            counter += 1
    return names


def print_graph(g: Graph) -> str:
    names = value_names(g)
    args = g.args_of()
    lines = [f"func @{g.name}("]
    for a in args:
        lines.append(f"    {a.op} %{a.name}: {a.type}{format_attrs(a.attrs)}{_loc(a)},")
    func_attrs = {k: g.meta[k] for k in FUNC_ATTRS if k in g.meta}
    lines.append(f") attributes{format_attrs(func_attrs)} {{" if func_attrs else ") {")
    for nid in g.order():
        n = g.node(nid)
        if n.op in ARG_OPS:
            continue
        operands = ", ".join(names[a] for a in n.args)
        ty = f" : {n.type}" if n.type is not None else ""
        lines.append(f"  {names[nid]} = {n.op}({operands}){format_attrs(n.attrs)}{ty}{_loc(n)}")
    if g.outputs:
        lines.append("  return " + ", ".join(f"{names[v]} as {format_value(k)}" for k, v in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
