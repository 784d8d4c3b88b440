"""Fusion: group nodes that code generation emits as one kernel (one loop nest).

Two kinds of group:
- an *elementwise* group: elementwise nodes (``relu``, ``add``, ...) of one result shape; the
  kernel computes every member at an index in registers and writes to memory only the
  members used outside the group (or returned). Operands from outside may broadcast.
- an *anchor* group: one op whose kernel computes its result slice by slice along dim 0
  (convolutions, products, pooling and their gradients: `ANCHORS`, from the op catalog) followed by an
  elementwise *epilogue* of the anchor's result shape (bias + ReLU, the ReLU mask of a
  gradient, an optimizer update); the epilogue runs on each slice right after the anchor
  wrote it, while it is still in cache.

Algorithm: every node starts in a group of its own; two groups merge when both have the same
result shape and dtype (an elementwise group's, or its anchor's), at most one has an anchor,
no member would be an ancestor of the anchor (the epilogue runs after it), and the graph of
groups stays acyclic: no path may leave the merged set and come back into it (a search from
the set's outside successors that treats every other group as one node: reaching one member of
a kernel reaches all of them). Two walks propose merges:
1. consumers first, in reverse topological order: an elementwise node whose users are all
   elementwise nodes of one group joins that group. It is then computed where it is used and
   never stored (the ReLU mask of a gradient is recomputed from the stored activation
   instead of being written in the forward pass and read back);
2. producers, in topological order: an elementwise node joins the group of each operand
   (a bias + ReLU joins its convolution, an optimizer update the product giving the
   gradient).
Scalar ``const`` operands are not grouped: kernels inline them as immediates. Alias ops
(``reshape``, ``dropout``) are views of their operand's memory and never run code.

The result is an annotation: every member of a group of two or more nodes gets the attribute
``fuse=K`` (K counts groups in topological order). `groups` reads it back and is what
memory planning and code generation use: the groups in execution order, each with the
members it stores.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from odc.ir import ops
from odc.ir.graph import ARG_OPS, Graph

name = "fuse"
summary = "group elementwise chains, and epilogues into their anchor, as kernels (fuse=K)"

# what the op catalog says of each op's code (`OpDef.codegen`)
ANCHORS = tuple(name for name, d in ops.OPS.items() if d.codegen == "anchor")
ALIASES = tuple(name for name, d in ops.OPS.items() if d.codegen == "alias")  # views; no code


def is_elementwise(g: Graph, nid: int) -> bool:
    """An op computed index by index (``broadcast_to`` too: each result element is an operand
    element), in an element type its scalar formula is generated for."""
    n = g.node(nid)
    d = ops.get(n.op)
    return d.elementwise and n.type.dtype in d.dtypes


def inlined_const(g: Graph, nid: int) -> bool:
    """A scalar const that every user reads as an immediate (no memory, no kernel)."""
    n = g.node(nid)
    return (n.op == "const" and all(is_elementwise(g, u) for u in g.users(nid))
            and nid not in {v for _, v in g.outputs})


def base_of(g: Graph, nid: int) -> int:
    """The node whose memory an alias chain views (the node itself if it is no alias)."""
    while g.node(nid).op in ALIASES:
        nid = g.node(nid).args[0]
    return nid


def run(g: Graph) -> Graph:
    g = g.copy()
    order = g.order()
    position = {nid: i for i, nid in enumerate(order)}
    succ = {nid: tuple(users) for nid, users in g.nx.adjacency()}
    group = {}  # node -> representative of its group
    members: dict[int, list[int]] = {}
    kinds = {}  # representative -> (anchor or None, the group's type), or None (see `kind`)
    for nid in order:
        n = g.node(nid)
        if n.op in ARG_OPS or n.op in ALIASES or n.op == "const":
            continue
        n.attrs.pop("fuse", None)
        group[nid] = nid
        members[nid] = [nid]
        kinds[nid] = kind(g, nid)

    def merge(keep: int, other: int, acyclic: bool = False) -> None:
        """Merges group `other` into group `keep` if that is legal (`acyclic`: the caller knows
        that the merge creates no cycle)."""
        ka, kb = kinds[keep], kinds[other]
        if ka is None or kb is None or ka[1] != kb[1] or (ka[0] is not None and kb[0] is not None):
            return
        merged = set(members[keep]) | set(members[other])
        anchor = ka[0] if ka[0] is not None else kb[0]
        if ((not acyclic and _leaves_and_returns(succ, merged, members[keep], group, members))
                or (anchor is not None and _feeds(g, merged - {anchor}, anchor, position))):
            return
        moved = members.pop(other)
        members[keep].extend(moved)
        for m in moved:
            group[m] = keep
        kinds[keep] = (anchor, ka[1])
        del kinds[other]

    # Walk 1 visits a node before its operands, so its group is still itself alone; all its
    # edges go into the target group, so a path from the merged set back into it would be a
    # path from the target back to the node: a cycle the groups already had. No check needed.
    for nid in reversed(order):  # into the one group that uses the value
        users = g.users(nid)
        if nid in group and is_elementwise(g, nid) and users and all(
                u in group and is_elementwise(g, u) for u in users):
            targets = {group[u] for u in users}
            if len(targets) == 1 and group[nid] not in targets:
                merge(targets.pop(), group[nid], acyclic=True)
    for nid in order:  # into the group of an operand
        if nid in group and is_elementwise(g, nid):
            for a in dict.fromkeys(g.node(nid).args):
                if a in group and group[a] != group[nid]:
                    merge(group[a], group[nid])
    k = 0
    for rep in sorted(members, key=lambda r: min(position[m] for m in members[r])):
        if len(members[rep]) > 1:
            for m in members[rep]:
                g.node(m).attrs["fuse"] = k
            k += 1
    return g


def kind(g: Graph, nid: int):
    """(the node itself if it is an anchor else None, its type) for a node that can be in a
    group of several: an anchor or an elementwise node; None for any other (it stays alone)."""
    n = g.node(nid)
    if n.op in ANCHORS:
        return nid, n.type
    return (None, n.type) if is_elementwise(g, nid) else None


def _feeds(g: Graph, sources: set[int], target: int, position: dict[int, int]) -> bool:
    """True if a path leads from a node of `sources` to `target`: a search backwards from
    target that stops at nodes placed before every source in topological `position`."""
    if not sources:
        return False
    first = min(position[s] for s in sources)
    stack, seen = [target], {target}
    while stack:
        for a in g.nx.predecessors(stack.pop()):
            if a in sources:
                return True
            if a not in seen and position[a] > first:
                seen.add(a)
                stack.append(a)
    return False


def _leaves_and_returns(succ: dict[int, tuple], merged: set[int], upstream: list[int], group: dict[int, int],
                        members: dict[int, list[int]]) -> bool:
    """True if some path leaves `merged` and re-enters it (merging would create a cycle); `succ`
    maps each node to its users. Every other group counts as one node, since its kernel runs all
    its members at once: a path that reaches one member goes on from all of them. `merged` is
    two groups, `upstream` one that has an edge into the other: a path out of the other group
    cannot come back (to it, or to `upstream` before it) without a cycle the groups already
    had, so the search starts from `upstream` only."""
    stack = [s for m in upstream for s in succ[m] if s not in merged]
    seen: set[int] = set()
    while stack:
        u = stack.pop()
        if u in seen:
            continue
        for v in members[group[u]] if u in group else [u]:
            seen.add(v)
            for s in succ[v]:
                if s in merged:
                    return True
                if s not in seen:
                    stack.append(s)
    return False


@dataclass
class Group:
    """One kernel: its members in topological order, its anchor if any, what it stores."""
    nodes: list[int]
    anchor: int | None
    stored: list[int]

    @property
    def epilogue(self) -> list[int]:
        return [m for m in self.nodes if m != self.anchor]


def groups(g: Graph) -> list[Group]:
    """The kernels of `g` in execution order (from the ``fuse`` annotations; unfused nodes
    are groups of one). Alias nodes and inlined consts have no kernel."""
    order = g.order()
    position = {nid: i for i, nid in enumerate(order)}
    key_of: dict[int, object] = {}
    by_key: dict[object, list[int]] = {}
    for nid in order:
        n = g.node(nid)
        if n.op in ARG_OPS or n.op in ALIASES or inlined_const(g, nid):
            continue
        key_of[nid] = ("fuse", n.attrs["fuse"]) if "fuse" in n.attrs else nid
        by_key.setdefault(key_of[nid], []).append(nid)
    quotient = nx.DiGraph()
    quotient.add_nodes_from(by_key)
    for v in key_of:
        for a in g.node(v).args:
            a = base_of(g, a)
            if a in key_of and key_of[a] != key_of[v]:
                quotient.add_edge(key_of[a], key_of[v])
    first = {k: position[ms[0]] for k, ms in by_key.items()}
    outputs = {v for _, v in g.outputs}
    result = []
    for k in nx.lexicographical_topological_sort(quotient, key=first.__getitem__):
        nodes = by_key[k]
        member = set(nodes)
        anchor = next((m for m in nodes if g.node(m).op in ANCHORS), None)
        stored = [m for m in nodes
                  if m == anchor or m in outputs or any(u not in member for u in g.users(m))]
        if stored:  # else dead code
            result.append(Group(nodes, anchor, stored))
    return result
