"""Elementwise ops: computed index by index, broadcast like NumPy, fused by code generation.

Each entry is one `unary` or `binary` call: the op's numpy reference `fn(x, attrs)`, its
derivative rule, its scalar formula for code generation (from the scalar ops `s.add`, `s.mul`,
`s.exp`, `s.select`, `s.lt`, `s.libm(...)`, ... that `odc.codegen.kernels.elementwise.Scalar`
provides; a number stands for a constant, `s.attrs` are the node's attributes) and its cost in
cycles per element. Most are also built-ins of the language, `op(x, ...)`, whose extra
arguments become the node's attributes. Semantics, gradients at kinks and ties included, are
PyTorch's (`torch.nn.functional`, `torch.clamp`, `torch.maximum`, `torch.pow`).
"""
from __future__ import annotations

import math

import numpy as np

from odc.ir.graph import TensorType
from odc.ir.ops.core import (Arg, ShapeError, broadcast_shapes, builtin, register, require_float,
                             unbroadcast)

FLOATS = ("f32", "f64")
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
SQRT_2_PI = math.sqrt(2 / math.pi)  # the tanh approximation of gelu
SOFTPLUS_THRESHOLD = 20  # above it softplus(x) is x (PyTorch's default threshold)


def unary(name: str, fn, vjp, scalar, cost: float, *args: Arg, check=None, builtin_: bool = True):
    """`args`: the built-in's arguments after x, kept as attributes; `check(attrs)` raises
    ShapeError for values out of range."""
    def infer(ts, attrs):
        require_float(ts[0], name)
        if check:
            check(attrs)
        return ts[0]
    register(name, infer, lambda x, attrs: np.asarray(fn(x, attrs)).astype(x.dtype, copy=False), vjp,
             codegen="elementwise", scalar=scalar, cost=cost, dtypes=FLOATS)
    if builtin_:
        builtin(name, lambda b, a: b.node(name, [a["x"]], {k.name: a[k.name] for k in args}),
                Arg("x", "tensor"), *args)


def binary(name: str, fn, vjp, scalar, cost: float = 0.1, builtin_: bool = False):
    def infer(ts, attrs):
        a, b = ts
        if a.dtype != b.dtype:
            raise ShapeError(f"{name} of different element types: {a} and {b}")
        shape = broadcast_shapes(a.shape, b.shape)
        if shape is None:
            raise ShapeError(f"incompatible shapes for broadcasting in {name}: {a} and {b}",
                             "shapes are compared from the last dimension; each pair must be "
                             "equal or one of them 1")
        return TensorType(a.dtype, shape)
    register(name, infer, lambda a, b, attrs: np.asarray(fn(a, b)).astype(a.dtype, copy=False), vjp,
             codegen="elementwise", scalar=scalar, cost=cost, dtypes=FLOATS)
    if builtin_:
        builtin(name, lambda b, a: b.node(name, [a["a"], a["b"]], {}), Arg("a", "tensor"), Arg("b", "tensor"))


# -- helpers of the derivative rules ----------------------------------------------------------
def c(e, value, like):
    """A constant of `like`'s element type."""
    return e.const(value, e.dtype(like))


def inside(e, x, lo, hi, strict=True):
    """1 where lo < x < hi (lo <= x <= hi unless strict), else 0."""
    op = "gt" if strict else "ge"
    return e("mul", e(op, x, c(e, lo, x)), e(op, c(e, hi, x), x))


def pick(e, mask, a, b):
    """a where mask is 1, b where it is 0."""
    return e("add", e("mul", mask, a), e("mul", e("sub", c(e, 1, mask), mask), b))


def chain(rule):
    """A derivative rule from dy/dx as a function of (e, node, x, y)."""
    return lambda e, n, y, dy: (e("mul", dy, rule(e, n, n.args[0], y)),)


def _sigmoid(x, attrs=None):
    return np.exp(-np.logaddexp(0, -x))


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _order(attrs):
    if not attrs["lo"] < attrs["hi"]:
        raise ShapeError(f"hardtanh needs lo < hi, got lo={attrs['lo']:g} and hi={attrs['hi']:g}")


def _order_clip(attrs):
    if not attrs["lo"] <= attrs["hi"]:
        raise ShapeError(f"clip needs lo <= hi, got lo={attrs['lo']:g} and hi={attrs['hi']:g}")


def _clamp(s, x, lo, hi):
    return s.select(s.lt(x, lo), lo, s.select(s.gt(x, hi), hi, x))


# -- activations ------------------------------------------------------------------------------
unary("relu", lambda x, a: np.maximum(x, 0),
      lambda e, n, y, dy: (e("mul", dy, e("relu", e("sign", y))),),
      lambda s, x: s.select(s.lt(x, 0), 0, x), 0.1)
