"""The front end: .od text → syntax tree → one typed graph per model, plus the train recipes.

    module = parse_file("models/lenet5.od")    # raises CompileError listing every problem found
    module.models["LeNet5"]                    # Graph, built with the default hyper-parameters
    module.recipes["LeNet5"]                   # Recipe of `train LeNet5:` (absent if none)
    module.lower("LeNet5", {"classes": 10})    # the same model with other hyper-parameters
    load_graph("models/lenet5.od")             # the graph of the file's model (see Module.pick)
"""
from __future__ import annotations

import gc
import sys
from contextlib import contextmanager
from dataclasses import dataclass

from odc.errors import CompileError, Diagnostic, OdcError, SourceFile
from odc.frontend import ast
from odc.frontend.limits import RECURSION_LIMIT
from odc.frontend.lower import BUILTINS, check_defs, did_you_mean, lower_model, raise_diagnostics
from odc.frontend.parser import parse
from odc.frontend.recipe import Recipe, lower_train
from odc.ir.graph import Graph

__all__ = ["Module", "Recipe", "load_graph", "parse_file", "parse_source", "read_text"]


@dataclass
class Module:
    source: SourceFile
    ast: ast.File
    models: dict[str, Graph]     # name → graph, default hyper-parameters, in file order
    recipes: dict[str, Recipe]   # model name → its train block
    defs: dict[str, ast.Def]

    def pick(self, model: str | None = None) -> str:
        """The name of `model`, checked; by default the model with a train block if exactly one
        has one, else the only model."""
        if model is None:
            candidates = list(self.recipes) if len(self.recipes) == 1 else list(self.models)
            if len(candidates) == 1:
                return candidates[0]
            if not self.models:
                raise OdcError(f"{self.source.path}: error: the file has no model")
            raise OdcError(f"{self.source.path}: error: the file has {len(self.models)} models "
                           f"({', '.join(self.models)}) and {len(self.recipes)} train blocks; pick a model\n"
                           f"hint: odc.load(path, model=NAME), or --model NAME on the command line")
        if model not in self.models:
            hint = did_you_mean(model, self.models) or f"the models are {', '.join(self.models) or 'none'}"
            raise OdcError(f"{self.source.path}: error: no model '{model}'\nhint: {hint}")
        return model

    def lower(self, model: str | None = None, hypers: dict[str, int | float] | None = None) -> Graph:
        """The graph of `model` (see `pick`) with some hyper-parameters replaced (an unknown name
        is an OdcError). Without `hypers`, the graph that checking the file made."""
        name = self.pick(model)
        if not hypers:
            return self.models[name]
        decl = next(d for d in self.ast.decls if isinstance(d, ast.Model) and d.name == name)
        with _checking():
            return lower_model(decl, self.defs, hypers, self.recipes.get(name))


def parse_source(text: str, path: str = "<string>") -> Module:
    """Parse and check the text of an .od file named `path`; raises CompileError with every
    problem found, in source order."""
    with _checking():
        return _check(SourceFile(path, text))


@contextmanager
def _checking():
    """What checking a file needs: a recursion limit above what the limits on nesting allow
    (`limits.RECURSION_LIMIT`), and no cyclic garbage collection: the syntax tree and the graph
    are hundreds of thousands of objects that live to the end, which the collector would
    otherwise walk again and again (40% of the time of a 10,000-line file)."""
    limit, collecting = sys.getrecursionlimit(), gc.isenabled()
    sys.setrecursionlimit(max(limit, RECURSION_LIMIT))
    gc.disable()
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)
        if collecting:
            gc.enable()


def _check(src: SourceFile) -> Module:
    tree = parse(src)
    diags: list[Diagnostic] = []
    models: dict[str, ast.Model] = {}
    defs: dict[str, ast.Def] = {}
    trains: list[ast.Train] = []
    for d in tree.decls:
        if isinstance(d, ast.Train):
            trains.append(d)
        elif d.name in models or d.name in defs:
            diags.append(Diagnostic(f"{d.name} is declared twice", d.span))
        elif isinstance(d, ast.Def) and d.name in BUILTINS:
            diags.append(Diagnostic(f"def {d.name} would hide the built-in op {d.name}", d.span,
                                    "give the def another name"))
        else:
            (models if isinstance(d, ast.Model) else defs)[d.name] = d
    recursion = check_defs(defs)
    diags += recursion
    recipes: dict[str, Recipe] = {}
    for t in trains:
        if t.model in recipes:
            diags.append(Diagnostic(f"model {t.model} has two train blocks", t.span))
        elif t.model not in models:
            diags.append(Diagnostic(f"train block for unknown model '{t.model}'", t.span,
                                    did_you_mean(t.model, models) or
                                    f"the models are {', '.join(models) or 'none'}"))
        else:
            recipes[t.model] = lower_train(t, diags)
    graphs = {}
    if not recursion:  # else a def cannot be inlined
        for name, m in models.items():
            try:
                graphs[name] = lower_model(m, defs, None, recipes.get(name))
            except CompileError as e:
                diags += e.diagnostics
    raise_diagnostics(diags)
    return Module(src, tree, graphs, recipes, defs)


def read_text(path) -> str:
    """A source file's text; a file that cannot be read is an OdcError naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is no part of the text
            return f.read()
    except FileNotFoundError:
        raise OdcError(f"{path}: error: no such file") from None
    except UnicodeDecodeError:
        raise OdcError(f"{path}: error: not a UTF-8 text file") from None
    except OSError as e:
        raise OdcError(f"{path}: error: cannot read: {e.strerror}") from None


def parse_file(path) -> Module:
    return parse_source(read_text(path), str(path))


def load_graph(path, model: str | None = None) -> Graph:
    """Parse and check an .od file; the graph of `model` (see `Module.pick`)."""
    module = parse_file(path)
    return module.models[module.pick(model)]
