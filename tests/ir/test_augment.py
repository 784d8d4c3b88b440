"""The train block's `augment` and `normalize` in the compiled step (the augment and normalize
passes, `odc.ir.ops.augment`), against references written from torchvision's documented
definitions (RandomCrop, RandomHorizontalFlip, RandomVerticalFlip, RandomRotation, RandomAffine,
ColorJitter's adjust_brightness/contrast/saturation, GaussianNoise, RandomErasing, Normalize)
and, for rotation, against torch's grid_sample as torchvision's `rotate` calls it.

The model returns its (augmented) image, flattened, as its logits, so that the step's `logits`
output shows what the augmentations made of each image; each result is checked on the numpy
interpreter and on the compiled code, with the parameters `draw_inputs` drew for the step."""
import math

import numpy as np
import pytest

from odc import codegen
from odc.errors import OdcError
from odc.frontend import parse_source
from odc.ir import interp, passes
from odc.ir.ops.augment import AUGMENTATIONS, augment_problem, draw_inputs, normalize_problem
from odc.ir.printer import print_graph
from odc.program import Program

SHAPE = (3, 9, 11)  # C, H, W: odd sizes, not square
BATCH = 6
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
EXECUTORS = {"interpreter": interp.compile_graph, "compiled": codegen.compile_graph}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path / "cache"))


def program(shape=SHAPE, body="return flatten(image)", **keys) -> Program:
    c, h, w = shape
    prog = Program(parse_source(f"model M():\n    input image: f32[N, {c}, {h}, {w}]\n    {body}\n", "t.od").lower())
    prog.graph.meta["recipe"] = prog.recipe = {**prog.recipe, **keys}
    return prog


def entry(name, **args) -> dict:
    return {"name": name, **AUGMENTATIONS[name], **args}


def run(prog, kind, images, seed=0, executor="compiled"):
    """The images as the step of `kind` sees them, and the drawn inputs."""
    g = prog.lower(kind, {"N": len(images)})
    drawn = draw_inputs(g, {}, np.random.default_rng(seed))
    feeds = {"image": images, **drawn}
    if kind != "forward":
        feeds["label"] = np.zeros(len(images), np.int32)
    out = EXECUTORS[executor](g)(feeds)
    return out["logits"].reshape(images.shape), drawn


def images(shape=SHAPE, n=BATCH, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


# -- references, one image [C, H, W] at a time ---------------------------------------------------
def unit(x):
    return x.astype(np.float32) / np.float32(255)


def crop(x, top, left, size, pad):
    return np.pad(x, ((0, 0), (pad, pad), (pad, pad)))[:, top:top + size[0], left:left + size[1]]


def shift(x, tx, ty):
    """The image moved tx columns right and ty rows down, zeros where nothing comes in."""
    out = np.zeros_like(x)
    h, w = x.shape[1:]
    out[:, max(ty, 0):h + min(ty, 0), max(tx, 0):w + min(tx, 0)] = x[:, max(-ty, 0):h - max(ty, 0), max(-tx, 0):w - max(tx, 0)]
    return out


def rotate_torch(torch, x, angle):
    """torchvision.transforms.functional.rotate(x, angle, NEAREST, fill=0) on a tensor, as its source
    computes it: the inverse affine matrix about the centre, the grid of pixel centres rescaled to
    [-1, 1], grid_sample (nearest, zeros, align_corners=False)."""
    rot = math.radians(-angle)
    a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
    theta = torch.tensor([[d, -b, 0.0], [-c, a, 0.0]], dtype=torch.float32).reshape(1, 2, 3)
    ch, h, w = x.shape
    base = torch.empty(1, h, w, 3)
    base[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 + 0.5 - 1, steps=w))
    base[..., 1].copy_(torch.linspace(-h * 0.5 + 0.5, h * 0.5 + 0.5 - 1, steps=h).unsqueeze_(-1))
    base[..., 2].fill_(1)
    grid = base.view(1, h * w, 3).bmm(theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h])).view(1, h, w, 2)
    out = torch.nn.functional.grid_sample(torch.from_numpy(x[None]), grid, mode="nearest",
                                          padding_mode="zeros", align_corners=False)
    return out[0].numpy()


