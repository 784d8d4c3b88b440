"""Reverse-mode derivative rules (vector-Jacobian products), one per differentiable op.

A rule is called as ``rule(e, node, y, dy)``: `e` is an `Emit` that adds typed nodes to the graph
being differentiated (tagged with the forward node's source span), `node` the forward node, `y`
the id of its result and `dy` the id of the loss's gradient with respect to `y` (same type). It
returns one entry per operand: the id of the gradient with respect to that operand (same type as
the operand), or None where the operand has no gradient (integer labels, or a zero derivative).

Rules are written with ordinary ops so that a fusion pass sees plain elementwise chains; only
the convolution and pooling derivatives have ops of their own, with `broadcast_to` and `sign`
(in `odc.ir.ops`). Importing this module attaches every rule to its `OpDef.vjp`.
"""
from __future__ import annotations

from math import prod

from odc.errors import CompileError, Diagnostic
from odc.ir import ops
from odc.ir.graph import Graph, Node


class Emit:
    """Adds nodes to `g`, typing each with its op's type rule; a type error becomes a
    CompileError at `span` (the source of the nodes)."""

    def __init__(self, g: Graph, span=None):
        self.g, self.span = g, span

    def __call__(self, op: str, *args: int, **attrs) -> int:
        try:
            t = ops.get(op).infer([self.g.type(a) for a in args], attrs)
        except ops.ShapeError as err:
            raise CompileError(Diagnostic(err.message, self.span, err.hint)) from None
        return self.g.add(op, args, attrs, t, self.span)

    def const(self, value: float, dtype: str) -> int:
        return self("const", value=float(value), dtype=dtype)

    def shape(self, nid: int) -> tuple:
        return self.g.type(nid).shape

    def dtype(self, nid: int) -> str:
        return self.g.type(nid).dtype


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


RULES = {}


def rule(*names):
    def register(fn):
        for name in names:
            RULES[name] = fn
        return fn
    return register


# -- elementwise ----------------------------------------------------------------------------
@rule("relu")
def _relu(e, n, y, dy):
    return (e("mul", dy, e("relu", e("sign", y))),)


@rule("tanh")
def _tanh(e, n, y, dy):
    return (e("mul", dy, e("sub", e.const(1, e.dtype(y)), e("mul", y, y))),)


@rule("sigmoid")
def _sigmoid(e, n, y, dy):
    return (e("mul", e("mul", dy, y), e("sub", e.const(1, e.dtype(y)), y)),)


@rule("exp")
def _exp(e, n, y, dy):
    return (e("mul", dy, y),)


@rule("log")
def _log(e, n, y, dy):
    return (e("div", dy, n.args[0]),)


@rule("sqrt")
def _sqrt(e, n, y, dy):
    return (e("div", e("mul", dy, e.const(0.5, e.dtype(y))), y),)


@rule("abs")
def _abs(e, n, y, dy):
    return (e("mul", dy, e("sign", n.args[0])),)


@rule("neg")
def _neg(e, n, y, dy):
    return (e("neg", dy),)


@rule("sign")
def _sign(e, n, y, dy):
    return (None,)


@rule("dropout", "broadcast_to")
def _broadcast(e, n, y, dy):
    """dropout is the identity (a mask multiplies instead in training graphs)."""
    return (unbroadcast(e, dy, e.shape(n.args[0])),)


@rule("add")
def _add(e, n, y, dy):
    a, b = n.args
    return unbroadcast(e, dy, e.shape(a)), unbroadcast(e, dy, e.shape(b))


@rule("sub")
def _sub(e, n, y, dy):
    a, b = n.args
    return unbroadcast(e, dy, e.shape(a)), unbroadcast(e, e("neg", dy), e.shape(b))


@rule("mul")
def _mul(e, n, y, dy):
    a, b = n.args
    return unbroadcast(e, e("mul", dy, b), e.shape(a)), unbroadcast(e, e("mul", dy, a), e.shape(b))


@rule("div")
def _div(e, n, y, dy):
    a, b = n.args
    da = e("div", dy, b)
    return unbroadcast(e, da, e.shape(a)), unbroadcast(e, e("neg", e("mul", da, y)), e.shape(b))


# -- linear algebra -------------------------------------------------------------------------
@rule("matmul")
def _matmul(e, n, y, dy):
    a, b = n.args
    da = e("matmul", dy, e("transpose", b, perm=[1, 0]))
    lead = e.shape(a)[:-1]
    if len(lead) > 1:  # fold the leading axes of a and dy into one
        if not all(isinstance(d, int) for d in lead):
            raise CompileError(Diagnostic(
                f"odc cannot differentiate matmul with a left operand {e.g.type(a)} of more than two "
                f"axes and a symbolic size", e.span, "flatten the left operand to two axes first"))
        a = e("reshape", a, shape=[-1, e.shape(a)[-1]])
        dy = e("reshape", dy, shape=[-1, e.shape(dy)[-1]])
    return da, e("matmul", e("transpose", a, perm=[1, 0]), dy)


@rule("linear")
def _linear(e, n, y, dy):
    x, w = n.args[:2]
    grads = (e("matmul", dy, w), e("matmul", e("transpose", dy, perm=[1, 0]), x))
    return grads + ((e("sum", dy, axis=0),) if len(n.args) == 3 else ())


