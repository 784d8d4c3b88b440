"""The graph IR.

A `Graph` is one function: a networkx `DiGraph` whose nodes are integer ids, each carrying a
`Node` (op name, ordered operand ids, attributes, result `TensorType`, source span). Edges run
from operand to user and exist for traversal; the operand *order* lives in `Node.args` (an
operand used twice, as in ``x * x``, appears twice there and once as an edge).

Function arguments are nodes with op ``input`` (data fed per call), ``param`` (trainable
parameters) or ``state`` (optimizer state); their `name` is the user-visible name.
`outputs` is an ordered list of ``(name, node id)``.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Union

import networkx as nx

from odc.errors import Span
from odc.ir import dtypes

Dim = Union[int, str]  # a concrete size or a symbol such as "N"

ARG_OPS = ("input", "param", "state")


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return dtypes.TABLE[self.dtype].is_float

    @property
    def is_concrete(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            if not isinstance(d, int):
                raise ValueError(f"{self} has a symbolic size")
            n *= d
        return n

    def with_shape(self, shape: Iterable[Dim]) -> "TensorType":
        return replace(self, shape=tuple(shape))

    def substitute(self, bindings: dict[str, int]) -> "TensorType":
        return self.with_shape(bindings.get(d, d) if isinstance(d, str) else d for d in self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


@dataclass
class Node:
    id: int
    op: str
    args: tuple[int, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    type: TensorType | None = None
    span: Span | None = None
    name: str | None = None


class Graph:
    def __init__(self, name: str):
        self.name = name
        self.nx = nx.DiGraph()
        self.outputs: list[tuple[str, int]] = []
        self.meta: dict[str, Any] = {}  # e.g. the train recipe, the source file
        self._next_id = 0
        self._order: list[int] | None = None  # `order`, until the next change of nodes or edges
        self._args: dict[str | None, list[Node]] = {}  # `args_of`, until the next change of nodes

    # -- building ---------------------------------------------------------------------------
    def add(self, op: str, args: Iterable[int] = (), attrs: dict | None = None,
            type: TensorType | None = None, span: Span | None = None, name: str | None = None) -> int:
        nid = self._next_id
        self._next_id += 1
        args = tuple(args)
        for a in args:
            if a not in self.nx:
                raise KeyError(f"operand %{a} of new {op} node is not in the graph")
        self.nx.add_node(nid, node=Node(nid, op, args, dict(attrs or {}), type, span, name))
        for a in args:
            self.nx.add_edge(a, nid)
        self._order, self._args = None, {}
        return nid

    def set_args(self, nid: int, args: Iterable[int]) -> None:
        node = self.node(nid)
        for a in set(node.args):
            self.nx.remove_edge(a, nid)
        node.args = tuple(args)
        for a in node.args:
            self.nx.add_edge(a, nid)
        self._order = None

    def replace_uses(self, old: int, new: int) -> None:
        """Make every user of `old` (and every output) use `new` instead."""
        for user in list(self.nx.successors(old)):
            self.set_args(user, (new if a == old else a for a in self.node(user).args))
        self.outputs = [(n, new if v == old else v) for n, v in self.outputs]

    def remove(self, nid: int) -> None:
        if any(True for _ in self.nx.successors(nid)):
            raise ValueError(f"node %{nid} still has users")
        self.nx.remove_node(nid)
        self._order, self._args = None, {}

    def remove_all(self, nids: Iterable[int]) -> None:
        """Removes the nodes `nids` and their edges (users included: remove them all)."""
        self.nx.remove_nodes_from(nids)
        self._order, self._args = None, {}

    # -- queries ----------------------------------------------------------------------------
    def node(self, nid: int) -> Node:
        return self.nx.nodes[nid]["node"]

    def type(self, nid: int) -> TensorType:
        return self.node(nid).type

    def users(self, nid: int) -> list[int]:
        return sorted(self.nx.successors(nid))

    def __contains__(self, nid: int) -> bool:
        return nid in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def order(self) -> list[int]:
        """Node ids in a deterministic topological order (ties broken by id); kept until the
        graph changes (nodes and edges change only through the methods above)."""
        if self._order is None:  # Kahn's algorithm, the ready nodes in a heap (networkx's
            # lexicographical_topological_sort gives the same order three times slower)
            waiting = {v: len(p) for v, p in self.nx.pred.items()}
            ready = [v for v, k in waiting.items() if k == 0]
            heapq.heapify(ready)
            order = []
            while ready:
                v = heapq.heappop(ready)
                order.append(v)
                for u in self.nx.succ[v]:
                    waiting[u] -= 1
                    if not waiting[u]:
                        heapq.heappush(ready, u)
            if len(order) != len(waiting):
                raise nx.NetworkXUnfeasible("the graph has a cycle")
            self._order = order
        return list(self._order)

    def nodes(self) -> list[Node]:
        return [self.node(i) for i in self.order()]

    def args_of(self, kind: str | None = None) -> list[Node]:
        """Function arguments (``input``/``param``/``state`` nodes) in creation order; kept until
        nodes are added or removed (a training loop asks for them at every step)."""
        if kind not in self._args:
            kinds = ARG_OPS if kind is None else (kind,)
            self._args[kind] = [n for _, n in sorted(self.nx.nodes(data="node")) if n.op in kinds]
        return list(self._args[kind])

    def inputs(self) -> list[Node]:
        return self.args_of("input")

    def params(self) -> list[Node]:
        return self.args_of("param")

    def output(self, name: str) -> int:
        for n, v in self.outputs:
            if n == name:
                return v
        raise KeyError(name)

    def copy(self) -> "Graph":
        """A copy whose nodes (and their attributes) can change without touching this graph.
        Every pass starts with one, so it fills the DiGraph's adjacency dicts directly: through
        add_nodes_from and add_edges_from a copy of MobileNet's training graph took 9 ms, a
        third of it networkx's bookkeeping (edges carry no data: one empty dict per edge,
        shared by the successor and predecessor maps, as networkx keeps them)."""
        g = Graph(self.name)
        g.nx = h = nx.DiGraph()
        h._node = {i: {"node": Node(n.id, n.op, n.args, dict(n.attrs), n.type, n.span, n.name)}
                   for i, n in self.nx.nodes(data="node")}
        h._succ = h._adj = {u: {v: {} for v in users} for u, users in self.nx.succ.items()}
        h._pred = {v: {u: h._succ[u][v] for u in operands} for v, operands in self.nx.pred.items()}
        g.outputs = list(self.outputs)
        g.meta = dict(self.meta)
        g._next_id = self._next_id
        g._order = self._order
        return g
