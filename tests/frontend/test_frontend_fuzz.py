"""A fuzzer for the front end: valid programs (models/, tests/frontend/data/ and the ones below)
mutated at the level of characters, tokens and lines (deleted, duplicated, swapped, replaced by
keywords, huge numbers, deep nesting, random names, unicode, tabs; truncated), and bad programs
written by hand. Property: `odc check` accepts the text, or rejects it with a user error whose
every diagnostic reads ``path:line:col: error: ...`` at a place inside the file; never another
exception, never in more than 10 seconds. Derandomized: the same examples in every run."""
import contextlib
import io
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from odc import cli
from odc.errors import CompileError, OdcError
from odc.frontend import parse_source
from odc.ir.graph import Graph
from odc.program import Program

HERE = Path(__file__).parent
FILES = sorted(HERE.parents[1].joinpath("models").glob("*.od")) + sorted(HERE.joinpath("data").glob("*.od"))
VALID = [p.read_text() for p in FILES] + [
    '''model Net(width = 8, scale = -0.5):   # every construct
    input image: f32[N, 1, 28, 28]
    param w: f32[784, width] = normal(0.01)
    x: f32[N, 784] = flatten(image)
    y = conv2d(image, out=width, kernel=3,
               stride=2, pad=1, bias=false)
    z = reshape(x, [N, -1]) @ w * 2.5e-1 - -(x @ w) / .5
    t = transpose(z, [1, 0,])
    s = sum(softmax(z, axis=1), 0) + mean(log_softmax(z), [0, 1]) + max(z)
    return dense(relu(z) + tanh(dense(flatten(y), width)) * sigmoid(z), 10,) * scale

def block(a, b,):
    return relu(a) + b

train Net:
    data = emnist("digits")
    optimizer = sgd(lr=0.1, nesterov=true, momentum=0.9)
    seed = 3
''',
    '''def unit(x, c):
    x = batchnorm2d(conv2d(x, c, 3, pad=1, bias=false))
    return avgpool2d(relu(x), 2, stride=2)

model Tiny(classes = 26):
    input image: f32[B, 1, 28, 28]
    x: f32[B, C, 14, 14] = unit(image, 4)
    x = dropout(flatten(unit(x, C * 2)), 0.25)
    param scale: f32[classes] = uniform(0.5, 1.5)
    return dense(exp(log(sqrt(abs(x) + 1))), classes) * scale

train Tiny:
    data = emnist("letters")
    loss = mse
    optimizer = adamw(lr=0.001, weight_decay=0.01)
    epochs = 2
    batch = 16
''',
]
BAD = [  # each a different mistake; the test below checks that each is reported at a place
    "model M(:\n",
    "model M():\n    input image: f32[N, 4]\n    return dense(image, 3\n",
    "model M():\n    input image: f32[N, 4]\n  return image\n",
    "model M():\n    input image: f32[N, 4]\n\treturn image\n",
    'model M():\n    input image: f32[N, 4]\n    return dense(image, "3)\n',
    "model M():\n    input image: f32[N, 4]\n    return dense(image, 3) $ 2\n",
    "model M():\n    input image: f32[N, 4]\n    return dense(imag, 3)\n",
    "model M():\n    input image: f32[N, 4]\n    return dnse(image, 3)\n",
    "model M():\n    input image: f32[N, 4]\n    return dense(image, 3, 4, 5)\n",
    "model M():\n    input image: f32[N, 1, 4, 4]\n    return dense(image, 3)\n",
    "model M():\n    input image: f32[N, 1, 4, 4]\n    return dense(flatten(conv2d(image, 2, 5)), 3)\n",
    "model M():\n    input image: f32[N, 4]\n    return dense(image, 3) + dense(image, 2)\n",
    "model M():\n    input image: f32[N, 4]\n    x: f32[N, 5] = image\n    return dense(x, 3)\n",
    "model M():\n    input image: f32[N, 4]\n    return reshape(image, [N, 5])\n",
    "model M():\n    input image: f16[N, 4]\n    return dense(image, 3)\n",
    "model M():\n    input image: f32[N, 4]\n    param w: f32[1024, 1024, 1024] = zeros\n    return dense(image, 3)\n",
    "model M():\n    input image: f32[N, 4]\n    return dense(image, 1" + "0" * 5000 + ")\n",
    "model M():\n    input image: f32[N, 4]\n    return " + "(" * 50_000 + "image" + ")" * 50_000 + "\n",
    "def f(x):\n    return f(x)\nmodel M():\n    input image: f32[N, 4]\n    return f(image)\n",
    "".join(f"def d{i}(x):\n    x = d{i + 1}(x)\n    return d{i + 1}(x)\n" for i in range(25)) +
    "def d25(x):\n    return relu(x)\nmodel M():\n    input image: f32[N, 4]\n    return dense(d0(image), 3)\n",
    "model M():\n    input image: f32[N, 4]\n    return dense(image, 3)\ntrain M:\n    data = emnist(\"balanced\")\n",
    "model M():\n    input image: f32[N, 4]\n    return dense(image, 10)\ntrain M:\n    data = mnist()\n    epochs = 0\n",
    "model M():\n    input image: f32[N, 4]\n    return dense(image, 10)\ntrain N:\n    data = mnist()\n",
    "model M():\n    return 1\n",
]
PIECES = ["(", ")", "[", "]", ",", ":", "=", "-", "+", "*", "/", "@", "\n", "\n    ", "    ", "#", '"', "x", "N",
          "0", "-1", "2.5", ".5", "1e-3", "true", "false", "model", "def", "train", "input", "param", "return",
          "relu(", "dense(x, ", "conv2d(x, 3, 5)", "flatten(x)", "reshape(x, [N, -1])", "transpose(x, [1, 0])",
          "sum(x, [0, 0])", "block(", "f32[N, 3]", "f64[2]", "u8[2]", "kernel=", "bias=false", "axis=9", "ones",
          "normal(0)", "uniform(1, 0)", "xavier", "emnist(", '"letters"', "sgd(", "lr=", "epochs = 0", "\r\n",
          "\r", "\x00", "\x0c", "\u2028", "é", "λ", "🙂", "\t", "\ufeff"]
