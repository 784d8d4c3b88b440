"""Text → syntax tree (`odc.frontend.ast`).

The grammar (`grammar.lark`) is LALR(1). Indentation is turned into _INDENT/_DEDENT tokens by
`OdIndenter`, lark's Python-style post-lexer; newlines inside brackets are ignored. A syntax error
becomes a `CompileError` at the offending token that lists, in words, what could have come there:
the parser is asked which terminals it would accept, and groups of them are named ("an
expression", "an operator").
"""
from __future__ import annotations

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedToken
from lark.indenter import Indenter
from lark.lexer import PatternStr

from odc.errors import CompileError, Diagnostic, SourceFile, Span
from odc.frontend import ast


class _IndentError(Exception):
    def __init__(self, token: Token, indent: int, levels: list[int]):
        self.token, self.indent, self.levels = token, indent, levels


class OdIndenter(Indenter):
    NL_type = "_NEWLINE"
    OPEN_PAREN_types = ["LPAR", "LSQB"]
    CLOSE_PAREN_types = ["RPAR", "RSQB"]
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 8  # unused: the grammar admits no tabs

    def handle_NL(self, token):
        if self.paren_level > 0:
            return
        yield token
        indent = len(token.rsplit("\n", 1)[1])
        if indent > self.indent_level[-1]:
            self.indent_level.append(indent)
            yield Token.new_borrow_pos(self.INDENT_type, "", token)
        elif indent not in self.indent_level:
            raise _IndentError(token, indent, self.indent_level)
        else:
            while indent < self.indent_level[-1]:
                self.indent_level.pop()
                yield Token.new_borrow_pos(self.DEDENT_type, "", token)

    def _process(self, stream):
        # lark's version asserts on an unmatched ')'; here the parser reports it instead
        token = None
        for token in stream:
            yield from self.handle_NL(token) if token.type == self.NL_type else (token,)
            if token.type in self.OPEN_PAREN_types:
                self.paren_level += 1
            elif token.type in self.CLOSE_PAREN_types:
                self.paren_level = max(0, self.paren_level - 1)
        while len(self.indent_level) > 1 and not self.paren_level:  # else the file ends in brackets
            self.indent_level.pop()
            yield Token.new_borrow_pos(self.DEDENT_type, "", token)


_LARK = Lark.open("grammar.lark", rel_to=__file__, parser="lalr", postlex=OdIndenter(),
                  propagate_positions=True, maybe_placeholders=True)

# Terminals named in words; anonymous ones (keywords, punctuation) are quoted.
_WORDS = {"NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
          "_NEWLINE": "end of line", "_INDENT": "an indented block",
          "_DEDENT": "end of block", "$END": "end of file"}
# Sets of terminals named as one, when all of them could come.
_GROUPS = [("an expression", {"NAME", "INT", "FLOAT", "STRING", "TRUE", "FALSE", "LPAR", "LSQB", "MINUS"}),
           ("an operator", {"PLUS", "MINUS", "STAR", "SLASH", "AT"})]
_ORDER = ["NAME", "INT", "RPAR", "RSQB", "COMMA", "COLON", "EQUAL", "LPAR", "LSQB"]


def _describe_terminal(name: str) -> str:
    if name in _WORDS:
        return _WORDS[name]
    pattern = _LARK.get_terminal(name).pattern
    return f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name.lower()


def expected_in_words(expected: set[str]) -> str:
    """E.g. {"RPAR", "COMMA", "PLUS", "MINUS", "STAR", "SLASH", "AT"} → "an operator, ')' or ','"."""
    words, rest = [], set(expected)
    for group, members in _GROUPS:
        if members <= expected:
            words.append(group)
            rest -= members
    rank = {t: i for i, t in enumerate(_ORDER)}
    words += [_describe_terminal(t) for t in sorted(rest, key=lambda t: (rank.get(t, len(rank)), t))]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _describe_token(tok: Token) -> str:
    kind = {"NAME": "name", "INT": "number", "FLOAT": "number", "STRING": "string"}.get(tok.type)
    if kind:
        return f"{kind} {tok.value}" if tok.type == "STRING" else f"{kind} '{tok.value}'"
    return "indentation" if tok.type == "_INDENT" else _describe_terminal(tok.type)


def _token_span(src: SourceFile, tok: Token) -> Span:
    if tok.type in ("_INDENT", "_DEDENT", "$END"):
        # where the text after the newline that made them starts
        line, col = (tok.end_line, tok.end_column) if tok.end_line else (1, 1)
        return Span(src, line, col, line, col + 1)
    width = len(tok.value.split("\n")[0])  # a _NEWLINE token may start with a comment
    return Span(src, tok.line, tok.column, tok.line, tok.column + max(1, width))


