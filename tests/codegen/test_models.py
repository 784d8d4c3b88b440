"""Whole models from models/*.od: compiled code against the numpy reference interpreter through
the public API — the forward pass at batch 1 and 5, and training steps (forward, loss,
backward, optimizer update; dropout masks drawn alike from the same seed)."""
from pathlib import Path

import numpy as np
import pytest

import odc
from odc.codegen import compile_graph
from odc.ir import interp

MODELS = Path(__file__).resolve().parents[2] / "models"


def pair(path):
    prog = odc.load(path)
    return prog.compile(executor=compile_graph, seed=3), prog.compile(executor=interp.compile_graph, seed=3)


def batch(prog_model, n, seed):
    rng = np.random.default_rng(seed)
    classes = prog_model.forward(np.zeros((1, 1, 28, 28), np.float32)).shape[1]
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, classes, n)


def test_lenet5_forward_and_training_match_the_reference():
    compiled, reference = pair(MODELS / "lenet5.od")
    for n in (1, 5):
        x, _ = batch(reference, n, n)
        np.testing.assert_allclose(compiled.forward(x), reference.forward(x), rtol=1e-5, atol=1e-6)
    x, y = batch(reference, 8, 0)
    for _ in range(3):
        np.testing.assert_allclose(compiled.train_step(x, y), reference.train_step(x, y), rtol=1e-5)
    for name, value in reference.params.items():
        np.testing.assert_allclose(compiled.params[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    for name, value in reference.state.items():
        np.testing.assert_allclose(compiled.state[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp.od", "smallcnn.od", "vgg_letters.od"])
def test_other_models_train_like_the_reference(model):
    """Adam, AdamW and Nesterov updates, dropout, tanh, stride-2 convolution, average pooling,
    batch normalisation, an explicit parameter."""
    compiled, reference = pair(MODELS / model)
    x, y = batch(reference, 6, 1)
    np.testing.assert_allclose(compiled.forward(x), reference.forward(x), rtol=1e-4, atol=1e-5)
    for _ in range(2):
        np.testing.assert_allclose(compiled.train_step(x, y), reference.train_step(x, y), rtol=1e-4)
    # Adam moves a weight by about lr whatever the size of its gradient, so where the gradient is
    # rounding noise (about 0) float32 and the reference may step apart by up to lr: 0.1 lr allowed
    atol = 0.1 * compiled.program.recipe["optimizer"]["lr"]
    for name, value in reference.params.items():
        np.testing.assert_allclose(compiled.params[name], value, rtol=1e-3, atol=max(atol, 1e-5), err_msg=name)
