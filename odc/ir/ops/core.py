"""The op catalog's machinery: what an op is (`OpDef`), what a built-in of the language is
(`Builtin`, its arguments `Arg`), the two tables, and the helpers the entries share: type-rule
checks, and `Emit`, with which derivative rules and passes add typed nodes to a graph.

An `OpDef` is everything odc knows about one IR op:
- `infer(types, attrs) -> TensorType`: the type rule; it raises `ShapeError` with a message in
  the user's terms (the caller attaches the source span);
- `ref(*arrays, attrs) -> array`: the numpy reference, the oracle of the interpreter and of every
  compiled kernel;
- `vjp(e, node, y, dy) -> (gradient id or None, ...)`: the reverse-mode rule, one entry per
  operand, built with ordinary ops through the `Emit` `e`;
- traits: `codegen`, how code generation treats it ("elementwise": computed index by index from
  `scalar`, fusable; "anchor": its own kernel, which takes an elementwise epilogue; "kernel":
  its own kernel; "alias": a view of its first operand, no code; "arg": a function argument;
  "const": a scalar that kernels inline; "rewritten": no code, a pass replaces it in every
  pipeline, as train-mode and inference replace batch norms),
  `scalar(s, *operands)` (an elementwise op's value at one index, from the scalar ops of `s`,
  which code generation provides; `s.attrs` are the node's attributes) and `cost` (cycles per element), `dtypes` (the
  element types code generation produces it in), `training` ("only": the identity outside
  training, like dropout; "state": keeps running state, like batch norm).

A `Builtin` is a call of the language: its arguments (kind, default, range) and `build(b, a)`,
which turns the checked argument values `a` into nodes through the front end's builder `b`
(`b.node`, `b.layer` for ops that create parameters, `b.type`, `b.features`, `b.fail`).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Callable

import numpy as np

from odc.errors import CompileError, Diagnostic
import math

from odc.ir.graph import Dim, Graph, Node, TensorType


class ShapeError(Exception):
    """A type rule's refusal. `history`: the sizes that the first operand's image went through
    explain it (the front end then lists them)."""

    def __init__(self, message: str, hint: str | None = None, history: bool = False):
        super().__init__(message)
        self.message, self.hint, self.history = message, hint, history


@dataclass
class OpDef:
    name: str
    infer: Callable[[list[TensorType], dict], TensorType]
    ref: Callable[..., np.ndarray] | None
    vjp: Callable | None = None
    codegen: str = "kernel"
    scalar: Callable | None = None
    cost: float = 1.0
    dtypes: tuple[str, ...] = ("f32",)
    training: str | None = None

    @property
    def elementwise(self) -> bool:
        return self.codegen == "elementwise"


REQUIRED = object()


@dataclass(frozen=True)
class Arg:
    """An argument of a built-in. `kind`: tensor, int (>= 1), count (>= 0), number, positive,
    probability ([0, 1)), bool, axis, axes (one axis or a list), shape, perm, choice (one of
    the strings `choices`), integer (any), ints (a list of integers), tensors (a list of tensors),
    size (a positive integer or a pair [h, w] of them), pads (the same >= 0, or one of `choices`,
    e.g. "same"). A default of None means "not given" and is shown as `shown`."""
    name: str
    kind: str
    default: Any = REQUIRED
    shown: str | None = None
    choices: tuple[str, ...] = ()  # the strings a `choice` takes

    @property
    def usage(self) -> str:
        if self.default is REQUIRED:
            return self.name
        shown = self.shown or ("true" if self.default is True else "false" if self.default is False
                               else f'"{self.default}"' if isinstance(self.default, str) else str(self.default))
        return f"{self.name}={shown}"


@dataclass
class Builtin:
    name: str
    args: tuple[Arg, ...]
    build: Callable
    params: bool = False  # creates parameters (weights named <name><k>.weight, ...)

    @property
    def usage(self) -> str:
        return ", ".join(a.usage for a in self.args)


OPS: dict[str, OpDef] = {}
BUILTINS: dict[str, Builtin] = {}


def register(name: str, infer, ref, vjp=None, **traits) -> OpDef:
    OPS[name] = OpDef(name, infer, ref, vjp, **traits)
    return OPS[name]


def builtin(name: str, build, *args: Arg, params: bool = False) -> Builtin:
    BUILTINS[name] = Builtin(name, args, build, params)
    return BUILTINS[name]


def get(name: str) -> OpDef:
    return OPS[name]


def evaluate(op: str, args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    """Run the numpy reference of `op`."""
    d = OPS[op]
    if d.ref is None:
        raise ValueError(f"{op} has no reference implementation")
    return d.ref(*args, attrs)


# -- helpers for type rules -----------------------------------------------------------------
def require_float(t: TensorType, what: str) -> None:
    if not t.is_float:
        raise ShapeError(f"{what} expects a floating-point tensor, got {t}")


def require_rank(t: TensorType, rank: int, what: str, layout: str, hint: str | None = None) -> None:
    if t.rank != rank:
        raise ShapeError(f"{what} expects a {rank}-D input {layout}, got {t}", hint)


def broadcast_shapes(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """NumPy broadcasting on concrete or symbolic dims; None if incompatible."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for a {rank}-D tensor")
    return axis % rank


