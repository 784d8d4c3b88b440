"""Text → syntax tree (`odc.frontend.ast`), in time linear in the length of the text.

The grammar (precedence and associativity as in Python; docs/language.md shows it):

    file       := (NEWLINE | model | def | train)*
    model      := "model" NAME "(" [hyper ("," hyper)* [","]] ")" ":" body       hyper := NAME "=" expr
    def        := "def" NAME "(" [NAME ("," NAME)* [","]] ")" ":" body
    train      := "train" NAME ":" NEWLINE INDENT (NAME "=" expr NEWLINE)+ DEDENT
    body       := NEWLINE INDENT stmt+ DEDENT
    stmt       := "input" NAME ":" type NEWLINE | NAME [":" type] "=" expr NEWLINE
                | "param" NAME ":" type "=" expr NEWLINE | "return" expr NEWLINE
    type       := NAME "[" [dim ("," dim)*] "]"                                    dim := INT | NAME
    expr       := expr ("+" | "-") term | term
    term       := term ("*" | "/" | "@") unary | unary
    unary      := "-" unary | atom
    atom       := NAME | INT | FLOAT | STRING | "true" | "false" | "(" expr ")"
                | NAME "(" [arg ("," arg)* [","]] ")" | "[" [expr ("," expr)* [","]] "]"
    arg        := expr | NAME "=" expr

`tokens` is the lexer: one regular expression, and indentation turned into INDENT/DEDENT tokens
as Python does (newlines inside brackets do not count; blank and comment lines neither). The
keywords are names where a keyword cannot stand (`return input` returns the name `input`).
`Parser` is recursive descent. A syntax error is a `CompileError` at the offending token that
says, in words, what could have come there: every token kind the parser tested at that place
("an expression", "an operator", "')'"). An expression may nest at most `MAX_NESTING` levels,
so that neither parsing nor lowering recurses without bound.
"""
from __future__ import annotations

import re

from odc.errors import CompileError, Diagnostic, SourceFile, Span
from odc.frontend import ast
from odc.frontend.limits import MAX_NESTING

_PUNCTUATION = {"(": "LPAR", ")": "RPAR", "[": "LSQB", "]": "RSQB", ",": "COMMA", ":": "COLON", "=": "EQUAL",
                "+": "PLUS", "-": "MINUS", "*": "STAR", "/": "SLASH", "@": "AT"}
_TOKEN = re.compile("|".join([
    r"(?P<NL>(?:#[^\n]*)?(?:\r?\n[ ]*(?:#[^\n]*)?)+)",  # newlines, with the comments and blank lines between
    r"(?P<SPACE>[ ]+)",
    r"(?P<COMMENT>#[^\n]*)",
    r"(?P<FLOAT>(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)",
    r"(?P<INT>[0-9]+)",
    r"(?P<NAME>[A-Za-z_][A-Za-z0-9_]*)",
    r"(?P<STRING>\"[^\"\n]*\")",
    r"(?P<PUNCT>[-+*/@()\[\],:=])",
]))
_MAX_INT_DIGITS = 309  # 10**309 is beyond a float's range: too large for any use in odc

# Token kinds named in words; the others (keywords, punctuation) are quoted.
_WORDS = {"NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
          "_NEWLINE": "end of line", "_INDENT": "an indented block", "_DEDENT": "end of block",
          "$END": "end of file"}
_QUOTED = {kind: f"'{text}'" for text, kind in _PUNCTUATION.items()} | {
    w.upper(): f"'{w}'" for w in ("model", "def", "train", "input", "param", "return", "true", "false")}
# Sets of token kinds named as one, when all of them could come.
_GROUPS = [("an expression", {"NAME", "INT", "FLOAT", "STRING", "TRUE", "FALSE", "LPAR", "LSQB", "MINUS"}),
           ("an operator", {"PLUS", "MINUS", "STAR", "SLASH", "AT"})]
_ORDER = ["NAME", "INT", "RPAR", "RSQB", "COMMA", "COLON", "EQUAL", "LPAR", "LSQB"]


def expected_in_words(expected: set[str]) -> str:
    """E.g. {"RPAR", "COMMA", "PLUS", "MINUS", "STAR", "SLASH", "AT"} → "an operator, ')' or ','"."""
    words, rest = [], set(expected)
    for group, members in _GROUPS:
        if members <= expected:
            words.append(group)
            rest -= members
    rank = {t: i for i, t in enumerate(_ORDER)}
    words += [_WORDS.get(t) or _QUOTED[t] for t in sorted(rest, key=lambda t: (rank.get(t, len(rank)), t))]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


