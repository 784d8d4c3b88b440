"""conv2d of language v2 (per-axis stride, asymmetric padding, pad="same", dilation, groups,
depthwise, rectangular kernels), exact to PyTorch:
(a) the compiled kernels of conv2d and its two gradients against the numpy references, many
    configurations per compiled graph (the Winograd F(2x2, 3x3) layers apart too);
(b) the numpy references against torch.nn.functional.conv2d and its autograd (float64);
(c) a small .od model of depthwise, dilated, rectangular and "same" convolutions: loss, every
    gradient and the logits of the compiled code against a torch.nn twin with its weights;
(d) the derivative rule against finite differences;
(e) each diagnosis of the new arguments at its line and column."""
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import odc
from odc.codegen.kernels import winograd
from odc.frontend import parse_source
from odc.ir import interp
from odc.ir.ops.conv import Geometry, conv2d_grad_input_ref, conv2d_grad_weight_ref, conv2d_ref

sys.path.insert(0, str(Path(__file__).parents[1] / "ir"))
from test_vjp import check_vjp  # noqa: E402 (the finite-difference check of tests/ir)
from tests.diagnostics import single, where  # noqa: E402
from tests.oracle import check_twin  # noqa: E402

# PyTorch warns that an even kernel with padding="same" copies its input: that is the point here
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
SETTINGS = settings(max_examples=10, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def geometry(draw, max_side=23):
    """(x shape, weight shape, attrs): groups (depthwise, with channel multipliers too),
    rectangular kernels, per-axis strides and dilations, padding on each side; spatial sizes
    around the vector width, the output at least 1x1."""
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if kind == "dense":
        groups, cg, og = 1, draw(st.integers(1, 5)), draw(st.integers(1, 11))
    elif kind == "grouped":
        groups, cg, og = draw(st.integers(2, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    else:
        groups, cg, og = draw(st.integers(2, 7)), 1, draw(st.sampled_from([1, 1, 2]))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if draw(st.booleans()) and stride == (1, 1):  # pad="same": the odd pixel bottom / right
        th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
        pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    else:
        pad = tuple(draw(st.integers(0, 4)) for _ in range(4))
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    h = draw(st.integers(max(1, span[0] - pad[0] - pad[1]), max_side))
    w = draw(st.integers(max(1, span[1] - pad[2] - pad[3]), max_side + 14))
    n = draw(st.integers(1, 3))
    attrs = Geometry(stride, pad, dilation, groups).attrs()
    return (n, cg * groups, h, w), (og * groups, cg, kh, kw), attrs


def out_shape(xs, ws, attrs):
    g = Geometry.of(attrs)
    return (xs[0], ws[0], g.out_size(xs[2], ws[2], 0), g.out_size(xs[3], ws[3], 1))


def arrays(seed, *shapes, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def op_cases(xs, ws, attrs, seed):
    x, wt, bias, dy = arrays(seed, xs, ws, (ws[0],), out_shape(xs, ws, attrs))
    return [("conv2d", [x, wt, bias], attrs), ("conv2d", [x, wt], attrs),
            ("conv2d_grad_input", [dy, wt], {**attrs, "size": list(xs[2:])}),
            ("conv2d_grad_weight", [dy, x], {**attrs, "kernel": list(ws[2:])})]


# -- (a) compiled kernels against the references --------------------------------------------------
@SETTINGS
@given(st.lists(geometry(), min_size=3, max_size=3), st.integers(0, 2**31))
def test_kernels_match_the_references(check_ops, geos, seed):
    cases = [c for i, (xs, ws, attrs) in enumerate(geos) for c in op_cases(xs, ws, attrs, seed + i)]
    check_ops(cases, rtol=1e-5, atol=1e-4)


def test_kernels_on_chosen_geometries(check_ops):
    """The cases the random draws may miss, in one graph: MobileNet's depthwise 3x3 (stride 1
    and 2), a depthwise channel multiplier, ResNeXt-like groups, even kernels with pad="same",
    padding wider than the kernel, a dilation past the vector width, old-style attributes,
    depthwise with strides 3 and 4, dilation and a 7x7 kernel."""
    geos = [((2, 16, 19, 19), (16, 1, 3, 3), {"stride": 1, "pad": 1, "groups": 16}),
            ((2, 16, 19, 19), (16, 1, 3, 3), {"stride": 2, "pad": 1, "groups": 16}),
            ((1, 5, 9, 35), (10, 1, 5, 3), {"stride": [1, 2], "pad": [2, 2, 1, 1], "groups": 5}),
            ((2, 12, 11, 13), (20, 3, 3, 3), {"stride": 1, "pad": 1, "groups": 4}),
            ((1, 3, 10, 17), (4, 3, 2, 4), {"stride": 1, "pad": [0, 1, 1, 2]}),  # "same" of a 2x4 kernel
            ((2, 2, 5, 6), (3, 2, 3, 2), {"stride": [2, 3], "pad": [5, 0, 0, 6]}),
            ((1, 2, 20, 40), (3, 2, 3, 3), {"stride": 1, "pad": [3, 4, 18, 17], "dilation": [3, 17]}),
            ((2, 3, 8, 8), (5, 3, 3, 3), {"stride": 1, "pad": 2}),
            ((1, 4, 17, 40), (4, 1, 3, 5), {"stride": 3, "pad": [1, 2, 0, 3], "dilation": [2, 3], "groups": 4}),
            ((2, 3, 20, 20), (3, 1, 7, 7), {"stride": 1, "pad": 3, "groups": 3}),  # more taps than registers
            ((1, 2, 9, 50), (2, 1, 2, 3), {"stride": [1, 4], "pad": 0, "groups": 2})]
    cases = [c for i, (xs, ws, attrs) in enumerate(geos) for c in op_cases(xs, ws, attrs, i)]
    check_ops(cases, rtol=1e-5, atol=1e-4)


@st.composite
def wide_geometry(draw):
    """(x shape, weight shape, attrs) of a layer with at least 16 input channels per group (a
    vector of AVX-512), whose weight gradient runs channels last: channel counts off the vector
    width and the register tile, groups, strides, dilations and padding, images from 1x1 to
    wider than a vector, batches that split into chunks unevenly."""
    groups = draw(st.sampled_from([1, 1, 2]))
    cg, og = draw(st.integers(16, 70)), draw(st.integers(1, 30))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    h = draw(st.integers(max(1, span[0] - pad[0] - pad[1]), 9))
    w = draw(st.integers(max(1, span[1] - pad[2] - pad[3]), 20))
    n = draw(st.integers(1, 6))
    return (n, cg * groups, h, w), (og * groups, cg, kh, kw), Geometry(stride, pad, dilation, groups).attrs()


@SETTINGS
@given(st.lists(wide_geometry(), min_size=2, max_size=2), st.integers(0, 2**31))
def test_weight_gradient_of_wide_layers(check_ops, geos, seed):
    cases = [op_cases(xs, ws, attrs, seed + i)[3] for i, (xs, ws, attrs) in enumerate(geos)]
    check_ops(cases, rtol=1e-5, atol=1e-4)


def test_weight_gradient_of_chosen_wide_layers(check_ops):
    """ResNet-20's and VGG-11's layers at a small batch: 3x3 with padding 1 at 32x32 to 1x1,
    the stride-2 convolutions that start a stage, and 512 channels (several channel blocks per
    thread)."""
    geos = [((3, 16, 32, 32), (16, 16, 3, 3), {"stride": 1, "pad": 1}),
            ((2, 16, 32, 32), (32, 16, 3, 3), {"stride": 2, "pad": 1}),
            ((3, 32, 16, 16), (32, 32, 3, 3), {"stride": 1, "pad": 1}),
            ((2, 32, 16, 16), (64, 32, 3, 3), {"stride": 2, "pad": 1}),
            ((4, 64, 8, 8), (64, 64, 3, 3), {"stride": 1, "pad": 1}),
            ((5, 512, 2, 2), (512, 512, 3, 3), {"stride": 1, "pad": 1}),
            ((3, 256, 1, 1), (40, 256, 3, 3), {"stride": 1, "pad": 1})]
    check_ops([op_cases(xs, ws, attrs, i)[3] for i, (xs, ws, attrs) in enumerate(geos)], rtol=1e-5, atol=1e-4)


@st.composite
def winograd_geometry(draw):
    """(x shape, weight shape, attrs) of a dense 3x3 stride-1 layer that runs as Winograd
    F(2x2, 3x3): channel counts off the vector width and the register tile, padding 0 to 2 on
    each side (odd outputs drop a tile's last row or column), images from 1x1 to wider than
    two vectors of tiles, batches that leave a partial block of images; whole vectors of input
    channels too, whose weight gradient runs as F(2x2, 3x3) as well."""
    low = winograd.MIN_CHANNELS  # 8 with AVX2, 16 with AVX-512
    cin, cout = draw(st.one_of(st.integers(low, 40), st.sampled_from([32, 48, 64]))), draw(st.integers(low, 40))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(max(1, 3 - pad[0] - pad[1]), 20))
    w = draw(st.integers(max(1, 3 - pad[2] - pad[3]), 40))
    n = draw(st.integers(1, 5))
    return (n, cin, h, w), (cout, cin, 3, 3), Geometry((1, 1), pad, (1, 1), 1).attrs()


@SETTINGS
@given(st.lists(winograd_geometry(), min_size=2, max_size=2), st.integers(0, 2**31))
def test_winograd_convolutions_match_the_references(check_ops, geos, seed):
    for xs, ws, attrs in geos:
        assert winograd.applies(ws[2:], Geometry.of(attrs), xs[1], ws[0])
        assert winograd.applies(ws[2:], Geometry.of(attrs), ws[0], xs[1])  # its input gradient too
    check_ops(winograd_cases(geos, seed), rtol=1e-5, atol=1e-4)


def winograd_cases(geos, seed):
    """The forward pass (with and without bias) and input gradient of each layer, and its
    weight gradient where that runs as F(2x2, 3x3)."""
    cases = []
    for i, (xs, ws, attrs) in enumerate(geos):
        ops_ = op_cases(xs, ws, attrs, seed + i)
        cases += ops_[:3] + ops_[3:] * winograd.applies(ws[2:], Geometry.of(attrs), xs[1], ws[0], weight_gradient=True)
    return cases


def test_winograd_on_chosen_layers(check_ops):
    """ResNet-20's and the CIFAR CNN's 3x3 layers at a small batch (bands of tile rows of one
    image, and several 8x8 images to a block), VGG-11's widest (512 channels each side, the most
    that runs as F(2x2, 3x3)), 2x2 and 1x1 images with padding 1, and padding wider than the kernel's
    reach on one side only; the weight gradients of those with 32 input channels or more."""
    geos = [((3, 16, 32, 32), (16, 16, 3, 3), {"stride": 1, "pad": 1}),
            ((2, 32, 16, 16), (64, 32, 3, 3), {"stride": 1, "pad": 1}),
            ((5, 64, 8, 8), (64, 64, 3, 3), {"stride": 1, "pad": 1}),
            ((3, 128, 8, 8), (128, 128, 3, 3), {"stride": 1, "pad": 1}),
            ((4, 20, 2, 2), (24, 20, 3, 3), {"stride": 1, "pad": 1}),
            ((3, 17, 1, 1), (19, 17, 3, 3), {"stride": 1, "pad": 1}),
            ((4, 96, 3, 5), (40, 96, 3, 3), {"stride": 1, "pad": [1, 2, 0, 1]}),
            ((2, 18, 9, 7), (16, 18, 3, 3), {"stride": 1, "pad": [3, 0, 0, 3]})]
    widest = ((2, 512, 2, 2), (512, 512, 3, 3), {"stride": 1, "pad": 1})
    for xs, ws, attrs in geos:
        assert winograd.applies(ws[2:], Geometry.of(attrs), xs[1], ws[0])
    assert sum(winograd.applies(ws[2:], Geometry.of(attrs), xs[1], ws[0], weight_gradient=True)
               for xs, ws, attrs in geos) >= 3
    check_ops(winograd_cases(geos, 0), rtol=1e-5, atol=1e-4)
    # sums of 4,608 products of unit normals: outputs of about 70, float32 sums 1e-4 apart
    assert winograd.applies(widest[1][2:], Geometry.of(widest[2]), 512, 512, weight_gradient=True)
    check_ops(winograd_cases([widest], 0), rtol=1e-5, atol=1e-3)


# -- (b) the references against PyTorch -----------------------------------------------------------
def torch_conv(torch, x, w, b, attrs):
    g = Geometry.of(attrs)
    t, bo, l, r = g.pad
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (l, r, t, bo)), w, b, stride=g.stride,
                                      dilation=g.dilation, groups=g.groups)


def check_against_torch(torch, xs, ws, attrs, seed):
    x, w, b = arrays(seed, xs, ws, (ws[0],), dtype=np.float64)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch_conv(torch, tx, tw, tb, attrs)
    y = conv2d_ref(x, w, b, attrs)
    assert y.shape == tuple(ty.shape)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    (dy,) = arrays(seed + 1, y.shape, dtype=np.float64)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(conv2d_grad_input_ref(dy, w, {**attrs, "size": list(xs[2:])}), tx.grad.numpy(),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv2d_grad_weight_ref(dy, x, {**attrs, "kernel": list(ws[2:])}),
                               tw.grad.numpy(), rtol=1e-10, atol=1e-10)


NAMED = {"dilation": ((2, 3, 9, 10), (4, 3, 3, 3), {"stride": 1, "pad": 0, "dilation": 2}),
         "dilation-per-axis": ((2, 3, 9, 10), (4, 3, 2, 3), {"stride": [2, 1], "pad": 1, "dilation": [3, 2]}),
         "groups": ((2, 6, 7, 7), (9, 2, 3, 3), {"stride": 1, "pad": 1, "groups": 3}),
         "depthwise": ((2, 5, 8, 7), (5, 1, 3, 3), {"stride": 2, "pad": 1, "groups": 5}),
         "depthwise-multiplier": ((1, 3, 6, 6), (6, 1, 3, 2), {"stride": 1, "pad": 0, "groups": 3}),
         "rect": ((2, 2, 9, 12), (3, 2, 5, 2), {"stride": [2, 3], "pad": [2, 1]}),
         "asymmetric": ((2, 2, 6, 7), (3, 2, 3, 3), {"stride": 2, "pad": [0, 2, 3, 1]})}


@pytest.mark.parametrize("name", NAMED)
def test_references_match_torch(torch, name):
    check_against_torch(torch, *NAMED[name], seed=len(name))


@pytest.mark.parametrize("kernel,dilation", [((3, 3), (1, 1)), ((2, 4), (1, 1)), ((4, 3), (2, 3)), ((1, 2), (1, 5))])
def test_same_padding_is_torchs(torch, kernel, dilation):
    """pad="same" as the front end lowers it equals PyTorch's padding="same" (odd totals put
    the extra pixel at the bottom and on the right)."""
    src = "\n".join(["model M():", "    input image: f32[N, 2, 7, 8]",
                     f"    x = conv2d(image, out=3, kernel=[{kernel[0]}, {kernel[1]}], pad=\"same\", "
                     f"dilation=[{dilation[0]}, {dilation[1]}])", "    return flatten(x)", ""])
    g = parse_source(src, "t.od").models["M"]
    (node,) = [n for n in g.nodes() if n.op == "conv2d"]
    x, w, b = arrays(1, (2, 2, 7, 8), (3, 2, *kernel), (3,), dtype=np.float64)
    expected = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), padding="same",
                                          dilation=dilation)
    assert node.type.shape[2:] == (7, 8)
    np.testing.assert_allclose(conv2d_ref(x, w, b, node.attrs), expected.numpy(), rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(geometry(max_side=12), st.integers(0, 2**31))
def test_references_match_torch_on_random_geometries(torch, geo, seed):
    check_against_torch(torch, *geo, seed)


# -- (c) a model against a torch.nn twin ----------------------------------------------------------
MIXED = """
model Mixed(classes = 5):
    input image: f32[N, 3, 13, 11]
    x = relu(conv2d(image, out=6, kernel=[3, 2], pad="same"))                 # rect, same (odd total)
    x = relu(conv2d(x, out=6, kernel=3, pad=1, groups=6))                     # depthwise
    x = tanh(conv2d(x, out=8, kernel=[2, 3], stride=[1, 2], dilation=[2, 1], groups=2))
    x: f32[N, 8, 11, 5] = conv2d(x, out=8, kernel=4, pad="same", dilation=2, groups=8, bias=false)
    x = conv2d(x, out=16, kernel=[1, 3], pad=[0, 2], groups=8)                # depthwise, multiplier 2
    return dense(flatten(x), classes)
"""


def twin(torch):
    nn = torch.nn
    return nn.ModuleList([
        nn.Conv2d(3, 6, (3, 2), padding="same"),
        nn.Conv2d(6, 6, 3, padding=1, groups=6),
        nn.Conv2d(6, 8, (2, 3), stride=(1, 2), dilation=(2, 1), groups=2),
        nn.Conv2d(8, 8, 4, padding="same", dilation=2, groups=8, bias=False),
        nn.Conv2d(8, 16, (1, 3), padding=(0, 2), groups=8),
        nn.Linear(16 * 11 * 7, 5)]).double()


def twin_forward(torch, m, x):
    x = torch.relu(m[0](x))
    x = torch.relu(m[1](x))
    x = torch.tanh(m[2](x))
    x = m[4](m[3](x))
    return m[5](x.flatten(1))




@pytest.mark.parametrize("executor", ["compiled", "interpreter"])
def test_model_matches_a_torch_twin(torch, tmp_path, executor):
    path = tmp_path / "mixed.od"
    path.write_text(MIXED)
    model = odc.load(path).compile(executor=None if executor == "compiled" else interp.compile_graph, seed=5)
    m = twin(torch)
    names = [f"conv2d{i}" for i in range(1, 6)] + ["dense1"]
    params = {}
    for name, layer in zip(names, m):
        for role in ("weight", "bias"):
            if getattr(layer, role) is not None:
                params[f"{name}.{role}"] = getattr(layer, role)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 13, 11)).astype(np.float32), rng.integers(0, 5, 4)
    check_twin(torch, model, params, lambda t: twin_forward(torch, m, t), x, y)


