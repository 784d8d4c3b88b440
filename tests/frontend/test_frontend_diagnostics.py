"""Every compile-time diagnosis of dsl.md: where it points (line and column, found here by
searching the source line, not hard-coded), what it says, and the hint."""
import pytest

from odc.errors import CompileError, OdcError
from odc.frontend import parse_source
from tests.diagnostics import single, where

HEAD = ["model M(classes = 10):", "    input image: f32[N, 1, 28, 28]"]


def program(*body: str, train: str | None = None) -> str:
    lines = HEAD + [f"    {b}" for b in body]
    if train:
        lines += ["", "train M:", f'    data = {train}']
    return "\n".join(lines) + "\n"


def errors(src: str) -> CompileError:
    with pytest.raises(CompileError) as e:
        parse_source(src, "t.od")
    return e.value




def test_dense_on_a_4d_input_renders_as_in_the_spec():
    src = "\n".join([
        "model Bad(classes = 47):",
        "    input image: f32[N, 1, 28, 28]",
        "    x = relu(conv2d(image, out=6, kernel=5, pad=2))",
        "    x = maxpool2d(x, 2)",
        "    x = relu(conv2d(x, out=16, kernel=5))",
        "    x = maxpool2d(x, 2)",
        "    x = relu(dense(x, 120))",
        "    x = relu(dense(x, 84))",
        "    return dense(x, classes)", ""])
    with pytest.raises(CompileError) as e:
        parse_source(src, "models/bad.od")
    # dsl.md's example; its header says column 9, but its caret (like this one) is under
    # `dense(x, 120)`, which starts in column 14
    assert str(e.value) == "\n".join([
        "models/bad.od:7:14: error: dense expects a 2-D input [batch, features], got f32[N, 16, 5, 5]",
        "    x = relu(dense(x, 120))",
        "             ^~~~~~~~~~~~~",
        "hint: insert flatten(x) before dense"])
    assert (e.value.path, e.value.line, e.value.col) == ("models/bad.od", 7, 14)


