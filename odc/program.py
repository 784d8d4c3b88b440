"""The public Python API: `odc.load(path)` gives a `Program`; `Program.compile()` a `Model`.

A `Model` holds the parameters and the state (optimizer state, batchnorm running statistics) as
numpy arrays, and three graphs made by the pass pipeline from the program's forward graph:
*forward* (after `inference`: logits), *grads* (after `autodiff`: loss, logits and gradients)
and *train* (after `optimizer`: one training step). Each
graph is written for a symbolic batch size; at each call it is specialised to the batch it is
given (shape inference with the symbol bound), compiled by the model's executor once per batch
size, and run. An executor is any function from a graph with concrete shapes to a function from
argument arrays (by name) to output arrays (by name): compiled machine code by default
(`odc.codegen.compile_graph`), or the numpy reference interpreter (`odc.ir.interp.compile_graph`).

A training graph (train, grads) is refused for a batch in which a batch norm sees one value per
channel (N·H·W = 1): its batch variance would divide by n − 1 = 0 and leave NaN in the running
variance, so PyTorch refuses it too (`Model.one_value_per_channel` says whether a batch does).
A model made with `compile(log=f)` calls `f(line)` before and after each compilation (what is
compiled for which batch, and how long it took); by default it is quiet.

Parameters are drawn from their `init` attributes with the recipe's seed (PyTorch's default
initialisation, which the front end writes as `uniform` bounds for the layers' parameters).
Dropout masks are drawn from the same seeded generator at each training call (`train_step`,
`loss_and_grads`); `forward` has no dropout. The IR is verified after every pass: a compiler
bug shows as an `IRVerificationError`, not as a wrong result.
"""
from __future__ import annotations

import time
from math import prod, sqrt
from typing import Callable

import numpy as np

from odc import checkpoint, export
from odc.errors import CompileError, Diagnostic, OdcError, SourceFile
from odc.frontend import parse_file, parse_source
from odc.frontend.recipe import Recipe
from odc.ir.graph import Graph, Node
from odc.ir import interp, ops, passes
from odc.ir.ops import augment
from odc.ir.dtypes import NP_DTYPES
from odc.ir.dot import to_dot
from odc.ir.passes import shape_infer
from odc.ir.printer import print_graph

Executor = Callable[[Graph], Callable[[dict], dict]]
WHAT = {"forward": "forward pass", "grads": "loss and gradients", "train": "train step"}  # for messages


def load(path, model: str | None = None) -> "Program":
    """Parse and check an .od file. `model` picks one of several models; by default as
    `odc.frontend.Module.pick` does."""
    module = parse_file(path)
    return Program(module.lower(model), module.source)