def grey(x):
    return 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]


def blend(x, other, f):
    return np.clip(f * x + (1 - f) * other, 0, 1)


def contrast(x, f):
    return blend(x, (grey(x) if len(x) == 3 else x).mean(), f)


def saturation(x, f):
    return x if len(x) == 1 else blend(x, grey(x), f)


def normalized(x):
    return (x - np.float32(MEAN)[:, None, None]) / np.float32(STD)[:, None, None]


# -- what each drawn input says ------------------------------------------------------------------
def params(name, a, value, shape=SHAPE):
    """The parameters of augmentation `name` for one image, read from its drawn input `value`, each
    checked against the augmentation's range."""
    c, h, w = shape
    if name in ("random_crop", "hflip", "vflip", "rotate", "translate"):
        m = value.astype(np.float64)
    if name == "random_crop":
        assert (m[:, :2] == np.eye(2)).all()
        left, top = int(m[0, 2]) + a["pad"], int(m[1, 2]) + a["pad"]
        assert 0 <= top <= 2 * a["pad"] and 0 <= left <= 2 * a["pad"]
        return top, left
    if name in ("hflip", "vflip"):
        axis = 0 if name == "hflip" else 1
        flipped = m[axis, axis] < 0
        assert (m[axis, 2] == ((w if axis == 0 else h) - 1 if flipped else 0))
        return flipped
    if name == "rotate":
        angle = math.degrees(math.atan2(m[1, 0], m[0, 0]))
        assert abs(angle) <= a["degrees"] + 1e-4
        return angle
    if name == "translate":
        tx, ty = -m[0, 2], -m[1, 2]
        assert tx == int(tx) and ty == int(ty)
        assert abs(tx) <= round(a["fraction"] * w) and abs(ty) <= round(a["fraction"] * h)
        return int(tx), int(ty)
    if name in ("brightness", "contrast", "saturation"):
        f = float(value.reshape(()))
        assert max(0, 1 - a["f"]) <= f <= 1 + a["f"]
        return np.float32(f)
    return value  # noise, mask


def reference(torch, x, entries, drawn, k, shape=SHAPE):
    """Image k after the augmentations `entries`, in order, with their drawn parameters."""
    c, h, w = shape
    counts = {}
    x = unit(x)
    for a in entries:
        name = a["name"]
        counts[name] = counts.get(name, 0) + 1
        key = next(n for n in drawn if n.startswith(f"{name}{counts[name]}."))
        p = params(name, a, drawn[key][k], shape)
        if name == "random_crop":
            x = crop(x, *p, (h, w), a["pad"])
        elif name in ("hflip", "vflip"):
            x = (x[:, :, ::-1] if name == "hflip" else x[:, ::-1]) if p else x
        elif name == "rotate":
            x = rotate_torch(torch, np.ascontiguousarray(x), p)
        elif name == "translate":
            x = shift(x, *p)
        elif name == "brightness":
            x = np.clip(p * x, 0, 1)
        elif name == "contrast":
            x = contrast(x, p)
        elif name == "saturation":
            x = saturation(x, p)
        elif name == "gaussian_noise":
            x = np.clip(x + p, 0, 1)
        elif name == "random_erasing":
            x = x * p
    return x


