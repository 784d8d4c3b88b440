"""The parser: every construct of the language, its syntax tree and spans. Expressions are checked
against Python's own parser, whose precedence and associativity for + - * / @ and unary minus
the language shares."""
import ast as pyast

from hypothesis import given, settings, strategies as st

from odc.errors import SourceFile
from odc.frontend import ast
from odc.frontend.parser import parse


def parse_text(text: str) -> ast.File:
    return parse(SourceFile("t.od", text))


def text_of(span, text: str) -> str:
    lines = text.splitlines()
    assert span.line == span.end_line
    return lines[span.line - 1][span.col - 1:span.end_col - 1]


EVERYTHING = '''# a comment on its own line
model Net(width = 8, scale = -0.5):   # a comment after a header

    input image: f32[N, 1, 28, 28]
    input extra: f64[N, 3]
    param w: f32[width, 2] = normal(0.01)
    x: f32[N, 784] = flatten(image)
    y = conv2d(image, out=width, kernel=3,
               stride=2, pad=1, bias=false)   # continues inside parentheses
    z = reshape(x, [N, -1]) @ w * 2.5e-1 - -x / .5
    t = transpose(z, [1, 0,])
    return dense(x, 10,)

def block(a, b,):
    return relu(a) + b

train Net:
    data = emnist("balanced")
    optimizer = sgd(lr=0.1, nesterov=true, momentum=0.9)
    seed = 3
'''


def test_every_construct_parses_to_its_tree():
    f = parse_text(EVERYTHING)
    model, block, train = f.decls
    assert (model.name, [(h.name, h.default) for h in model.hypers][0][0]) == ("Net", "width")
    assert isinstance(model.hypers[1].default, ast.Neg) and model.hypers[1].default.operand.value == 0.5
    inp, inp2, param, annotated, conv, expr, tr, ret = model.body
    assert (inp.name, inp.type.dtype, [d.value for d in inp.type.dims]) == ("image", "f32", ["N", 1, 28, 28])
    assert inp2.type.dtype == "f64"
    assert (param.name, [d.value for d in param.type.dims], param.init.func) == ("w", ["width", 2], "normal")
    assert annotated.type is not None and annotated.value.func == "flatten"
    assert conv.type is None
    assert [k.name for k in conv.value.kwargs] == ["out", "kernel", "stride", "pad", "bias"]
    assert conv.value.kwargs[-1].value == ast.Bool(False, conv.value.kwargs[-1].value.span)
    assert conv.value.span.end_line == conv.value.span.line + 1  # the call spans two lines
    assert isinstance(expr.value, ast.BinOp) and expr.value.op == "sub"
    assert [i.value for i in tr.value.args[1].items] == [1, 0]
    assert isinstance(ret, ast.Return) and len(ret.value.args) == 2
    assert (block.name, [p.id for p in block.params]) == ("block", ["a", "b"])
    assert train.model == "Net" and [i.key for i in train.items] == ["data", "optimizer", "seed"]
    assert train.items[0].value.args[0] == ast.String("balanced", train.items[0].value.args[0].span)
    assert train.items[1].value.kwargs[1].value.value is True


def test_spans_cover_the_source_text_of_each_node():
    f = parse_text(EVERYTHING)
    model = f.decls[0]
    assert text_of(model.span, EVERYTHING) == "model Net"
    expr = model.body[5]
    assert text_of(expr.span, EVERYTHING) == "z = reshape(x, [N, -1]) @ w * 2.5e-1 - -x / .5"
    assert text_of(expr.value.span, EVERYTHING) == "reshape(x, [N, -1]) @ w * 2.5e-1 - -x / .5"
    assert text_of(expr.value.left.span, EVERYTHING) == "reshape(x, [N, -1]) @ w * 2.5e-1"
    assert text_of(expr.value.left.left.left.func_span, EVERYTHING) == "reshape"
    assert text_of(model.body[0].span, EVERYTHING) == "input image: f32[N, 1, 28, 28]"
    assert text_of(model.body[2].span, EVERYTHING) == "param w: f32[width, 2] = normal(0.01)"
    assert text_of(model.body[2].type.dims[0].span, EVERYTHING) == "width"
    assert text_of(f.decls[2].items[1].span, EVERYTHING) == "optimizer = sgd(lr=0.1, nesterov=true, momentum=0.9)"