# -- (d) the derivative rule against finite differences -------------------------------------------
@settings(max_examples=12, deadline=None, derandomize=True)
@given(st.data(), st.booleans())
def test_derivative_rule_by_finite_differences(data, bias):
    groups, cg, og = data.draw(st.sampled_from([(1, 2, 2), (2, 1, 2), (3, 1, 1), (2, 2, 1)]))
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    dilation = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)))
    stride = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)))
    pad = tuple(data.draw(st.integers(0, 2)) for _ in range(4))
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    h = data.draw(st.integers(max(1, span[0] - pad[0] - pad[1]), 6))
    w = data.draw(st.integers(max(1, span[1] - pad[2] - pad[3]), 7))
    n = data.draw(st.integers(1, 2))
    xs = arrays(data.draw(st.integers(0, 2**31)), (n, cg * groups, h, w), (og * groups, cg, kh, kw),
                (og * groups,), dtype=np.float64)
    check_vjp("conv2d", xs if bias else xs[:2], Geometry(stride, pad, dilation, groups).attrs(), symbolic=(0,))


# -- (e) diagnoses --------------------------------------------------------------------------------
def program(*body: str, channels: int = 6, size: str = "12, 12") -> str:
    lines = ["model M(classes = 10):", f"    input image: f32[N, {channels}, {size}]"] + [f"    {b}" for b in body]
    return "\n".join(lines + ["    return dense(flatten(x), classes)"]) + "\n"



