"""Lowering to the graph IR: the graphs of the shipped models compute what the same networks
written in PyTorch compute, with PyTorch's parameter layouts, order and default initialisation;
every node's type is the shape numpy produces; defs, hyper-parameters, operators and recipes."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from odc.errors import OdcError
from odc.frontend import load_graph, parse_file, parse_source
from odc.ir import ops
from odc.ir.printer import print_graph
from odc.ir.textparse import parse_graph

MODELS = Path(__file__).parents[2] / "models"
LENET = (MODELS / "lenet5.od").read_text()


def evaluate(g, feeds: dict, n: int) -> np.ndarray:
    """Run the graph node by node with the numpy references, checking that every value has the
    shape of its node's type (batch symbol N = n); returns the logits."""
    values = {}
    for node in g.nodes():
        if node.op in ("input", "param"):
            values[node.id] = feeds[node.name]
        else:
            values[node.id] = np.asarray(ops.evaluate(node.op, [values[a] for a in node.args], node.attrs))
        assert values[node.id].shape == node.type.substitute({"N": n}).shape, (node.op, node.span)
    return values[g.output("logits")]


def torch_lenet(classes):
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, classes))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.Tanh(),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten())
        self.scale = nn.Parameter(torch.ones(10, dtype=torch.float64))
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(self.features(x)) * self.scale

    def ordered(self):  # in the order the .od file creates them
        return list(self.features.parameters()) + [self.scale] + list(self.fc.parameters())


def vgg_block(cin, c):
    return [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]


TORCH = {  # model file -> (the network in PyTorch, its parameters in .od order)
    "lenet5.od": lambda: (lambda m: (m, list(m.parameters())))(torch_lenet(47)),
    "mlp.od": lambda: (lambda m: (m, list(m.parameters())))(nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10)).eval()),
    "smallcnn.od": lambda: (lambda m: (m, m.ordered()))(SmallCNN()),
    "vgg_letters.od": lambda: (lambda m: (m, list(m.parameters())))(nn.Sequential(
        *vgg_block(1, 16), *vgg_block(16, 32), nn.Flatten(), nn.Linear(1568, 128), nn.ReLU(),
        nn.Linear(128, 26)).train()),  # batch norm with batch statistics, as odc's batchnorm2d
    "mnist_example.od": lambda: (lambda m: (m, list(m.parameters())))(nn.Sequential(  # pytorch/examples' MNIST net
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 47),
        nn.LogSoftmax(dim=1)).eval()),
}


def test_every_shipped_model_has_a_pytorch_twin():
    """Here (the EMNIST models, in float64 through the interpreter) or in tests/test_zoo.py."""
    from tests.test_zoo import ZOO
    assert sorted(p.name for p in MODELS.glob("*.od")) == sorted([*TORCH, *ZOO])


@pytest.mark.parametrize("name", sorted(TORCH))
def test_models_compute_what_pytorch_computes(name):
    torch.manual_seed(0)
    net, tparams = TORCH[name]()
    net = net.double()
    g = load_graph(MODELS / name)
    params = g.params()
    assert [tuple(p.type.shape) for p in params] == [tuple(t.shape) for t in tparams]
    x = np.random.default_rng(0).random((3, 1, 28, 28))
    feeds = {g.inputs()[0].name: x, **{p.name: t.detach().numpy() for p, t in zip(params, tparams)}}
    ours = evaluate(g, feeds, 3)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_lenet5_parameters_are_named_ordered_and_counted_as_pytorch_counts():
    g = load_graph(MODELS / "lenet5.od")
    assert [p.name for p in g.params()] == [f"{layer}.{role}" for layer in
                                            ("conv2d1", "conv2d2", "dense1", "dense2", "dense3")
                                            for role in ("weight", "bias")]
    assert sum(p.type.numel for p in g.params()) == sum(t.numel() for t in torch_lenet(47).parameters())
    # with 10 classes: LeNet-5's classic 61,706 parameters
    ten = parse_source(LENET.split("train")[0]).lower("LeNet5", {"classes": 10})
    assert sum(p.type.numel for p in ten.params()) == sum(t.numel() for t in torch_lenet(10).parameters()) == 61706
    assert ten.meta["hyper"] == {"classes": 10} and g.meta["hyper"] == {"classes": 47}


