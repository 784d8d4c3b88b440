"""Reads the text printed by `odc.ir.printer` back into a `Graph`.

Printing a graph, parsing the text and printing again gives the same text. Source locations
come back as spans of a source file whose text is not available (only path, line and column).
``//`` starts a comment that runs to the end of the line (as in MLIR: test inputs carry their
CHECK lines in comments, and `odc opt --print-between-passes` heads each function with one).
Function attributes (``attributes {arena_bytes=N}``) go to ``graph.meta``.

Text that is not IR is an `OdcError` (a `CompileError` at ``path:line:col`` of the text, with
the line and a caret): bad syntax, an unknown element type, a value used before it is defined
or defined twice, two arguments of one name. Whether the ops and types make sense is the
verifier's question (`odc.ir.verify`), not the parser's.
"""
from __future__ import annotations

import json
import math

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from odc.errors import CompileError, Diagnostic, OdcError, SourceFile, Span
from odc.ir import dtypes
from odc.ir.graph import Graph, TensorType

_GRAMMAR = r"""
start: "func" "@" NAME "(" (arg ",")* ")" ("attributes" attrs)? "{" stmt* ret? "}"
arg: KIND VALUE ":" type attrs? loc?
stmt: VALUE "=" NAME "(" [VALUE ("," VALUE)*] ")" attrs? (":" type)? loc?
ret: "return" output ("," output)*
output: VALUE "as" value
type: NAME "[" [dim ("," dim)*] "]"
?dim: INT -> int | NAME -> sym
attrs: "{" [attr ("," attr)*] "}"
attr: NAME "=" value
?value: SIGNED_INT -> int
      | SIGNED_FLOAT -> float
      | "true" -> true
      | "false" -> false
      | "inf" -> inf
      | "-inf" -> neg_inf
      | "nan" -> nan
      | NAME -> string
      | ESCAPED_STRING -> qstring
      | "[" [value ("," value)*] "]" -> list
loc: "loc" "(" ESCAPED_STRING ":" INT ":" INT ")"
KIND: "input" | "param" | "state"
VALUE: "%" /[A-Za-z0-9_.]+/
NAME: /[A-Za-z_][A-Za-z0-9_.]*/
COMMENT: "//" /[^\n]*/
%import common.INT
%import common.SIGNED_INT
%import common.SIGNED_FLOAT
%import common.ESCAPED_STRING
%import common.WS
%ignore WS
%ignore COMMENT
"""

_parser = Lark(_GRAMMAR, parser="lalr")

# how an error message names what the parser expected
_WORDS = {"KIND": "an argument (input, param, state)", "VALUE": "a %value", "NAME": "a name", "INT": "a number",
          "SIGNED_INT": "a number", "SIGNED_FLOAT": "a number", "ESCAPED_STRING": "a quoted string"}


class _Error(Exception):
    """A problem at a token, raised inside the transformer (lark wraps it; `parse_graph` unwraps)."""

    def __init__(self, message: str, token: Token | None):
        super().__init__(message)
        self.message, self.token = message, token