unary("relu6", lambda x, a: np.clip(x, 0, 6), chain(lambda e, n, x, y: inside(e, x, 0, 6)),
      lambda s, x: _clamp(s, x, 0, 6), 0.2)
unary("leaky_relu", lambda x, a: np.where(x > 0, x, x * a["slope"]),
      chain(lambda e, n, x, y: pick(e, e("gt", x, c(e, 0, x)), c(e, 1, x), c(e, n.attrs["slope"], x))),
      lambda s, x: s.select(s.gt(x, 0), x, s.mul(x, s.attrs["slope"])), 0.2,
      Arg("slope", "number", 0.01))
unary("elu", lambda x, a: np.where(x > 0, x, a["alpha"] * np.expm1(np.minimum(x, 0))),
      chain(lambda e, n, x, y: pick(e, e("gt", x, c(e, 0, x)), c(e, 1, x),
                                    e("mul", c(e, n.attrs["alpha"], x), e("exp", x)))),
      lambda s, x: s.select(s.gt(x, 0), x, s.mul(s.attrs["alpha"], s.sub(s.exp(x), 1))), 2,
      Arg("alpha", "number", 1))
unary("selu", lambda x, a: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
      chain(lambda e, n, x, y: e("mul", c(e, SELU_SCALE, x), pick(e, e("gt", x, c(e, 0, x)), c(e, 1, x),
                                                                    e("mul", c(e, SELU_ALPHA, x), e("exp", x))))),
      lambda s, x: s.mul(SELU_SCALE, s.select(s.gt(x, 0), x, s.mul(SELU_ALPHA, s.sub(s.exp(x), 1)))), 2)