def test_layer_parameters_carry_pytorch_default_initialisation():
    torch.manual_seed(0)
    g = load_graph(MODELS / "lenet5.od")
    layers = [m for m in torch_lenet(47) if isinstance(m, (nn.Conv2d, nn.Linear))]
    params = g.params()
    for i, layer in enumerate(layers):
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(layer.weight)
        for p, t in zip(params[2 * i:2 * i + 2], (layer.weight, layer.bias)):
            assert p.attrs == {"init": "uniform", "lo": pytest.approx(-1 / math.sqrt(fan_in)),
                               "hi": pytest.approx(1 / math.sqrt(fan_in))}
            assert t.abs().max().item() <= p.attrs["hi"]  # PyTorch draws inside these bounds...
        assert layer.weight.abs().max().item() > 0.95 * params[2 * i].attrs["hi"]  # ...and fills them


def test_nodes_carry_the_span_of_their_expression():
    g = load_graph(MODELS / "lenet5.od")
    conv, relu = [n for n in g.nodes() if n.op in ("conv2d", "relu")][:2]
    line = LENET.splitlines()[conv.span.line - 1]
    assert line[conv.span.col - 1:conv.span.end_col - 1] == "conv2d(image, out=6, kernel=5, pad=2)"
    assert line[relu.span.col - 1:relu.span.end_col - 1] == "relu(conv2d(image, out=6, kernel=5, pad=2))"
    assert g.params()[0].span == conv.span
    flat = next(n for n in g.nodes() if n.op == "reshape")
    assert flat.attrs == {"shape": ["N", 400]}


def test_inlined_defs_get_their_own_parameters():
    src = """
def block(x, c):
    param gain: f32[c] = ones
    y = conv2d(x, out=c, kernel=3, pad=1)
    return y * reshape(gain, [c, 1, 1])

model M():
    input image: f32[N, 1, 8, 8]
    x = block(image, 2)
    x = block(x, 3)
    return dense(flatten(x), 4)
"""
    g = parse_source(src).models["M"]
    assert [(p.name, p.type.shape) for p in g.params()] == [
        ("block1.gain", (2,)), ("conv2d1.weight", (2, 1, 3, 3)), ("conv2d1.bias", (2,)),
        ("block2.gain", (3,)), ("conv2d2.weight", (3, 2, 3, 3)), ("conv2d2.bias", (3,)),
        ("dense1.weight", (4, 192)), ("dense1.bias", (4,))]
    # each call computes with its own parameters: compare with the same network in numpy
    rng = np.random.default_rng(1)
    feeds = {p.name: rng.standard_normal(p.type.shape) for p in g.params()}
    x = rng.standard_normal((2, 1, 8, 8))
    feeds["image"] = x
    for k in (1, 2):
        w, b, gain = feeds[f"conv2d{k}.weight"], feeds[f"conv2d{k}.bias"], feeds[f"block{k}.gain"]
        x = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                       padding=1).numpy() * gain[:, None, None]
    expected = x.reshape(2, -1) @ feeds["dense1.weight"].T + feeds["dense1.bias"]
    np.testing.assert_allclose(evaluate(g, feeds, 2), expected, rtol=1e-10)


def test_operators_numbers_and_elementwise_ops_compute_as_numpy():
    src = """
model M(k = 3):
    input a: f32[N, 3]
    param b: f32[3, 4] = normal(1)
    h = (a * 2 - 1) / k + -a
    h = 1 - h @ b @ transpose(b, [1, 0]) + sum(a, 0, ) * 0
    e = exp(tanh(h)) + sigmoid(h) * abs(h) + sqrt(abs(h)) + log(abs(h) + 1)
    s = softmax(e) + log_softmax(e, axis=0) + relu(e) / max(e, 0) - mean(e)
    return matmul(s, b) + reshape(sum(a, [0, 1]), [1, 1])
"""
    g = parse_source(src).models["M"]
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((3, 4))
    h = (a * 2 - 1) / 3 + -a
    h = 1 - h @ b @ b.T + a.sum(0) * 0
    e = np.exp(np.tanh(h)) + 1 / (1 + np.exp(-h)) * np.abs(h) + np.sqrt(np.abs(h)) + np.log(np.abs(h) + 1)
    soft = np.exp(e) / np.exp(e).sum(-1, keepdims=True)
    logsoft0 = e - np.log(np.exp(e).sum(0, keepdims=True))
    s = soft + logsoft0 + np.maximum(e, 0) / e.max(0) - e.mean()
    expected = s @ b + a.sum()
    np.testing.assert_allclose(evaluate(g, {"a": a, "b": b}, 5), expected, rtol=1e-10)
    counts = {}
    for n in g.nodes():
        counts[n.op] = counts.get(n.op, 0) + 1
    assert counts["const"] == 6 and counts["neg"] == 1 and counts["matmul"] == 3