def test_unknown_name_suggests_a_close_one():
    src = program("x = flatten(imge)", "return dense(x, classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "imge")
    assert d.message == "unknown name 'imge'"
    assert d.hint == "did you mean 'image'?"


def test_unknown_op_suggests_a_close_one():
    src = program("x = rleu(flatten(image))", "return dense(x, classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "rleu")
    assert (d.span.end_col - d.span.col) == len("rleu")
    assert d.message == "unknown op 'rleu'"
    assert d.hint == "did you mean 'relu'?"


def test_too_many_arguments():
    src = program("x = flatten(image)", "return dense(x, classes, true, 4)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 4, "4)")
    assert d.message == "dense takes 3 arguments, got 4"
    assert d.hint == "usage: dense(x, out, bias=true)"


def test_missing_argument():
    src = program("x = conv2d(image, out=4)", "return dense(flatten(x), classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "conv2d")
    assert d.message == "conv2d is missing argument 'kernel'"
    assert d.hint == "usage: conv2d(x, out, kernel, stride=1, pad=0, dilation=1, groups=1, bias=true)"


def test_unknown_keyword_suggests_a_close_one():
    src = program("x = conv2d(image, out=4, kernal=3)", "return dense(flatten(x), classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "kernal=3")
    assert d.message == "conv2d has no argument 'kernal'"
    assert d.hint == "did you mean 'kernel'?"


def test_keyword_given_twice_and_positional_after_keyword():
    src = program("x = conv2d(image, 4, 3, out=5)", "y = conv2d(image, out=4, 3)", "return dense(flatten(x), classes)")
    first, second = errors(src).diagnostics
    assert (first.span.line, first.span.col) == where(src, 3, "out=5")
    assert first.message == "conv2d got argument 'out' twice"
    assert (second.span.line, second.span.col) == where(src, 4, "3)")
    assert second.message == "positional argument after a keyword argument"


def test_convolution_larger_than_its_input():
    src = program("x = conv2d(image, out=4, kernel=5, stride=4)", "y = conv2d(x, out=4, kernel=9)",
                  "return dense(flatten(y), classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 4, "conv2d")
    # (28 - 5) // 4 + 1 = 6 rows and columns are left; a 9x9 kernel does not fit
    assert d.message.startswith("conv2d with kernel 9, stride 1, padding 0 shrinks a spatial size of 6 to ")
    assert "f32[N, 4, 6, 6]" in d.message
    assert d.hint


def test_pooling_larger_than_its_input():
    src = program("x = maxpool2d(maxpool2d(image, 4), 8)", "return dense(flatten(x), classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "maxpool2d(")
    assert d.message.startswith("maxpool2d with kernel 8, stride 8 shrinks a spatial size of 7 to ")
    assert "f32[N, 1, 7, 7]" in d.message
    assert "padding" not in d.message + d.hint  # pooling takes none


def test_incompatible_broadcast_names_both_shapes():
    src = program("x = flatten(image)", "y = dense(x, 5) + dense(x, 3)", "return dense(y, classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 4, "dense(x, 5)")
    assert d.span.end_col == len(src.splitlines()[3]) + 1  # the whole sum
    assert d.message == "incompatible shapes for broadcasting in add: f32[N, 5] and f32[N, 3]"


def test_matmul_inner_dimension_mismatch():
    src = program("param w: f32[5, 3] = xavier", "x = flatten(image) @ w", "return dense(x, classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 4, "flatten")
    assert d.message == "matmul inner dimensions differ: f32[N, 784] @ f32[5, 3] (784 vs 5)"


def test_reshape_that_changes_the_element_count():
    src = program("x = reshape(image, [N, 785])", "return dense(x, classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "reshape")
    assert "changes the number of elements" in d.message
    assert "f32[N, 1, 28, 28]" in d.message and "[N, 785]" in d.message


def test_annotation_mismatch_is_checked_not_cast():
    src = program("x: f32[N, 1, 14, 15] = maxpool2d(image, 2)", "return dense(flatten(x), classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "f32")
    assert d.message == "annotation f32[N, 1, 14, 15] does not match the value's type f32[N, 1, 14, 14]"
    assert d.hint == "dimension 3 is 14, not 15; an annotation checks the type, it does not convert"


def test_symbol_bound_to_two_sizes():
    src = program("x: f32[N, C] = flatten(image)", "y: f32[N, C] = dense(x, 10)", "return y")
    d = single(src)
    line, col = where(src, 4, "C]")
    assert (d.span.line, d.span.col) == (line, col)
    first = where(src, 3, "C]")
    assert d.message == (f"symbol C bound to two sizes: 784 (at line {first[0]}, column {first[1]}) "
                         f"and 10 here, in f32[N, 10]")


def test_batch_symbol_cannot_be_claimed_to_be_a_number():
    src = program("x: f32[784, 784] = flatten(image)", "return dense(x, classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "f32")
    assert d.message == "annotation f32[784, 784] does not match the value's type f32[N, 784]"
    assert d.hint.startswith("dimension 0 is N, not 784")
    src = program("x: f32[N, N] = flatten(image)", "return dense(x, classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "N]")
    assert d.message.startswith("symbol N bound to two sizes: a size given at run time (at line 2, column 22)")


@pytest.mark.parametrize("data, classes", [  # EMNIST paper (Cohen et al. 2017), Table II; MNIST; Fashion-MNIST
    ('emnist("byclass")', 62), ('emnist("bymerge")', 47), ('emnist("balanced")', 47),
    ('emnist("letters")', 26), ('emnist("digits")', 10), ('emnist("mnist")', 10), ("mnist()", 10),
    ("fashion_mnist()", 10)])
def test_output_must_match_the_class_count_of_the_data(data, classes):
    ok = program("return dense(flatten(image), classes)", train=data).replace("classes = 10", f"classes = {classes}")
    assert parse_source(ok).models["M"]
    src = ok.replace(f"classes = {classes}", f"classes = {classes + 1}")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "dense")
    assert d.message == f"M returns f32[N, {classes + 1}], but its data set {data} has {classes} classes"
    assert d.hint.startswith(f"return logits [batch, {classes}]")


def test_class_count_of_an_idx_folder_is_not_known_at_compile_time():
    assert parse_source(program("return dense(flatten(image), 3)", train='idx("data/mine")')).models["M"]


def test_recursion_in_defs_is_an_error_even_when_unused():
    src = "def f(x):\n    return relu(f(x))\n\ndef g(x):\n    return h(x)\n\ndef h(x):\n    return g(x)\n"
    first, second = errors(src).diagnostics
    assert (first.span.line, first.span.col) == where(src, 2, "f(x)")
    assert first.message == "recursive call: f -> f"
    assert (second.span.line, second.span.col) == where(src, 8, "g(x)")
    assert second.message == "recursive call: g -> h -> g"
    assert "inlined" in first.hint


def test_recursion_reached_from_a_model_is_reported_once():
    src = "def f(x):\n    return g(x)\n\ndef g(x):\n    return f(x)\n\n" + program("return f(image)")
    d = single(src)
    assert d.message == "recursive call: f -> g -> f"


def test_syntax_error_lists_the_expected_tokens():
    src = program("x = relu(flatten(image),, 3)", "return x")
    d = single(src)
    assert (d.span.line, d.span.col) == (3, where(src, 3, ",,")[1] + 1)  # the second comma
    assert d.message == "unexpected ','; expected an expression or ')'"


@pytest.mark.parametrize("body, line, needle, message", [
    ("x = flatten(image) foo", 3, "foo", "unexpected name 'foo'; expected an operator or end of line"),
    ("x = ", 3, None, "unexpected end of line; expected an expression"),
    ("x = dense(flatten(image) 3)", 3, "3)", "unexpected number '3'; expected an operator, ')' or ','"),
    ("x: f32[N 3] = image", 3, "3]", "unexpected number '3'; expected ']' or ','"),
    ("x = 1 $ 2", 3, "$", "unexpected character '$'"),
    ("return image)", 3, ")", "unexpected ')'; expected an operator, '(' or end of line"),
    ('x = "abc', 3, '"', "unterminated string"),
])
def test_syntax_errors(body, line, needle, message):
    src = program(body)
    d = single(src)
    col = where(src, line, needle)[1] if needle else len(src.splitlines()[line - 1]) + 1
    assert (d.span.line, d.span.col) == (line, col)
    assert d.message == message


def test_a_file_that_ends_inside_brackets():
    d = single("model M():\n    x: f32[N,\n")
    assert (d.span.line, d.span.col) == (2, 14)
    assert d.message == "unexpected end of file; expected a name or an integer"


def test_unexpected_indentation_and_bad_dedent():
    src = "model M():\n    input x: f32[N]\n        return x\n"
    d = single(src)
    assert (d.span.line, d.span.col, d.message) == (3, 9, "unexpected indentation; expected a name, 'input', "
                                                          "'param', 'return' or end of block")
    src = "model M():\n    input x: f32[N]\n  return x\n"
    d = single(src)
    assert (d.span.line, d.span.col) == (3, 3)
    assert d.message == "this line is indented by 2 spaces, which matches no enclosing block"
    assert d.hint == "indent it by 4 or 0 spaces"


def test_tabs_are_an_error_with_their_location():
    src = program("x = flatten(image)", "\treturn x")
    d = single(src)
    assert (d.span.line, d.span.col) == (4, 5)
    assert d.message == "tab character; odc indents with spaces only"
    src = program("x =\tflatten(image)", "return x")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "\t")


def test_independent_errors_are_reported_together_without_cascades():
    src = program(
        "x = rleu(image)",              # unknown op; x is poisoned
        "y = flatten(x)",               # uses x: nothing more to say
        "z = dense(flatten(image), 5) + dense(flatten(image), 4)",  # broadcast
        "w = reshape(image, [N, 3])",   # element count
        "return dense(y, classes)")     # uses y (poisoned): nothing
    err = errors(src)
    assert [(d.span.line, d.message.split(" ")[0]) for d in err.diagnostics] == [
        (3, "unknown"), (5, "incompatible"), (6, "reshape")]
    assert str(err).count(": error: ") == 3


def test_errors_in_several_models_and_train_blocks_come_in_source_order():
    src = (program("return dense(flatten(image), 5)", train='emnist("digits")')
           + "\nmodel K():\n    input image: f32[N, 4]\n    y = q\n    return dense(image, 3)\n"
           + "\ntrain K:\n    data = mnist()\n    epoch = 3\n")
    err = errors(src)
    assert [(d.span.line, d.message.split(" ")[0]) for d in err.diagnostics] == [
        (3, "M"), (9, "the"), (10, "unknown"), (11, "K"), (15, "unknown")]  # 9: K's input is no 1x28x28 image
    assert err.diagnostics[-1].hint == "did you mean 'epochs'?"


@pytest.mark.parametrize("src, line, needle, message", [
    (program("x: f23[N, 784] = flatten(image)", "return x"), 3, "f23", "unknown element type 'f23'"),
    (program("param image: f32[4] = zeros", "return image"), 3, "param", "image is declared twice (inputs and "
                                                                            "parameters need distinct names)"),
    (program("return flatten(image)", "x = image"), 4, "x", "this statement comes after the return and would "
                                                            "never run"),
    (program("x = image"), 1, "model", "model M has no return"),
    ("def f(x):\n    input y: f32[N]\n    return x\n" + program("return f(image)"), 2, "input",
     "'input' declares a model input and cannot appear in a def"),
    ("def f(x):\n    y = x\n" + program("return f(image)"), 1, "def", "def f has no return"),
    ("def relu(x):\n    return x\n", 1, "def", "def relu would hide the built-in op relu"),
    (program("return relu"), 3, "relu", "relu is an op, not a value"),
    (program("return dense(flatten(image), classes / 2)"), 3, "classes /",
     "dense: out must be a positive integer, got the number 5.0"),
    (program("return dense(flatten(image), 1e999)"), 3, "1e999", "number too large"),
    (program("return dense(flatten(image), classes / (classes - 10))"), 3, "classes - 10", "division by zero"),
    (program("return dropout(flatten(image), 1)"), 3, "1)", "dropout: p is a probability in [0, 1), got 1.0"),
    (program("param b: f32[10] = kaiming", "return dense(flatten(image), 10) + b"), 3, "kaiming",
     "kaiming needs a parameter with at least 2 dimensions (for its fan-in), got f32[10]"),
    (program("param b: f32[10] = uniform(1, -1)", "return b"), 3, "uniform", "uniform(lo, hi) needs lo < hi, "
                                                                             "got 1.0 and -1.0"),
    (program("param b: f32[10] = zeroes", "return b"), 3, "zeroes", "unknown initialiser 'zeroes'"),
    (program("param b: f32[N] = zeros", "return b"), 3, "N]", "parameter sizes must be known at compile time; "
                                                             "N is given only at run time"),
    (program("param b: i32[3] = zeros", "return b"), 3, "i32", "element type i32 is not supported yet: odc "
                                                              "computes in f32"),
    (program("return flatten(sum(image, [1, 2, 3]))"), 3, "flatten", "flatten expects at least a 2-D input, "
                                                                     "got f32[N]"),
    (program("return softmax(image, axis=4)"), 3, "4)", "softmax: axis 4 is out of range for a 4-D tensor"),
    (program("return sum(image, [1, -3])"), 3, "[1", "sum: axis [1, -3] names the same axis twice"),
    (program("return transpose(image, [0, 1, 2, 2])"), 3, "transpose",
     "transpose permutation [0, 1, 2, 2] is not a permutation of the 4 axes of f32[N, 1, 28, 28]"),
    (program("return image + \"a\""), 3, "image +", "'+' cannot combine a tensor f32[N, 1, 28, 28] and the "
                                                    "string \"a\""),
    (program("return dense(flatten(image), N)"), 3, "N)", "dense: out must be a positive integer, got the size N"),
    ("model M():\n    return 1\n\nmodel M():\n    return 2\n", 4, "model", "M is declared twice"),
    ("train Lenet:\n    data = mnist()\n", 1, "train", "train block for unknown model 'Lenet'"),
    (program("return dense(flatten(image), classes)") + "\ntrain M:\n    loss = mse\n", 5, "train",
     "the train block of M sets no data"),
    (program("return dense(flatten(image), classes)", train='emnist("balanse")'), 6, '"balanse"',
     'unknown EMNIST split "balanse"'),
    (program("return dense(flatten(image), classes)", train='svhn()'), 6, "svhn", "unknown data set 'svhn'"),
    (program("return dense(flatten(image), classes)", train="mnist()") + "    optimizer = sgd(lr=0.1, nesterov=true)\n",
     7, "sgd", "sgd: nesterov needs a momentum > 0"),
    (program("return dense(flatten(image), classes)", train="mnist()") + "    epochs = 0\n", 7, "0",
     "epochs must be an integer from 1 to 100,000, got 0"),
    (program("return dense(flatten(image), classes)", train="mnist()") + "    loss = hinge\n", 7, "hinge",
     "unknown loss 'hinge'"),
    (program("return dense(flatten(image), classes)", train="mnist()") + "    optimizer = adam(0.1, beta=0.5)\n",
     7, "beta=", "adam has no argument 'beta'"),
    (program("return dense(flatten(image), classes)", train="mnist()") + "    batch = 8\n    batch = 16\n", 8,
     "batch", "batch is set twice"),
])
def test_more_diagnostics(src, line, needle, message):
    err = errors(src)
    found = [(d.span.line, d.span.col) for d in err.diagnostics if d.message == message]
    assert found == [where(src, line, needle)], err


def test_unknown_hyper_parameter_override_and_missing_file(tmp_path):
    module = parse_source(program("return dense(flatten(image), classes)"))
    with pytest.raises(OdcError, match=r"model M has no hyper-parameter 'clases'\nhint: did you mean 'classes'\?"):
        module.lower("M", {"clases": 3})
    with pytest.raises(OdcError, match="must be a number"):
        module.lower("M", {"classes": "3"})
    with pytest.raises(OdcError, match="no model 'm'"):
        module.lower("m")
    from odc.frontend import parse_file
    with pytest.raises(OdcError, match=r"nothere\.od: error: no such file"):
        parse_file(tmp_path / "nothere.od")
    with pytest.raises(OdcError, match="not a UTF-8 text file"):
        (tmp_path / "bin.od").write_bytes(b"\xff\xfe")
        parse_file(tmp_path / "bin.od")


# -- what training needs from a model: one input, float logits [batch, classes] -------------
def test_a_model_without_input_is_an_error_at_its_header():
    src = "model M():\n    param w: f32[3, 4] = xavier\n    return w\n"
    d = single(src)
    assert (d.span.line, d.span.col) == (1, 1)
    assert d.message == "model M has no input"
    assert d.hint == "declare the image batch first, e.g. input image: f32[N, 1, 28, 28]"


def test_a_second_input_is_an_error_at_its_declaration():
    src = program("input label: i32[N]", "return dense(flatten(image), classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "input")
    assert d.message == ("a model has one input, the image batch, declared at line 2 (image); training feeds "
                         "it images and nothing else")


@pytest.mark.parametrize("body, message", [
    ("return sum(flatten(image), 1)", "M returns f32[N], but a model returns logits [N, classes], one row per image"),
    ("return image", "M returns f32[N, 1, 28, 28], but a model returns logits [N, classes], one row per image"),
    ("return transpose(dense(flatten(image), classes), [1, 0])",
     "M returns f32[10, N], but a model returns logits [N, classes], one row per image"),
    ("return reshape(image, [N, 28, -1])", "M returns f32[N, 28, 28], but a model returns logits [N, classes], "
                                           "one row per image"),
])
def test_the_output_must_be_logits_batch_by_classes(body, message):
    src = program(body)
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, body.split()[1])
    assert d.message == message
    assert d.hint == "end with a layer that makes the logits, e.g. dense(flatten(x), classes)"


def test_the_number_of_classes_must_be_known():
    src = "model K():\n    input image: f32[N, M]\n    return reshape(image, [N, M])\n"
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "reshape")
    assert d.message == ("K returns f32[N, M], but the number of classes (dimension 1) must be known at "
                         "compile time")


def test_an_input_without_a_batch_dimension_is_an_error():
    src = "model M():\n    input image: f32[]\n    return image\n"
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 2, "f32")
    assert d.message == "the input is a batch of images, so its dimension 0 is the batch size; got f32[]"


@pytest.mark.parametrize("stmt, needle", [("param label: f32[10] = zeros", "param"),
                                          ("param target: f32[10] = zeros", "param")])
def test_the_names_of_the_training_inputs_are_reserved(stmt, needle):
    src = program(stmt, "return dense(flatten(image), classes)")
    d = single(src)
    name = stmt.split()[1][:-1]
    assert (d.span.line, d.span.col) == where(src, 3, needle)
    assert d.message == f"the name '{name}' is reserved: training adds an input '{name}' for the targets"
    src = f"model M():\n    input {name}: f32[N, 4]\n    return dense({name}, 3)\n"
    assert single(src).message == d.message


@pytest.mark.parametrize("body, line, needle, message", [
    (["return dense(flatten(image), 99999999999999999999999)"], 3, "dense",
     "param dense1.weight f32[99999999999999999999999, 784] would have 78,399,999,999,999,999,999,999,216 "
     "elements; odc allows at most 268,435,456"),
    (["param w: f32[16384, 16385] = zeros", "param ok: f32[16384, 16384] = zeros",
      "return dense(flatten(image), classes)"], 3, "param",
     "param w f32[16384, 16385] would have 268,451,840 elements; odc allows at most 268,435,456"),
    (["x = conv2d(image, out=1, kernel=1, pad=30000)", "return dense(flatten(x), classes)"], 3, "conv2d",
     "the result of conv2d, f32[N, 1, 60028, 60028] would have 3,603,360,784 elements per batch item; odc "
     "allows at most 4,194,304 per batch item"),
])
def test_tensor_sizes_are_bounded(body, line, needle, message):
    src = program(*body)
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, line, needle)
    assert d.message == message
    big = "model M():\n    input image: f32[N, 100000, 100000]\n    return dense(flatten(image), 3)\n"
    assert single(big).message.startswith("input image f32[N, 100000, 100000] would have 10,000,000,000 "
                                          "elements per batch item")


# -- where and how errors are told ----------------------------------------------------------
def test_an_error_in_an_inlined_def_notes_each_call_that_led_there():
    src = ("def inner(x, c):\n    return dense(x, c)\n\ndef outer(x):\n    return inner(x, 3)\n\n"
           + program("a = inner(flatten(image), 3)", "b = outer(image)", "return a"))
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 2, "dense")
    assert d.message == "dense expects a 2-D input [batch, features], got f32[N, 1, 28, 28]"
    inner_call, outer_call = where(src, 5, "inner"), where(src, 10, "outer")
    assert d.notes == [f"in inner, called at t.od:{inner_call[0]}:{inner_call[1]}",
                       f"in outer, called at t.od:{outer_call[0]}:{outer_call[1]}"]
    assert str(errors(src)).splitlines()[3:5] == [f"note: {n}" for n in d.notes]


def test_reshape_to_a_size_that_would_be_a_symbol_times_a_number():
    src = program("x = reshape(image, [-1])", "return dense(reshape(x, [N, 784]), classes)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "reshape")
    assert d.message == ("reshape of f32[N, 1, 28, 28] to [-1]: -1 would stand for N*784, a size odc cannot "
                         "express (a size is a number or one symbol)")
    assert d.hint == "keep N as a size of its own, e.g. reshape(x, [N, -1])"
    assert single(program("x = reshape(image, [N, 3, -1])", "return x")).message.endswith(
        "changes the number of elements")


def test_a_bad_hyper_parameter_default_is_reported_once():
    src = "model M(a = 2 * 3, b = \"x\"):\n    input image: f32[N, 4]\n    return dense(image, a + b)\n"
    first, second = errors(src).diagnostics
    assert (first.span.line, first.span.col, first.message) == (1, 13, "expected a constant (a number, a string, "
                                                                       "true or false)")
    assert (second.span.line, second.span.col, second.message) == (1, 24, 'a hyper-parameter is a number, got "x"')


@pytest.mark.parametrize("item, needle, message", [
    ("batch = true", "true", "batch must be an integer from 1 to 1,000,000, got true"),
    ("batch = 100000000000", "100000000000", "batch must be an integer from 1 to 1,000,000, got 100000000000"),
    ("epochs = 100000000000000000000", "100000000000000000000", "epochs must be an integer from 1 to 100,000, got 100000000000000000000"),
    ("seed = -1", "-1", "seed must be an integer from 0 to 9,223,372,036,854,775,807, got -1"),
    ('epochs = "2"', '"2"', 'epochs must be an integer from 1 to 100,000, got "2"'),
    ("optimizer = sgd(0.1, 0.9, 0, 1)", "1)", "sgd: nesterov must be true or false, got 1"),
    ("optimizer = adam(lr=0.1, beta1=1)", "1)", "adam: beta1 must be a number in [0, 1), got 1"),
    ("optimizer = adam(lr=0.1, beta2=2, eps=0)", "2,", "adam: beta2 must be a number in [0, 1), got 2"),
    ("optimizer = adamw(0.1, eps=-1e-8)", "-1e-8", "adamw: eps must be a number >= 0, got -1e-08"),
    ("optimizer = adam(lr=0)", "0)", "adam: lr must be a number > 0, got 0"),
    ("optimizer = sgd(lr=0.1, weight_decay=true)", "true", "sgd: weight_decay must be a number >= 0, got true"),
    ("data = idx(5)", "5", "idx expects a string, got 5"),
])
def test_recipe_values_are_checked_and_shown_as_the_language_writes_them(item, needle, message):
    src = program("return dense(flatten(image), classes)") + "\ntrain M:\n    " + item + "\n"
    if not item.startswith("data"):
        src += "    data = mnist()\n"
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 6, needle)
    assert d.message == message


def test_adam_with_beta1_zero_is_legal():
    src = program("return dense(flatten(image), classes)", train="mnist()") + "    optimizer = adam(0.1, beta1=0)\n"
    r = parse_source(src).recipes["M"]
    assert (r.optimizer, r.optimizer_args["beta1"], r.optimizer_args["beta2"]) == ("adam", 0.0, 0.999)


def test_a_file_with_a_byte_order_mark(tmp_path):
    from odc.frontend import parse_file
    path = tmp_path / "bom.od"
    path.write_bytes(b"\xef\xbb\xbf" + program("return dense(flatten(image), classes)").encode())
    assert parse_file(path).models["M"]
    path.write_bytes(b"\xef\xbb\xbf" + program("return dense(flatten(imge), classes)").encode())
    with pytest.raises(CompileError) as e:
        parse_file(path)
    assert (e.value.line, e.value.col) == where(program("return dense(flatten(imge), classes)"), 3, "imge")


@pytest.mark.parametrize("body, needle", [
    ("return dense(flatten(image), 1" + "0" * 400 + ")", "1000"),
    ("return dense(flatten(image) * (" + " * ".join(["10" * 20] * 16) + "), classes)", "1010"),
])
def test_integers_beyond_a_floats_range_are_too_large(body, needle):
    src = program(body)
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, needle)
    assert d.message == "number too large"
    src = program("return dense(flatten(image), classes)", train="mnist()") + "    optimizer = sgd(1" + "0" * 400 + ")\n"
    d = single(src)
    assert (d.span.line, d.span.col, d.message) == (7, 21, "number too large")


def test_alexnet_geometry_on_32x32_images_names_each_size_on_the_way():
    """The seed project's AlexNet (11x11 stride 4 first) shrank a 32x32 image to nothing at run
    time; odc stops at the line where it runs out, with the sizes that led there."""
    src = "\n".join([
        "model AlexNet(classes = 10):",
        "    input image: f32[N, 3, 32, 32]",
        "    x = relu(conv2d(image, out=64, kernel=11, stride=4, pad=2))",
        "    x = maxpool2d(x, 3, stride=2)",
        "    x = relu(conv2d(x, out=192, kernel=5, pad=2))",
        "    x = maxpool2d(x, 3, stride=2)",
        "    x = relu(conv2d(x, out=384, kernel=3, pad=1))",
        "    x = relu(conv2d(x, out=256, kernel=3, pad=1))",
        "    x = maxpool2d(x, 3, stride=2)",
        "    return dense(flatten(x), classes)", ""])
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 9, "maxpool2d")
    assert "maxpool2d with kernel 3, stride 2 shrinks a spatial size of 1 to 0" in d.message
    assert d.notes == ["the image sizes up to here: 32x32 (the input, line 2) -> 7x7 (conv2d, line 3) -> "
                       "3x3 (maxpool2d, line 4) -> 1x1 (maxpool2d, line 6)"]
    assert d.hint


def test_a_def_sees_the_size_symbols_of_its_caller():
    src = "\n".join([
        "def head(x):",
        "    y: f32[N, 256] = reshape(x, [N, 256])",
        "    return y",
        "model M():",
        "    input image: f32[N, 4, 8, 8]",
        "    return dense(head(image), 3)", ""])
    g = parse_source(src, "t.od").models["M"]
    assert str(g.type(g.output("logits"))) == "f32[N, 3]"
    wrong = src.replace("reshape(x, [N, 256])", "reshape(x, [M, 256])")
    d = single(wrong)
    assert "unknown name 'M'" in d.message and d.span.line == 2


def test_a_model_whose_input_does_not_fit_the_data_set_is_an_error_at_the_input():
    src = program("return dense(flatten(image), classes)", train="cifar10()")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 2, "f32[N, 1, 28, 28]")
    assert d.message == ("the input f32[N, 1, 28, 28] does not fit the images of cifar10(), which are "
                         "[3, 32, 32] (channels, height, width)")
    assert d.notes == ["the data set is chosen at t.od:6:5"]
    assert d.hint == "declare input image: f32[N, 3, 32, 32], or train on another data set"
    fits = src.replace("f32[N, 1, 28, 28]", "f32[N, 3, 32, 32]")
    assert parse_source(fits, "t.od").recipes["M"].image == (3, 32, 32)
