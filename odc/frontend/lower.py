"""Syntax tree → graph IR, one `Graph` per model.

A model body is run once at compile time, statement by statement. Every name is bound to a value:
a tensor (a node of the graph), a compile-time number, string, bool or list, or a `Size` (a name
that an input's type or an annotation bound to a dimension). Each built-in call adds the nodes it
stands for, typed at once by the op's type rule in `odc.ir.ops`, so a shape error is reported
where it is written. Layers create their parameters as `param` nodes named `<op><k>.weight` and
`.bias`, numbered per op kind in the order they are reached. A call to a `def` runs the def's body
in a fresh scope that holds its arguments and the caller's sizes (`N`): the def is inlined, and every call creates its
own parameters (an explicit `param NAME` in a def becomes `<def><k>.NAME`, k counting the calls).
An error in a def's body notes the call that inlined it.

A model has one input, the image batch, and returns float logits [batch, classes] with a known
number of classes (what training needs). Tensors are f32 (`odc.ir.dtypes.COMPUTE`: what code generation
supports). The sizes of tensors, of the graph, and how many defs are inlined how deep are bounded
(`odc.frontend.limits`), each reported where it is exceeded.

Errors do not stop the walk. A statement that fails records a diagnostic and binds its name to
`POISON`; whatever is computed from poison is poison too and reports nothing, so each independent
mistake is reported once. `lower_model` raises all diagnostics together as one `CompileError`.
"""
from __future__ import annotations

import difflib
import re
import math
import operator
import sys
from collections import Counter
from dataclasses import dataclass

from odc.errors import CompileError, Diagnostic, OdcError, Span
from odc.frontend import ast
from odc.frontend.limits import (MAX_DEF_DEPTH, MAX_ELEMENTS, MAX_INLINED_CALLS, MAX_NODES, MAX_PARAMETERS,
                                 MAX_SAMPLE_ELEMENTS)
from odc.ir import ops
from odc.ir.dtypes import COMPUTE as COMPUTE_DTYPES, NAMES as DTYPES
from odc.ir.graph import Graph, TensorType
from odc.ir.passes.autodiff import RESERVED

NUMBER_HINT = "odc's numbers are 64-bit floats, at most about 1.8e308"


