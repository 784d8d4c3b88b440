"""Reads the text printed by `odc.ir.printer` back into a `Graph`.

Printing a graph, parsing the text and printing again gives the same text. Source locations
come back as spans of a source file whose text is not available (only path, line and column).
"""
from __future__ import annotations

import json

from lark import Lark, Transformer, v_args
from lark.exceptions import LarkError

from odc.errors import OdcError, SourceFile, Span
from odc.ir.graph import Graph, TensorType

_GRAMMAR = r"""
start: "func" "@" NAME "(" (arg ",")* ")" "{" stmt* ret? "}"
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
      | NAME -> string
      | ESCAPED_STRING -> qstring
      | "[" [value ("," value)*] "]" -> list
loc: "loc" "(" ESCAPED_STRING ":" INT ":" INT ")"
KIND: "input" | "param" | "state"
VALUE: "%" /[A-Za-z0-9_.]+/
NAME: /[A-Za-z_][A-Za-z0-9_.]*/
%import common.INT
%import common.SIGNED_INT
%import common.SIGNED_FLOAT
%import common.ESCAPED_STRING
%import common.WS
%ignore WS
"""

_parser = Lark(_GRAMMAR, parser="lalr")


@v_args(inline=True)
class _Build(Transformer):
    def int(self, t):
        return int(t)

    def float(self, t):
        return float(t)

    def true(self):
        return True

    def false(self):
        return False

    def string(self, t):
        return str(t)

    def qstring(self, t):
        return json.loads(t)

    def list(self, *items):
        return [i for i in items if i is not None]

    def sym(self, t):
        return str(t)

    def type(self, dtype, *dims):
        return TensorType(str(dtype), tuple(d for d in dims if d is not None))

    def attr(self, k, v):
        return str(k), v

    def attrs(self, *kv):
        return dict(p for p in kv if p is not None)

    def loc(self, path, line, col):
        return Span(SourceFile(json.loads(path), ""), int(line), int(col), int(line), int(col))

    def arg(self, kind, value, ty, *rest):
        return ("arg", str(kind), str(value)[1:], ty, _pick(rest, dict, {}), _pick(rest, Span, None))

    def stmt(self, value, op, *rest):
        operands = [str(r) for r in rest if isinstance(r, str) and r.startswith("%")]
        return ("stmt", str(value), str(op), operands, _pick(rest, dict, {}),
                _pick(rest, TensorType, None), _pick(rest, Span, None))

    def output(self, value, name):
        return str(value), name

    def ret(self, *outs):
        return ("ret", list(outs))

    def start(self, name, *items):
        g = Graph(str(name))
        ids: dict[str, int] = {}
        for item in items:
            if item[0] == "arg":
                _, kind, argname, ty, attrs, span = item
                ids["%" + argname] = g.add(kind, (), attrs, ty, span, name=argname)
            elif item[0] == "stmt":
                _, value, op, operands, attrs, ty, span = item
                try:
                    args = [ids[o] for o in operands]
                except KeyError as e:
                    raise OdcError(f"IR text: value {e.args[0]} used before it is defined") from None
                ids[value] = g.add(op, args, attrs, ty, span)
            else:
                g.outputs = [(str(n), ids[v]) for v, n in item[1]]
        return g


def _pick(items, cls, default):
    for i in items:
        if isinstance(i, cls):
            return i
    return default


def parse_graph(text: str) -> Graph:
    try:
        return _Build().transform(_parser.parse(text))
    except LarkError as e:
        orig = getattr(e, "orig_exc", None)
        if isinstance(orig, OdcError):
            raise orig from None
        raise OdcError(f"IR text: {e}") from None
