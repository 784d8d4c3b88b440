"""ONNX export: a model's inference graph as an ONNX model (`odc export`, `Model.export_onnx`).

What is exported is the graph behind `Model.forward` before code generation: the forward
pipeline's graph after its `inference` pass (`shape-infer` without bindings, so the batch size
stays the input's symbol, an ONNX `dim_param`; `dce`; `inference`, after which each batch norm
normalises with its running statistics, as elementwise arithmetic on the state arguments
`<layer>.running_mean` and `.running_var`, and dropout is the identity). The input keeps its
name and type from the .od file; the output is `logits`; every parameter and running statistic
the graph reads is an initializer under its odc name, in odc's layouts, which are PyTorch's and
ONNX's (NCHW images, OIHW convolution weights, [out, in] dense weights). The exporter names the
value of odc node %i `/<op>_<i>` and its helper values `/<ONNX op>/<k>`: odc's names never hold
a slash.

Opset 17 by default (the first with LayerNormalization); any opset from 17 up to the newest the
installed onnx knows may be asked for. Only the reductions differ between them: ReduceMean and
ReduceMax take their axes as an attribute in opset 17 and as an input from 18 (ReduceSum from 13).
The model's IR version is the oldest that carries its opset, which older runtimes read.

Each odc op becomes standard ONNX ops (x the first operand, s a scalar of x's element type):

    relu tanh sigmoid exp log sqrt abs neg erf      Relu Tanh Sigmoid Exp Log Sqrt Abs Neg Erf
    softplus hardswish                              Softplus HardSwish
    add sub mul div maximum minimum matmul          Add Sub Mul Div Max Min MatMul
    relu6, hardtanh(lo, hi), clip(lo, hi)           Clip(x, s, s)
    leaky_relu, elu, selu                           LeakyRelu(alpha=slope), Elu(alpha), Selu
    hardsigmoid                                     HardSigmoid(alpha=1/6, beta=1/2)
    silu, mish                                      x * Sigmoid(x), x * Tanh(Softplus(x))
    gelu (none, tanh)                               0.5 x (1 + Erf(x / sqrt 2)), 0.5 x (1 + Tanh(...))
    pow(exponent)                                   Pow(x, s)
    const, per_channel                              an initializer (a scalar; [1, C, 1, 1])
    from_u8                                         Div(Cast(x, to=FLOAT), 255)
    linear (dense)                                  Gemm(transB=1) on [N, F]; MatMul + Add on [N, T, F]
    conv2d                                          Conv (pads [top, left, bottom, right], group)
    maxpool2d, avgpool2d                            MaxPool, AveragePool(count_include_pad=1)
    adaptive_avgpool2d {size=[h, w]}                MatMul(MatMul(R, x), C): R [h, H] and C [W, w]
                                                    average each adaptive window's rows, columns
    sum, mean, max                                  ReduceSum, ReduceMean, ReduceMax
    softmax, log_softmax                            Softmax, LogSoftmax
    reshape, transpose, concat                      Reshape (the batch size as -1), Transpose, Concat
    pad                                             Pad(mode=constant; a negative amount crops)
    slice                                           Slice (the resolved start, end and step)
    layernorm                                       LayerNormalization(axis=-1, epsilon)
    dropout                                         Identity

Batch norms are gone after `inference`, and `global_avgpool2d` and the divisible cases of
`adaptive_avgpool2d` are `mean` and `avgpool2d` already. Any other op (the gradients, the
losses: ops of training graphs) is a CompileError naming the op at its source line, never a
graph that computes something else; so is a reshape to a shape with two sizes known only at run
time, which Reshape cannot express with one -1.

A recipe with `normalize` or `augment` makes odc's forward take uint8 pixels (0 to 255) and
scale them to [0, 1] (`from_u8`), then normalise them with the recipe's mean and std per channel
(`per_channel` constants): the exported model does the same, and so takes the same uint8 input.
With `normalize` (`--normalize`), it takes f32 images already scaled to [0, 1] instead and
normalises them itself: the graph without its `from_u8`; a model that does not normalise its
input (a recipe without `normalize`) refuses it. The model's doc string says what it takes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from odc.checkpoint import write_atomic
from odc.errors import CompileError, Diagnostic, OdcError
from odc.ir.dtypes import NP_DTYPES
from odc.ir.graph import ARG_OPS, Graph, Node, TensorType
from odc.ir.ops import axes_of, normalize_axis
from odc.ir.ops.conv import Geometry
from odc.ir.ops.elementwise import SELU_ALPHA, SELU_SCALE, SQRT_2_PI
from odc.ir.ops.norm import eps
from odc.ir.ops.pool import Window, adaptive_bounds
from odc.ir.ops.tensor import pad_pairs, slice_range
from odc.version import __version__

MIN_OPSET = 17


def require_onnx():
    """The onnx package, or an OdcError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise OdcError("ONNX export needs the onnx package, which is not installed\n"
                       "hint: pip install 'odc[onnx]'") from None
    return onnx