class Fail(Exception):
    """Abandons the current statement; `diagnostic` is None when the cause was reported already."""

    def __init__(self, message: str | None, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.diagnostic = Diagnostic(message, span, hint) if message else None


def did_you_mean(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f"did you mean '{close[0]}'?" if close else None


def raise_diagnostics(diags: list[Diagnostic]) -> None:
    """Raise the diagnostics, in source order and each once, as one CompileError (if any)."""
    unique = {}
    for d in diags:
        unique.setdefault((d.span.line, d.span.col, d.message) if d.span else (0, 0, d.message), d)
    if unique:
        raise CompileError([unique[k] for k in sorted(unique)])


def bind(fname: str, usage: str, call: ast.Call) -> dict[str, ast.Expr]:
    """Match a call's arguments to the parameters in `usage` (e.g. ``"x, out, bias=true"``; a
    parameter with ``=`` is optional) as Python does: name → argument expression, in source order."""
    entries = [p.strip() for p in re.split(r",(?![^\[]*\])", usage) if p.strip()]  # not inside [...]
    params = [p.split("=")[0] for p in entries]
    hint = f"usage: {fname}({usage})"
    if call.kwargs:
        first = call.kwargs[0].span
        for a in call.args:
            if (a.span.line, a.span.col) > (first.line, first.col):
                raise Fail("positional argument after a keyword argument", a.span, hint)
    if len(call.args) > len(params):
        n = len(params)
        raise Fail(f"{fname} takes {n or 'no'} argument{'s' * (n != 1)}, got {len(call.args)}",
                   call.args[n].span, hint)
    given = dict(zip(params, call.args))
    for kw in call.kwargs:
        if kw.name not in params:
            raise Fail(f"{fname} has no argument '{kw.name}'", kw.span,
                       did_you_mean(kw.name, params) or hint)
        if kw.name in given:
            raise Fail(f"{fname} got argument '{kw.name}' twice", kw.span, hint)
        given[kw.name] = kw.value
    for p in entries:
        if "=" not in p and p not in given:
            raise Fail(f"{fname} is missing argument '{p}'", call.span, hint)
    return given


def as_call(e: ast.Expr) -> ast.Call | None:
    """`NAME` or `NAME(...)` as a call (an initialiser, loss or data set may omit the parentheses)."""
    if isinstance(e, ast.Name):
        return ast.Call(e.id, e.span, [], [], e.span)
    return e if isinstance(e, ast.Call) else None


def literal(e: ast.Expr):
    """The value of a constant expression: a number (maybe negated), a string, true or false."""
    if isinstance(e, ast.Number) and not fits_float(e.value):
        raise Fail("number too large", e.span, NUMBER_HINT)
    if isinstance(e, (ast.Number, ast.String, ast.Bool)):
        return e.value
    if isinstance(e, ast.Neg) and isinstance(e.operand, ast.Number):
        return -literal(e.operand)
    raise Fail("expected a constant (a number, a string, true or false)", e.span)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fits_float(v: int | float) -> bool:
    """Finite and within a float's range (an int of any size compares without overflow)."""
    return abs(v) <= sys.float_info.max


def od_text(v) -> str:
    """A compile-time value as .od source writes it: 3, 0.5, true, "x", [1, 2]."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(map(od_text, v)) + "]"
    return repr(v)


# -- values -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tensor:
    id: int  # the graph node


@dataclass(frozen=True)
class Size:
    """A name bound to a dimension: by an input's type (a symbol; `value` is its own name) or by
    an annotation (`value` is the size found there)."""
    value: int | str
    span: Span


class _Poison:
    def __repr__(self):
        return "POISON"


POISON = _Poison()


SIGNS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}
FOLD = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}


BUILTINS = ops.BUILTINS  # the language's calls, from the op catalog
INITS = {"zeros": "", "ones": "", "normal": "std", "uniform": "lo, hi", "kaiming": "", "xavier": ""}


class ModelLowerer:
    def __init__(self, model: ast.Model, defs: dict[str, ast.Def], recipe, diags: list[Diagnostic]):
        self.model, self.defs, self.recipe, self.diags = model, defs, recipe, diags
        self.g = Graph(model.name)
        self.counts: Counter[str] = Counter()  # layers per op kind, calls per def
        self.arg_names: set[str] = set()       # inputs and parameters
        self.inlining: list[str] = []          # defs being inlined, innermost last
        self.inlined = 0                       # def calls inlined so far
        self.param_elements = 0                # elements of the parameters so far

    def run(self, hypers: dict[str, int | float]) -> Graph:
        out = self.block(self.model.body, dict(hypers), None)
        if not any(isinstance(st, ast.Input) for st in self.model.body):
            self.diags.append(Diagnostic(f"model {self.model.name} has no input", self.model.span,
                                         "declare the image batch first, e.g. input image: f32[N, 1, 28, 28]"))
        if out is None:
            self.diags.append(Diagnostic(f"model {self.model.name} has no return", self.model.span,
                                         "end the model with 'return EXPR', the logits"))
        elif out is not POISON:
            try:
                self.check_output(out)
            except Fail as e:
                self.diags.append(e.diagnostic)
        raise_diagnostics(self.diags)
        self.g.outputs = [("logits", out.id)]
        self.g.meta["hyper"] = dict(hypers)
        if self.recipe is not None:
            self.g.meta["recipe"] = self.recipe.as_dict()
        return self.g

    def check_output(self, out) -> None:
        """The output must be float logits [batch, classes], classes known, batch the input's dim 0."""
        span = next(s for s in reversed(self.model.body) if isinstance(s, ast.Return)).value.span
        if not isinstance(out, Tensor):
            raise Fail(f"a model returns a tensor, got {self.describe(out)}", span)
        t = self.g.type(out.id)
        images = self.g.inputs()
        batch = images[0].type.shape[0] if images and images[0].type.rank else None
        want = f"logits [{batch or 'batch'}, classes]"
        hint = "end with a layer that makes the logits, e.g. dense(flatten(x), classes)"
        if not t.is_float:
            raise Fail(f"{self.model.name} returns {t}, but a model returns floating-point {want}", span, hint)
        if t.rank != 2 or (images and t.shape[0] != batch):
            raise Fail(f"{self.model.name} returns {t}, but a model returns {want}, one row per image", span,
                       hint)
        if not isinstance(t.shape[1], int):
            raise Fail(f"{self.model.name} returns {t}, but the number of classes (dimension 1) must be known "
                       f"at compile time", span, "make the classes a number or a hyper-parameter")
        classes = self.recipe.classes if self.recipe else None
        if classes is not None and t.shape[1] != classes:
            raise Fail(f"{self.model.name} returns {t}, but its data set {self.recipe.data_text} has "
                       f"{classes} classes", span,
                       f"return logits [batch, {classes}], e.g. dense(x, {classes}); the data set is chosen "
                       f"at line {self.recipe.spans['data'].line}")

    # -- statements -------------------------------------------------------------------------
    def block(self, stmts: list[ast.Stmt], env: dict, prefix: str | None):
        """Lower a model body (`prefix` None) or an inlined def body; return what it returns
        (None if it has no return statement)."""
        result = None
        for i, st in enumerate(stmts):
            if i and isinstance(stmts[i - 1], ast.Return):
                self.diags.append(Diagnostic("this statement comes after the return and would never run",
                                             st.span, "move it before the return, or delete it"))
                break
            try:
                if isinstance(st, ast.Return):
                    result = self.eval(st.value, env)
                elif isinstance(st, ast.Input):
                    env[st.name] = self.input(st, env, prefix)
                elif isinstance(st, ast.Param):
                    env[st.name] = self.param_stmt(st, env, prefix)
                else:
                    env[st.name] = self.assign(st, env)
            except Fail as e:
                if e.diagnostic:
                    self.diags.append(e.diagnostic)
                if isinstance(st, ast.Return):
                    result = POISON
                else:
                    env[st.name] = POISON
        return result

    def input(self, st: ast.Input, env: dict, prefix: str | None) -> Tensor:
        if prefix is not None:
            raise Fail("'input' declares a model input and cannot appear in a def", st.span,
                       "pass the tensor to the def as an argument")
        if self.g.inputs():
            first = self.g.inputs()[0]
            raise Fail(f"a model has one input, the image batch, declared at line {first.span.line} "
                       f"({first.name}); training feeds it images and nothing else", st.span,
                       "compute other tensors in the model, or declare them with 'param'")
        t = self.type(st.type, env, "input")
        if not t.rank:
            raise Fail(f"the input is a batch of images, so its dimension 0 is the batch size; got {t}",
                       st.type.span, "e.g. input image: f32[N, 1, 28, 28]")
        image = self.recipe.image if self.recipe else None
        if image is not None and tuple(t.shape[1:]) != image:
            data = self.recipe.spans["data"]
            want = f"f32[{t.shape[0]}, {', '.join(map(str, image))}]"
            fail = Fail(f"the input {t} does not fit the images of {self.recipe.data_text}, which are "
                        f"[{', '.join(map(str, image))}] (channels, height, width)", st.type.span,
                        f"declare input {st.name}: {want}, or train on another data set")
            fail.diagnostic.notes.append(f"the data set is chosen at {data}")
            self.diags.append(fail.diagnostic)  # the input is still what it says: lowering goes on
        if self.recipe and t.rank == 4 and all(isinstance(d, int) for d in t.shape[1:]):
            self.diags += self.recipe.image_problems(tuple(t.shape[1:]))
        return Tensor(self.arg("input", st.name, t, {}, st.span))

    def param_stmt(self, st: ast.Param, env: dict, prefix: str | None) -> Tensor:
        t = self.type(st.type, env, "param")
        if not t.is_float:
            raise Fail(f"a parameter is trained, so it must be floating-point, got {t}", st.type.span)
        init = self.init(st.init, env, t)
        return Tensor(self.arg("param", f"{prefix}.{st.name}" if prefix else st.name, t, init, st.span))

    def arg(self, op: str, name: str, t: TensorType, attrs: dict, span: Span) -> int:
        if name in self.arg_names:
            raise Fail(f"{name} is declared twice (inputs and parameters need distinct names)", span)
        if name in RESERVED:
            raise Fail(f"the name '{name}' is reserved: training adds an input '{name}' for the targets",
                       span, "choose another name")
        self.check_size(f"{op} {name}", t, span)
        if op == "param":
            self.param_elements += t.numel
            if self.param_elements > MAX_PARAMETERS >= self.param_elements - t.numel:  # reported once
                raise Fail(f"with {name} {t}, the parameters of {self.model.name} would have "
                           f"{self.param_elements:,} elements; odc allows at most {MAX_PARAMETERS:,} in all",
                           span, "use fewer or smaller layers")
        self.arg_names.add(name)
        return self.add(op, [], attrs, t, span, name)

    def add(self, op: str, args: list[int], attrs: dict, t: TensorType, span: Span, name: str | None = None) -> int:
        """A new node of the graph, within `MAX_NODES`."""
        if len(self.g) >= MAX_NODES:
            raise Fail(f"model {self.model.name} grows past {MAX_NODES:,} graph nodes here", span,
                       "a def is inlined at every call: call fewer defs, or defs with fewer layers")
        return self.g.add(op, args, attrs, t, span, name)

    def check_size(self, what: str, t: TensorType, span: Span) -> None:
        """At most `MAX_ELEMENTS` elements, or `MAX_SAMPLE_ELEMENTS` per batch item where a size is
        a symbol (the batch)."""
        n = math.prod(d for d in t.shape if isinstance(d, int))
        limit, per = (MAX_ELEMENTS, "") if t.is_concrete else (MAX_SAMPLE_ELEMENTS, " per batch item")
        if n > limit:
            raise Fail(f"{what} {t} would have {n:,} elements{per}; odc allows at most {limit:,}{per}", span,
                       f"use smaller sizes (at most {limit * 4 // 2 ** 20:,} MiB of f32{per})")

    def type(self, t: ast.Type, env: dict, what: str) -> TensorType:
        """The type of an input (a new name in it becomes a symbol) or a parameter (sizes must be
        known)."""
        self.dtype(t)
        dims = []
        for d in t.dims:
            v = d.value
            if isinstance(v, str):
                bound = env.get(v)
                if bound is POISON:
                    raise Fail(None)
                if isinstance(bound, Size):
                    v = bound.value
                elif is_number(bound):
                    v = bound
                elif bound is not None:
                    raise Fail(f"{v} is {self.describe(bound)}, not a size", d.span)
                elif what == "input":
                    env[v] = Size(v, d.span)
                else:
                    raise Fail(f"unknown size '{v}'; parameter sizes must be known at compile time",
                               d.span, did_you_mean(v, env))
                if what == "param" and not isinstance(v, int):
                    raise Fail(f"parameter sizes must be known at compile time; {d.value} is given "
                               f"only at run time", d.span)
            if isinstance(v, float) or (isinstance(v, int) and v < 1):
                raise Fail(f"a size must be a positive integer, got {v}", d.span)
            dims.append(v)
        return TensorType(t.dtype, dims)

    def dtype(self, t: ast.Type) -> None:
        if t.dtype not in DTYPES:
            raise Fail(f"unknown element type '{t.dtype}'", t.dtype_span,
                       did_you_mean(t.dtype, DTYPES) or f"one of {', '.join(DTYPES)}")
        if t.dtype not in COMPUTE_DTYPES:
            raise Fail(f"element type {t.dtype} is not supported yet: odc computes in "
                       f"{' and '.join(COMPUTE_DTYPES)}", t.dtype_span,
                       f"declare it {COMPUTE_DTYPES[0]}, e.g. {COMPUTE_DTYPES[0]}[{', '.join(str(d.value) for d in t.dims)}]")

    def assign(self, st: ast.Assign, env: dict):
        v = self.eval(st.value, env)
        if st.type is not None and v is not POISON:
            self.check_annotation(st, v, env)
        return v

    def check_annotation(self, st: ast.Assign, v, env: dict) -> None:
        """`NAME: TYPE = EXPR` checks the value's type; a name in TYPE not bound yet binds to the
        size found there."""
        ann = st.type
        text = f"{ann.dtype}[{', '.join(str(d.value) for d in ann.dims)}]"
        self.dtype(ann)
        if not isinstance(v, Tensor):
            raise Fail(f"{st.name} is annotated {text}, but its value is {self.describe(v)}", st.value.span)
        t = self.g.type(v.id)

        def mismatch(detail: str):
            return Fail(f"annotation {text} does not match the value's type {t}", ann.span,
                        f"{detail}; an annotation checks the type, it does not convert")

        if ann.dtype != t.dtype:
            raise mismatch(f"the element type is {t.dtype}")
        if len(ann.dims) != t.rank:
            raise mismatch(f"the value has {t.rank} dimensions, the annotation {len(ann.dims)}")
        for i, (d, size) in enumerate(zip(ann.dims, t.shape)):
            expected = d.value
            if isinstance(expected, str):
                bound = env.get(expected)
                if bound is None:
                    env[expected] = Size(size, d.span)
                    continue
                if isinstance(bound, Size):
                    if bound.value != size:
                        first = "a size given at run time" if bound.value == expected else bound.value
                        raise Fail(f"symbol {expected} bound to two sizes: {first} (at line {bound.span.line}, "
                                   f"column {bound.span.col}) and {size} here, in {t}", d.span,
                                   "use another name for a different size")
                    continue
                if not is_number(bound):
                    raise Fail(f"{expected} is {self.describe(bound)}, not a size", d.span)
                expected = bound
            if expected != size:
                raise mismatch(f"dimension {i} is {size}, not {expected}")

    def init(self, e: ast.Expr, env: dict, t: TensorType) -> dict:
        """The initialiser of an explicit parameter, as the param node's attributes."""
        call = as_call(e)
        if call is None or call.func not in INITS:
            name = call.func if call else ""
            raise Fail(f"unknown initialiser '{name}'" if call else "expected an initialiser", e.span,
                       did_you_mean(name, INITS) or "one of zeros, ones, normal(std), uniform(lo, hi), "
                                                    "kaiming, xavier")
        a = self.args(call.func, INITS[call.func], call, env)
        if call.func in ("kaiming", "xavier") and t.rank < 2:
            raise Fail(f"{call.func} needs a parameter with at least 2 dimensions (for its fan-in), got {t}",
                       e.span, "use normal(std) or uniform(lo, hi)")
        if call.func == "normal":
            return {"init": "normal", "std": self.arg_number("normal", a, "std", positive=True)}
        if call.func == "uniform":
            lo, hi = self.arg_number("uniform", a, "lo"), self.arg_number("uniform", a, "hi")
            if not lo < hi:
                raise Fail(f"uniform(lo, hi) needs lo < hi, got {lo} and {hi}", e.span)
            return {"init": "uniform", "lo": lo, "hi": hi}
        return {"init": call.func}

    # -- expressions ------------------------------------------------------------------------
    def eval(self, e: ast.Expr, env: dict):
        if isinstance(e, (ast.Number, ast.String, ast.Bool)):
            return literal(e)
        if isinstance(e, ast.Name):
            return self.name(e, env)
        if isinstance(e, ast.List):
            items = [self.eval(i, env) for i in e.items]
            return POISON if POISON in items else items
        if isinstance(e, ast.Neg):
            v = self.eval(e.operand, env)
            if isinstance(v, Tensor):
                return self.node("neg", [v], {}, e.span)
            if v is POISON:
                return POISON
            if is_number(v):
                return -v
            raise Fail(f"cannot negate {self.describe(v)}", e.span)
        if isinstance(e, ast.BinOp):
            return self.binop(e, env)
        return self.call(e, env)

    def name(self, e: ast.Name, env: dict):
        if e.id in env:
            v = env[e.id]
            return v.value if isinstance(v, Size) and isinstance(v.value, int) else v
        if e.id in BUILTINS or e.id in self.defs:
            raise Fail(f"{e.id} is an op, not a value", e.span, f"call it: {e.id}(...)")
        raise Fail(f"unknown name '{e.id}'", e.span, did_you_mean(e.id, env))

    def binop(self, e: ast.BinOp, env: dict):
        a, b = self.eval(e.left, env), self.eval(e.right, env)
        if a is POISON or b is POISON:
            return POISON
        if is_number(a) and is_number(b) and e.op != "matmul":
            if e.op == "div" and b == 0:
                raise Fail("division by zero", e.right.span)
            v = FOLD[e.op](a, b)
            if not fits_float(v):
                raise Fail("number too large", e.span, NUMBER_HINT)
            return v
        if isinstance(a, Tensor) and is_number(b) and e.op != "matmul":
            b = self.const(b, self.g.type(a.id).dtype, e.right.span)
        if is_number(a) and isinstance(b, Tensor) and e.op != "matmul":
            a = self.const(a, self.g.type(b.id).dtype, e.left.span)
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            raise Fail(f"'{SIGNS[e.op]}' cannot combine {self.describe(a)} and {self.describe(b)}", e.span)
        return self.node(e.op, [a, b], {}, e.span)

    def const(self, value, dtype: str, span: Span) -> Tensor:
        attrs = {"value": float(value)} if dtype == "f32" else {"value": float(value), "dtype": dtype}
        return self.node("const", [], attrs, span)

    def call(self, e: ast.Call, env: dict):
        if e.func in self.defs:
            return self.inline(self.defs[e.func], e, env)
        if e.func not in BUILTINS:
            raise Fail(f"unknown op '{e.func}'", e.func_span, did_you_mean(e.func, [*BUILTINS, *self.defs]))
        spec = BUILTINS[e.func]
        a = self.args(e.func, spec.usage, e, env)
        if POISON in (v for v, _ in a.values()):
            return POISON
        return spec.build(Site(self, e.func, e), self.checked(spec, a))

    def args(self, fname: str, usage: str, call: ast.Call, env: dict) -> dict[str, tuple]:
        """The call's arguments, evaluated: name → (value, span of the argument)."""
        return {n: (self.eval(x, env), x.span) for n, x in bind(fname, usage, call).items()}

    def inline(self, d: ast.Def, call: ast.Call, env: dict):
        if d.name in self.inlining:
            raise Fail(None)  # recursion, reported by check_defs
        a = self.args(d.name, ", ".join(p.id for p in d.params), call, env)
        if POISON in (v for v, _ in a.values()):
            return POISON
        if len(self.inlining) >= MAX_DEF_DEPTH:
            raise Fail(f"def calls nest too deeply: calling {d.name} here puts {len(self.inlining) + 1} defs "
                       f"inside each other; odc allows at most {MAX_DEF_DEPTH}", call.span,
                       "call some of the inner defs from the model instead")
        self.inlined += 1
        if self.inlined > MAX_INLINED_CALLS:
            raise Fail(f"calling {d.name} here inlines more than {MAX_INLINED_CALLS:,} def calls into "
                       f"model {self.model.name}", call.span,
                       "a def is inlined at every call, so a def that calls another twice, k deep, "
                       "inlines 2^k calls: call fewer defs")
        self.counts[d.name] += 1
        self.inlining.append(d.name)
        first = len(self.diags)
        try:
            # the def's scope: the caller's sizes (N, ...), then its arguments
            scope = {n: v for n, v in env.items() if isinstance(v, Size)} | {n: v for n, (v, _) in a.items()}
            out = self.block(d.body, scope, f"{d.name}{self.counts[d.name]}")
        finally:
            self.inlining.pop()
        for diag in self.diags[first:]:
            diag.notes.append(f"in {d.name}, called at {call.span}")
        if out is None:
            raise Fail(f"def {d.name} has no return", d.span, "end it with 'return EXPR'")
        return out

    # -- nodes ------------------------------------------------------------------------------
    def infer(self, op: str, args: list[int], types: list[TensorType], attrs: dict, span: Span) -> TensorType:
        """The type of `op` on operands `args` (node ids) of `types`."""
        try:
            return ops.get(op).infer(types, attrs)
        except ops.ShapeError as err:
            fail = Fail(err.message, span, err.hint)
            if err.history:
                fail.diagnostic.notes.append(self.history(args[0]))
            raise fail from None

    def history(self, v: int) -> str:
        """The spatial sizes (the last two axes) of value `v` from the model's input on, at each
        line that changed them."""
        steps = []
        while True:
            n = self.g.node(v)
            t = n.type
            size = "x".join(map(str, t.shape[2:])) if t.rank == 4 else str(t)
            if not steps or steps[-1][0] != size:
                steps.append((size, "the input" if n.op == "input" else n.op, n.span.line if n.span else "?"))
            elif n.op != "input":
                steps[-1] = (size, n.op, n.span.line if n.span else "?")
            if n.op == "input" or not n.args:
                break
            v = n.args[0]
        return "the image sizes up to here: " + " -> ".join(
            f"{size} ({op}, line {line})" for size, op, line in reversed(steps))

    def node(self, op: str, args: list[Tensor], attrs: dict, span: Span) -> Tensor:
        t = self.infer(op, [a.id for a in args], [self.g.type(a.id) for a in args], attrs, span)
        self.check_size(f"the result of {op},", t, span)
        return Tensor(self.add(op, [a.id for a in args], attrs, t, span))

    def describe(self, v) -> str:
        if isinstance(v, Tensor):
            return f"a tensor {self.g.type(v.id)}"
        if isinstance(v, bool):
            return od_text(v)
        if is_number(v):
            return f"the number {v}"
        if isinstance(v, str):
            return f"the string {od_text(v)}"
        if isinstance(v, Size):
            return f"the size {v.value}"
        return "a list"

    # -- arguments of built-ins -------------------------------------------------------------
    def arg_tensor(self, op: str, a: dict, name: str) -> tuple[Tensor, TensorType]:
        v, span = a[name]
        if not isinstance(v, Tensor):
            raise Fail(f"{op} expects a tensor for {name}, got {self.describe(v)}", span)
        return v, self.g.type(v.id)

    def arg_int(self, op: str, a: dict, name: str, default: int | None = None, lo: int | None = 1) -> int:
        """An integer >= lo (any integer with lo None)."""
        if name not in a:
            return default
        v, span = a[name]
        if not (isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)):
            kind = {1: "a positive integer", 0: "an integer >= 0", None: "an integer"}[lo]
            raise Fail(f"{op}: {name} must be {kind}, got {self.describe(v)}", span)
        return v

    def arg_number(self, op: str, a: dict, name: str, positive: bool = False) -> float:
        v, span = a[name]
        if not is_number(v) or (positive and v <= 0):
            raise Fail(f"{op}: {name} must be a {'positive ' * positive}number, got {self.describe(v)}", span)
        return float(v)

    def arg_bool(self, op: str, a: dict, name: str, default: bool) -> bool:
        if name not in a:
            return default
        v, span = a[name]
        if not isinstance(v, bool):
            raise Fail(f"{op}: {name} must be true or false, got {self.describe(v)}", span)
        return v

    def arg_axes(self, op: str, a: dict, name: str, rank: int, default, many: bool = False):
        """An axis (an integer) or, with `many`, a list of distinct axes."""
        if name not in a:
            return default
        v, span = a[name]
        items = v if isinstance(v, list) and many else [v]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise Fail(f"{op}: {name} must be an integer{' or a list of integers' * many}, "
                       f"got {self.describe(v)}", span)
        try:
            axes = [ops.normalize_axis(i, rank) for i in items]
        except ops.ShapeError as err:
            raise Fail(f"{op}: {err.message}", span) from None
        if len(set(axes)) != len(axes):
            raise Fail(f"{op}: axis {v} names the same axis twice", span)
        return v

    # -- lowering of each built-in ----------------------------------------------------------
    def features(self, op: str, xt: TensorType, rank: int, span: Span) -> int:
        """Dimension 1 of a layer's input, which sizes its weights; 1 if the input has the wrong
        rank (the op's type rule reports that)."""
        if not xt.is_float:
            raise Fail(f"{op} expects a floating-point input, got {xt}", span)
        if xt.rank != rank:
            return 1
        if not isinstance(xt.shape[1], int):
            raise Fail(f"{op} needs a known size of dimension 1 to create its weights, got {xt}", span)
        return xt.shape[1]

    def checked(self, spec: ops.Builtin, a: dict) -> dict:
        """The values of a built-in's arguments, each checked against its kind (`ops.Arg`); an
        argument not given has its default."""
        op, out, rank = spec.name, {}, None
        for arg in spec.args:
            name, kind = arg.name, arg.kind
            if kind != "tensor" and name not in a:
                out[name] = arg.default
            elif kind == "tensor":
                out[name], t = self.arg_tensor(op, a, name)
                rank = t.rank if rank is None else rank
            elif kind in ("int", "count"):
                out[name] = self.arg_int(op, a, name, lo=1 if kind == "int" else 0)
            elif kind in ("number", "positive", "probability"):
                out[name] = self.arg_number(op, a, name, positive=kind == "positive")
                if kind == "probability" and not 0 <= out[name] < 1:
                    raise Fail(f"{op}: {name} is a probability in [0, 1), got {out[name]}", a[name][1])
            elif kind == "bool":
                out[name] = self.arg_bool(op, a, name, arg.default)
            elif kind in ("axis", "axes"):
                out[name] = self.arg_axes(op, a, name, rank, arg.default, many=kind == "axes")
            elif kind == "shape":
                out[name] = self.arg_shape(op, a, name)
            elif kind == "perm":
                out[name] = self.arg_perm(op, a, name)
            elif kind in ("size", "pads"):
                out[name] = self.arg_size(op, a, name, arg, lo=1 if kind == "size" else 0)
            elif kind == "integer":
                out[name] = self.arg_int(op, a, name, lo=None)
            elif kind == "ints":
                v, span = a[name]
                if not (isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)):
                    raise Fail(f"{op}: {name} must be a list of integers, got {self.describe(v)}", span)
                out[name] = v
            elif kind == "tensors":
                v, span = a[name]
                if not (isinstance(v, list) and v and all(isinstance(t, Tensor) for t in v)):
                    raise Fail(f"{op}: {name} must be a list of tensors, e.g. [a, b], got {self.describe(v)}", span)
                out[name] = v
            elif kind == "choice":
                v, span = a[name]
                if v not in arg.choices:
                    raise Fail(f"{op}: {name} must be one of {', '.join(map(od_text, arg.choices))}, got "
                               f"{self.describe(v)}", span)
                out[name] = v
            else:
                raise AssertionError(f"{op}: unknown argument kind {kind}")
        return out

    def arg_size(self, op: str, a: dict, name: str, arg: ops.Arg, lo: int):
        """An integer >= lo, a pair [h, w] of them, or one of the argument's strings."""
        v, span = a[name]
        def ok(i):
            return isinstance(i, int) and not isinstance(i, bool) and i >= lo
        if ok(v) or isinstance(v, list) and len(v) == 2 and all(map(ok, v)) or v in arg.choices:
            return v
        what = "a positive integer" if lo == 1 else "an integer >= 0"
        also = "".join(f' or "{c}"' for c in arg.choices)
        raise Fail(f"{op}: {name} must be {what} or a pair [h, w] of them{also}, got {self.describe(v)}", span)

    def arg_shape(self, op: str, a: dict, name: str) -> list:
        v, span = a[name]
        items = v if isinstance(v, list) else [None]
        shape = []
        for item in items:
            if isinstance(item, Size):
                shape.append(item.value)
            elif isinstance(item, int) and not isinstance(item, bool) and (item >= 1 or item == -1):
                shape.append(item)
            else:
                raise Fail(f"{op}: {name} must be a list of positive sizes, -1 or symbols, got "
                           f"{self.describe(v if item is None else item)}", span)
        return shape

    def arg_perm(self, op: str, a: dict, name: str) -> list:
        v, span = a[name]
        if not (isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)):
            raise Fail(f"{op}: {name} must be a list of axes, got {self.describe(v)}", span)
        return v


