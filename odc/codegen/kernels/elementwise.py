"""Elementwise kernels: a fused group of elementwise ops evaluated index by index.

Each operand read from memory gets a stride per dimension of the iteration shape (0 where it
broadcasts). Dimensions of size 1 are dropped and neighbours merged wherever every operand
is contiguous across them, so a chain over same-shaped tensors is one flat loop and
``x[N, 120] + b[120]`` is a loop over rows around a contiguous loop over columns. The
innermost loop is plain scalar code over ``noalias`` pointers, which LLVM's loop vectorizer
turns into vector code of the target's width; a flat loop is cut into blocks that threads
share. Within one index every member is computed before any is stored, so a result may
overwrite an operand in place.
"""
from __future__ import annotations

from contextlib import ExitStack

from llvmlite import ir

from odc.codegen.builder import F32, KernelBuilder, llvm_type
from odc.codegen.kernel import Kernel
from odc.ir import ops
from odc.ir.graph import Graph

BLOCK = 4096  # elements per parallel block of a flat loop


class Scalar:
    """The scalar ops that the op catalog's elementwise formulas (`OpDef.scalar`) are written in,
    emitted as LLVM instructions at one index; a Python number stands for a constant."""

    def __init__(self, kb: KernelBuilder, ty: ir.Type):
        self.kb, self.b, self.ty = kb, kb.b, ty
        self.attrs: dict = {}  # the attributes of the node being emitted

    def const(self, v) -> ir.Value:
        return ir.Constant(self.ty, float(v))

    def _v(self, x):
        return self.const(x) if isinstance(x, (int, float)) else x

    def add(self, a, b):
        return self.b.fadd(self._v(a), self._v(b))

    def sub(self, a, b):
        return self.b.fsub(self._v(a), self._v(b))

    def mul(self, a, b):
        return self.b.fmul(self._v(a), self._v(b))

    def div(self, a, b):
        return self.b.fdiv(self._v(a), self._v(b))

    def neg(self, x):
        return self.b.fneg(self._v(x))

    def from_unsigned(self, x):
        """An unsigned integer (a u8 pixel) as a float."""
        return self.b.uitofp(x, self.ty)

    def lt(self, a, b):
        return self.b.fcmp_ordered("<", self._v(a), self._v(b))

    def gt(self, a, b):
        return self.b.fcmp_ordered(">", self._v(a), self._v(b))

    def ge(self, a, b):
        return self.b.fcmp_ordered(">=", self._v(a), self._v(b))

    def ne(self, a, b):
        """Not equal, or either is NaN (as numpy's !=)."""
        return self.b.fcmp_unordered("!=", self._v(a), self._v(b))

    def maximum(self, a, b):
        """The larger, or NaN if either is NaN (as torch.maximum)."""
        return self.kb.maximum(self._v(a), self._v(b))

    def minimum(self, a, b):
        return self.kb.call(f"llvm.minimum.{'f32' if self.ty == F32 else 'f64'}", self.ty, [self._v(a), self._v(b)])

    def pow(self, x, p):
        return self.kb.call(f"llvm.pow.{'f32' if self.ty == F32 else 'f64'}", self.ty, [self._v(x), self._v(p)])

    def select(self, cond, a, b):
        return self.b.select(cond, self._v(a), self._v(b))

    def exp(self, x):
        return self.kb.exp(self._v(x))

    def log(self, x):
        return self.kb.unary_math("log", self._v(x))

    def sqrt(self, x):
        return self.kb.unary_math("sqrt", self._v(x))

    def abs(self, x):
        return self.kb.unary_math("fabs", self._v(x))

    def libm(self, name: str, x):
        """A function of the C maths library (tanh, erf, ...)."""
        return self.kb.libm(name, self._v(x))


def contiguous_strides(shape) -> list[int]:
    strides, s = [], 1
    for d in reversed(shape):
        strides.append(s)
        s *= d
    return strides[::-1]


def broadcast_strides(shape, full) -> list[int]:
    """Strides of an operand of `shape` read at indices of the broadcast shape `full`."""
    shape = (1,) * (len(full) - len(shape)) + tuple(shape)
    return [0 if d == 1 else s for d, s in zip(shape, contiguous_strides(shape))]