class Program:
    def __init__(self, graph: Graph, source: SourceFile | None = None):
        self.graph = graph  # the forward graph, as lowered by the front end
        self.source = source
        self.name = graph.name
        # the train block as a dict (see odc.frontend.Recipe.as_dict), the defaults without one;
        # may be edited before compile()
        self.recipe = dict(graph.meta.get("recipe") or Recipe(graph.name).as_dict())

    def options(self, target: str = "label") -> dict[str, dict]:
        """The options the recipe gives the passes."""
        return {"augment": {"normalize": self.recipe.get("normalize"), "augment": self.recipe.get("augment", [])},
                "normalize": {"normalize": self.recipe.get("normalize")},
                "autodiff": {"loss": self.recipe["loss"], "target": target,
                             "label_smoothing": self.recipe.get("label_smoothing", 0.0)},
                "optimizer": dict(self.recipe["optimizer"])}

    def stages(self, kind: str = "train", bindings: dict[str, int] | None = None,
               target: str = "label", verify_each: bool | None = None) -> list[tuple[str, Graph]]:
        """The graph after each pass of the pipeline of `kind` (`odc.ir.passes.PIPELINES`), with
        the size symbols in `bindings` made concrete."""
        options = {"shape-infer": {"bindings": bindings}} | self.options(target)
        return passes.run_passes(self.graph, passes.PIPELINES[kind], options, verify_each)

    def lower(self, kind: str = "train", bindings: dict[str, int] | None = None, target: str = "label") -> Graph:
        return self.stages(kind, bindings, target)[-1][1]

    def batch_bindings(self, batch: int) -> dict[str, int]:
        """The batch symbol of the input (its dim 0) bound to `batch`."""
        image = self.graph.inputs()[0]
        sym, *rest = image.type.shape
        if not isinstance(sym, str) or not all(isinstance(d, int) for d in rest):
            raise OdcError(f"input '{image.name}' is {image.type}; specialising to a batch size needs "
                           "a symbolic batch size and fixed other sizes")
        return {sym: batch}

    def ir(self, after: str | None = None, format: str = "text", batch: int | None = None) -> str:
        """The IR of the training step after the pass `after` (default: the last), or after each
        pass with "all". After `inference`, which only the forward graph goes through, the
        forward graph's. With `batch`, the graphs are specialised to that batch size, as for
        compiling (memory planning then places every value)."""
        if after not in (None, "all", *passes.ORDER):
            raise OdcError(f"no pass named '{after}'; the passes are {', '.join(passes.ORDER)}")
        bindings = self.batch_bindings(batch) if batch else None
        stages = dict(self.stages("forward", bindings)) | dict(self.stages("train", bindings))
        show = to_dot if format == "dot" else print_graph
        if after == "all":
            return "".join(f"// after {n}\n{show(stages[n])}" for n in passes.ORDER)
        return show(stages[after or passes.ORDER[-1]])

    def compile(self, executor: Executor | None = None, seed: int | None = None,
                log: Callable[[str], None] | None = None) -> "Model":
        """A model whose graphs run through `executor`: compiled machine code by default
        (`odc.codegen.compile_graph`), or the numpy interpreter (`odc.ir.interp.compile_graph`).
        `log`, if given, is called with a line before and after each compilation."""
        if executor is None:  # imported here: code generation probes the target CPU when imported
            from odc.codegen import compile_graph as executor
        return Model(self, executor,
                     self.recipe.get("seed", 0) if seed is None else seed, log)


def init_param(p: Node, rng: np.random.Generator) -> np.ndarray:
    """A parameter's (or state's) initial value from its `init` attribute: zeros, ones, normal (std),
    uniform (lo, hi), kaiming (as torch.nn.init.kaiming_uniform_: U(±sqrt(6 / fan_in))) or
    xavier (as xavier_uniform_: U(±sqrt(6 / (fan_in + fan_out)))), with fan_in the product of
    the sizes after the first and fan_out = size 0 times the sizes after the second."""
    a, shape = p.attrs, p.type.shape
    init = a.get("init", "zeros")
    fan_in = prod(shape[1:])
    fan_out = shape[0] * prod(shape[2:]) if len(shape) > 1 else fan_in
    bounds = {"kaiming": sqrt(6 / fan_in), "xavier": sqrt(6 / (fan_in + fan_out))}
    if init in ("zeros", "ones"):
        value = np.full(shape, float(init == "ones"))
    elif init == "normal":
        value = rng.normal(0, a.get("std", 1.0), shape)
    elif init == "uniform":
        value = rng.uniform(a.get("lo", 0.0), a.get("hi", 1.0), shape)
    elif init in bounds:
        value = rng.uniform(-bounds[init], bounds[init], shape)
    else:
        raise OdcError(f"parameter {p.name}: unknown initialisation '{init}'")
    return value.astype(NP_DTYPES[p.type.dtype])


def mixes_examples(g: Graph) -> Node | None:
    """The first node of `g` (a graph with a symbolic batch size, the first input's dim 0) at
    which one example's result may depend on another example, or None: one that moves the batch
    axis or reduces over it (its result is not batched while an operand is), or that names axis
    0 of a batched operand (softmax, concat, slice, reductions)."""
    sym = g.inputs()[0].type.shape[0]
    for n in (g.node(i) for i in g.order()):
        batched = [g.type(a) for a in n.args if g.type(a).shape[:1] == (sym,)]
        if sym in n.type.shape[1:] or (batched and n.type.shape[:1] != (sym,)):
            return n
        axis = n.attrs.get("axis")
        axes = [axis] if isinstance(axis, int) else axis if isinstance(axis, list) else []
        if batched and any(a % batched[0].rank == 0 for a in axes):
            return n
    return None