def axes_of(attrs: dict, rank: int) -> tuple[int, ...]:
    axis = attrs.get("axis")
    if axis is None:
        return tuple(range(rank))
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return tuple(sorted(normalize_axis(a, rank) for a in axes))


def symbolic_numel(shape) -> tuple[int, tuple[str, ...]]:
    n, syms = 1, []
    for d in shape:
        if isinstance(d, int):
            n *= d
        else:
            syms.append(d)
    return n, tuple(sorted(syms))


def window_out(size: Dim, k: int, stride: int, pad: int, what: str, t: TensorType) -> int:
    if not isinstance(size, int):
        raise ShapeError(f"{what} needs concrete spatial sizes, got {t}")
    out = (size + 2 * pad - k) // stride + 1
    if size + 2 * pad - k < 0 or out <= 0:
        conv = what == "conv2d"  # pooling has no padding
        raise ShapeError(
            f"{what} with kernel {k}, stride {stride}{f', padding {pad}' if conv else ''} shrinks a "
            f"spatial size of {size} to {min(out, 0) if size + 2 * pad < k else out}; input {t}",
            "use a smaller kernel or stride, add padding, or remove a pooling layer" if conv else
            "use a smaller window, or remove a pooling or strided layer before this one", history=True)
    return out



def default_init(fan_in: int) -> dict:
    bound = 1 / math.sqrt(fan_in)  # PyTorch's default: kaiming_uniform(a=sqrt(5)) = U(-b, b)
    return {"init": "uniform", "lo": -bound, "hi": bound}



# -- building nodes: derivative rules and passes --------------------------------------------
class Emit:
    """Adds nodes to `g`, typing each with its op's type rule; a type error becomes a
    CompileError at `span` (the source of the nodes)."""

    def __init__(self, g: Graph, span=None):
        self.g, self.span = g, span

    def __call__(self, op: str, *args: int, **attrs) -> int:
        try:
            t = get(op).infer([self.g.type(a) for a in args], attrs)
        except ShapeError as err:
            raise CompileError(Diagnostic(err.message, self.span, err.hint)) from None
        return self.g.add(op, args, attrs, t, self.span)

    def const(self, value: float, dtype: str) -> int:
        return self("const", value=float(value), dtype=dtype)

    def shape(self, nid: int) -> tuple:
        return self.g.type(nid).shape

    def dtype(self, nid: int) -> str:
        return self.g.type(nid).dtype


def gradient(g: Graph, node: Node, y: int, dy: int) -> tuple:
    """The gradients of `node`'s operands, built into `g` by the op's `vjp` rule."""
    return get(node.op).vjp(Emit(g, node.span), node, y, dy)


def unbroadcast(e: Emit, dy: int, shape: tuple) -> int:
    """Sum `dy` over the axes along which an operand of `shape` was broadcast."""
    out = e.shape(dy)
    lead = len(out) - len(shape)
    if lead:
        dy = e("sum", dy, axis=list(range(lead)))
    axes = [i for i, d in enumerate(shape) if d == 1 and out[lead + i] != 1]
    if axes:
        dy = e("sum", dy, axis=axes, keepdims=True)
    return dy


def count(e: Emit, shape: tuple, axes, dtype: str) -> int:
    """The number of elements of `shape` along `axes`, as a scalar node (symbolic sizes too)."""
    dims = [shape[a] for a in axes]
    if all(isinstance(d, int) for d in dims):
        return e.const(prod(dims), dtype)
    return e("sum", e("broadcast_to", e.const(1.0, dtype), shape=dims))


def keep_reduced(e: Emit, dy: int, x_shape: tuple, axes, keepdims: bool) -> int:
    """Give a reduction's gradient back its reduced axes as size-1 axes."""
    shape = [1 if i in axes else d for i, d in enumerate(x_shape)]
    return dy if keepdims or list(e.shape(dy)) == shape else e("reshape", dy, shape=shape)


def expand(e: Emit, dy: int, shape: tuple) -> int:
    """Broadcast `dy` to `shape`."""
    return dy if e.shape(dy) == tuple(shape) else e("broadcast_to", dy, shape=list(shape))
