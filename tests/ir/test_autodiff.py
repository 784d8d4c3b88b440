"""The autodiff pass on hand-built graphs: structure of the loss-and-gradients graph, leaves that
are never merged, accumulation over several uses, dropout masks; values against PyTorch."""
import numpy as np
import pytest

from odc.errors import CompileError, OdcError, SourceFile, Span
from odc.ir.graph import Graph, TensorType
from odc.ir.passes import autodiff, train_mode
from odc.ir.verify import verify
from odc.ir.ops import Emit
from odc.ir import interp


def mlp(*, twice=False, twin=False, unused=False, dropout=None):
    """logits = x @ A (@ A again if `twice`) (+ sigmoid(x @ B) if `twin`), maybe with dropout."""
    g = Graph("M")
    x = g.add("input", type=TensorType("f32", ("N", 3)), name="x")
    a = g.add("param", type=TensorType("f32", (3, 3)), name="A")
    b = g.add("param", type=TensorType("f32", (3, 3)), name="B") if twin else None
    if unused:
        g.add("param", type=TensorType("f32", (2,)), name="unused")
    t = TensorType("f32", ("N", 3))
    h = g.add("matmul", (x, a), type=t)
    if twice:
        h = g.add("matmul", (h, a), type=t)
    if twin:
        h = g.add("add", (h, g.add("sigmoid", (g.add("matmul", (x, b), type=t),), type=t)), type=t)
    if dropout is not None:
        h = g.add("dropout", (h,), {"p": dropout}, type=t)
    g.outputs = [("logits", h)]
    return g


def grads(g, **options):
    """The autodiff pass on the training form of `g` (the order of the pipelines)."""
    return autodiff.run(train_mode.run(g), **options)


def feeds(**params):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((4, 3)), "label": np.array([0, 2, 1, 2]), **params}


def test_outputs_and_signature():
    g = verify(grads(mlp(twin=True, unused=True, dropout=0.1)))
    assert [n for n, _ in g.outputs] == ["loss", "logits", "grad.A", "grad.B", "grad.unused"]
    assert [(a.op, a.name, str(a.type)) for a in g.args_of()] == [
        ("input", "x", "f32[N, 3]"), ("param", "A", "f32[3, 3]"), ("param", "B", "f32[3, 3]"),
        ("param", "unused", "f32[2]"), ("input", "dropout1.mask", "f32[N, 3]"), ("input", "label", "i32[N]")]
    assert g.type(g.output("loss")) == TensorType("f32", ())


