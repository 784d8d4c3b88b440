"""The train block's `augment` and `normalize` through the front end and `Model`: each entry is
checked at its place against the model's input; a model with either takes uint8 images and
refuses floats; `forward` applies normalize only (equal to the same network fed the normalized
floats); `train_step` draws its augmentations from the model's generator, so a seed decides
them; training on uint8 batches goes through `batch_of`. (The ops, pass and kernels against
their references: tests/ir/test_augment.py, tests/codegen/test_augment_kernels.py.)"""
import numpy as np
import pytest

from odc.errors import CompileError, OdcError
from odc.frontend import parse_source
from odc.ir.ops import augment
from odc.program import Program
from odc.runtime.train import batch_of
from tests.oracle import rel_err

NET = """\
model C():
    input image: f32[N, 3, 8, 8]
    x = relu(batchnorm2d(conv2d(image, out=4, kernel=3, pad=1)))
    return dense(flatten(x), 10)

train C:
    data = cifar10()
    optimizer = sgd(lr=0.1, momentum=0.9)
{lines}"""
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
LINES = f"    augment = [random_crop(8, pad=2), hflip(), contrast(0.3)]\n    normalize = normalize(mean={MEAN}, std={STD})\n"


def program(lines: str) -> Program:
    module = parse_source(NET.format(lines=lines).replace("data = cifar10()", "data = idx(\"x\")"), "c.od")
    return Program(module.lower(), module.source)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)


@pytest.mark.parametrize("lines, needle, message", [
    ("    augment = [random_crop(40)]\n", "random_crop(40)",
     "random_crop: a 40x40 crop is larger than the padded image (32x32: 32x32 with pad=0)"),
    ("    augment = [hflip(), vflip(1.5)]\n", "vflip(1.5)", "vflip: p must be a probability in [0, 1], got 1.5"),
    ("    augment = [brightnes(0.2)]\n", "brightnes(0.2)", "unknown augmentation 'brightnes'"),
    ("    augment = hflip()\n", "hflip()", "augment must be a list of augmentations"),
    ("    augment = [hflip(q=1)]\n", "q=1", "hflip has no argument 'q'"),
    ("    augment = [random_erasing(scale=[0.5, 0.2])]\n", "random_erasing(",
     "random_erasing: scale must be a pair [lo, hi] with 0 <= lo <= hi <= 1, got [0.5, 0.2]"),
    ("    normalize = normalize(mean=[0.5, 0.5, 0.5], std=[0.2, 0.2])\n", "normalize =",
     "normalize: std has 2 values, the images have 3 channels"),
    ("    normalize = normalize(mean=0.5, std=[0.2, 0.2, 0.2])\n", "0.5,",
     "normalize: mean must be a list of numbers, one per channel, got 0.5"),
    ("    augment = [mixup(0.2), cutmix(1)]\n", "augment =",
     "cutmix: the list already mixes images (mixup); use one of mixup and cutmix"),
    ("    augment = [cutmix(1)]\n    loss = mse\n", "augment =",
     "cutmix mixes the labels, which needs the loss cross_entropy, not mse"),
    ("    augment = [mixup(0)]\n", "mixup(0)", "mixup: alpha must be a number > 0, got 0"),
])
def test_bad_entries_are_reported_at_their_place(lines, needle, message):
    src = NET.replace("f32[N, 3, 8, 8]", "f32[N, 3, 32, 32]").format(lines=lines)
    with pytest.raises(CompileError) as e:
        parse_source(src, "c.od")
    d = next(d for d in e.value.diagnostics if d.message.startswith(message.split(":")[0]))
    at = src.index(needle, src.index("train C"))
    assert (d.span.line, d.span.col) == (src.count("\n", 0, at) + 1, at - src.rfind("\n", 0, at))
    assert d.message.startswith(message)


def test_a_model_with_normalize_takes_uint8_and_refuses_floats():
    model = program(LINES).compile(seed=1)
    assert model.takes_uint8 and not program("").compile(seed=1).takes_uint8
    with pytest.raises(OdcError, match="takes uint8 images"):
        model.forward(images(2).astype(np.float32) / 255)
    with pytest.raises(OdcError, match="takes uint8 images"):
        model.train_step(images(2).astype(np.float32), np.arange(2))


