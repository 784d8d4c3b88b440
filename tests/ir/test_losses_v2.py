"""Losses of recipes v2 against torch.nn.functional: cross_entropy with label smoothing and nll
(on log-probabilities), loss and gradients on both executors; their train-block diagnoses."""
import numpy as np
import pytest

import odc
from odc.errors import CompileError
from odc.frontend import parse_source
from odc.ir import interp
from tests.oracle import rel_err

SOURCE = """
model M(classes = 7):
    input image: f32[N, 1, 6, 6]
    x = tanh(conv2d(image, out=3, kernel=3))
    return {head}

train M:
    data = idx("unused")
    loss = {loss}
"""


@pytest.mark.parametrize("executor", [None, interp.compile_graph], ids=["compiled", "interpreter"])
@pytest.mark.parametrize("loss, head, reference", [
    ("cross_entropy(label_smoothing=0.1)", "dense(flatten(x), classes)",
     lambda F, z, y: F.cross_entropy(z, y, label_smoothing=0.1)),
    ("cross_entropy(label_smoothing=1)", "dense(flatten(x), classes)",
     lambda F, z, y: F.cross_entropy(z, y, label_smoothing=1.0)),
    ("nll", "log_softmax(dense(flatten(x), classes))", lambda F, z, y: F.nll_loss(z, y)),
    ("nll", "dense(flatten(x), classes)", lambda F, z, y: F.nll_loss(z, y)),  # any scores
])
def test_loss_and_gradients_equal_torch(torch, tmp_path, executor, loss, head, reference):
    path = tmp_path / "m.od"
    path.write_text(SOURCE.format(loss=loss, head=head))
    model = odc.load(path).compile(executor=executor, seed=2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 1, 6, 6)).astype(np.float32), rng.integers(0, 7, 5)
    value, grads = model.loss_and_grads(x, y)
    F = torch.nn.functional
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in model.params.items()}
    z = F.conv2d(torch.tensor(x, dtype=torch.float64), p["conv2d1.weight"], p["conv2d1.bias"]).tanh()
    z = F.linear(z.flatten(1), p["dense1.weight"], p["dense1.bias"])
    z = z.log_softmax(-1) if head.startswith("log_softmax") else z
    expected = reference(F, z, torch.tensor(y))
    expected.backward()
    assert rel_err(value, expected.item()) <= 1e-5
    for k, g in grads.items():
        assert rel_err(g, p[k].grad.numpy()) <= 1e-4, k


def test_label_smoothing_out_of_range_is_an_error_at_the_argument():
    src = SOURCE.format(loss="cross_entropy(label_smoothing=1.5)", head="dense(flatten(x), classes)")
    with pytest.raises(CompileError) as err:
        parse_source(src, "t.od")
    d = err.value.diagnostics[0]
    line = src.splitlines()[d.span.line - 1]
    assert line[d.span.col - 1:].startswith("1.5")
    assert d.message == "cross_entropy: label_smoothing must be a number in [0, 1], got 1.5"


def test_the_recipe_keeps_the_smoothing_and_nll_takes_no_argument():
    ok = parse_source(SOURCE.format(loss="cross_entropy(label_smoothing=0.2)", head="dense(flatten(x), 7)"), "t.od")
    assert ok.recipes["M"].as_dict()["label_smoothing"] == 0.2
    assert "label_smoothing" not in parse_source(SOURCE.format(loss="nll", head="dense(flatten(x), 7)"),
                                                 "t.od").recipes["M"].as_dict()
    with pytest.raises(CompileError, match="nll takes no argument"):
        parse_source(SOURCE.format(loss="nll(0.1)", head="dense(flatten(x), 7)"), "t.od")
