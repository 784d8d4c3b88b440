"""Reductions and normalisations: sum/mean/max, softmax, log_softmax, cross_entropy, mse,
batchnorm1d, batchnorm2d, the per-channel sums of their training step (batchnorm_stats,
batchnorm_grad_sums), layernorm.

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


def _channel_vectors(kb: KernelBuilder, n: int, c: int, hw: int, ch, body) -> None:
    """Calls ``body(index, mask)`` for the vectors covering channel `ch` of a [n, c, hw]
    tensor: hw contiguous elements per example, the last vector of each masked if hw is not a
    multiple of the vector width (mask None: whole)."""
    with kb.loop(0, n) as i:
        base = kb.mul(kb.add(kb.mul(i, c), ch), hw)
        row_vectors(kb, hw, lambda off, mask: body(kb.add(base, off), mask))


def _channel_layout(g: Graph, x: int) -> tuple[int, int, int]:
    n, c, *rest = g.type(x).shape
    return n, c, prod(rest)


def _channel_pair(g: Graph, nid: int, x: int, values) -> Kernel:
    """The kernel of a [2, C] result over the channels of `x` ([N, C, ...]), channel by channel
    (in parallel): ``values(kb, ch, over)`` gives channel ch's two doubles, where ``over(body)``
    calls ``body(index, mask)`` for the vectors covering the channel (`_channel_vectors`)."""
    n, c, hw = _channel_layout(g, x)

    def emit(kb: KernelBuilder, lo, hi):
        with kb.loop(lo, hi) as ch:
            pair = values(kb, ch, lambda body: _channel_vectors(kb, n, c, hw, ch, body))
            for k, v in enumerate(pair):
                kb.store(kb.b.fptrunc(v, F32), kb.ptr(nid), kb.add(ch, k * c))

    return Kernel([*g.node(nid).args, nid], c, g.type(x).numel * 2, emit, names=[g.node(nid).op])


V64 = vec(VW, F64)
ZERO64 = ir.Constant(V64, 0.0)


@lowering("batchnorm_stats")
def batchnorm_stats(g: Graph, nid: int) -> Kernel:
    """Channel by channel (in parallel), one pass: the sums of x and of x^2 in vectors of
    doubles, then mean = sum / n and var = sum(x^2) / n - mean^2. The subtraction's relative
    error is about (mean^2 / var) * 2^-53: below float32's rounding while |mean| stays under
    about 10,000 standard deviations (each square of a float32 is exact in double)."""
    (x,) = g.node(nid).args
    count = ir.Constant(F64, float(g.type(x).numel // g.type(x).shape[1]))

    def values(kb: KernelBuilder, ch, over):
        b = kb.b
        s, q = kb.var(V64, ZERO64, "s"), kb.var(V64, ZERO64, "q")

        def add(o, mask):  # masked lanes load 0
            v = b.fpext(kb.vload(kb.ptr(x), o, mask=mask), V64)
            kb.set(s, b.fadd(kb.get(s), v))
            kb.set(q, b.fadd(kb.get(q), b.fmul(v, v)))
        over(add)
        mean = b.fdiv(kb.hsum(kb.get(s)), count)
        var = b.fsub(b.fdiv(kb.hsum(kb.get(q)), count), b.fmul(mean, mean))
        return mean, kb.maximum(var, ir.Constant(F64, 0.0))

    return _channel_pair(g, nid, x, values)


@lowering("batchnorm_grad_sums")
def batchnorm_grad_sums(g: Graph, nid: int) -> Kernel:
    """Channel by channel (in parallel), one pass: sum(dy) and sum(dy * (x - mean)) in vectors
    of doubles."""
    dy, x, stats = g.node(nid).args

    def values(kb: KernelBuilder, ch, over):
        b = kb.b
        meanv = kb.splat(b.fpext(kb.load(kb.ptr(stats), ch), F64))
        s, sx = kb.var(V64, ZERO64, "s"), kb.var(V64, ZERO64, "sx")

        def add(o, mask):  # masked lanes load dy = 0
            d = b.fpext(kb.vload(kb.ptr(dy), o, mask=mask), V64)
            xc = b.fsub(b.fpext(kb.vload(kb.ptr(x), o, mask=mask), V64), meanv)
            kb.set(s, b.fadd(kb.get(s), d))
            kb.set(sx, b.fadd(kb.get(sx), b.fmul(d, xc)))
        over(add)
        return kb.hsum(kb.get(s)), kb.hsum(kb.get(sx))

    return _channel_pair(g, nid, x, values)


@lowering("batchnorm_train")
def batchnorm_train(g: Graph, nid: int) -> Kernel:
    """Example by example (in parallel; an anchor: its epilogue follows each example), each
    channel (x - mean) * (gamma / sqrt(var + eps)) + beta from the [2, C] statistics: in vectors
    along each channel's pixels, or, with one value per channel ([N, F]), along the channels."""
    node = g.node(nid)
    x, gamma, beta, stats = node.args
    n, c, hw = _channel_layout(g, x)
    eps = norm.eps(node.attrs)

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b

        def coefficients(load, ch, eps_):
            """(mean, gamma / sqrt(var + eps), beta) of channel(s) `ch`."""
            var = load(stats, kb.add(ch, c))
            return load(stats, ch), b.fdiv(load(gamma, ch), kb.unary_math("sqrt", b.fadd(var, eps_))), load(beta, ch)

        def normalise(o, mask, mean, scale, shift):
            y = kb.fma(b.fsub(kb.vload(kb.ptr(x), o, mask=mask), mean), scale, shift)
            kb.vstore(y, kb.ptr(nid), o, mask=mask)

        with kb.loop(lo, hi) as i:
            if hw == 1:  # [N, F]: vectors of features
                def features(off, mask):
                    k = coefficients(lambda v, o: kb.vload(kb.ptr(v), o, mask=mask), off, ir.Constant(vec(VW), eps))
                    normalise(kb.add(kb.mul(i, c), off), mask, *k)
                row_vectors(kb, c, features)
            else:
                with kb.loop(0, c) as ch:
                    k = [kb.splat(v) for v in coefficients(lambda v, o: kb.load(kb.ptr(v), o), ch, kb.const(eps))]
                    base = kb.mul(kb.add(kb.mul(i, c), ch), hw)
                    row_vectors(kb, hw, lambda off, mask: normalise(kb.add(base, off), mask, *k))

    return Kernel([x, gamma, beta, stats, nid], n, node.type.numel * 2, emit, names=["batchnorm_train"])


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