CASES = {
    "random_crop": [entry("random_crop", size=[9, 11], pad=3)],
    "hflip": [entry("hflip")],
    "vflip": [entry("vflip", p=0.5)],
    "rotate": [entry("rotate", degrees=180)],
    "translate": [entry("translate", fraction=0.3)],
    "brightness": [entry("brightness", f=0.8)],
    "contrast": [entry("contrast", f=0.8)],
    "saturation": [entry("saturation", f=0.8)],
    "gaussian_noise": [entry("gaussian_noise", std=0.2)],
    "random_erasing": [entry("random_erasing", p=0.7)],
    # each transform's own rounding and zero fill: a rotation after a padded crop sees the padding
    "crop, flip, brightness, rotate": [entry("random_crop", size=[9, 11], pad=4), entry("hflip"),
                                       entry("brightness", f=0.5), entry("rotate", degrees=40)],
    "all": [entry("random_crop", size=[9, 11], pad=2), entry("hflip"), entry("vflip", p=0.3),
            entry("rotate", degrees=15), entry("translate", fraction=0.2), entry("saturation", f=0.4),
            entry("contrast", f=0.4), entry("brightness", f=0.4), entry("gaussian_noise", std=0.1),
            entry("random_erasing")],
}


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("case", CASES)
def test_augmentations_equal_their_references(torch, case, executor):
    entries = CASES[case]
    prog = program(augment=entries, normalize={"mean": MEAN, "std": STD})
    x = images()
    got, drawn = run(prog, "grads", x, seed=3, executor=executor)
    for k in range(BATCH):
        want = normalized(reference(torch, x[k], entries, drawn, k))
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5, err_msg=f"{case}, image {k}")


def test_colour_adjustments_of_grey_images(torch):
    """contrast blends with the image's mean; saturation leaves a grey image as it is."""
    shape = (1, 8, 5)
    entries = [entry("contrast", f=0.9)]
    x = images(shape)
    got, drawn = run(program(shape, augment=entries), "grads", x, seed=4)
    for k in range(BATCH):
        np.testing.assert_allclose(got[k], reference(torch, x[k], entries, drawn, k, shape), rtol=1e-5, atol=1e-6)
    got, drawn = run(program(shape, augment=[entry("saturation", f=0.9)]), "grads", x, seed=4)
    assert drawn == {}
    np.testing.assert_array_equal(got, unit(x))


def test_every_image_gets_its_own_parameters():
    entries = [entry("hflip"), entry("rotate", degrees=30), entry("brightness", f=0.5)]
    _, drawn = run(program(augment=entries), "grads", images(n=64), seed=5)
    flips = drawn["hflip1.matrix"][:, 0, 0] < 0
    assert 10 < flips.sum() < 54
    assert len(np.unique(drawn["rotate1.matrix"][:, 1, 0])) == 64
    assert len(np.unique(drawn["brightness1.factor"])) == 64


def test_random_erasing_draws_boxes_as_torchvision():
    """Each mask is all ones (probability 1 - p, or ten failed tries) or zero on one box of
    h < H rows and w < W columns whose area is scale * H * W, rounded."""
    a = entry("random_erasing", p=0.5, scale=[0.1, 0.3])
    prog = program((1, 20, 30), augment=[a])
    g = prog.lower("grads", {"N": 2000})
    mask = draw_inputs(g, {}, np.random.default_rng(6))["random_erasing1.mask"][:, 0]
    erased = mask.min(axis=(1, 2)) == 0
    assert 0.45 < erased.mean() < 0.55
    for m in mask[erased]:
        rows, cols = np.nonzero(m == 0)
        h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert (m == 0).sum() == h * w and h < 20 and w < 30  # one box
        assert 0.1 * 600 - (h + w) <= h * w <= 0.3 * 600 + (h + w)  # the area, up to rounding


def test_random_crop_covers_every_offset():
    a = entry("random_crop", size=[9, 11], pad=2)
    _, drawn = run(program(augment=[a]), "grads", images(n=400), seed=7)
    offsets = {params("random_crop", a, m) for m in drawn["random_crop1.matrix"]}
    assert offsets == {(t, l) for t in range(5) for l in range(5)}


def test_translation_in_whole_pixels():
    a = entry("translate", fraction=0.25)
    _, drawn = run(program(augment=[a]), "grads", images(n=300), seed=8)
    shifts = {params("translate", a, m) for m in drawn["translate1.matrix"]}
    assert {tx for tx, _ in shifts} == set(range(-3, 4))  # round(0.25 * 11) = 3


