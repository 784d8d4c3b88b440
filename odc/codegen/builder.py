"""LLVM IR building blocks shared by the kernels: types, loops, variables, vectors, math.

`KernelBuilder` wraps an `llvmlite.ir.IRBuilder` positioned in one kernel function. Loops are
emitted in the canonical form LLVM's loop passes expect (i64 induction variable, one latch);
loop-carried values live in entry-block allocas that SROA turns into registers, which keeps
the emitters free of hand-written phi nodes. Every size is a compile-time constant, so most
index arithmetic folds to constants (`add`/`mul` fold Python ints before emitting anything).
"""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from odc.codegen import jit
from odc.ir import dtypes

F32 = ir.FloatType()
F64 = ir.DoubleType()
I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()
VW = jit.vector_bits() // 32  # f32 lanes of a vector register of the target: 16 with AVX-512, 8 with AVX2
REGISTERS = 32 if VW == 16 else 16  # vector registers (zmm0-31; ymm0-15 without AVX-512)
ACCUMULATORS = REGISTERS * 3 // 4  # register-tile budget, leaving registers for the operands

REASSOC = ("reassoc", "contract")  # lets LLVM vectorize a float reduction


def llvm_type(dtype: str) -> ir.Type:
    return dtypes.TABLE[dtype].llvm


def vec(n: int, ty: ir.Type = F32) -> ir.VectorType:
    return ir.VectorType(ty, n)