def check_opset(opset: int) -> None:
    """An OdcError unless odc can export `opset`: from 17 to the newest the installed onnx knows."""
    onnx = require_onnx()
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise OdcError(f"cannot export ONNX opset {opset}: odc exports opsets {MIN_OPSET} to {newest} "
                       f"(the newest that the installed onnx {onnx.__version__} knows)\n"
                       f"hint: leave the opset out for opset {MIN_OPSET}")


def export_onnx(model, path, opset: int = MIN_OPSET, normalize: bool = False):
    """Write the inference graph of `model` (an `odc.program.Model`) to `path` as an ONNX model,
    atomically and only once `onnx.checker` (full check) accepts the written bytes; returns the
    `onnx.ModelProto`."""
    onnx = require_onnx()
    if not Path(path).name:
        raise OdcError(f"cannot write the ONNX model to {str(path)!r}: it names no file")
    proto = to_onnx(model, opset, normalize)
    write_atomic(path, proto.SerializeToString(), "the ONNX model",
                 verify=lambda tmp: onnx.checker.check_model(str(tmp), full_check=True))
    return proto


def inference_graph(program) -> Graph:
    """The forward graph of `program` after the `inference` pass of its pipeline, as
    `Model.forward` compiles it (before fusion), for a symbolic batch."""
    return dict(program.stages("forward"))["inference"]


def to_onnx(model, opset: int = MIN_OPSET, normalize: bool = False):
    """The `onnx.ModelProto` of `model`'s inference graph (see the module)."""
    check_opset(opset)
    onnx = require_onnx()
    prog = model.program
    g = inference_graph(prog)
    if normalize:
        g = taking_floats(g)
    b = Builder(onnx, opset, g)
    arrays = {"param": model.params, "state": model.state}
    names: dict[int, str] = {}
    for a in g.args_of():
        names[a.id] = a.name if a.op == "input" else b.const(arrays[a.op][a.name], name=a.name)
    out = g.output("logits")
    for n in g.nodes():
        if n.op not in ARG_OPS:
            names[n.id] = "logits" if n.id == out else f"/{n.op}_{n.id}"
            translate(b, n, [names[a] for a in n.args], names[n.id])
    if names[out] != "logits":  # the model returns an argument as it is
        b.op("Identity", names[out], out="logits")
    helper = onnx.helper
    graph = helper.make_graph(b.nodes, prog.name, [b.value_info(a.name, a.type) for a in g.inputs()],
                              [b.value_info("logits", g.type(out))], b.initializers)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
                             producer_name="odc", producer_version=__version__, doc_string=describe(g, prog.recipe))


def normalises(g: Graph) -> bool:
    """Does `g` normalise its input (the recipe's normalize step, as `per_channel` constants)?"""
    return any(n.op == "per_channel" for n in g.nodes())