@v_args(inline=True)
class _Build(Transformer):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def int(self, t):
        return int(t)

    def float(self, t):
        return float(t)

    def true(self):
        return True

    def false(self):
        return False

    def inf(self):
        return math.inf

    def neg_inf(self):
        return -math.inf

    def nan(self):
        return math.nan

    def string(self, t):
        return str(t)

    def qstring(self, t):
        return json.loads(t)

    def list(self, *items):
        return [i for i in items if i is not None]

    def sym(self, t):
        return str(t)

    def type(self, dtype, *dims):
        if dtype not in dtypes.TABLE:
            raise _Error(f"unknown element type '{dtype}'; the types are {', '.join(dtypes.NAMES)}", dtype)
        return TensorType(str(dtype), tuple(d for d in dims if d is not None))

    def attr(self, k, v):
        return str(k), v

    def attrs(self, *kv):
        return dict(p for p in kv if p is not None)

    def loc(self, path, line, col):
        return Span(SourceFile(json.loads(path), ""), int(line), int(col), int(line), int(col))

    def arg(self, kind, value, ty, *rest):
        return ("arg", str(kind), value, ty, _pick(rest, dict, {}), _pick(rest, Span, None))

    def stmt(self, value, op, *rest):
        operands = [r for r in rest if isinstance(r, Token) and r.type == "VALUE"]
        return ("stmt", value, str(op), operands, _pick(rest, dict, {}),
                _pick(rest, TensorType, None), _pick(rest, Span, None))

    def output(self, value, name):
        return value, name

    def ret(self, *outs):
        return ("ret", list(outs))

    def start(self, name, *items):
        g = Graph(str(name))
        ids: dict[str, int] = {}

        def define(value: Token, nid_of):
            if str(value) in ids:
                raise _Error(f"{value} is defined twice", value)
            ids[str(value)] = nid_of()

        def use(value: Token, what: str = "used before it is defined") -> int:
            if str(value) not in ids:
                raise _Error(f"value {value} {what}", value)
            return ids[str(value)]

        for item in items:
            if isinstance(item, dict):  # the function's attributes
                g.meta.update(item)
            elif item[0] == "arg":
                _, kind, value, ty, attrs, span = item
                define(value, lambda: g.add(kind, (), attrs, ty, span, name=str(value)[1:]))
            elif item[0] == "stmt":
                _, value, op, operands, attrs, ty, span = item
                args = [use(o) for o in operands]
                define(value, lambda: g.add(op, args, attrs, ty, span))
            else:
                g.outputs = [(str(n), use(v, "is returned but never defined")) for v, n in item[1]]
        return g


def _pick(items, cls, default):
    for i in items:
        if isinstance(i, cls):
            return i
    return default


def _expected(names) -> str:
    words = []
    for n in sorted(names):
        if n == "$END":
            words.append("the end of the text")
            continue
        try:
            pattern = _parser.get_terminal(n).pattern
        except KeyError:
            continue
        w = _WORDS.get(n, f"'{pattern.value}'" if pattern.type == "str" else n.lower())
        if w not in words:
            words.append(w)
    return " or ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def parse_graph(text: str, path: str = "<string>") -> Graph:
    """The graph that `text` (the IR of one function) describes; `path` names the text in errors."""
    source = SourceFile(path, text)

    def error(message: str, line: int, col: int, width: int = 1) -> CompileError:
        return CompileError(Diagnostic(f"IR text: {message}", Span(source, line, col, line, col + max(1, width))))

    try:
        return _Build(path).transform(_parser.parse(text))
    except UnexpectedInput as e:
        expected = _expected(getattr(e, "accepts", None) or getattr(e, "expected", ()))
        if isinstance(e, UnexpectedEOF) or isinstance(e, UnexpectedToken) and e.token.type == "$END":
            lines = text.rstrip().split("\n")
            raise error(f"the text ends early; expected {expected}", len(lines), len(lines[-1]) + 1) from None
        if isinstance(e, UnexpectedToken):
            raise error(f"unexpected '{e.token}'; expected {expected}",
                        e.line, e.column, len(e.token)) from None
        if isinstance(e, UnexpectedCharacters):
            raise error(f"unexpected character {text[e.pos_in_stream]!r}", e.line, e.column) from None
        raise OdcError(f"{path}: error: IR text: {e}") from None
    except LarkError as e:
        orig = getattr(e, "orig_exc", None)
        if isinstance(orig, _Error):
            t = orig.token
            if t is not None and t.line is not None:
                raise error(orig.message, t.line, t.column, len(t)) from None
            raise OdcError(f"{path}: error: IR text: {orig.message}") from None
        if isinstance(orig, OdcError):
            raise orig from None
        raise OdcError(f"{path}: error: IR text: {e}") from None