class KernelBuilder:
    def __init__(self, fn: ir.Function):
        self.fn = fn
        self.module = fn.module
        entry = fn.append_basic_block("entry")  # holds only the allocas of `var`
        self._alloca_builder = ir.IRBuilder(entry)
        self._entry_branch = self._alloca_builder.branch(fn.append_basic_block("body"))
        self.b = ir.IRBuilder(fn.blocks[-1])
        self.pointers: dict[int, ir.Value] = {}  # graph value id -> its memory
        self.consts: dict[int, float] = {}  # graph value id -> an inlined scalar
        self.scratch: ir.Value | None = None  # this thread's scratch memory
        self.status: ir.Value | None = None  # i32 the kernel sets on bad input

    def ptr(self, v: int) -> ir.Value:
        return self.pointers[v]

    # -- constants and integer arithmetic -------------------------------------------------
    @staticmethod
    def i64(v) -> ir.Value:
        return ir.Constant(I64, v) if isinstance(v, int) else v

    @staticmethod
    def const(v, ty=F32) -> ir.Constant:
        return ir.Constant(ty, v)

    def add(self, a, b):
        if isinstance(a, int) and isinstance(b, int):
            return a + b
        if isinstance(b, int) and b == 0:
            return a
        if isinstance(a, int) and a == 0:
            return b
        return self.b.add(self.i64(a), self.i64(b), flags=["nsw"])

    def mul(self, a, b):
        if isinstance(a, int) and isinstance(b, int):
            return a * b
        if isinstance(b, int):
            if b == 0:
                return 0
            if b == 1:
                return a
        if isinstance(a, int):
            return self.mul(b, a)
        return self.b.mul(self.i64(a), self.i64(b), flags=["nsw"])

    def smin(self, a, b):
        a, b = self.i64(a), self.i64(b)
        return self.b.select(self.b.icmp_signed("<", a, b), a, b)

    def smax(self, a, b):
        a, b = self.i64(a), self.i64(b)
        return self.b.select(self.b.icmp_signed(">", a, b), a, b)

    # -- control flow ----------------------------------------------------------------------
    @contextmanager
    def loop(self, start, stop, step: int = 1, name: str = "i"):
        """`for (i = start; i < stop; i += step)`; yields the i64 induction variable."""
        b = self.b
        pre = b.block
        head = b.append_basic_block(name + ".head")
        body = b.append_basic_block(name + ".body")
        done = b.append_basic_block(name + ".done")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name)
        i.add_incoming(self.i64(start), pre)
        b.cbranch(b.icmp_signed("<", i, self.i64(stop)), body, done)
        b.position_at_end(body)
        yield i
        i.add_incoming(b.add(i, self.i64(step), flags=["nsw"]), b.block)
        b.branch(head)
        b.position_at_end(done)

    # -- variables -------------------------------------------------------------------------
    def var(self, ty: ir.Type, init=None, name: str = "v", count: int | None = None) -> ir.AllocaInstr:
        """A mutable local (an entry-block alloca; SROA promotes it to registers), or an
        array of `count` of them."""
        ab = self._alloca_builder
        ab.position_before(self._entry_branch)
        slot = ab.alloca(ty, size=count, name=name)
        if init is not None:
            self.b.store(init, slot)
        return slot

    def get(self, slot) -> ir.Value:
        return self.b.load(slot, typ=slot.allocated_type)

    def set(self, slot, value) -> None:
        self.b.store(value, slot)

    # -- memory ----------------------------------------------------------------------------
    def gep(self, base, index, ty: ir.Type = F32):
        if isinstance(index, int) and index == 0:
            return base
        return self.b.gep(base, [self.i64(index)], source_etype=ty)

    def load(self, base, index, ty: ir.Type = F32):
        return self.b.load(self.gep(base, index, ty), typ=ty)

    def store(self, value, base, index) -> None:
        self.b.store(value, self.gep(base, index, value.type))

    def _intrinsic(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, args), name)
        return fn

    def call(self, name: str, ret: ir.Type, args: list, flags=()):
        return self.b.call(self._intrinsic(name, ret, [a.type for a in args]), args, fastmath=flags)

    @staticmethod
    def mask(n: int, lanes: int) -> ir.Constant:
        return ir.Constant(vec(n, I1), [i < lanes for i in range(n)])

    def tail_mask(self, lanes: int) -> ir.Constant | None:
        """The mask of a vector whose first `lanes` lanes are used (None for all of them)."""
        return self.mask(VW, lanes) if lanes < VW else None

    @staticmethod
    def lane_mask(bits) -> ir.Constant:
        return ir.Constant(vec(len(bits), I1), [bool(x) for x in bits])

    def vload(self, base, index, mask=None, ty: ir.Type = F32):
        """Load a vector of consecutive elements; `mask` (an i1 vector constant) zeroes lanes
        and does not read them."""
        vt = vec(VW, ty)
        ptr = self.gep(base, index, ty)
        if mask is None:
            ld = self.b.load(ptr, typ=vt)
            ld.align = _SIZE[ty]  # element alignment only
            return ld
        call = self.b.call(self._intrinsic(f"llvm.masked.load.{_suffix(vt)}.p0", vt, [PTR, vec(VW, I1), vt]),
                           [ptr, mask, ir.Constant(vt, None)])
        call.arg_attributes[0] = ir.values.ArgumentAttributes()
        call.arg_attributes[0].align = _SIZE[ty]
        return call

    def vstore(self, value, base, index, mask=None) -> None:
        vt = value.type
        ptr = self.gep(base, index, vt.element)
        if mask is None:
            st = self.b.store(value, ptr)
            st.align = _SIZE[vt.element]
            return
        store = self._intrinsic(f"llvm.masked.store.{_suffix(vt)}.p0", VOID, [vt, PTR, vec(vt.count, I1)])
        call = self.b.call(store, [value, ptr, mask])
        call.arg_attributes[1] = ir.values.ArgumentAttributes()
        call.arg_attributes[1].align = _SIZE[vt.element]

    def splat(self, x, n: int = VW):
        vt = vec(n, x.type)
        v = self.b.insert_element(ir.Constant(vt, None), x, ir.Constant(I32, 0))
        return self.b.shuffle_vector(v, ir.Constant(vt, None), ir.Constant(vec(n, I32), [0] * n))

    def fma(self, a, b, c):
        return self.call(f"llvm.fma.{_suffix(a.type)}", a.type, [a, b, c])

    def hmax(self, v):
        """IEEE maximum of the lanes of a float vector."""
        t = v.type
        return self.call(f"llvm.vector.reduce.fmaximum.{_suffix(t)}", t.element, [v])

    def hsum(self, v):
        """Sum of the lanes of a float vector (any association)."""
        t = v.type
        return self.call(f"llvm.vector.reduce.fadd.{_suffix(t)}", t.element,
                         [ir.Constant(t.element, -0.0), v], flags=REASSOC)

    # -- float math --------------------------------------------------------------------------
    def unary_math(self, name: str, x):
        """llvm.<name> intrinsic (exp, log, sqrt, fabs, ...) on a float scalar or vector."""
        return self.call(f"llvm.{name}.{_suffix(x.type)}", x.type, [x])

    def maximum(self, a, b):
        """IEEE maximum of scalars or vectors (a NaN propagates, like numpy's max)."""
        return self.call(f"llvm.maximum.{_suffix(a.type)}", a.type, [a, b])

    def exp(self, x):
        """e**x of an f32 scalar or vector in plain arithmetic, so that it vectorizes (libm's
        expf would stay a scalar call). Cody-Waite reduction x = n*ln2 + r and the Cephes
        polynomial for e**r (about 2 ulp); 2**n is applied as two factors so that results
        round to subnormals, 0 and inf like the C function."""
        t = x.type
        if (t.element if isinstance(t, ir.VectorType) else t) != F32:
            return self.unary_math("exp", x)
        b = self.b
        c = lambda v: ir.Constant(t, v)  # noqa: E731
        it = vec(t.count, I32) if isinstance(t, ir.VectorType) else I32
        i = lambda v: ir.Constant(it, v)  # noqa: E731
        xc = self.call(f"llvm.maxnum.{_suffix(t)}", t, [x, c(-104.0)])
        xc = self.call(f"llvm.minnum.{_suffix(t)}", t, [xc, c(89.0)])
        n = self.unary_math("rint", b.fmul(xc, c(1.4426950408889634)))
        r = b.fsub(b.fsub(xc, b.fmul(n, c(0.693359375))), b.fmul(n, c(-2.12194440e-4)))
        p = c(1.9875691500e-4)
        for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
            p = b.fadd(b.fmul(p, r), c(coef))
        p = b.fadd(b.fadd(b.fmul(p, b.fmul(r, r)), r), c(1.0))
        ni = b.fptosi(n, it)
        half = b.ashr(ni, i(1))
        result = b.fmul(b.fmul(p, b.bitcast(b.shl(b.add(half, i(127)), i(23)), t)),
                        b.bitcast(b.shl(b.add(b.sub(ni, half), i(127)), i(23)), t))
        return b.select(b.fcmp_unordered("uno", x, x), x, result)

    def libm(self, name: str, x):
        """A C math-library function (tanhf, ...) on a float scalar."""
        return self.call(name + ("f" if x.type == F32 else ""), x.type, [x])

    def to_i64(self, x):
        """An integer element (a label) as an i64 index."""
        if x.type == I64:
            return x
        return self.b.zext(x, I64) if x.type == I8 else self.b.sext(x, I64)


_SIZE = {F32: 4, F64: 8, I32: 4, I64: 8, I8: 1}


def _tname(ty: ir.Type) -> str:
    return {F32: "f32", F64: "f64", I32: "i32", I64: "i64", I8: "i8"}[ty]


def _suffix(ty: ir.Type) -> str:
    """The type suffix of an overloaded intrinsic: f32, v16f32, ..."""
    return f"v{ty.count}{_tname(ty.element)}" if isinstance(ty, ir.VectorType) else _tname(ty)