def test_a_symbol_bound_by_an_annotation_is_a_size_afterwards():
    src = """
model M():
    input image: f32[B, 2, 3]
    x: f32[B, C] = flatten(image)
    return dense(x, C) + reshape(x, [B, C])
"""
    g = parse_source(src).models["M"]
    assert g.params()[0].type.shape == (6, 6)
    assert g.type(g.output("logits")).shape == ("B", 6)


def test_explicit_parameters_keep_their_names_and_initialisers():
    src = """
model M(std = 0.02):
    input x: f32[N, 4]
    param a: f32[4] = zeros
    param b: f32[4] = ones
    param c: f32[4] = normal(std)
    param d: f32[4] = uniform(-0.5, 1)
    param e: f32[3, 4] = kaiming
    param f: f32[4, 3] = xavier()
    return x + a + c + d + x @ f @ e
"""
    g = parse_source(src).models["M"]
    assert [(p.name, str(p.type), p.attrs) for p in g.params()] == [
        ("a", "f32[4]", {"init": "zeros"}), ("b", "f32[4]", {"init": "ones"}),
        ("c", "f32[4]", {"init": "normal", "std": 0.02}), ("d", "f32[4]", {"init": "uniform", "lo": -0.5, "hi": 1.0}),
        ("e", "f32[3, 4]", {"init": "kaiming"}), ("f", "f32[4, 3]", {"init": "xavier"})]


def test_the_recipe_is_on_the_module_and_on_the_graph():
    module = parse_file(MODELS / "lenet5.od")
    r = module.recipes["LeNet5"]
    assert (r.data, r.classes, r.data_text) == (("emnist", "balanced"), 47, 'emnist("balanced")')
    assert module.models["LeNet5"].meta["recipe"] == r.as_dict() == {
        "data": ["emnist", "balanced"], "loss": "cross_entropy",
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "dampening": 0.0, "nesterov": False,
                      "weight_decay": 0.0},
        "epochs": 10, "batch": 32, "seed": 0}
    bare = parse_source(LENET.split("train")[0]).models["LeNet5"]
    assert "recipe" not in bare.meta


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizer_defaults_are_pytorchs(name, cls):
    src = f"model M():\n    input x: f32[N, 3]\n    return x\n\ntrain M:\n    data = idx(\"d\")\n    optimizer = {name}(0.5)\n"
    args = parse_source(src).recipes["M"].optimizer_args
    d = cls([torch.zeros(1, requires_grad=True)], lr=0.5).defaults
    torch_args = {"lr": d["lr"], "weight_decay": d["weight_decay"]}
    if name == "sgd":
        torch_args.update(momentum=d["momentum"], dampening=d["dampening"], nesterov=d["nesterov"])
    else:
        torch_args.update(beta1=d["betas"][0], beta2=d["betas"][1], eps=d["eps"])
    assert args == torch_args


def test_printed_graphs_of_the_models_parse_back():
    for path in MODELS.glob("*.od"):
        text = print_graph(load_graph(path))
        assert print_graph(parse_graph(text)) == text


def test_the_model_to_use_is_picked_or_named():
    two = LENET + LENET.split("train")[0].replace("LeNet5", "Other")
    module = parse_source(two)
    assert module.pick() == "LeNet5"  # the one with a train block
    assert module.lower("Other").name == "Other"
    no_recipes = parse_source(two.replace("train LeNet5", "train Other"))
    assert no_recipes.pick() == "Other"
    both = parse_source(LENET.split("train")[0] + LENET.split("train")[0].replace("LeNet5", "Other"))
    with pytest.raises(OdcError, match="2 models"):
        both.pick()