def taking_floats(g: Graph) -> Graph:
    """`g`, which converts uint8 pixels and normalises them, taking f32 images in [0, 1] instead:
    without its conversions `from_u8`."""
    if not normalises(g):
        raise OdcError("cannot put the recipe's normalize step into the ONNX model: the model does not "
                       "normalize its input (its recipe has no normalize step)\n"
                       "hint: export without --normalize (normalize=False); the model then takes its "
                       "input as odc's forward does")
    g = g.copy()
    image = g.inputs()[0]
    for n in [n for n in g.nodes() if n.op == "from_u8"]:
        g.replace_uses(n.id, n.args[0])
        g.remove(n.id)
    image.type = TensorType("f32", image.type.shape)
    return g


def describe(g: Graph, recipe: dict) -> str:
    """What the exported model takes and gives, in words."""
    image = g.inputs()[0]
    takes = ("pixels from 0 to 255, which it scales to [0, 1]" if image.type.dtype == "u8"
             else "images scaled to [0, 1]")
    if normalises(g):
        spec = recipe["normalize"]
        takes += (" and" if image.type.dtype == "u8" else ", which it") + (
            f" normalises per channel with mean {spec['mean']} and std {spec['std']}")
    return f"input {image.name}: {image.type}, {takes}; output logits: {g.type(g.output('logits'))}"


class Builder:
    """The ONNX nodes and initializers of one graph, as they are made. `g` is the odc graph
    being translated (its types)."""

    def __init__(self, onnx, opset: int, g: Graph):
        self.onnx, self.opset, self.g = onnx, opset, g
        self.nodes: list = []
        self.initializers: list = []
        self.count = 0

    def fresh(self, kind: str) -> str:
        self.count += 1
        return f"/{kind}/{self.count}"

    def op(self, kind: str, *inputs: str, out: str | None = None, **attrs) -> str:
        """Add an ONNX node of type `kind`; returns the name of its output (`out`, or a new one)."""
        out = out or self.fresh(kind)
        self.nodes.append(self.onnx.helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def const(self, value, dtype=None, name: str | None = None) -> str:
        """An initializer holding `value` (as `dtype`, if given); returns its name."""
        name = name or self.fresh("const")
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def ints(self, values) -> str:
        return self.const(list(values), np.int64)

    def scalar(self, value: float, n: Node) -> str:
        """A scalar of `n`'s element type."""
        return self.const(value, NP_DTYPES[n.type.dtype])

    def shape(self, nid: int) -> tuple:
        return self.g.type(nid).shape

    def elem(self, t: TensorType) -> int:
        """The ONNX element type of `t`."""
        return self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(NP_DTYPES[t.dtype]))

    def value_info(self, name: str, t: TensorType):
        """A graph input or output: a size symbol becomes a dim_param."""
        return self.onnx.helper.make_tensor_value_info(name, self.elem(t), list(t.shape))


# -- the mapping: odc op -> function(builder, node, operand names, output name) ----------------
MAPPING: dict = {}
SAME = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
        "abs": "Abs", "neg": "Neg", "erf": "Erf", "softplus": "Softplus", "hardswish": "HardSwish",
        "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "maximum": "Max", "minimum": "Min",
        "matmul": "MatMul", "dropout": "Identity"}
for _op, _kind in SAME.items():
    MAPPING[_op] = (lambda kind: lambda b, n, xs, out: b.op(kind, *xs, out=out))(_kind)


def translate(b: Builder, n: Node, xs: list[str], out: str) -> None:
    """Add the ONNX nodes that compute `n` from the values `xs` into the value `out`."""
    if n.op not in MAPPING:
        raise CompileError(Diagnostic(f"ONNX export: the op {n.op} has no ONNX mapping", n.span,
                                      "docs/export.md lists the ops that odc exports"))
    MAPPING[n.op](b, n, xs, out)