def test_line_endings_blank_lines_and_a_missing_final_newline():
    unix = "model M():\n    input x: f32[N]\n\n    \n    return relu(x)"
    windows = unix.replace("\n", "\r\n")
    for text in (unix, windows, "\n\n# only comments\n" + unix + "\n# end"):
        (m,) = parse_text(text).decls
        assert [type(s).__name__ for s in m.body] == ["Input", "Return"]
    assert parse_text("").decls == [] and parse_text("# nothing\n").decls == []


def test_keywords_are_names_where_a_keyword_cannot_stand():
    (m,) = parse_text("model M():\n    input x: f32[N]\n    return input\n").decls
    assert m.body[1].value == ast.Name("input", m.body[1].value.span)


# -- expressions against Python's parser -------------------------------------------------------
def canonical_ours(e):
    if isinstance(e, ast.Name):
        return ("name", e.id)
    if isinstance(e, (ast.Number, ast.String, ast.Bool)):
        return ("const", e.value)
    if isinstance(e, ast.Neg):
        return ("neg", canonical_ours(e.operand))
    if isinstance(e, ast.BinOp):
        return (e.op, canonical_ours(e.left), canonical_ours(e.right))
    if isinstance(e, ast.List):
        return ("list", *map(canonical_ours, e.items))
    return ("call", e.func, tuple(map(canonical_ours, e.args)),
            tuple((k.name, canonical_ours(k.value)) for k in e.kwargs))


PY_OPS = {pyast.Add: "add", pyast.Sub: "sub", pyast.Mult: "mul", pyast.Div: "div", pyast.MatMult: "matmul"}


def canonical_python(e):
    if isinstance(e, pyast.Name):
        return ("const", e.id == "true") if e.id in ("true", "false") else ("name", e.id)
    if isinstance(e, pyast.Constant):
        return ("const", e.value)
    if isinstance(e, pyast.UnaryOp):
        return ("neg", canonical_python(e.operand))
    if isinstance(e, pyast.BinOp):
        return (PY_OPS[type(e.op)], canonical_python(e.left), canonical_python(e.right))
    if isinstance(e, pyast.List):
        return ("list", *map(canonical_python, e.elts))
    return ("call", e.func.id, tuple(map(canonical_python, e.args)),
            tuple((k.arg, canonical_python(k.value)) for k in e.keywords))


names = st.sampled_from(["x", "w", "N", "true", "false", "relu_2"])
atoms = names | st.integers(0, 99).map(str) | st.sampled_from(["2.5", "1e-3", ".5", "3.", '"s"'])
spaces = st.sampled_from(["", " ", "  "])


@st.composite
def expressions(draw, depth=3):
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(atoms)
    sub = expressions(depth=depth - 1)
    kind = draw(st.sampled_from(["binop", "binop", "neg", "paren", "call", "list"]))
    if kind == "binop":
        op = draw(st.sampled_from(["+", "-", "*", "/", "@"]))
        return f"{draw(sub)}{draw(spaces)}{op}{draw(spaces)}{draw(sub)}"
    if kind == "neg":
        return f"-{draw(sub)}"
    if kind == "paren":
        return f"({draw(sub)})"
    if kind == "list":
        return f"[{', '.join(draw(st.lists(sub, max_size=3)))}]"
    args = draw(st.lists(sub, max_size=2)) + [f"k{i}={v}" for i, v in enumerate(draw(st.lists(sub, max_size=2)))]
    return f"{draw(st.sampled_from(['f', 'dense']))}({', '.join(args)})"


@settings(max_examples=150, deadline=None)
@given(expressions())
def test_expressions_parse_as_python_parses_them(expr):
    text = f"model M():\n    return {expr}\n"
    (m,) = parse_text(text).decls
    value = m.body[0].value
    assert canonical_ours(value) == canonical_python(pyast.parse(expr, mode="eval").body)
    # the span of the whole expression is its text, less any parentheses around all of it
    assert text_of(value.span, text) == unparenthesized(expr)


def unparenthesized(expr: str) -> str:
    while expr.startswith("("):
        depth = 0
        for i, c in enumerate(expr):
            depth += {"(": 1, ")": -1}.get(c, 0)
            if depth == 0:
                break
        if i != len(expr) - 1:  # the first parenthesis closes before the end
            return expr
        expr = expr[1:-1]
    return expr
