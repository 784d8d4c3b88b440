"""Elementwise ops: computed index by index, broadcast like NumPy, fused by code generation.

Each entry is one `unary` or `binary` call: the op's numpy reference, its derivative rule, its
scalar formula for code generation (from the scalar ops `s.add`, `s.mul`, `s.exp`, `s.select`,
`s.lt`, ... that `odc.codegen.kernels.elementwise` provides; numbers stand for constants) and
its cost. A unary op is also a built-in of the language, `op(x)`, unless `builtin=False`.
"""
from __future__ import annotations

import numpy as np

from odc.ir.graph import TensorType
from odc.ir.ops.core import (Arg, ShapeError, broadcast_shapes, builtin, register, require_float,
                                 unbroadcast)


def _one(b, a, op):
    return b.node(op, [a["x"]], {})


def unary(name: str, fn, vjp, scalar, cost: float, builtin_: bool = True):
    def infer(ts, attrs):
        require_float(ts[0], name)
        return ts[0]
    register(name, infer, lambda x, attrs: fn(x).astype(x.dtype, copy=False), vjp,
             codegen="elementwise", scalar=scalar, cost=cost, dtypes=("f32", "f64"))
    if builtin_:
        builtin(name, lambda b, a: _one(b, a, name), Arg("x", "tensor"))


def binary(name: str, fn, vjp, scalar):
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
    register(name, infer, lambda a, b, attrs: fn(a, b), vjp, codegen="elementwise", scalar=scalar,
             cost=1 if name == "div" else 0.1, dtypes=("f32", "f64"))


def _sigmoid(x):
    return np.exp(-np.logaddexp(0, -x))


unary("relu", lambda x: np.maximum(x, 0),
      lambda e, n, y, dy: (e("mul", dy, e("relu", e("sign", y))),),
      lambda s, x: s.select(s.lt(x, 0), 0, x), 0.1)
unary("tanh", np.tanh,
      lambda e, n, y, dy: (e("mul", dy, e("sub", e.const(1, e.dtype(y)), e("mul", y, y))),),
      lambda s, x: s.libm("tanh", x), 20)
unary("sigmoid", _sigmoid,
      lambda e, n, y, dy: (e("mul", e("mul", dy, y), e("sub", e.const(1, e.dtype(y)), y)),),
      lambda s, x: s.div(1, s.add(1, s.exp(s.neg(x)))), 2)
unary("exp", np.exp, lambda e, n, y, dy: (e("mul", dy, y),), lambda s, x: s.exp(x), 1)
unary("log", np.log, lambda e, n, y, dy: (e("div", dy, n.args[0]),), lambda s, x: s.log(x), 10)
unary("sqrt", np.sqrt, lambda e, n, y, dy: (e("div", e("mul", dy, e.const(0.5, e.dtype(y))), y),),
      lambda s, x: s.sqrt(x), 1)
unary("abs", np.abs, lambda e, n, y, dy: (e("mul", dy, e("sign", n.args[0])),), lambda s, x: s.abs(x), 0.1)
unary("neg", np.negative, lambda e, n, y, dy: (e("neg", dy),), lambda s, x: s.neg(x), 0.1, builtin_=False)
# the derivative of relu, abs and max; its own derivative is 0 almost everywhere
unary("sign", np.sign, lambda e, n, y, dy: (None,),
      lambda s, x: s.select(s.gt(x, 0), 1, s.select(s.lt(x, 0), -1, x)), 0.1, builtin_=False)


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


binary("add", np.add, _add_vjp, lambda s, a, b: s.add(a, b))
binary("sub", np.subtract, _sub_vjp, lambda s, a, b: s.sub(a, b))
binary("mul", np.multiply, _mul_vjp, lambda s, a, b: s.mul(a, b))
binary("div", np.divide, _div_vjp, lambda s, a, b: s.div(a, b))


def _broadcast_to_infer(ts, attrs):
    x, shape = ts[0], tuple(attrs["shape"])
    if broadcast_shapes(x.shape, shape) != shape:
        raise ShapeError(f"cannot broadcast {x} to [{', '.join(map(str, shape))}]")
    return x.with_shape(shape)


# broadcast_to(x) {shape}: made by derivative rules; the broadcast is in the operand's strides
register("broadcast_to", _broadcast_to_infer, lambda x, attrs: np.broadcast_to(x, attrs["shape"]).copy(),
         lambda e, n, y, dy: (unbroadcast(e, dy, e.shape(n.args[0])),),
         codegen="elementwise", scalar=lambda s, x: x, cost=0, dtypes=("f32", "f64"))