def maps(*ops: str):
    """Register the decorated function as the translation of `ops`."""
    def register(fn):
        for op in ops:
            MAPPING[op] = fn
        return fn
    return register


@maps("relu6", "hardtanh", "clip")
def _clip(b, n, xs, out):
    lo, hi = (0, 6) if n.op == "relu6" else (n.attrs["lo"], n.attrs["hi"])
    b.op("Clip", xs[0], b.scalar(lo, n), b.scalar(hi, n), out=out)


@maps("leaky_relu")
def _leaky_relu(b, n, xs, out):
    b.op("LeakyRelu", xs[0], out=out, alpha=float(n.attrs["slope"]))


@maps("elu")
def _elu(b, n, xs, out):
    b.op("Elu", xs[0], out=out, alpha=float(n.attrs["alpha"]))


@maps("selu")
def _selu(b, n, xs, out):
    b.op("Selu", xs[0], out=out, alpha=SELU_ALPHA, gamma=SELU_SCALE)


@maps("hardsigmoid")
def _hardsigmoid(b, n, xs, out):
    b.op("HardSigmoid", xs[0], out=out, alpha=1 / 6, beta=0.5)


@maps("silu")
def _silu(b, n, xs, out):
    b.op("Mul", xs[0], b.op("Sigmoid", xs[0]), out=out)


@maps("mish")
def _mish(b, n, xs, out):
    b.op("Mul", xs[0], b.op("Tanh", b.op("Softplus", xs[0])), out=out)


@maps("gelu")
def _gelu(b, n, xs, out):
    """0.5 x (1 + erf(x / sqrt 2)), or with approximate="tanh" 0.5 x (1 + tanh(sqrt(2 / pi)
    (x + 0.044715 x^3))), as the catalog computes them."""
    x = xs[0]
    if n.attrs["approximate"] == "tanh":
        cube = b.op("Mul", x, b.op("Mul", x, x))
        inner = b.op("Mul", b.scalar(SQRT_2_PI, n), b.op("Add", x, b.op("Mul", b.scalar(0.044715, n), cube)))
        curve = b.op("Tanh", inner)
    else:
        curve = b.op("Erf", b.op("Mul", x, b.scalar(1 / np.sqrt(2), n)))
    b.op("Mul", b.op("Mul", b.scalar(0.5, n), x), b.op("Add", b.scalar(1, n), curve), out=out)


@maps("pow")
def _pow(b, n, xs, out):
    b.op("Pow", xs[0], b.scalar(n.attrs["exponent"], n), out=out)


@maps("const")
def _const(b, n, xs, out):
    b.const(n.attrs["value"], NP_DTYPES[n.type.dtype], name=out)


@maps("from_u8")
def _from_u8(b, n, xs, out):
    b.op("Div", b.op("Cast", xs[0], to=b.elem(n.type)), b.scalar(255, n), out=out)


@maps("per_channel")
def _per_channel(b, n, xs, out):
    b.const(np.reshape(n.attrs["values"], n.type.shape), NP_DTYPES[n.type.dtype], name=out)


@maps("linear")
def _linear(b, n, xs, out):
    """x @ w.T (+ bias): Gemm on [N, F]; on [N, T, F] a MatMul with the transposed weight."""
    x, w, *bias = xs
    if len(b.shape(n.args[0])) == 2:
        b.op("Gemm", x, w, *bias, out=out, transB=1)
        return
    y = b.op("MatMul", x, b.op("Transpose", w, perm=[1, 0]), out=None if bias else out)
    if bias:
        b.op("Add", y, bias[0], out=out)


@maps("conv2d")
def _conv2d(b, n, xs, out):
    g = Geometry.of(n.attrs)
    top, bottom, left, right = g.pad
    b.op("Conv", *xs, out=out, kernel_shape=list(b.shape(n.args[1])[2:]), strides=list(g.stride),
         pads=[top, left, bottom, right], dilations=list(g.dilation), group=g.groups)


