"""Whole models against PyTorch: the same parameters and batch give the same loss, gradients,
logits and optimizer steps (float32 on both sides; error measured relative to the largest
magnitude of each tensor)."""
import numpy as np
import pytest

import odc
from tests.oracle import rel_err

LENET = """
model LeNet5(classes = 47):
    input image: f32[N, 1, 28, 28]
    x = relu(conv2d(image, out=6, kernel=5, pad=2))
    x = maxpool2d(x, 2)
    x = relu(conv2d(x, out=16, kernel=5))
    x: f32[N, 16, 5, 5] = maxpool2d(x, 2)
    x = flatten(x)
    x = relu(dense(x, 120))
    x = relu(dense(x, 84))
    return dense(x, classes)
"""

STRIDED = """
model Strided():
    input image: f32[N, 3, 11, 11]
    x = tanh(conv2d(image, out=4, kernel=3, stride=2, pad=1))
    x = avgpool2d(x, 3, stride=2)
    x = sigmoid(conv2d(x, out=5, kernel=2, bias=false))
    x = maxpool2d(x, 1)
    return dense(flatten(x), 7)
"""

EXPLICIT = """
model Explicit(hidden = 9):
    input image: f32[N, 1, 6, 6]
    param w: f32[36, hidden] = normal(0.2)
    param b: f32[hidden] = uniform(-0.1, 0.1)
    param v: f32[hidden, 5] = xavier
    h = tanh(flatten(image) @ w + b)
    h = h * sigmoid(h) - mean(h, axis=0)
    return h @ v + (h * h) @ v
"""

NORM = """
model Norm():
    input image: f32[N, 2, 9, 9]
    x = conv2d(image, out=4, kernel=3, pad=1, bias=false)  # batchnorm would cancel a bias
    x = relu(batchnorm2d(x))
    x = maxpool2d(x, 3, stride=2)
    x = sum(abs(x - 0.5), axis=3)
    x = reshape(x, [N, 16])
    return log_softmax(dense(x, 6))
"""


def lenet(F, p, x):
    x = F.max_pool2d(F.relu(F.conv2d(x, p["conv2d1.weight"], p["conv2d1.bias"], padding=2)), 2)
    x = F.max_pool2d(F.relu(F.conv2d(x, p["conv2d2.weight"], p["conv2d2.bias"])), 2).flatten(1)
    x = F.relu(F.linear(x, p["dense1.weight"], p["dense1.bias"]))
    x = F.relu(F.linear(x, p["dense2.weight"], p["dense2.bias"]))
    return F.linear(x, p["dense3.weight"], p["dense3.bias"])


def strided(F, p, x):
    x = F.avg_pool2d(F.conv2d(x, p["conv2d1.weight"], p["conv2d1.bias"], stride=2, padding=1).tanh(), 3, 2)
    x = F.max_pool2d(F.conv2d(x, p["conv2d2.weight"]).sigmoid(), 1)
    return F.linear(x.flatten(1), p["dense1.weight"], p["dense1.bias"])


def explicit(F, p, x):
    h = (x.flatten(1) @ p["w"] + p["b"]).tanh()
    h = h * h.sigmoid() - h.mean(0)
    return h @ p["v"] + (h * h) @ p["v"]


def norm(F, p, x, stats=(None, None), training=True):
    """`stats`: running mean and variance, updated in place when training."""
    x = F.conv2d(x, p["conv2d1.weight"], padding=1)
    x = F.batch_norm(x, *stats, p["batchnorm2d1.weight"], p["batchnorm2d1.bias"], training=training,
                     momentum=0.1, eps=1e-5)
    x = F.max_pool2d(F.relu(x), 3, 2)
    x = (x - 0.5).abs().sum(3).reshape(x.shape[0], 16)
    return F.log_softmax(F.linear(x, p["dense1.weight"], p["dense1.bias"]), dim=-1)


MODELS = {"lenet5": (LENET, lenet, (1, 28, 28), 47), "strided": (STRIDED, strided, (3, 11, 11), 7),
          "explicit": (EXPLICIT, explicit, (1, 6, 6), 5), "norm": (NORM, norm, (2, 9, 9), 6)}



def load(tmp_path, executor, name, loss="cross_entropy", optimizer=None):
    src, ref, shape, classes = MODELS[name]
    path = tmp_path / f"{name}.od"
    path.write_text(src)
    prog = odc.load(path)
    prog.recipe["loss"] = loss
    if optimizer:
        prog.recipe["optimizer"] = optimizer
    return prog.compile(executor=executor, seed=3), ref, shape, classes


def batch(shape, classes, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, classes, n)




def torch_params(torch, model):
    return {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}