HUGE = ["9" * 5000, "1" + "0" * 400, "1e99999", "1" * 300 + ".5", "0." + "0" * 5000 + "1", "4294967296",
        "99999999999999999999"]


def _nest(n: int, kind: int, inner: str) -> str:
    opening, closing = [("(", ")"), ("[", "]"), ("relu(", ")"), ("-", ""), ("x + ", "")][kind]
    return opening * n + inner + closing * n


@st.composite
def mutants(draw, seeds=VALID + BAD, most=4) -> str:
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, most))):
        text = draw(st.sampled_from([_chars, _tokens, _lines, _truncate]))(draw, text)
    return text


def _piece(draw) -> str:
    return draw(st.sampled_from(PIECES) | st.sampled_from(HUGE) | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}",
                                                                               fullmatch=True)
                | st.text(max_size=4) | st.builds(_nest, st.sampled_from([2, 63, 64, 65, 300, 3000]),
                                                  st.integers(0, 4), st.sampled_from(["x", "1", ""])))


def _chars(draw, text: str) -> str:
    i = draw(st.integers(0, len(text)))
    j = draw(st.integers(i, min(len(text), i + 12)))
    kind = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
    if kind == "delete":
        return text[:i] + text[j:]
    if kind == "duplicate":
        return text[:j] + text[i:j] + text[j:]
    return text[:i] + _piece(draw) + text[j if kind == "replace" else i:]


