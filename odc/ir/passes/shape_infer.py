"""Shape and dtype inference and checking.

Walks the graph in topological order and recomputes every node's result type from its
operands' types with the op's type rule (`odc.ir.ops`). Argument nodes keep their declared
types, with symbols replaced by `bindings` when given: that is how a graph written for a
symbolic batch `N` is specialised to a concrete batch before code generation. A rule that
rejects its operands produces a diagnostic at the node's source span; nodes downstream of a
failed node are skipped, so each independent error is reported once, and all of them are
raised together as one `CompileError`.

A node that already has a type (from the front end, or an annotation) must agree with the
recomputed one modulo the bindings; a disagreement is an internal error, not a user error.
"""
from __future__ import annotations

from odc.errors import CompileError, Diagnostic, OdcError
from odc.ir import ops
from odc.ir.graph import ARG_OPS, Graph

name = "shape-infer"
summary = "recompute and check every type by the type rules; bind size symbols (shape-infer{N=32})"
options = {"*": "a size symbol and the size it stands for, e.g. N=32"}


def run(g: Graph, bindings: dict[str, int] | None = None, **sizes: int) -> Graph:
    bindings = {**(bindings or {}), **sizes}
    for sym, size in bindings.items():
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 1):
            raise OdcError(f"shape-infer: the size of {sym} must be a positive integer, got {size!r}")
    g = g.copy()
    failed: set[int] = set()
    diags: list[Diagnostic] = []
    for nid in g.order():
        n = g.node(nid)
        if n.op in ARG_OPS:
            n.type = n.type.substitute(bindings)
            continue
        if any(a in failed for a in n.args):
            failed.add(nid)
            continue
        attrs = {k: ([bindings.get(d, d) if isinstance(d, str) else d for d in v]
                     if k == "shape" else v) for k, v in n.attrs.items()}
        try:
            t = ops.get(n.op).infer([g.type(a) for a in n.args], attrs)
        except ops.ShapeError as e:
            failed.add(nid)
            diags.append(Diagnostic(e.message, n.span, e.hint))
            continue
        n.attrs = attrs
        if n.type is not None and n.type.substitute(bindings) != t:
            raise AssertionError(f"type of %{nid} ({n.op}) was {n.type}, infers to {t}")
        n.type = t
    if diags:
        raise CompileError(diags)
    return g