def collapse(shape, strides: list[list[int]], keep_dim0: bool):
    """Drop size-1 dims and merge neighbours that every operand walks contiguously."""
    dims = [(i, d) for i, d in enumerate(shape) if d != 1 or (keep_dim0 and i == 0)]
    out_shape, out_strides = [], [[] for _ in strides]
    for i, d in dims:
        mergeable = out_shape and not (keep_dim0 and len(out_shape) == 1) and all(
            st[-1] == s[i] * d for st, s in zip(out_strides, strides))
        if mergeable:
            out_shape[-1] *= d
            for st, s in zip(out_strides, strides):
                st[-1] = s[i]
        else:
            out_shape.append(d)
            for st, s in zip(out_strides, strides):
                st.append(s[i])
    return out_shape, out_strides


def loop_nest(kb: KernelBuilder, shape, strides, lo, hi, block: int | None, body) -> None:
    """Loops over `shape` (outermost over [lo, hi)); `body(offsets)` gets one element offset
    per stride list. With `block`, the single dimension is walked in blocks of that size."""
    with ExitStack() as stack:
        offsets = [0] * len(strides)
        if not shape:
            body(offsets)
            return
        if block is not None:
            (n,), flat = shape, [s[0] for s in strides]
            i0 = stack.enter_context(kb.loop(lo, hi, name="blk"))
            start = kb.mul(i0, block)
            stop = kb.smin(kb.add(start, block), n)
            i = stack.enter_context(kb.loop(start, stop, name="i"))
            body([kb.mul(i, s) for s in flat])
            return
        for d, extent in enumerate(shape):
            i = stack.enter_context(kb.loop(lo if d == 0 else 0, hi if d == 0 else extent, name=f"i{d}"))
            offsets = [kb.add(o, kb.mul(i, s[d])) for o, s in zip(offsets, strides)]
        body(offsets)


def kernel(g: Graph, members: list[int], stored: list[int], rows: bool = False) -> Kernel:
    """The elementwise part of a group. With `rows`, the kernel is an epilogue: its range is
    dim 0 of the shape (the anchor's slices) and it must not be merged with inner dims."""
    shape = g.type(stored[0]).shape
    dtype = g.type(stored[0]).dtype
    ty = llvm_type(dtype)
    member = set(members)
    leaves = []
    for m in members:
        for a in g.node(m).args:
            if a not in member and a not in leaves:
                leaves.append(a)
    operands = leaves + stored
    strides = [broadcast_strides(g.type(v).shape, shape) for v in leaves] + \
              [contiguous_strides(shape) for _ in stored]
    cshape, cstrides = collapse(shape, strides, keep_dim0=rows)
    block = None
    if rows:
        extent = shape[0] if shape else 1
    elif len(cshape) == 1 and cshape[0] > BLOCK:
        block = BLOCK
        extent = -(-cshape[0] // BLOCK)
    else:
        extent = cshape[0] if cshape else 1
    numel = 1
    for d in shape:
        numel *= d
    cost = numel * (sum(ops.get(g.node(m).op).cost for m in members) + 0.2 * len(operands))

    def emit(kb: KernelBuilder, lo, hi):
        s = Scalar(kb, ty)

        def body(offsets):
            off = dict(zip(operands, offsets))
            vals = {}

            def val(v):
                if v not in vals:
                    n = g.node(v)
                    if v in member and n.op == "const":
                        value = n.attrs["value"]
                        vals[v] = ir.Constant(ty, float(value) if n.type.is_float else int(value))
                    elif v in member:
                        args = [val(a) for a in n.args]
                        s.attrs = n.attrs
                        vals[v] = ops.get(n.op).scalar(s, *args)
                    elif v in kb.consts:
                        vals[v] = ir.Constant(ty, float(kb.consts[v]))
                    else:
                        vals[v] = kb.load(kb.ptr(v), off[v], llvm_type(g.type(v).dtype))
                return vals[v]

            results = [(m, val(m)) for m in stored]
            for m, r in results:
                kb.store(r, kb.ptr(m), off[m])

        loop_nest(kb, cshape, cstrides, lo, hi, block, body)

    return Kernel(operands, extent, cost, emit, names=[g.node(m).op for m in members])

