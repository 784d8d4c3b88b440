"""The front end's limits (odc/frontend/limits.py) and element types: a program too big, too deep or
in a type that code generation lacks is a CompileError at the place that causes it, with a hint,
found quickly; ordinary large networks (VGG-11, ResNet-18 on 224x224 images) pass."""
import time
from pathlib import Path

import pytest

import odc
from odc import cli
from odc.errors import CompileError
from odc.frontend import limits, parse_file, parse_source

DATA = Path(__file__).parent / "data"
HEAD = "model M(classes = 10):\n    input image: f32[N, 1, 28, 28]\n"


def error(src: str) -> CompileError:
    with pytest.raises(CompileError) as e:
        parse_source(src, "t.od")
    assert len(e.value.diagnostics) == 1, e.value
    return e.value


def at(src: str, needle: str, nth: int = 0, after: str = "") -> tuple[int, int]:
    """(line, column) of the start of the nth `needle` (from 0) in `src` after the text `after`,
    counting lines and columns from 1."""
    i = src.index(after) - 1 if after else -1
    for _ in range(nth + 1):
        i = src.index(needle, i + 1)
    line = src.count("\n", 0, i) + 1
    return line, i - (src.rfind("\n", 0, i) + 1) + 1


def seconds(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


# -- numbers ----------------------------------------------------------------------------------
BIG = "1" + "0" * 5000


@pytest.mark.parametrize("src, needle", [
    (HEAD + f"    return dense(flatten(image), out={BIG})\n", BIG),
    (f"model M(classes = {BIG}):\n    input image: f32[N, 4]\n    return dense(image, 10)\n", BIG),
    (f"model M():\n    input image: f32[N, {BIG}]\n    return dense(image, 10)\n", BIG),
    (HEAD + "    return dense(flatten(image), 10) * 1e999999\n", "1e999999"),
    (HEAD + f"    return dense(flatten(image), 10) * {BIG}.5\n", BIG),
    (HEAD + "    return dense(flatten(image), 10)\n\ntrain M:\n    data = mnist()\n    seed = " + BIG + "\n", BIG),
])
def test_numbers_of_thousands_of_digits_are_too_large(src, needle):
    e = error(src)
    assert (e.line, e.col) == at(src, needle)
    assert e.first.message == "number too large"
    assert e.first.hint == "odc's numbers are 64-bit floats, at most about 1.8e308"


def test_the_command_line_reports_a_huge_number_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "big.od"
    src = HEAD + f"    return dense(flatten(image), out={BIG})\n"
    path.write_text(src)
    assert cli.main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    line, col = at(src, BIG)
    assert err.startswith(f"{path}:{line}:{col}: error: number too large\n")
    assert "Traceback" not in err and "hint: odc's numbers are 64-bit floats" in err


# -- nesting ----------------------------------------------------------------------------------
def nested(n: int, open_: str, close: str, inner: str = "image") -> str:
    return open_ * n + inner + close * n


@pytest.mark.parametrize("expr, needle, nth", [
    (nested(50_000, "(", ")"), "(", limits.MAX_NESTING),  # at the first of them too many
    (nested(50_000, "relu(", ")"), "relu(", limits.MAX_NESTING),
    (nested(50_000, "[", "]"), "[", limits.MAX_NESTING),
    ("-" * 100_000 + "image", "-", limits.MAX_NESTING),
    (" + ".join(["image"] * 20_000), "image", 0),                 # a chain nests too: ((a + b) + c) ...
    (" * ".join(["image"] * 20_000), "image", 0),
])
def test_deep_expressions_are_an_error_found_quickly(expr, needle, nth):
    src = HEAD + f"    x = {expr}\n    return dense(flatten(x), classes)\n"
    took = seconds(lambda: error(src))
    e = error(src)
    assert (e.line, e.col) == at(src, needle, nth, after="    x = ")
    assert e.first.message == (f"expression nested too deeply: odc allows at most {limits.MAX_NESTING} levels "
                               "of parentheses, brackets, calls and operators in one expression")
    assert e.first.hint == "split it into several statements, binding its parts to names"
    assert took < 2


def test_the_deepest_program_the_limits_allow_checks_without_recursion_error():
    """Expressions nested to the limit, in defs nested to the limit: the Python stack this takes is
    what limits.RECURSION_LIMIT provides. One level more of either is a CompileError."""
    depth, calls = limits.MAX_NESTING, limits.MAX_DEF_DEPTH

    def program(depth, calls):  # each def's expression nests `depth` levels, the call or x innermost
        defs = [f"def d{i}(x):\n    return {nested(depth - 2, 'relu(', ')', f'd{i + 1}(x)')}\n" for i in range(calls - 1)]
        defs.append(f"def d{calls - 1}(x):\n    return {nested(depth - 1, 'relu(', ')', 'x')}\n")
        return "".join(defs) + "model M():\n    input image: f32[N, 4]\n    return d0(image)\n"

    g = parse_source(program(depth, calls)).models["M"]
    assert len(g) == 1 + (calls - 1) * (depth - 2) + depth - 1  # the input and the relus
    e = error(program(depth + 1, calls))
    assert e.first.message.startswith("expression nested too deeply")
    e = error(program(depth, calls + 1))
    assert e.first.message == (f"def calls nest too deeply: calling d{calls} here puts {calls + 1} defs inside "
                               f"each other; odc allows at most {calls}")
    assert e.first.hint == "call some of the inner defs from the model instead"
    assert len(e.first.notes) == calls  # each def call that led there, innermost first


def doubling(levels: int, leaf: str = "relu(x)") -> str:
    """def d0 calls d1 twice, d1 calls d2 twice, ...: 2^levels calls of the last def."""
    defs = "".join(f"def d{i}(x):\n    x = d{i + 1}(x)\n    return d{i + 1}(x)\n" for i in range(levels))
    return defs + f"def d{levels}(x):\n    return {leaf}\n" + "model M():\n    input image: f32[N, 4]\n    return d0(image)\n"


def test_defs_that_call_the_next_one_twice_25_deep_are_refused_at_once():
    src = doubling(25)
    took = seconds(lambda: error(src))
    e = error(src)
    assert e.first.message.startswith("def calls nest too deeply: calling d16 here")
    assert (e.line, e.col) == at(src, "d16(x)")
    assert took < 2


def test_inlined_def_calls_are_bounded():
    src = doubling(14, "x")  # 2^15 - 1 calls of defs that compute nothing, 15 deep
    took = seconds(lambda: error(src))
    e = error(src)
    assert e.first.message.endswith(f"inlines more than {limits.MAX_INLINED_CALLS:,} def calls into model M")
    assert e.first.message.startswith("calling d")
    line, col = e.line, e.col
    assert src.splitlines()[line - 1][col - 1:].startswith("d")  # at a call site
    assert "2^k" in e.first.hint
    assert took < 5
    parse_source(doubling(13, "x"))  # 2^14 - 1 calls pass


def test_graph_nodes_are_bounded():
    leaf = "def leaf(x):\n    return " + nested(10, "relu(", ")", "x") + "\n"
    mid = "def mid(x):\n" + "    x = leaf(x)\n" * 60 + "    return x\n"
    src = leaf + mid + "model M():\n    input image: f32[N, 4]\n" + "    image = mid(image)\n" * 200 + "    return image\n"
    e = error(src)
    assert e.first.message == f"model M grows past {limits.MAX_NODES:,} graph nodes here"
    assert (e.line, e.col) == at(src, "relu(")
    assert e.first.notes[0].startswith("in leaf, called at t.od:") and e.first.notes[1].startswith("in mid")


# -- time linear in the size of the file -------------------------------------------------------
def test_ten_thousand_layers_check_in_seconds():
    src = HEAD + "    x = flatten(image)\n" + "    x = relu(dense(x, 8))\n" * 10_000 + "    return dense(x, classes)\n"
    took = seconds(lambda: parse_source(src))
    assert len(parse_source(src).models["M"].params()) == 2 * 10_001
    assert took < 5  # about 1 s on one core; over 8 s before the parser and checks were made linear


def test_ten_thousand_errors_render_in_seconds():
    src = HEAD + "    x = relu(imag)\n" * 10_000 + "    return dense(flatten(image), classes)\n"
    start = time.perf_counter()
    with pytest.raises(CompileError) as e:
        parse_source(src, "t.od")
    text = str(e.value)
    took = time.perf_counter() - start
    assert len(e.value.diagnostics) == 10_000
    assert text.count("error: unknown name 'imag'") == 10_000 and text.count("    x = relu(imag)\n") == 10_000
    assert took < 5


def test_checking_time_grows_linearly():
    def check(n):
        src = HEAD + "    x = image\n" + "    x = relu(x) + x * 2\n" * n + "    return dense(flatten(x), classes)\n"
        return min(seconds(lambda: parse_source(src)) for _ in range(2))

    small, large = check(2_000), check(8_000)
    assert large < 8 * small  # 4 times the lines: 4 times the time, with room for noise


# -- tensor sizes ----------------------------------------------------------------------------
@pytest.mark.parametrize("stmt, needle, message", [
    ("param w: f32[1024, 1024, 1024] = zeros", "param",  # 4 GB
     f"param w f32[1024, 1024, 1024] would have 1,073,741,824 elements; odc allows at most {limits.MAX_ELEMENTS:,}"),
    ("x = dense(flatten(image), 1000000)", "dense",
     f"param dense1.weight f32[1000000, 784] would have 784,000,000 elements; odc allows at most "
     f"{limits.MAX_ELEMENTS:,}"),
    ("x = conv2d(image, out=6, kernel=5, pad=500)", "conv2d",
     f"the result of conv2d, f32[N, 6, 1024, 1024] would have 6,291,456 elements per batch item; odc allows at "
     f"most {limits.MAX_SAMPLE_ELEMENTS:,} per batch item"),
])
def test_tensors_too_large_to_train_are_refused_at_check(stmt, needle, message):
    src = HEAD + f"    {stmt}\n    return dense(flatten(image), classes)\n"
    e = error(src)
    assert (e.line, e.col) == at(src, needle)
    assert e.first.message == message
    assert e.first.hint.startswith("use smaller sizes")


def test_the_parameters_of_a_model_are_bounded_together():
    side = 2 ** 14  # each parameter within the limit for one tensor, three of them over the total
    src = HEAD + "".join(f"    param w{i}: f32[{side}, {side}] = zeros\n" for i in range(3)) + \
        "    return dense(flatten(image), classes)\n"
    e = error(src)
    assert (e.line, e.col) == at(src, "param w2")
    assert e.first.message == (f"with w2 f32[{side}, {side}], the parameters of M would have {3 * side * side:,} "
                               f"elements; odc allows at most {limits.MAX_PARAMETERS:,} in all")


@pytest.mark.parametrize("name", ["vgg11.od", "resnet18.od"])
def test_ordinary_large_networks_pass_and_plan_their_memory_at_batch_256(name):
    program = odc.load(DATA / name)
    graph = program.lower("train", program.batch_bindings(256))
    assert graph.meta["arena_bytes"] > 10 ** 9  # gigabytes of activations, within the limit


# -- element types ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["f16", "bf16", "f64", "i32", "u8"])
@pytest.mark.parametrize("src, needle", [
    ("model M():\n    input image: {t}[N, 1, 28, 28]\n    return dense(flatten(image), 10)\n", "{t}"),
    (HEAD + "    param w: {t}[784, 10] = zeros\n    return flatten(image) @ w\n", "{t}"),
    (HEAD + "    x: {t}[N, 784] = flatten(image)\n    return dense(x, 10)\n", "{t}"),
])
def test_element_types_that_code_generation_lacks_are_refused_at_check(dtype, src, needle):
    src = src.replace("{t}", dtype)
    e = error(src)
    assert (e.line, e.col) == at(src, dtype + "[")
    assert e.first.message == f"element type {dtype} is not supported yet: odc computes in f32"
    assert e.first.hint.startswith("declare it f32, e.g. f32[")


def test_every_model_in_models_still_checks():
    for path in sorted(Path(__file__).parents[2].joinpath("models").glob("*.od")):
        assert parse_file(path).models