def _gelu(x, a):
    if a["approximate"] == "tanh":
        return 0.5 * x * (1 + np.tanh(SQRT_2_PI * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _gelu_grad(e, n, x, y):
    if n.attrs["approximate"] == "tanh":  # as PyTorch's gelu backward writes it
        x2 = e("mul", x, x)
        t = e("tanh", e("mul", c(e, SQRT_2_PI, x), e("add", x, e("mul", c(e, 0.044715, x), e("mul", x2, x)))))
        left = e("mul", c(e, 0.5, x), x)
        right = e("add", c(e, 1, x), t)
        dright = e("mul", e("mul", e("sub", c(e, 1, x), e("mul", t, t)), c(e, SQRT_2_PI, x)),
                   e("add", c(e, 1, x), e("mul", c(e, 3 * 0.044715, x), x2)))
        return e("add", e("mul", c(e, 0.5, x), right), e("mul", left, dright))
    cdf = e("mul", c(e, 0.5, x), e("add", c(e, 1, x), e("erf", e("mul", x, c(e, 1 / math.sqrt(2), x)))))
    pdf = e("mul", e("exp", e("mul", e("mul", x, x), c(e, -0.5, x))), c(e, 1 / math.sqrt(2 * math.pi), x))
    return e("add", cdf, e("mul", x, pdf))


def _gelu_scalar(s, x):
    if s.attrs["approximate"] == "tanh":
        inner = s.mul(SQRT_2_PI, s.add(x, s.mul(0.044715, s.mul(x, s.mul(x, x)))))
        return s.mul(s.mul(0.5, x), s.add(1, s.libm("tanh", inner)))
    return s.mul(s.mul(0.5, x), s.add(1, s.libm("erf", s.mul(x, 1 / math.sqrt(2)))))


unary("gelu", _gelu, chain(_gelu_grad), _gelu_scalar, 20,
      Arg("approximate", "choice", "none", choices=("none", "tanh")))
unary("silu", lambda x, a: x * _sigmoid(x),
      chain(lambda e, n, x, y: (lambda sg: e("mul", sg, e("add", c(e, 1, x), e("mul", x, e("sub", c(e, 1, x), sg)))))(
          e("sigmoid", x))),
      lambda s, x: s.div(x, s.add(1, s.exp(s.neg(x)))), 2)
unary("softplus", lambda x, a: np.where(x > SOFTPLUS_THRESHOLD, x, np.logaddexp(0, x)),
      chain(lambda e, n, x, y: pick(e, e("gt", x, c(e, SOFTPLUS_THRESHOLD, x)), c(e, 1, x), e("sigmoid", x))),
      lambda s, x: s.select(s.gt(x, SOFTPLUS_THRESHOLD), x, s.libm("log1p", s.exp(x))), 12)


def _mish_grad(e, n, x, y):
    t = e("tanh", e("softplus", x))  # PyTorch's mish has no threshold; above 20 tanh is 1 anyway
    return e("add", t, e("mul", e("mul", x, e("sigmoid", x)), e("sub", c(e, 1, x), e("mul", t, t))))


unary("mish", lambda x, a: x * np.tanh(np.logaddexp(0, x)), chain(_mish_grad),
      lambda s, x: s.mul(x, s.libm("tanh", s.libm("log1p", s.exp(x)))), 32)
unary("hardtanh", lambda x, a: np.clip(x, a["lo"], a["hi"]),
      chain(lambda e, n, x, y: inside(e, x, n.attrs["lo"], n.attrs["hi"])),
      lambda s, x: _clamp(s, x, s.attrs["lo"], s.attrs["hi"]), 0.2,
      Arg("lo", "number", -1), Arg("hi", "number", 1), check=_order)
unary("hardsigmoid", lambda x, a: np.clip(x + 3, 0, 6) / 6,
      chain(lambda e, n, x, y: e("mul", inside(e, x, -3, 3), c(e, 1 / 6, x))),
      lambda s, x: s.div(_clamp(s, s.add(x, 3), 0, 6), 6), 0.3)
unary("hardswish", lambda x, a: x * np.clip(x + 3, 0, 6) / 6,
      chain(lambda e, n, x, y: e("mul", e("gt", x, c(e, -3, x)),
                                 pick(e, e("gt", c(e, 3, x), x), e("add", e("mul", x, c(e, 1 / 3, x)), c(e, 0.5, x)),
                                      c(e, 1, x)))),
      lambda s, x: s.div(s.mul(x, _clamp(s, s.add(x, 3), 0, 6)), 6), 0.4)
unary("clip", lambda x, a: np.clip(x, a["lo"], a["hi"]),
      chain(lambda e, n, x, y: inside(e, x, n.attrs["lo"], n.attrs["hi"], strict=False)),
      lambda s, x: _clamp(s, x, s.attrs["lo"], s.attrs["hi"]), 0.2,
      Arg("lo", "number"), Arg("hi", "number"), check=_order_clip)

# -- mathematical functions -------------------------------------------------------------------
unary("tanh", lambda x, a: np.tanh(x),
      lambda e, n, y, dy: (e("mul", dy, e("sub", c(e, 1, y), e("mul", y, y))),),
      lambda s, x: s.libm("tanh", x), 20)
unary("sigmoid", _sigmoid,
      lambda e, n, y, dy: (e("mul", e("mul", dy, y), e("sub", c(e, 1, y), y)),),
      lambda s, x: s.div(1, s.add(1, s.exp(s.neg(x)))), 2)
unary("exp", lambda x, a: np.exp(x), lambda e, n, y, dy: (e("mul", dy, y),), lambda s, x: s.exp(x), 1)
unary("log", lambda x, a: np.log(x), lambda e, n, y, dy: (e("div", dy, n.args[0]),), lambda s, x: s.log(x), 10)
unary("sqrt", lambda x, a: np.sqrt(x), lambda e, n, y, dy: (e("div", e("mul", dy, c(e, 0.5, y)), y),),
      lambda s, x: s.sqrt(x), 1)
unary("abs", lambda x, a: np.abs(x), lambda e, n, y, dy: (e("mul", dy, e("sign", n.args[0])),),
      lambda s, x: s.abs(x), 0.1)
unary("neg", lambda x, a: -x, lambda e, n, y, dy: (e("neg", dy),), lambda s, x: s.neg(x), 0.1)
unary("erf", lambda x, a: _erf(x),
      chain(lambda e, n, x, y: e("mul", e("exp", e("neg", e("mul", x, x))), c(e, 2 / math.sqrt(math.pi), x))),
      lambda s, x: s.libm("erf", x), 20)


def _pow_vjp(e, n, y, dy):
    p = n.attrs["exponent"]
    if p == 0:
        return (None,)  # x ** 0 is 1: PyTorch's gradient is 0
    return (e("mul", dy, e("mul", c(e, p, y), e("pow", n.args[0], exponent=p - 1))),)


unary("pow", lambda x, a: np.power(x, a["exponent"]), _pow_vjp, lambda s, x: s.pow(x, s.attrs["exponent"]), 10,
      Arg("exponent", "number"))
# the derivative of relu, abs and max; its own derivative is 0 almost everywhere
unary("sign", lambda x, a: np.sign(x), lambda e, n, y, dy: (None,),
      lambda s, x: s.select(s.gt(x, 0), 1, s.select(s.lt(x, 0), -1, x)), 0.1, builtin_=False)


# -- binary -----------------------------------------------------------------------------------
def _add_vjp(e, n, y, dy):
    a, b = n.args
    return unbroadcast(e, dy, e.shape(a)), unbroadcast(e, dy, e.shape(b))


def _sub_vjp(e, n, y, dy):
    a, b = n.args
    return unbroadcast(e, dy, e.shape(a)), unbroadcast(e, e("neg", dy), e.shape(b))


def _mul_vjp(e, n, y, dy):
    a, b = n.args
    return unbroadcast(e, e("mul", dy, b), e.shape(a)), unbroadcast(e, e("mul", dy, a), e.shape(b))


def _div_vjp(e, n, y, dy):
    a, b = n.args
    da = e("div", dy, b)
    return unbroadcast(e, da, e.shape(a)), unbroadcast(e, e("neg", e("mul", da, y)), e.shape(b))


def _extremum_vjp(first: str):
    """maximum ("gt") and minimum ("lt" of a, b = "gt" of b, a): the gradient goes to the operand
    that is chosen, and half to each where they tie, as PyTorch's."""
    def vjp(e, n, y, dy):
        a, b = n.args
        tie = e("mul", c(e, 0.5, a), e("mul", e("ge", a, b), e("ge", b, a)))
        wins_a, wins_b = (e("gt", a, b), e("gt", b, a)) if first == "a" else (e("gt", b, a), e("gt", a, b))
        return (unbroadcast(e, e("mul", dy, e("add", wins_a, tie)), e.shape(a)),
                unbroadcast(e, e("mul", dy, e("add", wins_b, tie)), e.shape(b)))
    return vjp


binary("add", np.add, _add_vjp, lambda s, a, b: s.add(a, b))
binary("sub", np.subtract, _sub_vjp, lambda s, a, b: s.sub(a, b))
binary("mul", np.multiply, _mul_vjp, lambda s, a, b: s.mul(a, b))
binary("div", np.divide, _div_vjp, lambda s, a, b: s.div(a, b), cost=1)
binary("maximum", np.maximum, _extremum_vjp("a"), lambda s, a, b: s.maximum(a, b), builtin_=True)
binary("minimum", np.minimum, _extremum_vjp("b"), lambda s, a, b: s.minimum(a, b), builtin_=True)
# masks made by derivative rules: 1 where a > b (a >= b), else 0; no gradient
binary("gt", lambda a, b: a > b, lambda e, n, y, dy: (None, None), lambda s, a, b: s.select(s.gt(a, b), 1, 0))
binary("ge", lambda a, b: a >= b, lambda e, n, y, dy: (None, None), lambda s, a, b: s.select(s.ge(a, b), 1, 0))



def _where_infer(ts, attrs):
    cond, a, b = ts
    if not (cond.dtype == a.dtype == b.dtype):
        raise ShapeError(f"where of different element types: {cond}, {a} and {b}")
    shape = broadcast_shapes(cond.shape, broadcast_shapes(a.shape, b.shape) or ())
    if shape is None or broadcast_shapes(a.shape, b.shape) is None:
        raise ShapeError(f"incompatible shapes for broadcasting in where: {cond}, {a} and {b}")
    return TensorType(a.dtype, shape)


def _where_vjp(e, n, y, dy):
    cond, a, b = n.args
    zero = c(e, 0, dy)
    return (None, unbroadcast(e, e("where", cond, dy, zero), e.shape(a)),
            unbroadcast(e, e("where", cond, zero, dy), e.shape(b)))


# where(cond, a, b): a where cond is not 0, else b (a NaN or infinity in the other one does not
# leak through, as it would through cond*a + (1-cond)*b); made by the optimizer pass
register("where", _where_infer, lambda cond, a, b, attrs: np.where(cond != 0, a, b).astype(a.dtype, copy=False),
         _where_vjp,
         codegen="elementwise", scalar=lambda s, cond, a, b: s.select(s.ne(cond, 0), a, b), cost=0.1,
         dtypes=FLOATS)

def _broadcast_to_infer(ts, attrs):
    x, shape = ts[0], tuple(attrs["shape"])
    if broadcast_shapes(x.shape, shape) != shape:
        raise ShapeError(f"cannot broadcast {x} to [{', '.join(map(str, shape))}]")
    return x.with_shape(shape)


# broadcast_to(x) {shape}: made by derivative rules; the broadcast is in the operand's strides
register("broadcast_to", _broadcast_to_infer, lambda x, attrs: np.broadcast_to(x, attrs["shape"]).copy(),
         lambda e, n, y, dy: (unbroadcast(e, dy, e.shape(n.args[0])),),
         codegen="elementwise", scalar=lambda s, x: x, cost=0, dtypes=FLOATS)