# -- the step: uint8 in, reproducible draws ---------------------------------------------------
def test_the_image_input_is_uint8_and_converted_in_the_step():
    prog = program(body="return dense(flatten(relu(conv2d(image, out=4, kernel=3))), 5)",
                   augment=[entry("random_crop", size=[9, 11], pad=1), entry("hflip")],
                   normalize={"mean": MEAN, "std": STD})
    for kind in ("forward", "grads", "train"):
        g = prog.lower(kind, {"N": 4})
        assert g.inputs()[0].name == "image" and str(g.inputs()[0].type) == "u8[4, 3, 9, 11]"
    exe = codegen.compile_graph(prog.lower("train", {"N": 4}))
    assert exe.layout.args[0] == ("image", "u8", (4, 3, 9, 11))


def test_a_training_step_equals_the_interpreter():
    prog = program(body="return dense(flatten(relu(conv2d(image, out=4, kernel=3))), 5)",
                   augment=CASES["all"], normalize={"mean": MEAN, "std": STD})
    model = prog.compile(executor=interp.compile_graph)
    g = prog.lower("grads", {"N": BATCH})
    feeds = {"image": images(), "label": np.arange(BATCH, dtype=np.int32) % 5,
             **draw_inputs(g, {}, np.random.default_rng(9)), **model.params}
    want = interp.compile_graph(g)(feeds)
    got = codegen.compile_graph(g)(feeds)
    assert set(got) == set(want) and np.isfinite(want["loss"])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_draws_are_reproducible_and_continue_the_stream():
    g = program(augment=CASES["all"]).lower("train")
    first = np.random.default_rng(11)
    a = draw_inputs(g, {"N": 8}, first)
    state = first.bit_generator.state
    b = draw_inputs(g, {"N": 8}, first)
    again = np.random.default_rng(11)
    assert all(np.array_equal(a[k], v) for k, v in draw_inputs(g, {"N": 8}, again).items())
    resumed = np.random.default_rng(0)
    resumed.bit_generator.state = state
    assert all(np.array_equal(b[k], v) for k, v in draw_inputs(g, {"N": 8}, resumed).items())
    assert not all(np.array_equal(a[k], b[k]) for k in a)
    assert list(a) == [i.name for i in g.inputs() if "augment" in i.attrs]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_forward_normalizes_only(executor):
    prog = program(augment=CASES["all"], normalize={"mean": MEAN, "std": STD})
    x = images()
    got, drawn = run(prog, "forward", x, executor=executor)
    assert drawn == {}
    np.testing.assert_allclose(got, np.stack([normalized(unit(i)) for i in x]), rtol=1e-6, atol=1e-6)


def test_augment_without_normalize_converts_only_in_evaluation():
    prog = program(augment=[entry("hflip")])
    x = images()
    got, _ = run(prog, "forward", x)
    np.testing.assert_array_equal(got, unit(x))


def test_normalize_alone_in_training():
    x = images()
    got, drawn = run(program(normalize={"mean": MEAN, "std": STD}), "grads", x)
    assert drawn == {}
    np.testing.assert_allclose(got, np.stack([normalized(unit(i)) for i in x]), rtol=1e-6, atol=1e-6)


def test_without_the_keys_nothing_changes():
    prog = program(body="return dense(flatten(image), 5)")
    for kind in ("forward", "train"):
        stages = prog.stages(kind)
        before, after = stages[1][1], stages[2][1]
        assert stages[2][0] in ("augment", "normalize") and print_graph(after) == print_graph(before)
        assert str(after.inputs()[0].type) == "f32[N, 3, 9, 11]"