def test_forward_normalizes_only_and_equals_the_plain_network_on_normalized_floats():
    with_keys, plain = program(LINES).compile(seed=1), program("").compile(seed=1)
    for k in plain.params:
        plain.params[k][...] = with_keys.params[k]
    for k in plain.state:
        plain.state[k][...] = np.random.default_rng(2).random(plain.state[k].shape) + 0.5  # running stats
        with_keys.state[k][...] = plain.state[k]
    x = images(5)
    floats = (x.astype(np.float32) / 255 - np.reshape(MEAN, (1, 3, 1, 1))) / np.reshape(STD, (1, 3, 1, 1))
    assert rel_err(with_keys.forward(x), plain.forward(floats.astype(np.float32))) <= 1e-5
    assert np.array_equal(with_keys.forward(x), with_keys.forward(x))  # no random draw in forward


def test_the_seed_decides_the_augmentations():
    x, y = images(6, seed=3), np.arange(6)
    runs = []
    for seed in (1, 1, 2):
        model = program(LINES).compile(seed=1)
        model.rng = np.random.default_rng(seed)  # the stream the draws come from
        runs.append([model.train_step(x, y) for _ in range(3)])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_batch_of_gives_each_model_what_it_takes():
    x = images(3)
    assert batch_of(program(LINES).compile(), x) is x
    floats = batch_of(program("").compile(), x)
    assert floats.dtype == np.float32 and np.array_equal(floats, x / np.float32(255))


@pytest.mark.parametrize("mix", ["mixup(0.4)", "cutmix(1.0)"])
def test_mixup_and_cutmix_train_as_pytorch_on_torchvisions_mixed_batch(torch, mix, executor):
    """One train step against PyTorch: the batch mixed with itself rolled by one (as
    torchvision.transforms.v2's MixUp and CutMix, with the weight odc drew: lam, or the box),
    normalised, soft targets lam one_hot(y) + (1 - lam) one_hot(y rolled), label smoothing 0.1,
    batch norm in training mode, SGD with momentum."""
    F = torch.nn.functional
    lines = f"    augment = [hflip(0), {mix}]\n    normalize = normalize(mean={MEAN}, std={STD})\n" \
            "    loss = cross_entropy(label_smoothing=0.1)\n"
    model = program(lines).compile(executor=executor, seed=1)
    x, y = images(6, seed=4), np.array([0, 3, 3, 7, 9, 1])
    p = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    replay = np.random.default_rng()
    replay.bit_generator.state = model.rng.bit_generator.state
    loss = model.train_step(x, y)
    drawn = augment.draw_inputs(model.program.lower("train"), {"N": 6}, replay)
    w = torch.tensor(next(v for k, v in drawn.items() if k.endswith(".weight")), dtype=torch.float32)
    assert 0 < float(w.mean()) < 1
    xs = (torch.tensor(x, dtype=torch.float32) / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    mixed = w * xs + (1 - w) * xs.roll(1, 0)
    hot = F.one_hot(torch.tensor(y), 10).float()
    target = w.mean() * hot + (1 - w.mean()) * hot.roll(1, 0)
    h = F.relu(F.batch_norm(F.conv2d(mixed.float(), p["conv2d1.weight"], p["conv2d1.bias"], padding=1), None, None,
                            p["batchnorm2d1.weight"], p["batchnorm2d1.bias"], training=True))
    expected = F.cross_entropy(F.linear(h.flatten(1), p["dense1.weight"], p["dense1.bias"]), target, label_smoothing=0.1)
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    for k, t in p.items():  # the first step of momentum SGD: p - lr * grad
        assert rel_err(model.params[k], (t - 0.1 * t.grad).detach().numpy()) <= 1e-4, k


def test_cutmix_pastes_one_box_whose_area_sets_lam():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(200):
        mask = augment._cutmix({"alpha": 1.0}, (1, 1, 8, 10), rng)[0, 0]
        rows, cols = np.flatnonzero((mask == 0).any(1)), np.flatnonzero((mask == 0).any(0))
        if len(rows):  # the zeros form one full rectangle
            assert (mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] == 0).all() and (mask == 0).sum() == len(rows) * len(cols)
        areas.append(1 - mask.mean())
    assert 0.1 < np.mean(areas) < 0.5 and max(areas) <= 1  # lam ~ Beta(1, 1): boxes of every size