class Tok:
    """A token: its kind (NAME, INT, FLOAT, STRING, a punctuation kind such as LPAR, _NEWLINE,
    _INDENT, _DEDENT, $END, or ERROR carrying the `CompileError` of unreadable text), its text
    and where it starts and ends. _INDENT, _DEDENT and $END take no room: they stand where the
    text after the newline that made them starts (the end of the last token, for $END)."""
    __slots__ = ("kind", "text", "line", "col", "end_line", "end_col", "error")

    def __init__(self, kind, text, line, col, end_line, end_col, error=None):
        self.kind, self.text, self.line, self.col = kind, text, line, col
        self.end_line, self.end_col, self.error = end_line, end_col, error

    def span(self, src: SourceFile) -> Span:
        width = len(self.text.split("\n")[0])  # a _NEWLINE token may start with a comment
        return Span(src, self.line, self.col, self.line, self.col + max(1, width))

    def describe(self) -> str:
        kind = {"NAME": "name", "INT": "number", "FLOAT": "number", "STRING": "string"}.get(self.kind)
        if kind:
            return f"{kind} {self.text}" if self.kind == "STRING" else f"{kind} '{self.text}'"
        return "indentation" if self.kind == "_INDENT" else _WORDS.get(self.kind) or _QUOTED[self.kind]


def tokens(src: SourceFile) -> list[Tok]:
    """The tokens of the text, ending in $END, or in an ERROR token where the text cannot be read
    (a tab, an unterminated string, an odd character, a dedent to no enclosing level)."""
    text = src.text if src.text.endswith("\n") else src.text + "\n"
    out: list[Tok] = []
    levels = [0]  # the indentation of the enclosing blocks
    parens = 0
    line, line_start, pos, end = 1, 0, 0, len(text)
    match = _TOKEN.match
    while pos < end:
        m = match(text, pos)
        col = pos - line_start + 1
        if m is None:
            out.append(Tok("ERROR", "", line, col, line, col, CompileError(_bad_character(src, text[pos], line, col))))
            return out
        kind, value, pos = m.lastgroup, m.group(), m.end()
        if kind == "NL":
            first_line, first_col = line, col
            line += value.count("\n")
            line_start = pos - (len(value) - value.rindex("\n") - 1)
            if parens:
                continue
            indent = pos - line_start
            out.append(Tok("_NEWLINE", value, first_line, first_col, line, indent + 1))
            if indent > levels[-1]:
                levels.append(indent)
                out.append(Tok("_INDENT", "", line, indent + 1, line, indent + 1))
            elif indent not in levels:
                hint = "indent it by " + " or ".join(str(n) for n in reversed(levels)) + " spaces"
                error = CompileError(Diagnostic(
                    f"this line is indented by {indent} spaces, which matches no enclosing block",
                    Span(src, line, indent + 1, line, indent + 2), hint))
                out.append(Tok("ERROR", "", line, indent + 1, line, indent + 1, error))
                return out
            while indent < levels[-1]:
                levels.pop()
                out.append(Tok("_DEDENT", "", line, indent + 1, line, indent + 1))
        elif kind == "PUNCT":
            kind = _PUNCTUATION[value]
            if kind in ("LPAR", "LSQB"):
                parens += 1
            elif kind in ("RPAR", "RSQB"):
                parens = max(0, parens - 1)  # an unmatched ')' is the parser's to report
            out.append(Tok(kind, value, line, col, line, col + len(value)))
        elif kind not in ("SPACE", "COMMENT"):
            out.append(Tok(kind, value, line, col, line, col + len(value)))
    last = out[-1] if out else None
    at = (last.end_line, last.end_col) if last else (1, 1)
    if not parens:  # else the file ends inside brackets, which the parser reports
        out += [Tok("_DEDENT", "", *at, *at) for _ in levels[1:]]
    out.append(Tok("$END", "", *at, *at))
    return out


def _bad_character(src: SourceFile, char: str, line: int, col: int) -> Diagnostic:
    span = Span(src, line, col, line, col + 1)
    if char == "\t":
        return Diagnostic("tab character; odc indents with spaces only", span, "replace each tab with spaces")
    if char == '"':
        return Diagnostic("unterminated string", span, 'a string ends with " on the same line')
    return Diagnostic(f"unexpected character {char!r}", span)


def parse(src: SourceFile) -> ast.File:
    return Parser(src).file()


