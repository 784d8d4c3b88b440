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
from tests.oracle import rel_err

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

    def mobilenet():
        def separable(cin, cout, stride):
            return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                    nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        layers, cin = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()], 32
        for cout, stride in [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [
                (1024, 2), (1024, 1)]:
            layers += separable(cin, cout, stride)
            cin = cout
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 10))

    class GoogLeNet(nn.Module):
        @staticmethod
        def conv(cin, c, k):
            return nn.Sequential(nn.Conv2d(cin, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.ReLU())

        class Inception(nn.Module):
            def __init__(self, cin, c1, r3, c3, r5, c5, cp):
                super().__init__()
                conv = GoogLeNet.conv
                self.a = conv(cin, c1, 1)
                self.b = nn.Sequential(conv(cin, r3, 1), conv(r3, c3, 3))
                self.c = nn.Sequential(conv(cin, r5, 1), conv(r5, c5, 5))
                self.d = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(cin, cp, 1))

            def forward(self, x):
                return torch.cat([self.a(x), self.b(x), self.c(x), self.d(x)], 1)

        def __init__(self):
            super().__init__()
            self.stem = self.conv(3, 64, 3)
            self.i1 = self.Inception(64, 32, 48, 64, 8, 16, 16)
            self.i2 = self.Inception(128, 64, 64, 96, 16, 32, 32)
            self.i3 = self.Inception(224, 96, 48, 104, 8, 24, 32)
            self.i4 = self.Inception(256, 128, 80, 160, 16, 32, 64)
            self.fc = nn.Linear(384, 10)

        def forward(self, x):
            pool = nn.functional.max_pool2d
            x = self.i2(self.i1(self.stem(x)))
            x = self.i4(pool(self.i3(pool(x, 3, 2, 1)), 3, 2, 1))
            return self.fc(x.mean((2, 3)))

    def cifar_cnn():
        def conv_bn(cin, c):
            return [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        return nn.Sequential(*conv_bn(3, 32), *conv_bn(32, 32), nn.MaxPool2d(2), *conv_bn(32, 64), *conv_bn(64, 64),
                             nn.MaxPool2d(2), *conv_bn(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))

    return {"resnet20.od": (ResNet20, (3, 32, 32), 10), "mobilenet.od": (mobilenet, (3, 32, 32), 10),
            "cifar_cnn.od": (cifar_cnn, (3, 32, 32), 10),
            "googlenet.od": (GoogLeNet, (3, 32, 32), 10), "vgg11.od": (vgg11, (3, 32, 32), 10),
            "alexnet.od": (alexnet, (3, 32, 32), 10), "mixer.od": (Mixer, (1, 28, 28), 47)}


# model file -> (hyper-parameters for the test, published parameter count and tolerance)
ZOO = {"resnet20.od": ({}, (0.27e6, 0.01e6)), "mobilenet.od": ({}, (3.2e6, 0.05e6)), "googlenet.od": ({}, None), "vgg11.od": ({}, (9.23e6, 0.01e6)),
       "alexnet.od": ({"drop": 0}, None), "mixer.od": ({}, None), "cifar_cnn.od": ({}, None)}




def run_twin(torch, make, params, x, y, dtype, noise=None):
    """The twin in `dtype` with the given parameters: its eval logits, then its training loss and
    gradients (eval first: a training forward moves the running statistics). With `noise` (a
    torch.Generator), every convolution's and linear layer's output in the training pass gets
    Gaussian noise of twice float32's rounding unit (2^-22) times its largest magnitude: the
    size of the error of a float32 sum in another order (numpy's float32 convolutions are up to
    9e-7 of the largest output off, PyTorch's and odc's 1-5e-7)."""
    twin = make().to(dtype)
    with torch.no_grad():
        for p, v in zip(twin.parameters(), params):
            p.copy_(torch.from_numpy(v))
        logits = twin.eval()(torch.from_numpy(x).to(dtype)).double().numpy()
    if noise is not None:
        def perturb(module, inputs, out):
            return out + torch.randn(out.shape, generator=noise, dtype=out.dtype) * 2.0 ** -22 * out.abs().max()
        for m in twin.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.register_forward_hook(perturb)
    loss = torch.nn.functional.cross_entropy(twin.train()(torch.from_numpy(x).to(dtype)), torch.from_numpy(y))
    loss.backward()
    return logits, loss.item(), [p.grad.double().numpy() for p in twin.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_equals_its_torch_twin(torch, name):
    """The truth is the twin in float64. odc's compiled float32 code must be within 1e-4 of it
    (relative to each tensor's largest magnitude), or of the same order as float32 rounding
    moves it (at most 10 times as far as PyTorch's own float32 run, or as the float64 twin with
    rounding-sized noise on its layers' outputs): a batch norm's weight gradient is a sum of
    thousands of terms that cancel to almost 0 (MobileNet's are 1e-4 of its largest gradient; a
    convolution's bias before a batch norm has 0), which no float32 sum gets to 1e-4 (PyTorch's
    are 1e-3 off). The noisy runs stand for sums taken in another order than PyTorch's: a
    network of millions of ReLU inputs has some within 1e-7 of 0 (GoogLeNet's nearest is 2.4e-7
    of its layer's largest on this batch), and where float32 rounding moves one across, the
    gradients downstream of it move by 1e-3, in PyTorch's float32 too once its sums change."""
    hypers, _ = ZOO[name]
    make, shape, classes = twins(torch)[name]
    module = parse_file(MODELS / name)
    g = module.lower(None, hypers)
    # the network alone: without the recipe's normalize and augment, it takes the float images
    g.meta["recipe"] = {k: v for k, v in g.meta["recipe"].items() if k not in ("normalize", "augment")}
    model = odc.Program(g, module.source).compile(seed=1)  # dropout off: drop = 0
    assert [tuple(p.shape) for p in make().parameters()] == [v.shape for v in model.params.values()]
    rng = np.random.default_rng(0)
    x = rng.random((4, *shape), dtype=np.float32)
    y = rng.integers(0, classes, 4)
    logits = model.forward(x)
    loss, grads = model.loss_and_grads(x, y)
    truth = run_twin(torch, make, model.params.values(), x, y, torch.float64)
    torch32 = run_twin(torch, make, model.params.values(), x, y, torch.float32)
    noisy = [run_twin(torch, make, model.params.values(), x, y, torch.float64, torch.Generator().manual_seed(s))
             for s in range(6)]

    def close(ours, true, others, what):
        theirs = max(rel_err(o, true) for o in others)
        assert rel_err(ours, true) <= max(1e-4, 10 * theirs), (what, rel_err(ours, true), theirs)

    close(logits, truth[0], [torch32[0]], "logits")
    close(loss, truth[1], [torch32[1]], "loss")
    for i, (k, ours) in enumerate(grads.items()):
        close(ours, truth[2][i], [torch32[2][i]] + [n[2][i] for n in noisy], k)


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