@rule("conv2d")
def _conv2d(e, n, y, dy):
    x, w = n.args[:2]
    sp = {"stride": n.attrs.get("stride", 1), "pad": n.attrs.get("pad", 0)}
    dx = e("conv2d_grad_input", dy, w, size=list(e.shape(x)[2:]), **sp)
    dw = e("conv2d_grad_weight", dy, x, kernel=list(e.shape(w)[2:]), **sp)
    return (dx, dw) + ((e("sum", dy, axis=[0, 2, 3]),) if len(n.args) == 3 else ())


@rule("maxpool2d")
def _maxpool2d(e, n, y, dy):
    k = n.attrs["kernel"]
    return (e("maxpool2d_grad", dy, n.args[0], kernel=k, stride=n.attrs.get("stride", k)),)


@rule("avgpool2d")
def _avgpool2d(e, n, y, dy):
    k = n.attrs["kernel"]
    return (e("avgpool2d_grad", dy, kernel=k, stride=n.attrs.get("stride", k),
              size=list(e.shape(n.args[0])[2:])),)


@rule("batchnorm2d")
def _batchnorm2d(e, n, y, dy):
    """y = xhat * gamma + beta with xhat = (x - mean) / sqrt(var + eps) over the batch's N, H, W:
    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps) with g = dy * gamma."""
    x, gamma = n.args[:2]
    dt, axes = e.dtype(x), [0, 2, 3]
    xc = e("sub", x, e("mean", x, axis=axes, keepdims=True))
    var = e("mean", e("mul", xc, xc), axis=axes, keepdims=True)
    std = e("sqrt", e("add", var, e.const(n.attrs.get("eps", 1e-5), dt)))
    xhat = e("div", xc, std)
    g = e("mul", dy, e("reshape", gamma, shape=[1, e.shape(gamma)[0], 1, 1]))
    dx = e("sub", e("sub", g, e("mean", g, axis=axes, keepdims=True)),
           e("mul", xhat, e("mean", e("mul", g, xhat), axis=axes, keepdims=True)))
    return (e("div", dx, std), e("sum", e("mul", dy, xhat), axis=axes), e("sum", dy, axis=axes))


# -- shape manipulation ---------------------------------------------------------------------
@rule("reshape")
def _reshape(e, n, y, dy):
    return (e("reshape", dy, shape=list(e.shape(n.args[0]))),)


@rule("transpose")
def _transpose(e, n, y, dy):
    perm = n.attrs["perm"]
    return (e("transpose", dy, perm=[perm.index(i) for i in range(len(perm))]),)


# -- reductions and normalisations ----------------------------------------------------------
@rule("sum")
def _sum(e, n, y, dy):
    shape = e.shape(n.args[0])
    axes = ops.axes_of(n.attrs, len(shape))
    return (expand(e, keep_reduced(e, dy, shape, axes, n.attrs.get("keepdims", False)), shape),)


@rule("mean")
def _mean(e, n, y, dy):
    shape = e.shape(n.args[0])
    axes = ops.axes_of(n.attrs, len(shape))
    dy = keep_reduced(e, dy, shape, axes, n.attrs.get("keepdims", False))
    return (expand(e, e("div", dy, count(e, shape, axes, e.dtype(dy))), shape),)


@rule("max")
def _max(e, n, y, dy):
    """The gradient is shared equally by the maxima of each reduced slice (as torch.amax)."""
    x = n.args[0]
    shape, keep = e.shape(x), n.attrs.get("keepdims", False)
    axes = ops.axes_of(n.attrs, len(shape))
    # y - x >= 0, so sign(y - x) is 0 exactly at the maxima and 1 elsewhere
    is_max = e("sub", e.const(1, e.dtype(x)), e("sign", e("sub", keep_reduced(e, y, shape, axes, keep), x)))
    share = e("div", keep_reduced(e, dy, shape, axes, keep), e("sum", is_max, axis=list(axes), keepdims=True))
    return (e("mul", is_max, share),)


@rule("softmax")
def _softmax(e, n, y, dy):
    ax = n.attrs.get("axis", -1)
    return (e("mul", y, e("sub", dy, e("sum", e("mul", dy, y), axis=ax, keepdims=True))),)


@rule("log_softmax")
def _log_softmax(e, n, y, dy):
    ax = n.attrs.get("axis", -1)
    return (e("sub", dy, e("mul", e("exp", y), e("sum", dy, axis=ax, keepdims=True))),)


# -- losses ---------------------------------------------------------------------------------
@rule("cross_entropy")
def _cross_entropy(e, n, y, dy):
    """mean over the batch of -log_softmax(logits)[label]: (softmax - one_hot(label)) * dy / N."""
    logits, labels = n.args
    shape, dt = e.shape(logits), e.dtype(logits)
    p = e("sub", e("softmax", logits, axis=-1), e("one_hot", labels, classes=shape[1], dtype=dt))
    return e("mul", p, e("div", dy, count(e, shape, [0], dt))), None


@rule("mse")
def _mse(e, n, y, dy):
    a, b = n.args
    shape, dt = e.shape(a), e.dtype(a)
    scale = e("div", e("mul", dy, e.const(2, dt)), count(e, shape, range(len(shape)), dt))
    da = e("mul", e("sub", a, b), scale)
    return da, e("neg", da)


def _attach():
    for name, fn in RULES.items():
        ops.get(name).vjp = fn


_attach()


def gradient(g: Graph, node: Node, y: int, dy: int) -> tuple:
    """The gradients of `node`'s operands, built into `g` (see the module docstring)."""
    return ops.get(node.op).vjp(Emit(g, node.span), node, y, dy)
