"""Every elementwise built-in against torch.nn.functional: values and gradients, at the kinks,
thresholds and ties too (where finite differences cannot judge), on the compiled code and on the
numpy interpreter. A model `act(image * w)` with w = ones gives each op the exact test values, and
the gradient of w is the op's derivative times the loss gradient."""
import numpy as np
import pytest

import odc
from odc.ir import interp

F = 37  # not a multiple of a vector width
# kinks, thresholds and bounds of the ops below, then random values
SPECIAL = [0.0, -3.0, 3.0, 6.0, -1.0, 1.0, 20.0, -0.5, 0.7, -0.3, 0.3, 25.0, -25.0, 1e-4, -1e-4]

CASES = {  # .od expression of z = image * w -> the same in torch
    "relu6(z)": lambda t, z: t.nn.functional.relu6(z),
    "leaky_relu(z)": lambda t, z: t.nn.functional.leaky_relu(z),
    "leaky_relu(z, slope=0.2)": lambda t, z: t.nn.functional.leaky_relu(z, 0.2),
    "elu(z)": lambda t, z: t.nn.functional.elu(z),
    "elu(z, alpha=0.5)": lambda t, z: t.nn.functional.elu(z, 0.5),
    "selu(z)": lambda t, z: t.nn.functional.selu(z),
    "gelu(z)": lambda t, z: t.nn.functional.gelu(z),
    'gelu(z, approximate="tanh")': lambda t, z: t.nn.functional.gelu(z, approximate="tanh"),
    "silu(z)": lambda t, z: t.nn.functional.silu(z),
    "softplus(z)": lambda t, z: t.nn.functional.softplus(z),
    "mish(z)": lambda t, z: t.nn.functional.mish(z),
    "hardtanh(z)": lambda t, z: t.nn.functional.hardtanh(z),
    "hardtanh(z, lo=-0.5, hi=0.7)": lambda t, z: t.nn.functional.hardtanh(z, -0.5, 0.7),
    "hardsigmoid(z)": lambda t, z: t.nn.functional.hardsigmoid(z),
    "hardswish(z)": lambda t, z: t.nn.functional.hardswish(z),
    "clip(z, -0.3, 0.3)": lambda t, z: t.clamp(z, -0.3, 0.3),
    "erf(z)": lambda t, z: t.erf(z),
    "neg(z)": lambda t, z: -z,
    "relu(z)": lambda t, z: t.relu(z),
    "abs(z)": lambda t, z: t.abs(z),
    "tanh(z)": lambda t, z: t.tanh(z),
    "sigmoid(z)": lambda t, z: t.sigmoid(z),
    "maximum(z, relu(image))": lambda t, z: t.maximum(z, t.relu(z.detach())),
    "minimum(z, relu(image))": lambda t, z: t.minimum(z, t.relu(z.detach())),
    "maximum(z, 0.5 * image)": lambda t, z: t.maximum(z, 0.5 * z.detach()),
    "pow(z, 3)": lambda t, z: t.pow(z, 3),
    "pow(abs(z) + 0.5, 2.5)": lambda t, z: t.pow(t.abs(z) + 0.5, 2.5),
    "pow(z, 0)": lambda t, z: t.pow(z, 0),
}


def source(expr: str) -> str:
    return f"""
model Act():
    input image: f32[N, {F}]
    param w: f32[{F}] = ones
    z = image * w
    return {expr}
"""


@pytest.mark.parametrize("executor", ["compiled", "interpreter"])
def test_elementwise_ops_equal_torch(torch, tmp_path, executor):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, F)) * 4).astype(np.float32)
    x[:, :len(SPECIAL)] = SPECIAL
    y = rng.integers(0, F, 6)
    for expr, ref in CASES.items():
        path = tmp_path / "act.od"
        path.write_text(source(expr))
        prog = odc.load(path)
        model = prog.compile(executor=interp.compile_graph) if executor == "interpreter" else prog.compile()
        loss, grads = model.loss_and_grads(x, y)
        w = torch.ones(F, requires_grad=True)
        out = ref(torch, torch.from_numpy(x) * w)
        want = torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
        want.backward()
        np.testing.assert_allclose(model.forward(x), out.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=expr)
        np.testing.assert_allclose(loss, want.item(), rtol=1e-5, err_msg=expr)
        np.testing.assert_allclose(grads["w"], w.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=expr)


@pytest.mark.parametrize("text, message", [
    ("hardtanh(z, lo=1, hi=1)", "hardtanh needs lo < hi, got lo=1 and hi=1"),
    ("clip(z, 2, 1)", "clip needs lo <= hi, got lo=2 and hi=1"),
    ('gelu(z, approximate="fast")', 'gelu: approximate must be one of "none", "tanh", got the string "fast"'),
    ("leaky_relu(z, slope=true)", "leaky_relu: slope must be a number, got true"),
    ("pow(z)", "pow is missing argument 'exponent'"),
    ("maximum(z, 1)", "maximum expects a tensor for b, got the number 1"),
    ("maximum(z, sum(image, axis=1))", "incompatible shapes for broadcasting in maximum: f32[N, 37] and f32[N]"),
])
def test_bad_arguments_are_errors_at_the_call(tmp_path, text, message):
    path = tmp_path / "bad.od"
    path.write_text(source(text))
    with pytest.raises(odc.CompileError) as err:
        odc.load(path)
    d = err.value.diagnostics[0]
    assert d.span.line == 6 and message in d.message
