"""Reductions and normalisations: sum/mean/max, softmax, log_softmax, cross_entropy, mse,
batchnorm1d, batchnorm2d, layernorm.

`sum`/`mean`/`max` walk the input once in memory order, folding each element into its
output slot: the input's dims are collapsed into alternating runs of kept and reduced dims,
so a reduction over the last axis is a vectorized horizontal reduction (floats reassociate)
and one over a leading axis is a vectorized accumulation into a row of outputs. Softmax-like
ops subtract the row maximum before exponentiating (numerically stable) and accumulate
losses in double precision.
"""
from __future__ import annotations

from math import prod

from llvmlite import ir

from odc.codegen.builder import F32, F64, I32, REASSOC, VW, KernelBuilder, llvm_type, vec
from odc.codegen.kernels.elementwise import contiguous_strides, loop_nest
from odc.codegen.kernel import Kernel, lowering
from odc.ir import ops
from odc.ir.graph import Graph
from odc.ir.ops import norm


@lowering("sum", "mean", "max")
def reduction(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    (x,) = node.args
    shape = g.type(x).shape
    axes = ops.axes_of(node.attrs, len(shape))
    runs: list[list] = []  # [extent, reduced]
    for i, d in enumerate(shape):
        if d == 1:
            continue
        if runs and runs[-1][1] == (i in axes):
            runs[-1][0] *= d
        else:
            runs.append([d, i in axes])
    extents = [e for e, _ in runs]
    in_strides = contiguous_strides(extents)
    kept = contiguous_strides([e for e, r in runs if not r])
    out_strides, j = [], 0
    for _, red in runs:
        out_strides.append(0 if red else kept[j])
        j += not red
    count = 1
    for i in axes:
        count *= shape[i]
    split = bool(runs) and not runs[0][1]
    inner = runs[1:] if split else runs
    block = 1
    for e, red in inner:
        block *= 1 if red else e
    op = node.op

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        init = kb.const(float("-inf") if op == "max" else 0.0)

        def unit(obase, ibase):
            out = kb.gep(kb.ptr(nid), obase)
            inp = kb.gep(kb.ptr(x), ibase)
            with kb.loop(0, block) as t:
                kb.store(init, out, t)

            def body(off):
                acc, v = kb.load(out, off[1]), kb.load(inp, off[0])
                kb.store(kb.maximum(acc, v) if op == "max" else b.fadd(acc, v, flags=REASSOC), out, off[1])

            k = len(runs) - len(inner)
            loop_nest(kb, extents[k:], [in_strides[k:], out_strides[k:]], 0, extents[k] if inner else 1,
                      None, body)
            if op == "mean":
                with kb.loop(0, block) as t:
                    kb.store(b.fdiv(kb.load(out, t), kb.const(float(count))), out, t)

        if split:
            with kb.loop(lo, hi) as i0:
                unit(kb.mul(i0, out_strides[0]), kb.mul(i0, in_strides[0]))
        else:
            unit(0, 0)

    numel = g.type(x).numel
    return Kernel([x, nid], runs[0][0] if split else 1, numel * 0.5, emit, names=[op])


def _rows(shape, axis):
    outer = inner = 1
    for d in shape[:axis]:
        outer *= d
    for d in shape[axis + 1:]:
        inner *= d
    return outer, shape[axis], inner


def row_vectors(kb: KernelBuilder, n: int, body) -> None:
    """Calls ``body(offset, mask)`` for the vectors covering n contiguous elements: full
    vectors in a loop, then a masked partial one (mask None for full vectors)."""
    if n // VW:
        with kb.loop(0, n // VW * VW, VW, name="v") as off:
            body(off, None)
    if n % VW:
        body(n // VW * VW, kb.mask(VW, n % VW))


def row_max_logsumexp(kb: KernelBuilder, ptr, base, n, stride):
    """(max, log(sum(exp(x - max)))) of x[base + a*stride] for a < n; contiguous rows in
    vectors."""
    b = kb.b
    if stride != 1:
        m = kb.var(F32, kb.const(float("-inf")), "m")
        with kb.loop(0, n) as a:
            kb.set(m, kb.maximum(kb.get(m), kb.load(ptr, kb.add(base, kb.mul(a, stride)))))
        mx = kb.get(m)
        s = kb.var(F32, kb.const(0.0), "s")
        with kb.loop(0, n) as a:
            e = kb.exp(b.fsub(kb.load(ptr, kb.add(base, kb.mul(a, stride))), mx))
            kb.set(s, b.fadd(kb.get(s), e, flags=REASSOC))
        return mx, kb.unary_math("log", kb.get(s))
    row = kb.gep(ptr, base)
    vt = vec(VW)
    ninf, zero = ir.Constant(vt, float("-inf")), ir.Constant(vt, 0.0)
    m = kb.var(vt, ninf, "m")
    def fold_max(off, mask):
        v = kb.vload(row, off, mask=mask)
        kb.set(m, kb.maximum(kb.get(m), v if mask is None else b.select(mask, v, ninf)))
    row_vectors(kb, n, fold_max)
    mx = kb.hmax(kb.get(m))
    s = kb.var(vt, zero, "s")

    def add_exp(off, mask):
        e = kb.exp(b.fsub(kb.vload(row, off, mask=mask), kb.splat(mx)))
        kb.set(s, b.fadd(kb.get(s), e if mask is None else b.select(mask, e, zero)))
    row_vectors(kb, n, add_exp)
    return mx, kb.unary_math("log", kb.hsum(kb.get(s)))


@lowering("softmax", "log_softmax")
def softmax(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    (x,) = node.args
    shape = node.type.shape
    outer, n, inner = _rows(shape, ops.normalize_axis(node.attrs.get("axis", -1), len(shape)))

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        with kb.loop(lo, hi) as t:
            base = kb.add(kb.mul(b.sdiv(t, kb.i64(inner)), n * inner), b.srem(t, kb.i64(inner)))
            mx, lse = row_max_logsumexp(kb, kb.ptr(x), base, n, inner)
            if inner == 1:
                src, dst = kb.gep(kb.ptr(x), base), kb.gep(kb.ptr(nid), base)
                mxv, lsev = kb.splat(mx), kb.splat(lse)

                def write(off, mask):
                    v = b.fsub(b.fsub(kb.vload(src, off, mask=mask), mxv), lsev)
                    kb.vstore(kb.exp(v) if node.op == "softmax" else v, dst, off, mask=mask)
                row_vectors(kb, n, write)
            else:
                with kb.loop(0, n) as a:
                    off = kb.add(base, kb.mul(a, inner))
                    v = b.fsub(b.fsub(kb.load(kb.ptr(x), off), mx), lse)
                    kb.store(kb.exp(v) if node.op == "softmax" else v, kb.ptr(nid), off)

    return Kernel([x, nid], outer * inner, node.type.numel * (3 if inner == 1 else 30), emit, names=[node.op])


@lowering("cross_entropy")
def cross_entropy(g: Graph, nid: int) -> Kernel:
    """Mean over rows of logsumexp(row) - row[label]; a bad label sets status 1."""
    node = g.node(nid)
    logits, labels = node.args
    rows, classes = g.type(logits).shape
    lty = llvm_type(g.type(labels).dtype)

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        acc = kb.var(F64, ir.Constant(F64, 0.0), "acc")
        with kb.loop(0, rows) as r:
            label = kb.to_i64(kb.load(kb.ptr(labels), r, lty))
            ok = b.and_(b.icmp_signed(">=", label, kb.i64(0)), b.icmp_signed("<", label, kb.i64(classes)))
            with b.if_else(ok) as (then, other):
                with then:
                    base = kb.mul(r, classes)
                    mx, lse = row_max_logsumexp(kb, kb.ptr(logits), base, classes, 1)
                    lp = b.fsub(b.fsub(kb.load(kb.ptr(logits), kb.add(base, label)), mx), lse)
                    kb.set(acc, b.fadd(kb.get(acc), b.fpext(lp, F64)))
                with other:
                    kb.store(ir.Constant(I32, 1), kb.status, 0)
        loss = b.fdiv(b.fneg(kb.get(acc)), ir.Constant(F64, float(rows)))
        kb.store(b.fptrunc(loss, F32), kb.ptr(nid), 0)

    return Kernel([logits, labels, nid], 1, rows * classes * 30, emit, status=True,
                  names=["cross_entropy"])


@lowering("mse")
def mse(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    a, y = node.args
    n = g.type(a).numel

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        acc = kb.var(F64, ir.Constant(F64, 0.0), "acc")
        with kb.loop(0, n) as i:
            d = b.fsub(kb.load(kb.ptr(a), i), kb.load(kb.ptr(y), i))
            kb.set(acc, b.fadd(kb.get(acc), b.fpext(b.fmul(d, d), F64), flags=REASSOC))
        kb.store(b.fptrunc(b.fdiv(kb.get(acc), ir.Constant(F64, float(n))), F32), kb.ptr(nid), 0)

    return Kernel([a, y, nid], 1, n, emit, names=["mse"])


def _batchnorm_channels(g: Graph, nid: int) -> Kernel:
    """[N, C, ...] per channel (in parallel): mean and variance of the batch in double precision,
    then (x - mean) / sqrt(var + eps) * gamma + beta."""
    node = g.node(nid)
    x, gamma, beta = node.args
    n, c, *rest = node.type.shape
    hw = prod(rest)
    count = n * hw
    eps = norm.eps(node.attrs)

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        with kb.loop(lo, hi) as ch:
            def over(fn):
                with kb.loop(0, n) as i:
                    base = kb.mul(kb.add(kb.mul(i, c), ch), hw)
                    with kb.loop(0, hw) as p:
                        fn(kb.add(base, p))

            s = kb.var(F64, ir.Constant(F64, 0.0), "s")
            over(lambda o: kb.set(s, b.fadd(kb.get(s), b.fpext(kb.load(kb.ptr(x), o), F64), flags=REASSOC)))
            mean64 = b.fdiv(kb.get(s), ir.Constant(F64, float(count)))
            v = kb.var(F64, ir.Constant(F64, 0.0), "v")

            def sq(o):
                d = b.fsub(b.fpext(kb.load(kb.ptr(x), o), F64), mean64)
                kb.set(v, b.fadd(kb.get(v), b.fmul(d, d), flags=REASSOC))
            over(sq)
            mean = b.fptrunc(mean64, F32)
            var = b.fptrunc(b.fdiv(kb.get(v), ir.Constant(F64, float(count))), F32)
            den = kb.unary_math("sqrt", b.fadd(var, kb.const(eps)))
            gm, bt = kb.load(kb.ptr(gamma), ch), kb.load(kb.ptr(beta), ch)
            over(lambda o: kb.store(
                b.fadd(b.fmul(b.fdiv(b.fsub(kb.load(kb.ptr(x), o), mean), den), gm), bt), kb.ptr(nid), o))

    return Kernel([x, gamma, beta, nid], c, node.type.numel * 3, emit, names=[node.op])


BN_VECTORS = 4  # vectors of features per block of the [N, F] batch norm: 4 cache lines per row


def _batchnorm_features(g: Graph, nid: int) -> Kernel:
    """[N, F]: blocks of up to `BN_VECTORS` vectors of features (in parallel), each walking the
    rows with contiguous vector loads (a masked one for the last features); mean and variance
    of the batch in double precision, then (x - mean) * (gamma / sqrt(var + eps)) + beta."""
    node = g.node(nid)
    x, gamma, beta = node.args
    n, f = node.type.shape
    eps = norm.eps(node.attrs)
    v64, vt = vec(VW, F64), vec(VW)

    def block(kb: KernelBuilder, off, masks):
        """Features [off, off + len(masks) * VW), vector k masked by masks[k] (None: whole)."""
        b = kb.b
        offs = [kb.add(off, k * VW) for k in range(len(masks))]

        def rows(fn):
            with kb.loop(0, n) as i:
                base = kb.mul(i, f)
                for k, (o, m) in enumerate(zip(offs, masks)):
                    fn(k, kb.add(base, o), kb.vload(kb.ptr(x), kb.add(base, o), mask=m))

        s = [kb.var(v64, ir.Constant(v64, 0.0), "s") for _ in masks]
        rows(lambda k, o, v: kb.set(s[k], b.fadd(kb.get(s[k]), b.fpext(v, v64))))
        mean64 = [b.fdiv(kb.get(a), ir.Constant(v64, float(n))) for a in s]
        q = [kb.var(v64, ir.Constant(v64, 0.0), "q") for _ in masks]

        def sq(k, o, v):
            d = b.fsub(b.fpext(v, v64), mean64[k])
            kb.set(q[k], b.fadd(kb.get(q[k]), b.fmul(d, d)))
        rows(sq)
        mean, scale, shift = [], [], []
        for k, (o, m) in enumerate(zip(offs, masks)):
            mean.append(b.fptrunc(mean64[k], vt))
            var = b.fptrunc(b.fdiv(kb.get(q[k]), ir.Constant(v64, float(n))), vt)
            den = kb.unary_math("sqrt", b.fadd(var, ir.Constant(vt, eps)))
            scale.append(b.fdiv(kb.vload(kb.ptr(gamma), o, mask=m), den))  # y = (x - mean) * scale + beta
            shift.append(kb.vload(kb.ptr(beta), o, mask=m))
        rows(lambda k, o, v: kb.vstore(b.fadd(b.fmul(b.fsub(v, mean[k]), scale[k]), shift[k]), kb.ptr(nid), o,
                                       mask=masks[k]))

    nvec = -(-f // VW)
    blocks, whole = -(-nvec // BN_VECTORS), f // (BN_VECTORS * VW)  # all blocks; those with no mask
    last = [None] * (nvec - whole * BN_VECTORS)  # the vectors of the last block, if it is not whole
    if f % VW:
        last[-1] = KernelBuilder.mask(VW, f % VW)

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        with kb.loop(lo, hi) as j:
            off = kb.mul(j, BN_VECTORS * VW)
            if blocks == whole:
                block(kb, off, [None] * BN_VECTORS)
            elif whole == 0:
                block(kb, off, last)
            else:
                with b.if_else(b.icmp_signed("<", j, kb.i64(whole))) as (full, part):
                    with full:
                        block(kb, off, [None] * BN_VECTORS)
                    with part:
                        block(kb, off, last)

    return Kernel([x, gamma, beta, nid], blocks, node.type.numel * 3, emit, names=[node.op])


@lowering("batchnorm2d", "batchnorm1d")
def batchnorm(g: Graph, nid: int) -> Kernel:
    """Batch statistics per channel (axis 1, the catalog's `norm.running(op)`): [N, F] by
    vectors of features, [N, C, H, W] and [N, C, L] channel by channel."""
    assert norm.running(g.node(nid).op).channel == 1
    return _batchnorm_features(g, nid) if g.type(nid).rank == 2 else _batchnorm_channels(g, nid)


@lowering("layernorm")
def layernorm(g: Graph, nid: int) -> Kernel:
    """Rows of the last axis (in parallel), each in vectors: the mean, then the mean squared
    deviation from it (two passes: no cancellation), then (x - mean) * (1 / sqrt(var + eps))
    * gamma + beta."""
    node = g.node(nid)
    x, gamma, beta = node.args
    f = node.type.shape[-1]
    rows = node.type.numel // f
    eps = norm.eps(node.attrs)

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        vt = vec(VW)
        zero = ir.Constant(vt, 0.0)
        with kb.loop(lo, hi) as r:
            base = kb.mul(r, f)
            src, dst = kb.gep(kb.ptr(x), base), kb.gep(kb.ptr(nid), base)
            s = kb.var(vt, zero, "s")

            def add(off, mask):
                v = kb.vload(src, off, mask=mask)
                kb.set(s, b.fadd(kb.get(s), v if mask is None else b.select(mask, v, zero)))
            row_vectors(kb, f, add)
            mean = b.fdiv(kb.hsum(kb.get(s)), kb.const(float(f)))
            meanv = kb.splat(mean)
            q = kb.var(vt, zero, "q")

            def sq(off, mask):
                d = b.fsub(kb.vload(src, off, mask=mask), meanv)
                d2 = b.fmul(d, d)
                kb.set(q, b.fadd(kb.get(q), d2 if mask is None else b.select(mask, d2, zero)))
            row_vectors(kb, f, sq)
            var = b.fdiv(kb.hsum(kb.get(q)), kb.const(float(f)))
            rstd = kb.splat(b.fdiv(kb.const(1.0), kb.unary_math("sqrt", b.fadd(var, kb.const(eps)))))

            def write(off, mask):
                y = b.fmul(b.fsub(kb.vload(src, off, mask=mask), meanv), rstd)
                y = b.fadd(b.fmul(y, kb.vload(kb.ptr(gamma), off, mask=mask)), kb.vload(kb.ptr(beta), off, mask=mask))
                kb.vstore(y, dst, off, mask=mask)
            row_vectors(kb, f, write)

    return Kernel([x, gamma, beta, nid], rows, node.type.numel * 4, emit, names=["layernorm"])
