"""The IR printer and parser round-trip, and the verifier rejects malformed graphs."""
import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from odc.errors import CompileError, OdcError, SourceFile, Span
from odc.ir.graph import Graph, TensorType
from odc.ir.passes import fuse, plan_memory, shape_infer
from odc.ir.printer import print_graph
from odc.ir.textparse import parse_graph
from odc.ir.verify import IRVerificationError, verify

UNARY = ["relu", "tanh", "sigmoid", "exp", "log", "sqrt", "abs", "neg"]
BINARY = ["add", "sub", "mul", "div"]
SRC = SourceFile("gen.od", "")


@st.composite
def graphs(draw):
    """Random well-typed graphs: elementwise chains, broadcasting, reductions, reshapes, matmuls."""
    g = Graph(draw(st.sampled_from(["M", "Net", "m.train_step"])))
    rank = draw(st.integers(1, 3))
    shape = ["N"] + draw(st.lists(st.integers(1, 5), min_size=rank - 1, max_size=rank - 1))
    vals = [g.add("input", type=TensorType("f32", shape), name="x")]
    vals.append(g.add("param", type=TensorType("f32", shape[1:] or [1]),
                      attrs={"init": draw(st.sampled_from(["zeros", "uniform"])), "lo": -0.5, "hi": 0.5},
                      name="p.weight"))
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["unary", "binary", "const", "reduce", "reshape", "matmul"]))
        a = draw(st.sampled_from(vals))
        ta = g.type(a)
        span = Span(SRC, i + 1, draw(st.integers(1, 40)), i + 1, 50) if draw(st.booleans()) else None
        if kind == "unary":
            vals.append(g.add(draw(st.sampled_from(UNARY)), [a], span=span))
        elif kind == "binary":
            b = draw(st.sampled_from(vals))
            if g.type(b).shape in (ta.shape, ta.shape[1:]) or g.type(b).shape == ():
                vals.append(g.add(draw(st.sampled_from(BINARY)), [a, b], span=span))
        elif kind == "const":
            c = g.add("const", attrs={"value": draw(st.floats(-3, 3, allow_nan=False))})
            vals.append(g.add("mul", [a, c], span=span))
        elif kind == "reduce" and ta.rank:
            vals.append(g.add(draw(st.sampled_from(["sum", "mean", "max"])), [a],
                              {"axis": draw(st.integers(-ta.rank, ta.rank - 1)),
                               "keepdims": draw(st.booleans())}, span=span))
        elif kind == "reshape" and ta.rank >= 1 and ta.shape[:1] == ("N",):
            vals.append(g.add("reshape", [a], {"shape": ["N", -1]}, span=span))
        elif kind == "matmul" and ta.rank == 2 and isinstance(ta.shape[1], int):
            w = g.add("param", type=TensorType("f32", [ta.shape[1], 3]), attrs={"init": "kaiming"},
                      name=f"w{i}")
            vals.append(g.add("matmul", [a, w], span=span))
        g = shape_infer.run(g)  # type the new node before the next one looks at it
    g.outputs = [("out", vals[-1])] + ([("first", vals[0])] if draw(st.booleans()) else [])
    return g


@settings(max_examples=60, deadline=None)
@given(graphs())
def test_print_parse_print_is_identity(g):
    text = print_graph(g)
    again = parse_graph(text)
    verify(again)
    assert print_graph(again) == text


def _tiny():
    g = Graph("T")
    x = g.add("input", type=TensorType("f32", ("N", 4)), name="x")
    w = g.add("param", type=TensorType("f32", (3, 4)), attrs={"init": "zeros"}, name="dense1.weight")
    y = g.add("linear", [x, w])
    g.outputs = [("logits", g.add("relu", [y]))]
    return shape_infer.run(g)


def test_printed_ir_shows_symbolic_and_concrete_types():
    g = _tiny()
    assert "%0 = linear(%x, %dense1.weight) : f32[N, 3]" in print_graph(g)
    assert "%0 = linear(%x, %dense1.weight) : f32[8, 3]" in print_graph(shape_infer.run(g, {"N": 8}))


def test_verifier_rejects_wrong_type():
    g = _tiny()
    g.node(g.output("logits")).type = TensorType("f32", ("N", 4))
    with pytest.raises(IRVerificationError, match=r"type f32\[N, 4\] but its operands give f32\[N, 3\]"):
        verify(g)


def test_verifier_rejects_unknown_op_and_bad_edges():
    g = _tiny()
    g.node(g.output("logits")).op = "frobnicate"
    with pytest.raises(IRVerificationError, match="unknown op"):
        verify(g)
    g = _tiny()
    out = g.output("logits")
    g.node(out).args = (0,)  # operand list changed behind the graph's back: edge mismatch
    with pytest.raises(IRVerificationError, match="differ from operands"):
        verify(g)