def _tokens(draw, text: str) -> str:
    toks = re.findall(r"[ ]+|\n|[A-Za-z_0-9.]+|.", text, re.S)
    if not toks:
        return _piece(draw)
    i = draw(st.integers(0, len(toks) - 1))
    kind = draw(st.sampled_from(["delete", "duplicate", "swap", "replace"]))
    if kind == "delete":
        del toks[i]
    elif kind == "duplicate":
        toks.insert(i, toks[i])
    elif kind == "swap":
        j = draw(st.integers(0, len(toks) - 1))
        toks[i], toks[j] = toks[j], toks[i]
    else:
        toks[i] = _piece(draw)
    return "".join(toks)


def _lines(draw, text: str) -> str:
    lines = text.split("\n")
    i = draw(st.integers(0, len(lines) - 1))
    kind = draw(st.sampled_from(["delete", "duplicate", "swap", "indent", "dedent"]))
    if kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i, lines[i])
    elif kind == "swap":
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "indent":
        lines[i] = " " * draw(st.integers(1, 9)) + lines[i]
    else:
        lines[i] = lines[i][draw(st.integers(1, 4)):]
    return "\n".join(lines)


def _truncate(draw, text: str) -> str:
    return text[:draw(st.integers(0, len(text)))]


def check_user_error(e: OdcError, text: str, path: str) -> None:
    """A user error names the file; a diagnostic starts with path:line:col: error: at a place
    inside the file (a line of the file or the one after its end), with its line and a caret."""
    assert str(e).startswith(f"{path}:"), str(e)[:300]
    if not isinstance(e, CompileError):
        return
    lines = text.split("\n")
    for d in e.diagnostics:
        s = d.span
        assert s is not None and 1 <= s.line <= len(lines) + 1 and s.col >= 1, (s, text[:300])
        rendered = d.render().split("\n")
        assert rendered[0] == f"{path}:{s.line}:{s.col}: error: {d.message}"
        source = lines[s.line - 1].removesuffix("\r") if s.line <= len(lines) else ""
        if source:
            assert rendered[1] == source and rendered[2].lstrip(" \t").startswith("^")


def check(text: str, path: str = "fuzz.od"):
    start = time.perf_counter()
    try:
        module = parse_source(text, path)
    except OdcError as e:
        check_user_error(e, text, path)
        module = None
    assert time.perf_counter() - start < 10
    for g in module.models.values() if module else ():  # a program that passes has a typed output
        assert g.type(g.output("logits")) is not None
    return module


@pytest.mark.parametrize("text", VALID)
def test_the_seed_programs_are_valid(text):
    assert check(text).models


@pytest.mark.parametrize("text", BAD)
def test_the_bad_programs_are_reported_at_a_place(text):
    with pytest.raises(CompileError) as e:
        parse_source(text, "bad.od")
    check_user_error(e.value, text, "bad.od")


@settings(max_examples=1500, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(mutants())
def test_mutated_programs_pass_or_fail_with_located_user_errors(text):
    check(text)


@settings(max_examples=60, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutants())
def test_odc_check_on_mutated_files_exits_0_or_1_with_a_message(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.od"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["check", str(path)])
        assert time.perf_counter() - start < 10
    if code == 0:
        assert out.getvalue().startswith(f"{path}: ok")
    else:
        assert code == 1 and err.getvalue().startswith(f"{path}:"), err.getvalue()[:300]
        assert "Traceback" not in err.getvalue()


def _elements(g: Graph, batch: int) -> int:
    sizes = {d: batch for n in g.nodes() for d in n.type.shape if isinstance(d, str)}
    return sum(n.type.substitute(sizes).numel for n in g.nodes())


SMALL = [t for t in VALID if "224" not in t]  # networks that compile in a moment


@settings(max_examples=60, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(mutants(SMALL, most=1))
def test_mutated_programs_that_pass_compile_and_run_or_fail_with_user_errors(text):
    """What the front end accepts, the rest of the compiler takes: a Program of each model
    compiles and runs forward on a batch of 2 (programs whose values would not fit in a few
    hundred MB are left out)."""
    module = check(text)
    assume(module is not None)
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