def test_input_channels_not_divisible_by_groups():
    src = program("x = relu(conv2d(image, out=8, kernel=3, groups=4))")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "conv2d")
    assert d.message == "conv2d: input channels 6 are not divisible by groups=4"
    assert d.hint == "groups must divide both the input channels (6) and out (8): one of 1, 2"


def test_out_not_divisible_by_groups():
    src = program("y = relu(image)", "x = conv2d(y, out=9, kernel=3, groups=6)")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 4, "conv2d")
    assert d.message == "conv2d: output channels 9 are not divisible by groups=6"
    assert d.hint == "groups must divide both the input channels (6) and out (9): one of 1, 3"


def test_dilated_kernel_larger_than_the_padded_input():
    src = program("x = conv2d(image, out=4, kernel=5, stride=2)",
                  "x = conv2d(x, out=4, kernel=3, dilation=2, pad=[0, 1])")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 4, "conv2d")
    # 12x12 -> 4x4 after the first; the dilated 3x3 spans 5 rows, the padded input has 4
    assert d.message == ("conv2d with kernel 3, dilation 2, stride 1, padding [0, 0, 1, 1] shrinks the height of 4 "
                         "to 0: the dilated kernel spans 5 pixels, more than the padded input's 4; "
                         "input f32[N, 4, 4, 4]")
    assert d.notes == ["the image sizes up to here: 12x12 (the input, line 2) -> 4x4 (conv2d, line 3)"]
    assert d.hint


