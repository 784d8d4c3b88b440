"""Any text, however mangled, gives a model or a user error (OdcError), never a Python traceback."""
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from odc.errors import OdcError
from odc.frontend import parse_source

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