@maps("maxpool2d", "avgpool2d")
def _pool(b, n, xs, out):
    win = Window.of(n.attrs)
    ph, pw = win.pad
    extra = {"count_include_pad": 1} if n.op == "avgpool2d" else {}
    b.op("MaxPool" if n.op == "maxpool2d" else "AveragePool", xs[0], out=out, kernel_shape=list(win.kernel),
         strides=list(win.stride), pads=[ph, pw, ph, pw], **extra)


def averaging(size: int, out: int, dtype) -> np.ndarray:
    """[out, size]: row i averages the inputs of adaptive window i along one axis."""
    m = np.zeros((out, size), dtype)
    for i, (lo, hi) in enumerate(adaptive_bounds(size, out)):
        m[i, lo:hi] = 1 / (hi - lo)
    return m


@maps("adaptive_avgpool2d")
def _adaptive_avgpool2d(b, n, xs, out):
    (h, w), (H, W) = n.attrs["size"], b.shape(n.args[0])[2:]
    dtype = NP_DTYPES[n.type.dtype]
    rows = b.op("MatMul", b.const(averaging(H, h, dtype)), xs[0])
    b.op("MatMul", rows, b.const(averaging(W, w, dtype).T), out=out)


@maps("sum", "mean", "max")
def _reduce(b, n, xs, out):
    kind = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax"}[n.op]
    axes = list(axes_of(n.attrs, len(b.shape(n.args[0]))))
    keep = int(bool(n.attrs.get("keepdims", False)))
    if n.op == "sum" or b.opset >= 18:
        b.op(kind, xs[0], b.ints(axes), out=out, keepdims=keep)
    else:
        b.op(kind, xs[0], out=out, axes=axes, keepdims=keep)


@maps("softmax", "log_softmax")
def _softmax(b, n, xs, out):
    b.op("Softmax" if n.op == "softmax" else "LogSoftmax", xs[0], out=out, axis=n.attrs.get("axis", -1))


@maps("reshape")
def _reshape(b, n, xs, out):
    """The target is the node's type, its one size known only at run time as -1."""
    shape = n.type.shape
    if sum(isinstance(d, str) for d in shape) > 1:
        raise CompileError(Diagnostic(f"ONNX export: a reshape to {n.type}, with more than one size known only "
                                      f"at run time, has no ONNX mapping", n.span))
    b.op("Reshape", xs[0], b.ints(-1 if isinstance(d, str) else d for d in shape), out=out)


@maps("transpose")
def _transpose(b, n, xs, out):
    b.op("Transpose", xs[0], out=out, perm=list(n.attrs["perm"]))


@maps("concat")
def _concat(b, n, xs, out):
    b.op("Concat", *xs, out=out, axis=normalize_axis(n.attrs["axis"], len(n.type.shape)))


@maps("pad")
def _pad(b, n, xs, out):
    pairs = pad_pairs(n.attrs["pads"], len(n.type.shape))
    pads = [before for before, _ in pairs] + [after for _, after in pairs]
    b.op("Pad", xs[0], b.ints(pads), b.scalar(n.attrs.get("value", 0.0), n), out=out, mode="constant")


@maps("slice")
def _slice(b, n, xs, out):
    shape = b.shape(n.args[0])
    axis, step = normalize_axis(n.attrs["axis"], len(shape)), n.attrs.get("step", 1)
    first, count = slice_range(shape[axis], n.attrs["start"], n.attrs["stop"], step)
    last = first + (count - 1) * step
    b.op("Slice", xs[0], b.ints([first]), b.ints([last + 1]), b.ints([axis]), b.ints([step]), out=out)


@maps("layernorm")
def _layernorm(b, n, xs, out):
    b.op("LayerNormalization", *xs, out=out, axis=-1, epsilon=eps(n.attrs))
