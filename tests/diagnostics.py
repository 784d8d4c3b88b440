"""What the diagnosis tests share: checking a source that must fail with one error, and finding
where in it an error must point."""
import pytest

from odc.errors import CompileError
from odc.frontend import parse_source


def single(src: str):
    """The one diagnostic that checking `src` (as t.od) reports."""
    with pytest.raises(CompileError) as e:
        parse_source(src, "t.od")
    assert len(e.value.diagnostics) == 1, e.value
    return e.value.first


def where(src: str, line: int, needle: str) -> tuple[int, int]:
    """(line, column) of the first `needle` on `line` of `src`, counting from 1."""
    return line, src.splitlines()[line - 1].index(needle) + 1
