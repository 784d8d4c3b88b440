"""User-facing errors.

`OdcError` is any problem caused by the user's input (a file, a flag, a data set); the CLI prints
its message and exits with code 1. `CompileError` carries one or more `Diagnostic`s, each tied to
a source span, rendered as ``path:line:col: error: message``, the source line, a caret line, notes
(such as the call site of an inlined def) and a hint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class SourceFile:
    path: str
    text: str

    @cached_property
    def lines(self) -> list[str]:
        """The text's lines, split once (a file with many errors renders many of them) and only at
        newlines, as the lexer counts them (not at the other line breaks of `str.splitlines`)."""
        return [line.removesuffix("\r") for line in self.text.split("\n")]

    def line(self, n: int) -> str:
        return self.lines[n - 1] if 0 < n <= len(self.lines) else ""


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns count from 1, the end column is exclusive."""
    source: SourceFile = field(compare=False, repr=False)
    line: int
    col: int
    end_line: int
    end_col: int

    @property
    def path(self) -> str:
        return self.source.path

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


@dataclass
class Diagnostic:
    message: str
    span: Span | None = None
    hint: str | None = None
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        if self.span is None:
            out = [f"error: {self.message}"]
        else:
            s = self.span
            out = [f"{s}: error: {self.message}"]
            text = s.source.line(s.line)
            if text:
                end = s.end_col if s.end_line == s.line else len(text) + 1
                width = max(1, end - s.col)
                out.append(text)
                pad = "".join(c if c == "\t" else " " for c in text[:s.col - 1])
                out.append(pad + "^" + "~" * (width - 1))
        out += [f"note: {n}" for n in self.notes]
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)


class OdcError(Exception):
    """An error in the user's input; the CLI prints it and exits with code 1."""


class CompileError(OdcError):
    """One or more diagnostics about a source file."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(d.render() for d in self.diagnostics))

    @property
    def first(self) -> Diagnostic:
        return self.diagnostics[0]

    @property
    def path(self) -> str | None:
        return self.first.span.path if self.first.span else None

    @property
    def line(self) -> int | None:
        return self.first.span.line if self.first.span else None

    @property
    def col(self) -> int | None:
        return self.first.span.col if self.first.span else None