class Site:
    """What a built-in's `build` (`odc.ir.ops.Builtin`) lowers a call with: the lowerer, at
    one call of the built-in `op`."""

    def __init__(self, lowerer: ModelLowerer, op: str, call: ast.Call):
        self.lw, self.op, self.call = lowerer, op, call

    def type(self, x: Tensor) -> TensorType:
        return self.lw.g.type(x.id)

    def node(self, irop: str, args: list[Tensor], attrs: dict) -> Tensor:
        return self.lw.node(irop, args, attrs, self.call.span)

    def features(self, xt: TensorType, rank: int) -> int:
        return self.lw.features(self.op, xt, rank, self.call.span)

    def fail(self, message: str, hint: str | None = None):
        raise Fail(message, self.call.span, hint)

    def layer(self, irop: str, x: Tensor, params: list[tuple[str, TensorType, dict]], attrs: dict) -> Tensor:
        """Type-check a layer, then create its parameters `<op><k>.<role>` (in order) and its node."""
        lw, span = self.lw, self.call.span
        t = lw.infer(irop, [x.id], [lw.g.type(x.id)] + [pt for _, pt, _ in params], attrs, span)
        lw.counts[self.op] += 1
        ids = [lw.arg("param", f"{self.op}{lw.counts[self.op]}.{role}", pt, init, span) for role, pt, init in params]
        lw.check_size(f"the result of {self.op},", t, span)
        return Tensor(lw.add(irop, [x.id, *ids], attrs, t, span))


