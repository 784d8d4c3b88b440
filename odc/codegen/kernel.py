"""A kernel before emission, and the table of op lowerings that make kernels.

`LOWER` maps an op name to ``lower(graph, node id) -> Kernel``; the modules of
`odc.codegen.kernels` fill it with `lowering`. An anchor's kernel computes slices ``[lo, hi)``
of dim 0 of its result, so a fused group runs the anchor on a slice and then its elementwise
epilogue on the same slice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from llvmlite import ir

from odc.codegen.builder import KernelBuilder

LOWER = {}


def lowering(*names):
    def register(fn):
        for n in names:
            LOWER[n] = fn
        return fn
    return register


@dataclass
class Kernel:
    """A kernel before emission: the values it touches, its parallel extent and its body."""
    values: list  # value ids (or ("out", name) keys) whose memory the body uses via `KernelBuilder.ptr`
    extent: int  # iterations of the outermost loop, split across threads
    cost: float  # estimated cycles for the whole range
    emit: Callable[[KernelBuilder, ir.Value, ir.Value], None]  # body for [lo, hi)
    scratch: int = 0  # bytes of scratch memory per thread
    status: bool = False  # the body may report bad input through `KernelBuilder.status`
    names: list[str] = field(default_factory=list)  # the ops, for the function name