def torch_loss(torch, ref, p, x, y, classes, loss):
    F = torch.nn.functional
    logits = ref(F, p, torch.tensor(x))
    if loss == "mse":
        return F.mse_loss(logits, F.one_hot(torch.tensor(y), classes).float())
    return F.cross_entropy(logits, torch.tensor(y))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_loss_and_gradients(torch, tmp_path, executor, name, loss):
    model, ref, shape, classes = load(tmp_path, executor, name, loss)
    x, y = batch(shape, classes, 5)
    value, grads = model.loss_and_grads(x, y)
    p = torch_params(torch, model)
    expected = torch_loss(torch, ref, p, x, y, classes, loss)
    expected.backward()
    assert list(grads) == list(p)
    assert rel_err(value, expected.item()) <= 1e-5
    for k, g in grads.items():
        assert g.shape == tuple(p[k].shape)
        assert rel_err(g, p[k].grad.numpy()) <= 1e-4, k


@pytest.mark.parametrize("name", ["lenet5", "strided"])
def test_forward_any_batch_size(torch, tmp_path, executor, name):
    model, ref, shape, classes = load(tmp_path, executor, name)
    p = torch_params(torch, model)
    for n in (1, 3, 8):
        x, _ = batch(shape, classes, n, seed=n)
        logits = model.forward(x)
        assert logits.shape == (n, classes)
        assert rel_err(logits, ref(torch.nn.functional, p, torch.tensor(x)).detach().numpy()) <= 1e-5


def test_batchnorm_keeps_running_statistics_for_inference(torch, tmp_path, executor):
    """Training steps update the running mean and (unbiased) variance as PyTorch does; forward
    normalises with them, as PyTorch's eval mode."""
    model, ref, shape, classes = load(tmp_path, executor, "norm", optimizer={"name": "sgd", "lr": 0.1})
    assert list(model.state) == ["batchnorm2d1.running_mean", "batchnorm2d1.running_var"]
    p = torch_params(torch, model)
    stats = (torch.zeros(4), torch.ones(4))
    F = torch.nn.functional
    x, _ = batch(shape, classes, 3, seed=9)
    assert rel_err(model.forward(x), ref(F, p, torch.tensor(x), stats, training=False).detach().numpy()) <= 1e-5
    torch_opt = torch.optim.SGD(list(p.values()), lr=0.1)
    for step in range(3):
        xs, ys = batch(shape, classes, 6, seed=step)
        model.train_step(xs, ys)
        torch_opt.zero_grad()
        F.cross_entropy(ref(F, p, torch.tensor(xs), stats), torch.tensor(ys)).backward()
        torch_opt.step()
    assert rel_err(model.state["batchnorm2d1.running_mean"], stats[0].numpy()) <= 1e-5
    assert rel_err(model.state["batchnorm2d1.running_var"], stats[1].numpy()) <= 1e-5
    assert rel_err(model.forward(x), ref(F, p, torch.tensor(x), stats, training=False).detach().numpy()) <= 1e-4


def test_mse_with_float_targets(torch, tmp_path, executor):
    model, ref, shape, classes = load(tmp_path, executor, "explicit", "mse")
    x, _ = batch(shape, classes, 4)
    target = np.random.default_rng(1).standard_normal((4, classes)).astype(np.float32)
    value, grads = model.loss_and_grads(x, target)
    p = torch_params(torch, model)
    expected = torch.nn.functional.mse_loss(ref(torch.nn.functional, p, torch.tensor(x)), torch.tensor(target))
    expected.backward()
    assert rel_err(value, expected.item()) <= 1e-5
    for k, g in grads.items():
        assert rel_err(g, p[k].grad.numpy()) <= 1e-4, k


OPTIMIZERS = {
    "sgd-momentum": ({"name": "sgd", "lr": 0.1, "momentum": 0.9},
                     lambda t, ps: t.optim.SGD(ps, lr=0.1, momentum=0.9)),
    "sgd-nesterov-decay": ({"name": "sgd", "lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
                           lambda t, ps: t.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    "adam": ({"name": "adam", "lr": 0.01}, lambda t, ps: t.optim.Adam(ps, lr=0.01)),
    "adam-decay": ({"name": "adam", "lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1},
                   lambda t, ps: t.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": ({"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
              lambda t, ps: t.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("name,opt", [("strided", o) for o in OPTIMIZERS] + [("lenet5", "sgd-momentum"),
                                                                             ("explicit", "adamw")])
def test_optimizer_steps(torch, tmp_path, executor, name, opt):
    spec, make = OPTIMIZERS[opt]
    model, ref, shape, classes = load(tmp_path, executor, name, optimizer=spec)
    p = torch_params(torch, model)
    torch_opt = make(torch, list(p.values()))
    for step in range(3):
        x, y = batch(shape, classes, 4, seed=step)
        value = model.train_step(x, y)
        torch_opt.zero_grad()
        expected = torch_loss(torch, ref, p, x, y, classes, "cross_entropy")
        expected.backward()
        torch_opt.step()
        assert rel_err(value, expected.item()) <= 1e-5
    for k, v in model.params.items():
        assert rel_err(v, p[k].detach().numpy()) <= 1e-4, k