def test_rectangular_kernel_wider_than_the_input():
    src = program("x = conv2d(image, out=4, kernel=[3, 9])", size="12, 7")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "conv2d")
    assert d.message == ("conv2d with kernel [3, 9], stride 1, padding 0 shrinks the width of 7 to -1; "
                         "input f32[N, 6, 12, 7]")


def test_same_padding_with_a_stride():
    src = program('x = conv2d(image, out=4, kernel=3, stride=[1, 2], pad="same")')
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, "conv2d")
    assert d.message == 'conv2d: pad="same" needs stride 1, got stride [1, 2]'
    assert d.hint.startswith("PyTorch refuses it too")


@pytest.mark.parametrize("arg,message", [
    ("dilation=0", "conv2d: dilation must be a positive integer or a pair [h, w] of them, got the number 0"),
    ("stride=[1, 0]", "conv2d: stride must be a positive integer or a pair [h, w] of them, got a list"),
    ("kernel=[3, 3, 3]", "conv2d: kernel must be a positive integer or a pair [h, w] of them, got a list"),
    ('pad="valid"', 'conv2d: pad must be an integer >= 0 or a pair [h, w] of them or "same", got the string "valid"'),
    ("groups=0", "conv2d: groups must be a positive integer, got the number 0")])
def test_arguments_of_the_wrong_kind(arg, message):
    src = program(f"x = conv2d(image, out=6, {arg if arg.startswith('kernel') else 'kernel=3, ' + arg})")
    d = single(src)
    assert (d.span.line, d.span.col) == where(src, 3, arg.split("=")[1])
    assert d.message == message


