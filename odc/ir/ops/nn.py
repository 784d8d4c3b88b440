"""Dense layers and dropout. `dense` creates its weight [out, in] and bias [out] with PyTorch's
default initialisation (U(-b, b), b = 1/sqrt(in)); the op `linear` takes them as operands and
applies them to the last axis of a [N, F] or [N, T, F] input."""
from __future__ import annotations

from odc.ir.graph import TensorType
from odc.ir.ops.core import Arg, ShapeError, builtin, default_init, register, require_float, require_rank


# -- dense ------------------------------------------------------------------------------------
def _linear_infer(ts, attrs):
    """x [N, F] or [N, T, F] @ w[O, F].T (+ b[O]) -> [N, O] or [N, T, O], as nn.Linear."""
    x, w = ts[0], ts[1]
    if x.rank != 3:
        require_rank(x, 2, "dense", "[batch, features]", "insert flatten(x) before dense")
    if x.shape[-1] != w.shape[1]:
        raise ShapeError(f"dense weight {w} does not match input {x}")
    if len(ts) == 3 and ts[2].shape != (w.shape[0],):
        raise ShapeError(f"dense bias {ts[2]} does not match weight {w}")
    return TensorType(x.dtype, x.shape[:-1] + (w.shape[0],))


def _linear_ref(x, w, *rest):
    y = x @ w.T
    return y + rest[0] if len(rest) == 2 else y


def _linear_vjp(e, n, y, dy):
    """dx = dy @ w; dw = dy^T @ x over every row (a 3-D input's rows folded into one axis when
    its sizes are known, else one product per batch item, summed); db = dy summed over rows."""
    x, w = n.args[:2]
    shape = e.shape(x)
    dx = e("matmul", dy, w)
    if len(shape) == 2:
        dw = e("matmul", e("transpose", dy, perm=[1, 0]), x)
        db = e("sum", dy, axis=0)
    else:
        if all(isinstance(d, int) for d in shape):
            rows_x, rows_dy = e("reshape", x, shape=[-1, shape[-1]]), e("reshape", dy, shape=[-1, e.shape(dy)[-1]])
            dw = e("matmul", e("transpose", rows_dy, perm=[1, 0]), rows_x)
        else:
            dw = e("sum", e("matmul", e("transpose", dy, perm=[0, 2, 1]), x), axis=0)
        db = e("sum", dy, axis=[0, 1])
    return (dx, dw) + ((db,) if len(n.args) == 3 else ())


def _dense(b, a):
    xt = b.type(a["x"])
    cin, out = b.features(xt, 2), a["out"]  # checks that x is floating-point
    if xt.rank == 3:  # [N, T, F]: applied to the last axis
        cin = xt.shape[2]
        if not isinstance(cin, int):
            b.fail(f"dense needs a known size of the last axis to create its weights, got {xt}")
    params = [("weight", TensorType(xt.dtype, (out, cin)), default_init(cin)),
              ("bias", TensorType(xt.dtype, (out,)), default_init(cin))]
    return b.layer("linear", a["x"], params[:2 if a["bias"] else 1], {})


register("linear", _linear_infer, _linear_ref, _linear_vjp, codegen="anchor")
builtin("dense", _dense, Arg("x", "tensor"), Arg("out", "int"), Arg("bias", "bool", True), params=True)


def _dropout_infer(ts, attrs):
    require_float(ts[0], "dropout")
    if not 0 <= attrs.get("p", 0.5) < 1:
        raise ShapeError(f"dropout probability p must be in [0, 1), got {attrs['p']}")
    return ts[0]


# the identity outside training; the train-mode pass makes it a product with a random mask
register("dropout", _dropout_infer, lambda x, attrs: x, lambda e, n, y, dy: (dy,), codegen="alias",
         training="only")
builtin("dropout", lambda b, a: b.node("dropout", [a["x"]], {"p": a["p"]}), Arg("x", "tensor"),
        Arg("p", "probability"))
