"""Any text, however mangled, gives a model or a user error (OdcError), never a Python traceback:
in the front end, and for a model it accepts, in compiling and running it."""
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from odc.errors import OdcError
from odc.frontend import parse_source
from odc.ir.graph import Graph
from odc.program import Program

MODELS = sorted(Path(__file__).parents[2].joinpath("models").glob("*.od"))
SOURCES = [p.read_text() for p in MODELS]
# pieces that are likely to make interesting programs: tokens of the language, odd characters
PIECES = ["(", ")", "[", "]", ",", ":", "=", "-", "+", "*", "/", "@", "\n", "\n    ", "    ", "\t", "#",
          '"', "x", "N", "0", "-1", "1e999", "2.5", "true", "model", "def", "train", "input", "param",
          "return", "relu(", "dense(x, ", "conv2d(x, 3, 5)", "flatten(x)", "reshape(x, [N, -1])",
          "transpose(x, [1, 0])", "sum(x, [0, 0])", "block(", "f32[N, 3]", "u8[2]", "kernel=",
          "bias=false", "axis=9", "ones", "normal(0)", "uniform(1, 0)", "xavier", "emnist(",
          "\"letters\"", "sgd(", "lr=", "epochs = 0", "\r\n", "é", "\x00"]


@st.composite
def mutants(draw):
    text = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        kind = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        piece = draw(st.sampled_from(PIECES) | st.text(max_size=3))
        if kind == "delete":
            text = text[:i] + text[j:]
        elif kind == "insert":
            text = text[:i] + piece + text[i:]
        elif kind == "replace":
            text = text[:i] + piece + text[j:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutants())
def test_mutated_programs_fail_only_with_user_errors(text):
    try:
        module = parse_source(text, "fuzz.od")
    except OdcError as e:
        assert str(e)  # a message for the user
        return
    for g in module.models.values():  # a program that passes has a typed output
        assert g.type(g.output("logits")) is not None


def _elements(g: Graph, batch: int) -> int:
    sizes = {d: batch for n in g.nodes() for d in n.type.shape if isinstance(d, str)}
    return sum(n.type.substitute(sizes).numel for n in g.nodes())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutants())
def test_mutated_programs_that_pass_compile_and_run_or_fail_with_user_errors(text):
    """What the front end accepts, the rest of the compiler takes: a Program of each model
    compiles and runs forward on a batch of 2 (programs whose values would not fit in a few
    hundred MB are left out)."""
    try:
        module = parse_source(text, "fuzz.od")
    except OdcError:
        return
    for name in module.models:
        try:
            g = module.lower(name)
            assume(_elements(g, 2) <= 2 ** 24)
            image = g.inputs()[0].type
            x = np.zeros(image.substitute({d: 2 for d in image.shape if isinstance(d, str)}).shape)
            logits = Program(g, module.source).compile().forward(x)
        except OdcError as e:
            assert str(e)
            continue
        assert logits.shape[0] == 2
