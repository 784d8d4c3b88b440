"""The syntax tree of an .od file. Every node carries the `Span` of its source text."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator, Union

from odc.errors import SourceFile, Span


# -- expressions ----------------------------------------------------------------------------
@dataclass
class Name:
    id: str
    span: Span


@dataclass
class Number:
    value: int | float
    span: Span


@dataclass
class String:
    value: str
    span: Span


@dataclass
class Bool:
    value: bool
    span: Span


@dataclass
class List:
    items: list[Expr]
    span: Span


@dataclass
class Keyword:
    name: str
    value: Expr
    span: Span


@dataclass
class Call:
    func: str
    func_span: Span
    args: list[Expr]
    kwargs: list[Keyword]
    span: Span


@dataclass
class BinOp:
    op: str  # "add", "sub", "mul", "div" or "matmul"
    left: Expr
    right: Expr
    span: Span


@dataclass
class Neg:
    operand: Expr
    span: Span


Expr = Union[Name, Number, String, Bool, List, Call, BinOp, Neg]


# -- types and statements -------------------------------------------------------------------
@dataclass
class Dim:
    value: int | str  # a size or a name (a symbol, or a compile-time number such as a hyper)
    span: Span


@dataclass
class Type:
    dtype: str
    dtype_span: Span
    dims: list[Dim]
    span: Span


@dataclass
class Input:
    name: str
    type: Type
    span: Span


@dataclass
class Assign:
    name: str
    type: Type | None  # `NAME: TYPE = EXPR` checks the value's type
    value: Expr
    span: Span


@dataclass
class Param:
    name: str
    type: Type
    init: Expr
    span: Span


@dataclass
class Return:
    value: Expr
    span: Span


Stmt = Union[Input, Assign, Param, Return]


# -- declarations ---------------------------------------------------------------------------
@dataclass
class Hyper:
    name: str
    default: Expr
    span: Span


@dataclass
class Model:
    name: str
    hypers: list[Hyper]
    body: list[Stmt]
    span: Span  # the header line


@dataclass
class Def:
    name: str
    params: list[Name]
    body: list[Stmt]
    span: Span  # the header line


@dataclass
class TrainItem:
    key: str
    value: Expr
    span: Span


@dataclass
class Train:
    model: str
    items: list[TrainItem]
    span: Span  # `train NAME`


@dataclass
class File:
    source: SourceFile
    decls: list[Model | Def | Train]


def walk(node) -> Iterator:
    """`node` and every syntax node below it, in source order."""
    yield node
    for f in fields(node):
        value = getattr(node, f.name)
        for child in value if isinstance(value, list) else [value]:
            if hasattr(child, "span"):
                yield from walk(child)