def test_dumps_show_the_augmentations():
    prog = program(augment=[entry("random_crop", size=[9, 11], pad=2), entry("hflip"), entry("brightness", f=0.2)],
                   normalize={"mean": MEAN, "std": STD})
    text = prog.ir(after="augment")
    assert "input %image: u8[N, 3, 9, 11]" in text
    assert "warp(%image, %random_crop1.matrix, %hflip1.matrix) : f32[N, 3, 9, 11]" in text
    assert "mul(%0, %brightness1.factor)" in text and "per_channel() {values=[0.49, 0.48, 0.45]}" in text
    assert "warp(" not in prog.ir(after="normalize")


def test_options_override_the_recipe():
    g = program(augment=[entry("hflip")]).graph
    out = passes.run_passes(g, ["augment"], {"augment": {"augment": [entry("vflip", p=1)], "normalize": None}})[-1][1]
    assert [i.name for i in out.inputs()] == ["image", "vflip1.matrix"]


# -- the checks the front end reports -----------------------------------------------------------
@pytest.mark.parametrize("a, words", [
    (entry("random_crop", size=40, pad=2), "larger than the padded image (13x15"),
    (entry("random_crop", size=[9, 12], pad=0), "larger than the padded image"),
    (entry("random_crop", size=8, pad=4), "does not fit the model, which takes 9x11"),
    (entry("random_crop", size=0), "size must be an integer >= 1"),
    (entry("random_crop", size=[9, 11], pad=-1), "pad must be an integer >= 0"),
    (entry("hflip", p=1.5), "p must be a probability in [0, 1]"),
    (entry("vflip", p=-0.1), "p must be a probability"),
    ({"name": "vflip"}, "vflip needs its argument p"),
    (entry("random_erasing", p=2), "p must be a probability"),
    (entry("rotate", degrees=-5), "degrees must be an angle >= 0"),
    (entry("translate", fraction=1.5), "fraction must be a number in [0, 1]"),
    (entry("brightness", f=-0.2), "f must be a number >= 0"),
    (entry("gaussian_noise", std=-1), "std must be a number >= 0"),
    (entry("random_erasing", scale=[0.5, 0.2]), "scale must be a pair [lo, hi] with 0 <= lo <= hi <= 1"),
    (entry("random_erasing", scale=[0.1, 1.5]), "scale must be a pair"),
    ({"name": "hflip", "q": 1}, "hflip has no argument 'q'"),
    ({"name": "sharpen"}, "unknown augmentation 'sharpen'"),
    (entry("mixup", alpha=0), "mixup: alpha must be a number > 0"),
    (entry("cutmix", alpha=-1), "cutmix: alpha must be a number > 0"),
])
def test_augment_problems(a, words):
    assert words in augment_problem(a, SHAPE)
    with pytest.raises(OdcError, match="augment|random_crop|p must|degrees|fraction|f must|std|scale|argument|alpha"):
        passes.run_passes(program().graph, ["augment"], {"augment": {"augment": [a]}})


def test_channels_of_colour_adjustments():
    assert "grey or RGB images" in augment_problem(entry("contrast", f=0.2), (4, 9, 11))
    assert augment_problem(entry("saturation", f=0.2), (1, 9, 11)) is None


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_valid_entries_have_no_problem(name):
    args = {"size": [9, 11], "p": 0.5, "degrees": 10, "fraction": 0.1, "f": 0.3, "std": 0.1, "alpha": 0.2}
    a = entry(name, **{k: v for k, v in args.items() if k in AUGMENTATIONS[name] and AUGMENTATIONS[name][k] is None})
    assert augment_problem(a, SHAPE) is None


@pytest.mark.parametrize("spec, words", [
    ({"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}, "mean has 2 values, the images have 3 channels"),
    ({"mean": [0.5] * 3, "std": [0.2] * 4}, "std has 4 values"),
    ({"mean": [0.5] * 3, "std": [0.2, 0, 0.2]}, "every std must be > 0"),
    ({"mean": "0.5", "std": [0.2] * 3}, "mean must be a list of numbers"),
])
def test_normalize_problems(spec, words):
    assert words in normalize_problem(spec, 3)
    assert normalize_problem({"mean": MEAN, "std": STD}, 3) is None
