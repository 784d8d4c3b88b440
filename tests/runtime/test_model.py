"""Model (odc/program.py): training batches a batch norm cannot train on are refused, and compile
events are reported through the `log` callback, quiet by default."""
import re

import numpy as np
import pytest

import odc
from odc.errors import CompileError
from odc.ir import interp
from odc.program import mixes_examples

SOURCE = """\
model Norm(classes = 5):
    input image: f32[N, 1, 28, 28]
    x = relu(batchnorm2d(conv2d(image, out=4, kernel={kernel})))
    return dense(flatten(x), classes)
"""


def norm_model(tmp_path, kernel=28, **options):
    path = tmp_path / "norm.od"
    path.write_text(SOURCE.format(kernel=kernel))
    return odc.load(path).compile(**options), path


@pytest.mark.parametrize("executor", [None, interp.compile_graph], ids=["compiled", "interpreter"])
def test_batchnorm_on_one_value_per_channel_is_refused_in_training(tmp_path, executor):
    """A 28x28 convolution leaves 1x1 channels: a batch of one image gives the batch norm one value
    per channel, whose unbiased variance divides by 0 (NaN in the running variance). PyTorch
    refuses it; so does odc, naming the batch norm, and changes nothing."""
    model, path = norm_model(tmp_path, executor=executor)
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    before = {k: v.copy() for k, v in {**model.params, **model.state}.items()}
    for call in (lambda: model.train_step(x[:1], [3]), lambda: model.loss_and_grads(x[:1], [3])):
        with pytest.raises(CompileError) as e:
            call()
        assert str(e.value).splitlines()[0] == (
            f"{path}:3:14: error: batchnorm2d sees one value per channel (its input is f32[1, 4, 1, 1]) "
            f"in a training batch of 1: the batch variance is undefined")
        assert str(e.value).splitlines()[-1] == "hint: train with batches of 2 or more (PyTorch refuses this case too)"
    for k, v in {**model.params, **model.state}.items():
        np.testing.assert_array_equal(v, before[k])
    model.train_step(x, [3, 4])  # two values per channel: the unbiased variance of the pair
    conv = np.einsum("nchw,kchw->nk", x.astype(np.float64), before["conv2d1.weight"]) + before["conv2d1.bias"]
    expected = 0.9 + 0.1 * conv.var(axis=0, ddof=1)
    np.testing.assert_allclose(model.state["batchnorm2d1.running_var"], expected, rtol=1e-4)
    assert np.isfinite(model.forward(x[:1])).all()  # inference on one image is fine


def test_one_value_per_channel_depends_on_the_spatial_size(tmp_path):
    model, _ = norm_model(tmp_path)
    assert model.one_value_per_channel(1).op == "batchnorm2d" and model.one_value_per_channel(2) is None
    model, _ = norm_model(tmp_path, kernel=27)  # 2x2 channels: four values per channel in one image
    assert model.one_value_per_channel(1) is None
    model.train_step(np.ones((1, 1, 28, 28), np.float32), [0])
    assert np.isfinite(model.state["batchnorm2d1.running_var"]).all()


def test_compile_events_go_to_log_and_are_quiet_by_default(tmp_path, capsys):
    x = np.zeros((3, 1, 28, 28), np.float32)
    model, _ = norm_model(tmp_path, kernel=5)
    model.train_step(x, [0, 1, 2])
    model.forward(x)
    assert capsys.readouterr() == ("", "")
    lines = []
    model, _ = norm_model(tmp_path, kernel=5, log=lines.append)
    model.train_step(x, [0, 1, 2])
    model.train_step(x, [0, 1, 2])  # compiled once per batch size
    model.forward(x[:2])
    model.loss_and_grads(x, [0, 1, 2])
    pattern = r"compiling Norm (.+) for batch (\d+) \.\.\.\ncompiled Norm \1 for batch \2 in \d+\.\d s"
    assert re.findall(pattern, "\n".join(lines)) == [("train step", "3"), ("forward pass", "2"),
                                                     ("loss and gradients", "3")]
    assert len(lines) == 6 and capsys.readouterr() == ("", "")


def test_a_smaller_forward_batch_runs_in_the_code_of_a_larger_one(tmp_path):
    """Examples of a forward pass are independent, so the last batch of an evaluation needs no
    compile of its own: the results are those of the batch it is padded into, row for row."""
    lines = []
    model, _ = norm_model(tmp_path, kernel=5, log=lines.append)
    model.train_step(np.random.default_rng(1).random((4, 1, 28, 28), np.float32), [0, 1, 2, 3])  # running stats
    x = np.random.default_rng(0).random((9, 1, 28, 28), np.float32)
    full = model.forward(x)
    compiles = len(lines)
    for n in (8, 3, 1):
        np.testing.assert_array_equal(model.forward(x[:n]), full[:n])
    assert len(lines) == compiles
    reference = norm_model(tmp_path, kernel=5, executor=interp.compile_graph)[0]
    reference.params, reference.state = model.params, model.state
    np.testing.assert_allclose(model.forward(x[:3]), reference.forward(x[:3]), rtol=1e-5, atol=1e-6)
    model.forward(np.concatenate([x, x]))  # a larger batch compiles
    assert len(lines) == compiles + 2


@pytest.mark.parametrize("line", ["x = image - mean(image, axis=0)", "x = softmax(flatten(image), axis=0)",
                                  "x = image * max(image, axis=[0, 3])", "x = image * sum(image, axis=[0, 2])",
                                  "x = image * sum(image)"])
def test_a_model_that_mixes_examples_compiles_each_batch_size(tmp_path, line):
    """Padding would change what such a model computes for the real examples: a smaller batch
    gets its own code, and the same logits as a model that never saw a larger one."""
    path = tmp_path / "mix.od"
    path.write_text(f"model Mix():\n    input image: f32[N, 1, 4, 4]\n    {line}\n    return dense(flatten(x), 3)\n")
    x = np.random.default_rng(0).random((8, 1, 4, 4), np.float32)
    model = odc.load(path).compile(seed=1)
    model.forward(x)
    fresh = odc.load(path).compile(seed=1)
    small = model.forward(x[:3])
    assert mixes_examples(model.program.lower("forward")) is not None
    np.testing.assert_array_equal(small, fresh.forward(x[:3]))