def parse(src: SourceFile) -> ast.File:
    text = src.text if src.text.endswith("\n") else src.text + "\n"
    try:
        tree = _LARK.parse(text)
    except UnexpectedCharacters as e:
        span = Span(src, e.line, e.column, e.line, e.column + 1)
        if e.char == "\t":
            raise CompileError(Diagnostic("tab character; odc indents with spaces only", span,
                                          "replace each tab with spaces")) from None
        if e.char == '"':
            raise CompileError(Diagnostic("unterminated string", span,
                                          'a string ends with " on the same line')) from None
        raise CompileError(Diagnostic(f"unexpected character {e.char!r}", span)) from None
    except UnexpectedToken as e:
        expected = e.interactive_parser.accepts() if e.interactive_parser else set(e.expected)
        msg = f"unexpected {_describe_token(e.token)}"
        if expected:
            msg += f"; expected {expected_in_words(expected)}"
        raise CompileError(Diagnostic(msg, _token_span(src, e.token))) from None
    except _IndentError as e:
        line, col = e.token.end_line, e.token.end_column
        levels = " or ".join(str(n) for n in reversed(e.levels))
        raise CompileError(Diagnostic(
            f"this line is indented by {e.indent} spaces, which matches no enclosing block",
            Span(src, line, col, line, col + 1), f"indent it by {levels} spaces")) from None
    return _ToAst(src).transform(tree)


def _span(src: SourceFile, first, last=None) -> Span:
    """The span from the start of `first` to the end of `last` (a lark token or meta, or a Span)."""
    last = last or first
    if isinstance(last, Span):
        return Span(src, first.line, first.column, last.end_line, last.end_col)
    return Span(src, first.line, first.column, last.end_line, last.end_column)


@v_args(meta=True, inline=True)
class _ToAst(Transformer):
    def __init__(self, src: SourceFile):
        super().__init__()
        self.src = src

    def sp(self, meta) -> Span:
        return _span(self.src, meta)

    # -- expressions
    def name(self, meta, tok):
        return ast.Name(str(tok), self.sp(meta))

    def int(self, meta, tok):
        return ast.Number(int(tok), self.sp(meta))

    def float(self, meta, tok):
        return ast.Number(float(tok), self.sp(meta))

    def string(self, meta, tok):
        return ast.String(str(tok)[1:-1], self.sp(meta))

    def true(self, meta):
        return ast.Bool(True, self.sp(meta))

    def false(self, meta):
        return ast.Bool(False, self.sp(meta))

    def list(self, meta, *items):
        return ast.List([i for i in items if i is not None], self.sp(meta))

    def keyword(self, meta, tok, value):
        return ast.Keyword(str(tok), value, self.sp(meta))

    def call(self, meta, tok, *args):
        args = [a for a in args if a is not None]
        return ast.Call(str(tok), _span(self.src, tok), [a for a in args if not isinstance(a, ast.Keyword)],
                        [a for a in args if isinstance(a, ast.Keyword)], self.sp(meta))

    def add(self, meta, a, b):
        return ast.BinOp("add", a, b, self.sp(meta))

    def sub(self, meta, a, b):
        return ast.BinOp("sub", a, b, self.sp(meta))

    def mul(self, meta, a, b):
        return ast.BinOp("mul", a, b, self.sp(meta))

    def div(self, meta, a, b):
        return ast.BinOp("div", a, b, self.sp(meta))

    def matmul(self, meta, a, b):
        return ast.BinOp("matmul", a, b, self.sp(meta))

    def neg(self, meta, operand):
        return ast.Neg(operand, self.sp(meta))

    # -- types and statements
    def dim(self, meta, tok):
        return ast.Dim(int(tok) if tok.type == "INT" else str(tok), self.sp(meta))

    def type(self, meta, dtype, *dims):
        return ast.Type(str(dtype), _span(self.src, dtype), [d for d in dims if d is not None], self.sp(meta))

    def input_stmt(self, meta, name, type):
        return ast.Input(str(name), type, _span(self.src, meta, type.span))

    def assign(self, meta, name, value):
        return ast.Assign(str(name), None, value, _span(self.src, name, value.span))

    def annotated(self, meta, name, type, value):
        return ast.Assign(str(name), type, value, _span(self.src, name, value.span))

    def param_stmt(self, meta, name, type, init):
        return ast.Param(str(name), type, init, _span(self.src, meta, init.span))

    def return_stmt(self, meta, value):
        return ast.Return(value, _span(self.src, meta, value.span))

    def body(self, meta, *stmts):
        return list(stmts)

    # -- declarations
    def hyper(self, meta, name, default):
        return ast.Hyper(str(name), default, _span(self.src, name, default.span))

    def model(self, meta, name, *rest):
        *hypers, body = rest
        return ast.Model(str(name), [h for h in hypers if h is not None], body, _span(self.src, meta, name))

    def defn(self, meta, name, *rest):
        *params, body = rest
        return ast.Def(str(name), [ast.Name(str(p), _span(self.src, p)) for p in params if p is not None],
                       body, _span(self.src, meta, name))

    def train_item(self, meta, key, value):
        return ast.TrainItem(str(key), value, _span(self.src, key, value.span))

    def train(self, meta, name, *items):
        return ast.Train(str(name), list(items), _span(self.src, meta, name))

    def start(self, meta, *decls):
        return ast.File(self.src, list(decls))

