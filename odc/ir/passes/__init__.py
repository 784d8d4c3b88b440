"""The pass manager: every pass by name, and one pipeline per kind of graph.

A pass is a module of this package with
- `name`: how pipelines, dumps (`--after NAME`) and `odc opt -p NAME` call it;
- `summary`: one line, for `odc opt --list-passes`;
- `options`: option name -> one line of help (`"*"` accepts any name: shape-infer's symbols);
- `requires`: passes whose result it needs; `run_passes` runs one first when its `done(graph)`
  says the graph lacks it (autodiff needs the training form, the optimizer the gradients);
- `run(graph, **options) -> graph`: a new graph (the input is left as it was), with its
  algorithm in the module's docstring.
`verify` (the IR verifier, `odc.ir.verify`) is a pass too: it returns its input or raises.

Every kind of graph has one pipeline (`PIPELINES`); the driver (`odc.program`), dumps, the
interpreter and code generation all take graphs from it, and nothing runs a pass on the side.
Shape inference comes first and may bind the batch symbol: compiled graphs are specialised to
their batch size before autodiff, so every later pass sees concrete shapes; dumps keep the
symbol, and memory planning then has nothing to place. The verifier runs after every pass with
`verify_each` (`--verify-each`, ``ODC_VERIFY_EACH=1``, always in the tests), and on the result
of every pipeline.
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from odc.errors import OdcError
from odc.ir import verify as verifier
from odc.ir.graph import Graph
from odc.ir.passes import augment, autodiff, cse, dce, fuse, inference, optimizer, plan_memory, shape_infer, train_mode


@dataclass(frozen=True)
class Pass:
    name: str
    summary: str
    run: Callable[..., Graph]
    options: dict[str, str] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    done: Callable[[Graph], bool] | None = None  # has this pass's result? (for `requires`)


def _from_module(m) -> Pass:
    return Pass(m.name, m.summary, m.run, getattr(m, "options", {}), getattr(m, "requires", ()),
                getattr(m, "done", None))


REGISTRY: dict[str, Pass] = {p.name: p for p in [
    *map(_from_module, (shape_infer, dce, augment)),
    Pass("normalize", augment.eval_summary, augment.run_eval, augment.eval_options),
    *map(_from_module, (inference, train_mode, autodiff, optimizer, cse, fuse, plan_memory)),
    Pass("verify", "check the IR's invariants (operands, types by the type rules, names); change nothing",
         verifier.verify)]}

PIPELINES = {
    "forward": ("shape-infer", "dce", "normalize", "inference", "cse", "fuse", "plan-memory"),
    "grads": ("shape-infer", "dce", "augment", "train-mode", "autodiff", "cse", "fuse", "plan-memory"),
    "train": ("shape-infer", "dce", "augment", "train-mode", "autodiff", "optimizer", "cse", "fuse", "plan-memory"),
}
ORDER = tuple(n for n in REGISTRY if n != "verify")  # the passes of the pipelines, as dumps show them


def verify_each_default() -> bool:
    return os.environ.get("ODC_VERIFY_EACH", "") in ("1", "true", "yes")


def get(name: str) -> Pass:
    if name not in REGISTRY:
        raise OdcError(f"no pass named '{name}'; the passes are {', '.join(REGISTRY)}")
    return REGISTRY[name]


def check_options(name: str, options: dict) -> None:
    """An OdcError for an option `name` does not take."""
    known = get(name).options
    for key in options:
        if key not in known and "*" not in known:
            have = ", ".join(known) or "none"
            raise OdcError(f"pass {name} has no option '{key}'; its options are {have}")


def run_passes(g: Graph, names, options: dict[str, dict] | None = None, verify_each: bool | None = None,
               note: Callable[[str], None] | None = None) -> list[tuple[str, Graph]]:
    """Run the passes `names` in order on `g`; the graph after each, as (name, graph) pairs.
    `options` maps a pass name to keyword arguments of its `run`. A pass whose requirement is
    missing from the graph gets it first (reported through `note`)."""
    with paused_gc():
        return _run_passes(g, names, options or {}, verify_each_default() if verify_each is None else verify_each, note)


@contextmanager
def paused_gc():
    """Python's cycle collector paused: passes allocate many small objects, which would start
    full collections (tens of milliseconds each over the graphs alive), while what they free
    holds no cycles and goes by reference counting."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _run_passes(g: Graph, names, options: dict[str, dict], verify_each: bool,
                note: Callable[[str], None] | None) -> list[tuple[str, Graph]]:
    out: list[tuple[str, Graph]] = []

    def run_one(name: str, g: Graph) -> Graph:
        p = get(name)
        for r in p.requires:
            if not get(r).done(g):
                if note:
                    note(f"{name} requires {r}; running it first")
                g = run_one(r, g)
        opts = options.get(name, {})
        check_options(name, opts)
        g = p.run(g, **opts)
        if verify_each and name != "verify":
            verifier.verify(g)
        out.append((name, g))
        return g

    for name in names:
        g = run_one(name, g)
    if out and not verify_each:
        verifier.verify(out[-1][1])
    return out


def run_pipeline(g: Graph, kind: str, options: dict[str, dict] | None = None,
                 verify_each: bool | None = None) -> Graph:
    """`g` through the pipeline of `kind` ("forward", "grads", "train")."""
    return run_passes(g, PIPELINES[kind], options, verify_each)[-1][1]