def dropout_masks(g: Graph, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A mask for each dropout mask input of `g` (made by the autodiff pass), drawn from `rng` as
    PyTorch draws one: each element is 0 with probability p, else 1/(1-p). `sizes` binds the
    symbols of the masks' shapes."""
    masks = {}
    for m in g.inputs():
        if "dropout" in m.attrs:
            p = m.attrs["dropout"]
            keep = rng.random(m.type.substitute(sizes).shape) >= p
            masks[m.name] = (keep / (1 - p)).astype(NP_DTYPES[m.type.dtype])
    return masks


class Model:
    def __init__(self, program: Program, executor: Executor, seed: int,
                 log: Callable[[str], None] | None = None):
        self.program = program
        self._executor = executor
        self.log = log  # called with a line before and after each compilation; None: quiet
        self._graphs: dict[tuple, Graph] = {}
        self._compiled: dict[tuple, Callable] = {}
        self.rng = np.random.default_rng(seed)
        # the learning rate of the next train_step: a runtime input of the step (schedules set it)
        self.lr = float(program.recipe["optimizer"]["lr"])
        train = self._graph("train")
        self.params = {p.name: init_param(p, self.rng) for p in train.params()}
        self.state = {s.name: init_param(s, self.rng) for s in train.args_of("state")}

    # -- the public entry points ------------------------------------------------------------
    def forward(self, x) -> np.ndarray:
        """Logits for a batch of inputs of any size. Its examples are independent (batch norms
        use their running statistics, there is no dropout), so a batch smaller than one already
        compiled runs in that code, padded with zeros, rather than compiling again (the last
        batch of an evaluation)."""
        return self._run("forward", x)["logits"]

    def loss_and_grads(self, x, y) -> tuple[float, dict[str, np.ndarray]]:
        """The loss on a batch and its gradient wrt each parameter (declaration order). `y`
        holds integer labels, or, for mse, float targets shaped like the logits."""
        out = self._run("grads", x, y)
        return float(out["loss"]), {k: out[f"grad.{k}"] for k in self.params}

    def train_step(self, x, y) -> float:
        """One optimizer step on a batch with the learning rate `lr`; puts the new arrays into
        `params` and `state` and returns the loss before the step. With `accumulate = k` in the
        recipe, the parameters change at every k-th call only (see `odc.ir.passes.optimizer`)."""
        out = self._run("train", x, y)
        for arrays in (self.params, self.state):
            for k in arrays:  # outputs are fresh arrays: take them instead of copying
                arrays[k] = out[f"new.{k}"]
        return float(out["loss"])

    @property
    def takes_uint8(self) -> bool:
        """Whether the model takes uint8 images (0 to 255) and converts them in its graphs: when
        its recipe has `normalize` or `augment` (see `odc.ir.passes.augment`)."""
        return self._graph("forward").inputs()[0].type.dtype == "u8"

    def one_value_per_channel(self, batch: int) -> Node | None:
        """The first batch norm that would see one value per channel (N·H·W = 1 for
        batchnorm2d, N = 1 for batchnorm1d) in a training batch of `batch` examples, or None.
        Such a batch cannot be trained on (see the module)."""
        g = shape_infer.run(self.program.graph, self.program.batch_bindings(batch))
        for n in (g.node(i) for i in g.order()):
            # an op with running statistics normalises each channel over the other axes of its
            # input, as the catalog says
            if ops.get(n.op).training == "state":
                shape = g.type(n.args[0]).shape
                if prod(shape[a] for a in ops.norm.running(n.op).axes(len(shape))) == 1:
                    return n
        return None

    def export_onnx(self, path, opset: int = export.MIN_OPSET, normalize: bool = False):
        """Write the inference graph (batch norms on their running statistics, no dropout) to
        `path` as an ONNX model, atomically, once onnx.checker accepts it; returns the
        onnx.ModelProto. The file takes what `forward` takes; `normalize=True` makes a model
        whose recipe normalizes take f32 images in [0, 1] instead of uint8 pixels. See
        `odc.export` and docs/export.md; needs the onnx package: pip install 'odc[onnx]'."""
        return export.export_onnx(self, path, opset, normalize)

    def save(self, path) -> None:
        prog = self.program
        if prog.source is None:
            raise OdcError("only a model loaded from an .od file can be saved")
        checkpoint.save(path, checkpoint.Checkpoint(prog.name, prog.source.text, prog.source.path, dict(self.params),
                              dict(self.state), recipe=prog.recipe))

    # -- machinery --------------------------------------------------------------------------
    def _graph(self, kind: str, target: str = "label") -> Graph:
        """The graph of `kind` for a symbolic batch: what the arguments must look like."""
        key = (kind, target)
        if key not in self._graphs:
            self._graphs[key] = self.program.lower(kind, target=target)
        return self._graphs[key]

    def _run(self, kind: str, x, y=None) -> dict[str, np.ndarray]:
        target = "float" if y is not None and np.asarray(y).dtype.kind == "f" else "label"
        g = self._graph(kind, target)
        image = g.inputs()[0]
        if image.type.dtype == "u8" and np.asarray(x).dtype != np.uint8:
            raise OdcError(f"input '{image.name}' takes uint8 images (0 to 255), which the model's recipe converts "
                           f"(normalize, augment) in its graphs; got an array of {np.asarray(x).dtype}")
        try:
            feeds = {image.name: np.asarray(x, NP_DTYPES[image.type.dtype])}
        except (TypeError, ValueError, OverflowError):
            raise OdcError(f"input '{image.name}' expects an array of numbers {image.type}, "
                           f"got {type(x).__name__}") from None
        if y is not None:
            feeds.update(self._targets(g, y))
        bindings = interp.bindings(g, feeds)
        if not feeds[image.name].size:
            raise OdcError(f"input '{image.name}' got an empty batch (an array of shape "
                           f"{list(feeds[image.name].shape)}); a batch holds at least one image")
        key = (kind, target, tuple(sorted(bindings.items())))
        batch = len(feeds[image.name])
        larger = self._larger_forward(key, batch) if kind == "forward" else None
        if larger is not None:  # examples are independent here: run padded in the compiled code
            (sym, size), = larger[2]
            pad = np.zeros((size - batch, *feeds[image.name].shape[1:]), feeds[image.name].dtype)
            out = self._compiled[larger]({image.name: np.concatenate([feeds[image.name], pad]),
                                          **self.params, **self.state})
            return {name: v[:batch] for name, v in out.items()}
        if key not in self._compiled:
            if kind != "forward":
                self._refuse_one_value_per_channel(batch)
            what = f"{self.program.name} {WHAT[kind]} for batch {batch}"
            if self.log:
                self.log(f"compiling {what} ...")
            t0 = time.perf_counter()
            self._compiled[key] = self._executor(self.program.lower(kind, bindings, target))
            if self.log:
                self.log(f"compiled {what} in {time.perf_counter() - t0:.1f} s")
        feeds.update(self.step_inputs(g, bindings))
        return self._compiled[key]({**feeds, **self.params, **self.state})

    def step_inputs(self, g: Graph, sizes: dict[str, int]) -> dict[str, np.ndarray]:
        """The inputs of `g` that the runtime supplies at each call, besides images and labels:
        dropout masks and the parameters of the augmentations (drawn from the model's generator)
        and the learning rate `lr`."""
        with np.errstate(over="ignore"):  # a rate beyond float32's range is infinite, as in PyTorch
            rate = {a.name: np.asarray(self.lr, NP_DTYPES[a.type.dtype]) for a in g.inputs()
                    if a.attrs.get("schedule") == "lr"}
        return {**dropout_masks(g, sizes, self.rng), **augment.draw_inputs(g, sizes, self.rng), **rate}

    def _larger_forward(self, key: tuple, batch: int) -> tuple | None:
        """The smallest compiled forward pass for more than `batch` examples, when `key` (a
        forward pass whose only size symbol is the batch) is not compiled itself and the model
        computes each example on its own (`mixes_examples`)."""
        if key in self._compiled or len(key[2]) != 1 or mixes_examples(self._graph("forward")):
            return None
        sym = key[2][0][0]
        bigger = [k for k in self._compiled if k[:2] == key[:2] and len(k[2]) == 1 and k[2][0][0] == sym
                  and k[2][0][1] > batch]
        return min(bigger, key=lambda k: k[2][0][1], default=None)

    def _refuse_one_value_per_channel(self, batch: int) -> None:
        bn = self.one_value_per_channel(batch)
        if bn is not None:
            raise CompileError(Diagnostic(
                f"{bn.op} sees one value per channel (its input is {bn.type}) in a training batch of "
                f"{batch}: the batch variance is undefined", bn.span,
                "train with batches of 2 or more (PyTorch refuses this case too)"))

    def _targets(self, g: Graph, y) -> dict[str, np.ndarray]:
        y = np.asarray(y)
        names = {a.name: a for a in g.inputs()}
        if "target" in names:
            return {"target": y.astype(NP_DTYPES[names["target"].type.dtype])}
        classes = g.type(g.output("logits")).shape[1]
        if y.dtype.kind not in "iu":
            raise OdcError(f"labels must be integers, got an array of {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= classes):
            raise OdcError(f"label {y.min() if y.min() < 0 else y.max()} is out of range for a model "
                           f"with {classes} classes")
        return {"label": y.astype(np.int32)}


# -- checkpoints ------------------------------------------------------------------------------
def compile_model(prog, recipe: dict, log=None):
    """Compile `prog` for training with `recipe` (the recipe as run: flags applied); `log` reports
    each compilation (see `Program.compile`)."""
    prog.recipe = recipe
    return prog.compile(log=log)


def restore(model, ckpt: checkpoint.Checkpoint) -> None:
    """Copy a checkpoint's parameters and optimizer state into a compiled model, in place. Each
    tensor must have the dtype and shape the model declares."""
    where = f"{ckpt.path}: error: " if ckpt.path else ""
    pairs = (("parameter", model.params, ckpt.params), ("optimizer state", model.state, ckpt.state))
    for what, have, saved in pairs:
        if list(have) != list(saved):
            raise OdcError(f"{where}the checkpoint's {what} names ({', '.join(saved) or 'none'}) differ from "
                           f"the model's ({', '.join(have) or 'none'})")
        for name, value in saved.items():
            for prop, show in (("shape", list), ("dtype", str)):
                a, b = getattr(value, prop), getattr(have[name], prop)
                if a != b:
                    raise OdcError(f"{where}{what} {name} is {show(a)} in the checkpoint but {show(b)} "
                                   f"in the model")
    g = model.program.graph
    outputs = g.type(g.output("logits")).shape[-1]
    if ckpt.classes and len(ckpt.classes) != outputs:
        raise OdcError(f"{where}the checkpoint names {len(ckpt.classes)} classes but its model has "
                       f"{outputs} outputs\n{checkpoint.DAMAGED}")
    for _, have, saved in pairs:  # copied only once all is checked: a refused checkpoint changes nothing
        for name, value in saved.items():
            have[name][...] = value
    if "model" in ckpt.rng:
        model.rng.bit_generator.state = ckpt.rng["model"]


def build(ckpt: checkpoint.Checkpoint, log=None):
    """The model a checkpoint holds: its source compiled with its recipe, then restored."""
    try:
        module = parse_source(ckpt.source, ckpt.source_path)
        prog = Program(module.lower(ckpt.model), module.source)
    except OdcError as e:
        raise OdcError(f"{ckpt.path or 'checkpoint'}: error: the model source it holds does not compile:"
                       f"\n{e}") from None
    model = compile_model(prog, ckpt.recipe, log)
    restore(model, ckpt)
    return model


def load_checkpoint(path):
    """The model in a checkpoint (a file, or a run folder), compiled, with its parameters and
    optimizer state: `forward`, `train_step` and the rest, as from `odc.load(...).compile()`."""
    return build(checkpoint.read(path))