def test_param_used_twice_gets_the_sum_of_both_uses(torch):
    g = grads(mlp(twice=True))
    assert sum(1 for n in g.nodes() if n.op == "add") == 1  # the two contributions to grad.A
    a = np.random.default_rng(1).standard_normal((3, 3))
    out = interp.run(g, feeds(A=a), np.float64)
    ta = torch.tensor(a, requires_grad=True)
    f = feeds()
    loss = torch.nn.functional.cross_entropy(torch.tensor(f["x"]) @ ta @ ta, torch.tensor(f["label"]))
    loss.backward()
    np.testing.assert_allclose(out["loss"], loss.item(), rtol=1e-12)
    np.testing.assert_allclose(out["grad.A"], ta.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_two_params_with_equal_values_stay_two_leaves(torch):
    g = grads(mlp(twin=True))
    assert g.output("grad.A") != g.output("grad.B")
    same = np.random.default_rng(2).standard_normal((3, 3))
    out = interp.run(g, feeds(A=same, B=same.copy()), np.float64)
    ta, tb = (torch.tensor(same, requires_grad=True) for _ in range(2))
    x = torch.tensor(feeds()["x"])
    loss = torch.nn.functional.cross_entropy(x @ ta + torch.sigmoid(x @ tb), torch.tensor(feeds()["label"]))
    loss.backward()
    np.testing.assert_allclose(out["grad.A"], ta.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["grad.B"], tb.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert not np.allclose(out["grad.A"], out["grad.B"])


def test_a_param_the_loss_ignores_gets_a_zero_gradient():
    g = grads(mlp(unused=True))
    out = interp.run(g, feeds(A=np.eye(3), unused=np.ones(2)), np.float64)
    np.testing.assert_array_equal(out["grad.unused"], np.zeros(2))


def test_dropout_becomes_a_mask_input(torch):
    g = grads(mlp(dropout=0.25))
    assert not any(n.op == "dropout" for n in g.nodes())
    mask = g.inputs()[1]
    assert (mask.name, mask.attrs, str(mask.type)) == ("dropout1.mask", {"dropout": 0.25}, "f32[N, 3]")
    m = np.array([[0, 4 / 3, 4 / 3]] * 4)
    a = np.random.default_rng(3).standard_normal((3, 3))
    out = interp.run(g, {**feeds(A=a), "dropout1.mask": m}, np.float64)
    ta = torch.tensor(a, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(torch.tensor(feeds()["x"]) @ ta * torch.tensor(m),
                                             torch.tensor(feeds()["label"]))
    loss.backward()
    np.testing.assert_allclose(out["loss"], loss.item(), rtol=1e-12)
    np.testing.assert_allclose(out["grad.A"], ta.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(out["grad.A"][:, 0], 0)  # the dropped column learns nothing


def test_mse_against_one_hot_labels(torch):
    g = grads(mlp(), loss="mse")
    assert any(n.op == "one_hot" for n in g.nodes())
    a = np.random.default_rng(4).standard_normal((3, 3))
    out = interp.run(g, feeds(A=a), np.float64)
    ta = torch.tensor(a, requires_grad=True)
    target = torch.nn.functional.one_hot(torch.tensor(feeds()["label"]), 3).double()
    loss = torch.nn.functional.mse_loss(torch.tensor(feeds()["x"]) @ ta, target)
    loss.backward()
    np.testing.assert_allclose(out["loss"], loss.item(), rtol=1e-12)
    np.testing.assert_allclose(out["grad.A"], ta.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    g = grads(mlp())
    out = interp.run(g, {"x": np.array([[1e4, -1e4, 0.0]]), "label": np.array([1]), "A": np.eye(3)},
                     np.float32)
    assert np.isfinite(out["loss"]) and np.all(np.isfinite(out["grad.A"]))
    np.testing.assert_allclose(out["loss"], 2e4, rtol=1e-6)


def test_unknown_loss():
    with pytest.raises(OdcError, match="unknown loss 'hinge'; odc knows cross_entropy, mse"):
        grads(mlp(), loss="hinge")


@pytest.mark.parametrize("logits", [("f32", ("N",)), ("i32", ("N", 3)), ("f32", ("N", "M"))])
def test_logits_that_are_not_float_batch_by_classes_are_a_compile_error_at_their_node(logits):
    """The front end rejects such models; a graph made otherwise gets a located error, not a
    traceback."""
    g, t = Graph("M"), TensorType(*logits)
    span = Span(SourceFile("m.od", "model M():\n    return x\n"), 2, 12, 2, 13)
    x = g.add("input", type=t, name="x", span=span)
    g.outputs = [("logits", g.add("add", (x, x), type=t, span=span))]
    with pytest.raises(CompileError) as e:
        grads(g)
    assert (e.value.path, e.value.line, e.value.col) == ("m.od", 2, 12)
    assert e.value.first.message == (f"cross_entropy needs float logits [batch, classes] with a known number of "
                                     f"classes; the model returns {t}")


def test_emit_reports_a_type_error_at_its_span():
    g = Graph("M")
    a = g.add("input", type=TensorType("f32", ("N", 3)), name="a")
    b = g.add("input", type=TensorType("f32", (4,)), name="b")
    span = Span(SourceFile("m.od", "x\n"), 1, 1, 1, 2)
    with pytest.raises(CompileError) as e:
        Emit(g, span)("add", a, b)
    assert (e.value.line, e.value.col) == (1, 1)
    assert e.value.first.message == "incompatible shapes for broadcasting in add: f32[N, 3] and f32[4]"