# -- whole models and files -------------------------------------------------------------------
def hyper_values(model: ast.Model, overrides: dict | None, diags: list[Diagnostic]) -> dict:
    """The model's hyper-parameters: defaults from the source, replaced by `overrides`."""
    values = {}
    for h in model.hypers:
        try:
            if h.name in values:
                raise Fail(f"hyper-parameter {h.name} is declared twice", h.span)
            values[h.name] = POISON  # until its default is known to be good
            v = literal(h.default)
            if not is_number(v):
                raise Fail(f"a hyper-parameter is a number, got {od_text(v)}", h.default.span)
            values[h.name] = v
        except Fail as e:
            diags.append(e.diagnostic)
    for name, v in (overrides or {}).items():
        if name not in values:
            hint = did_you_mean(name, values) or (f"its hyper-parameters are {', '.join(values)}" if values else
                                                  "it has none")
            raise OdcError(f"model {model.name} has no hyper-parameter '{name}'\nhint: {hint}")
        if not is_number(v):
            raise OdcError(f"hyper-parameter {name} of model {model.name} must be a number, got {od_text(v)}")
        values[name] = v
    return values


def lower_model(model: ast.Model, defs: dict[str, ast.Def], hypers: dict | None = None, recipe=None) -> Graph:
    """Lower one model (its hyper-parameters replaced by `hypers`) with the file's defs, which
    `check_defs` found free of recursion. `recipe` is the model's train block or None; its data
    set's class count is checked against the model's output, and ``graph.meta["recipe"]`` is set
    to its dict form (left unset without one). ``graph.meta["hyper"]`` holds the hyper-parameter
    values."""
    diags = []
    values = hyper_values(model, hypers, diags)
    return ModelLowerer(model, defs, recipe, diags).run(values)


def check_defs(defs: dict[str, ast.Def]) -> list[Diagnostic]:
    """Defs are inlined, so none may call itself, directly or through others: a depth-first walk
    of the call graph reports every call that closes a cycle."""
    diags, state = [], {}  # state: "open" while on the walk's path, "done" after

    def visit(path: list[str]):  # path: the defs being visited, the current one last
        state[path[-1]] = "open"
        for node in ast.walk(defs[path[-1]]):
            if isinstance(node, ast.Call) and node.func in defs:
                if state.get(node.func) == "open":
                    cycle = path[path.index(node.func):] + [node.func]
                    diags.append(Diagnostic(f"recursive call: {' -> '.join(cycle)}", node.span,
                                            "a def is inlined at each call, so it cannot call itself, "
                                            "directly or through another def"))
                elif node.func not in state:
                    visit(path + [node.func])
        state[path[-1]] = "done"

    for name in defs:
        if name not in state:
            visit([name])
    return diags