def test_parse_errors_are_user_errors():
    with pytest.raises(OdcError, match="IR text"):
        parse_graph("func @M( {")
    with pytest.raises(OdcError, match="used before it is defined"):
        parse_graph("func @M() {\n  %0 = relu(%9) : f32[2]\n}\n")


@pytest.mark.parametrize("path", ["models/lenet5.od", "my models/a(b).od", 'odd "quoted" \\ path:1:2.od',
                                  "ünï cödé.od"])
def test_source_paths_print_quoted_and_parse_back(path):
    g = Graph("M")
    span = Span(SourceFile(path, ""), 3, 7, 3, 9)
    x = g.add("input", type=TensorType("f32", ("N", 2)), name="x", span=span)
    g.outputs = [("logits", g.add("relu", [x], type=TensorType("f32", ("N", 2)), span=span))]
    text = print_graph(g)
    assert "  loc(" + json.dumps(path, ensure_ascii=False) + ":3:7)" in text
    again = parse_graph(text)
    assert [(n.span.path, n.span.line, n.span.col) for n in again.nodes()] == [(path, 3, 7)] * 2
    assert print_graph(again) == text


def test_string_attributes_with_quotes_and_backslashes_parse_back():
    g = Graph("M")
    x = g.add("input", type=TensorType("f32", (2,)), attrs={"note": 'a "b" \\ c'}, name="x")
    g.outputs = [("out", x)]
    assert parse_graph(print_graph(g)).node(x).attrs == {"note": 'a "b" \\ c'}


def test_comments_are_skipped():
    text = ("// after dce\nfunc @M(  // the arguments\n    input %x: f32[2],\n) {\n"
            "  %0 = relu(%x) : f32[2]  // CHECK: relu\n  return %0 as out\n}\n// the end\n")
    g = parse_graph(text)
    assert [n.op for n in g.nodes()] == ["input", "relu"]
    assert print_graph(g) == "func @M(\n    input %x: f32[2],\n) {\n  %0 = relu(%x) : f32[2]\n  return %0 as out\n}\n"


def test_the_memory_plan_prints_as_a_function_attribute_and_parses_back():
    g = shape_infer.run(_tiny(), {"N": 4})
    planned = plan_memory.run(fuse.run(g))
    text = print_graph(planned)
    assert f") attributes {{arena_bytes={planned.meta['arena_bytes']}}} {{\n" in text and "arena=" in text
    again = parse_graph(text)
    assert again.meta == {"arena_bytes": planned.meta["arena_bytes"]}
    assert print_graph(again) == text
    assert "attributes" not in print_graph(g)  # the recipe and other meta are not IR


def test_non_finite_floats_and_strings_that_look_like_them_parse_back():
    g = Graph("M")
    attrs = {"a": math.inf, "b": -math.inf, "c": [1.5, -math.inf], "d": "inf", "e": "-inf", "f": "nan",
             "g": "info", "h": "true", "i": "attributes", "j": "1.5"}
    x = g.add("input", type=TensorType("f32", (2,)), attrs=attrs | {"n": math.nan}, name="x")
    g.outputs = [("out", x)]
    text = print_graph(g)
    back = parse_graph(text).node(x).attrs
    assert math.isnan(back.pop("n")) and back == attrs
    assert print_graph(parse_graph(text)) == text


@pytest.mark.parametrize("text, where, message", [
    ("func @M(\n    input %x: q8[2],\n) {\n}\n", "2:15", "unknown element type 'q8'"),
    ("func @M(\n    input %x: f32[2],\n    input %x: f32[2],\n) {\n}\n", "3:11", "%x is defined twice"),
    ("func @M(\n    input %x: f32[2],\n) {\n  %0 = relu(%x) : f32[2]\n  %0 = relu(%x) : f32[2]\n}\n", "5:3",
     "%0 is defined twice"),
    ("func @M(\n    input %x: f32[2],\n) {\n  return %y as out\n}\n", "4:10", "%y is returned but never defined"),
    ("func @M(\n    input %x: f32[2],\n) {\n  return %x as out\n", "4:19", "the text ends early; expected ',' or '}'"),
    ("func @M(\n    input %x: f32[2]\n) {\n}\n", "3:1", "unexpected ')'"),
    ("model M():\n", "1:1", "unexpected 'model'; expected 'func'"),
])
def test_parse_errors_point_at_the_text(text, where, message):
    with pytest.raises(CompileError) as e:
        parse_graph(text, "in.ir")
    shown = str(e.value)
    assert shown.startswith(f"in.ir:{where}: error: IR text: ") and message in shown.splitlines()[0], shown
    assert "^" in shown  # the line and a caret under the place
