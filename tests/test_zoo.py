"""The model zoo (models/*.od) against PyTorch twins written independently with torch.nn: with the
same parameters, odc's compiled code gives the loss and every gradient of a training batch
(batch norms on batch statistics) and the logits in evaluation mode (running statistics) of the
twin, to 1e-4 of each tensor's largest magnitude. Also each model's parameter count, against the
published one where there is one."""
from pathlib import Path

import numpy as np
import pytest

import odc
from odc.errors import CompileError
from odc.frontend import parse_file

MODELS = Path(__file__).parent.parent / "models"


def twins(torch):
    nn = torch.nn

    class ResNet20(nn.Module):
        """He et al. 2016, section 4.2, option A shortcuts."""

        class Block(nn.Module):
            def __init__(self, cin, c, stride):
                super().__init__()
                self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(c)
                self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(c)
                self.pad = (c - cin) // 2

            def forward(self, x):
                y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
                s = x if not self.pad else nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
                return torch.relu(y + s)

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            blocks, cin = [], 16
            for c in (16, 32, 64):
                for i in range(3):
                    blocks.append(self.Block(cin, c, 2 if i == 0 and c != 16 else 1))
                    cin = c
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = self.blocks(torch.relu(self.bn(self.conv(x))))
            return self.fc(x.mean((2, 3)))

    def vgg11():
        layers, cin = [], 3
        for c in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
            if c == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
                cin = c
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))

    def alexnet(hidden=1024):
        return nn.Sequential(
            nn.Conv2d(3, 64, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(1024, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    class Mixer(nn.Module):
        class Block(nn.Module):
            def __init__(self, dim):
                super().__init__()
                self.norm1 = nn.LayerNorm(dim)
                self.tokens = nn.Sequential(nn.Linear(49, 98), nn.GELU(), nn.Linear(98, 49))
                self.norm2 = nn.LayerNorm(dim)
                self.channels = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

            def forward(self, x):
                x = x + self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
                return x + self.channels(self.norm2(x))

        def __init__(self, dim=64):
            super().__init__()
            self.embed = nn.Linear(16, dim)
            self.blocks = nn.Sequential(self.Block(dim), self.Block(dim))
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 47)

        def forward(self, x):
            n = x.shape[0]
            patches = x.reshape(n, 7, 4, 7, 4).permute(0, 1, 3, 2, 4).reshape(n, 49, 16)
            return self.head(self.norm(self.blocks(self.embed(patches))).mean(1))

    return {"resnet20.od": (ResNet20, (3, 32, 32), 10), "vgg11.od": (vgg11, (3, 32, 32), 10),
            "alexnet.od": (alexnet, (3, 32, 32), 10), "mixer.od": (Mixer, (1, 28, 28), 47)}


# model file -> (hyper-parameters for the test, published parameter count and tolerance)
ZOO = {"resnet20.od": ({}, (0.27e6, 0.01e6)), "vgg11.od": ({}, (9.23e6, 0.01e6)),
       "alexnet.od": ({"drop": 0}, None), "mixer.od": ({}, None)}


def rel_err(a, b):
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_equals_its_torch_twin(torch, name):
    hypers, _ = ZOO[name]
    make, shape, classes = twins(torch)[name]
    module = parse_file(MODELS / name)
    model = odc.Program(module.lower(None, hypers), module.source).compile(seed=1)  # dropout off: drop = 0
    twin = make()
    params = list(twin.parameters())
    assert [tuple(p.shape) for p in params] == [v.shape for v in model.params.values()]
    with torch.no_grad():
        for p, v in zip(params, model.params.values()):
            p.copy_(torch.from_numpy(v))
    rng = np.random.default_rng(0)
    x = rng.random((4, *shape), dtype=np.float32)
    y = rng.integers(0, classes, 4)
    twin.eval()  # first: a training forward would move the twin's running statistics
    with torch.no_grad():
        assert rel_err(model.forward(x), twin(torch.from_numpy(x)).numpy()) <= 1e-4
    loss, grads = model.loss_and_grads(x, y)
    twin.train()
    expected = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
    expected.backward()
    assert rel_err(loss, expected.item()) <= 1e-4
    # a gradient that is 0 in exact arithmetic (a convolution's bias before a batch norm) is
    # rounding noise on both sides: both must be tiny beside the model's largest gradient
    largest = max(float(np.abs(p.grad.numpy()).max()) for p in params)
    for (k, g), p in zip(grads.items(), params):
        if np.abs(p.grad.numpy()).max() < 1e-5 * largest:
            assert np.abs(g).max() < 1e-5 * largest, k
        else:
            assert rel_err(g, p.grad.numpy()) <= 1e-4, k


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_checks_with_its_published_size(name, capsys):
    from odc.cli import main
    assert main(["check", str(MODELS / name)]) == 0
    out = capsys.readouterr().out
    values = int(out.split("parameters (")[1].split(" values")[0].replace(",", ""))
    published = ZOO[name][1]
    if published:
        assert abs(values - published[0]) <= published[1]


def test_the_original_alexnet_geometry_on_32x32_images_is_a_compile_error():
    """11x11 stride 4, as in the original paper, runs out of pixels by the third pooling."""
    text = (MODELS / "alexnet.od").read_text()
    text = text.replace("conv2d(image, out=64, kernel=3, stride=2, pad=1)", "conv2d(image, out=64, kernel=11, stride=4, pad=2)")
    text = text.replace("maxpool2d(x, 2)", "maxpool2d(x, 3, stride=2)")
    with pytest.raises(CompileError) as err:
        odc.frontend.parse_source(text, "alexnet.od")
    d = err.value.diagnostics[0]
    assert "maxpool2d with kernel 3, stride 2 shrinks a spatial size of 1 to 0" in d.message
    assert d.notes[0].startswith("the image sizes up to here: 32x32 (the input, line ")