def test_a_depthwise_layer_lowers_to_its_weights_and_attributes():
    src = program('x = conv2d(image, out=12, kernel=[3, 2], pad="same", dilation=[1, 3], groups=6, bias=false)')
    g = parse_source(src, "t.od").models["M"]
    (node,) = [n for n in g.nodes() if n.op == "conv2d"]
    assert node.attrs == {"stride": 1, "pad": [1, 1, 1, 2], "dilation": [1, 3], "groups": 6}
    assert node.type.shape == ("N", 12, 12, 12)
    (w,) = [g.node(a) for a in node.args[1:]]
    assert w.type.shape == (12, 1, 3, 2)
    assert w.attrs["hi"] == pytest.approx(1 / 6 ** 0.5)  # fan_in = in/groups * kh * kw = 6


def test_ir_text_round_trips_and_old_attributes_still_read():
    from odc.ir.printer import print_graph
    from odc.ir.textparse import parse_graph
    g = parse_source(MIXED, "mixed.od").models["Mixed"]
    text = print_graph(g)
    assert "{dilation=[2, 1], groups=2, pad=0, stride=[1, 2]}" in text
    assert "{dilation=2, groups=8, pad=[3, 3, 3, 3]" not in text and "{dilation=2, groups=8, pad=3, stride=1}" in text
    assert print_graph(parse_graph(text)) == text
    old = parse_graph("func @M(\n    input %x: f32[1, 2, 5, 5],\n    input %w: f32[3, 2, 3, 3],\n) {\n"
                      "  %0 = conv2d(%x, %w) {pad=2, stride=1} : f32[1, 3, 7, 7]\n  return %0 as out\n}\n")
    x, w = arrays(0, (1, 2, 5, 5), (3, 2, 3, 3), dtype=np.float64)
    out = interp.run(old, {"x": x, "w": w}, np.float64)["out"]
    np.testing.assert_allclose(out, conv2d_ref(x, w, {"stride": [1, 1], "pad": [2, 2, 2, 2]}), rtol=1e-12)