class Parser:
    def __init__(self, src: SourceFile):
        self.src = src
        self.toks = tokens(src)
        self.i = 0
        self.expected: set[str] = set()  # the kinds tested since the last token was taken

    # -- tokens -----------------------------------------------------------------------------
    def at(self, kind: str) -> bool:
        self.expected.add(kind)
        tok = self.toks[self.i]
        if tok.kind == "ERROR":
            raise tok.error
        return tok.kind == kind

    def at_keyword(self, word: str) -> bool:
        tok = self.toks[self.i]
        return self.at(word.upper()) or (tok.kind == "NAME" and tok.text == word)

    def take(self, kind: str | None = None) -> Tok:
        """The next token; with `kind`, it must be of that kind."""
        if kind is not None and not self.at(kind):
            raise self.unexpected()
        tok = self.toks[self.i]
        self.i += 1
        self.expected = set()
        return tok

    def unexpected(self) -> CompileError:
        tok = self.toks[self.i]
        msg = f"unexpected {tok.describe()}"
        if self.expected:
            msg += f"; expected {expected_in_words(self.expected)}"
        return CompileError(Diagnostic(msg, tok.span(self.src)))

    def span(self, first: Tok | Span, last: Tok | Span) -> Span:
        return Span(self.src, first.line, first.col, last.end_line, last.end_col)

    # -- declarations -----------------------------------------------------------------------
    def file(self) -> ast.File:
        decls = []
        while not self.at("$END"):
            if self.at("_NEWLINE"):
                self.take()
            elif self.at_keyword("model"):
                decls.append(self.model())
            elif self.at_keyword("def"):
                decls.append(self.defn())
            elif self.at_keyword("train"):
                decls.append(self.train())
            else:
                raise self.unexpected()
        return ast.File(self.src, decls)

    def model(self) -> ast.Model:
        first, name = self.take(), self.take("NAME")
        hypers = []
        self.take("LPAR")
        while not self.at("RPAR"):
            h, _ = self.take("NAME"), self.take("EQUAL")
            default = self.expr()
            hypers.append(ast.Hyper(h.text, default, self.span(h, default.span)))
            if not self.at("COMMA"):
                break
            self.take()
        self.take("RPAR")
        self.take("COLON")
        return ast.Model(name.text, hypers, self.body(), self.span(first, name))

    def defn(self) -> ast.Def:
        first, name = self.take(), self.take("NAME")
        params = []
        self.take("LPAR")
        while not self.at("RPAR"):
            p = self.take("NAME")
            params.append(ast.Name(p.text, self.span(p, p)))
            if not self.at("COMMA"):
                break
            self.take()
        self.take("RPAR")
        self.take("COLON")
        return ast.Def(name.text, params, self.body(), self.span(first, name))

    def train(self) -> ast.Train:
        first, name = self.take(), self.take("NAME")
        self.take("COLON")
        self.take("_NEWLINE")
        self.take("_INDENT")
        items = []
        while not items or not self.at("_DEDENT"):
            key, _ = self.take("NAME"), self.take("EQUAL")
            value = self.expr()
            self.take("_NEWLINE")
            items.append(ast.TrainItem(key.text, value, self.span(key, value.span)))
        self.take()
        return ast.Train(name.text, items, self.span(first, name))

    # -- statements -------------------------------------------------------------------------
    def body(self) -> list[ast.Stmt]:
        self.take("_NEWLINE")
        self.take("_INDENT")
        stmts = []
        while not stmts or not self.at("_DEDENT"):
            stmts.append(self.stmt())
        self.take()
        return stmts

    def stmt(self) -> ast.Stmt:
        if self.at_keyword("input"):
            first, name, _ = self.take(), self.take("NAME"), self.take("COLON")
            t = self.type()
            self.take("_NEWLINE")
            return ast.Input(name.text, t, self.span(first, t.span))
        if self.at_keyword("param"):
            first, name, _ = self.take(), self.take("NAME"), self.take("COLON")
            t = self.type()
            self.take("EQUAL")
            init = self.expr()
            self.take("_NEWLINE")
            return ast.Param(name.text, t, init, self.span(first, init.span))
        if self.at_keyword("return"):
            first = self.take()
            value = self.expr()
            self.take("_NEWLINE")
            return ast.Return(value, self.span(first, value.span))
        name = self.take("NAME")
        t = None
        if self.at("COLON"):
            self.take()
            t = self.type()
        self.take("EQUAL")
        value = self.expr()
        self.take("_NEWLINE")
        return ast.Assign(name.text, t, value, self.span(name, value.span))

    def type(self) -> ast.Type:
        dtype, _ = self.take("NAME"), self.take("LSQB")
        dims = []
        if not self.at("RSQB"):
            dims.append(self.dim())
            while self.at("COMMA"):
                self.take()
                dims.append(self.dim())
        close = self.take("RSQB")
        return ast.Type(dtype.text, self.span(dtype, dtype), dims, self.span(dtype, close))

    def dim(self) -> ast.Dim:
        if self.at("INT"):
            tok = self.take()
            return ast.Dim(self.int(tok), self.span(tok, tok))
        tok = self.take("NAME")
        return ast.Dim(tok.text, self.span(tok, tok))

    def int(self, tok: Tok) -> int:
        if len(tok.text) > _MAX_INT_DIGITS:  # converting it would take time quadratic in its length
            raise self.too_large(tok)
        return int(tok.text)

    def too_large(self, tok: Tok) -> CompileError:
        return CompileError(Diagnostic("number too large", self.span(tok, tok),
                                       "odc's numbers are 64-bit floats, at most about 1.8e308"))

    # -- expressions ------------------------------------------------------------------------
    # Each returns (node, height, first token, last token): the height of the node's tree (a
    # leaf is 1), and the tokens its text starts and ends with, parentheses around it included.
    def expr(self) -> ast.Expr:
        return self.sum(1)[0]

    def too_deep(self, where: Span) -> CompileError:
        return CompileError(Diagnostic(
            f"expression nested too deeply: odc allows at most {MAX_NESTING} levels of parentheses, "
            f"brackets, calls and operators in one expression", where,
            "split it into several statements, binding its parts to names"))

    def sum(self, depth: int):
        if depth > MAX_NESTING:
            raise self.too_deep(self.toks[self.i].span(self.src))
        left, height, first, last = self.product(depth)
        while True:
            if self.at("PLUS"):
                op = "add"
            elif self.at("MINUS"):
                op = "sub"
            else:
                return left, height, first, last
            self.take()
            right, h, _, last = self.product(depth)
            left, height = ast.BinOp(op, left, right, self.span(first, last)), max(height, h) + 1
            if height > MAX_NESTING:
                raise self.too_deep(left.span)

    def product(self, depth: int):
        left, height, first, last = self.unary(depth)
        while True:
            if self.at("STAR"):
                op = "mul"
            elif self.at("SLASH"):
                op = "div"
            elif self.at("AT"):
                op = "matmul"
            else:
                return left, height, first, last
            self.take()
            right, h, _, last = self.unary(depth)
            left, height = ast.BinOp(op, left, right, self.span(first, last)), max(height, h) + 1
            if height > MAX_NESTING:
                raise self.too_deep(left.span)

    def unary(self, depth: int):
        if not self.at("MINUS"):
            return self.atom(depth)
        first = self.take()
        if depth >= MAX_NESTING:  # the operand would nest one level more
            raise self.too_deep(self.toks[self.i].span(self.src))
        operand, height, _, last = self.unary(depth + 1)
        return ast.Neg(operand, self.span(first, last)), height + 1, first, last

    def atom(self, depth: int):
        if self.at_keyword("true") or self.at_keyword("false"):
            tok = self.take()
            return ast.Bool(tok.text == "true", self.span(tok, tok)), 1, tok, tok
        if self.at("NAME"):
            tok = self.take()
            if self.at("LPAR"):
                return self.call(tok, depth)
            return ast.Name(tok.text, self.span(tok, tok)), 1, tok, tok
        if self.at("INT"):
            tok = self.take()
            return ast.Number(self.int(tok), self.span(tok, tok)), 1, tok, tok
        if self.at("FLOAT"):
            tok = self.take()
            value = float(tok.text)
            if value == float("inf"):
                raise self.too_large(tok)
            return ast.Number(value, self.span(tok, tok)), 1, tok, tok
        if self.at("STRING"):
            tok = self.take()
            return ast.String(tok.text[1:-1], self.span(tok, tok)), 1, tok, tok
        if self.at("LSQB"):
            first = self.take()
            items, height = [], 0
            while not self.at("RSQB"):
                item, h, _, _ = self.sum(depth + 1)
                items.append(item)
                height = max(height, h)
                if not self.at("COMMA"):
                    break
                self.take()
            last = self.take("RSQB")
            return ast.List(items, self.span(first, last)), height + 1, first, last
        if self.at("LPAR"):
            first = self.take()
            inner, height, _, _ = self.sum(depth + 1)
            return inner, height, first, self.take("RPAR")
        raise self.unexpected()

    def call(self, name: Tok, depth: int):
        self.take()
        args, kwargs, height = [], [], 0
        while not self.at("RPAR"):
            tok = self.toks[self.i]
            if tok.kind == "NAME" and self.toks[self.i + 1].kind == "EQUAL" and tok.text not in ("true", "false"):
                self.take(), self.take()
                value, h, _, last = self.sum(depth + 1)
                kwargs.append(ast.Keyword(tok.text, value, self.span(tok, last)))
            else:
                value, h, _, _ = self.sum(depth + 1)
                args.append(value)
            height = max(height, h)
            if not self.at("COMMA"):
                break
            self.take()
        last = self.take("RPAR")
        node = ast.Call(name.text, self.span(name, name), args, kwargs, self.span(name, last))
        return node, height + 1, name, last
