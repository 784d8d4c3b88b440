"""`odc gradcheck` near kinks: a correct gradient at a ReLU kink is not a failure, a wrong one is."""
import re

import numpy as np
import pytest

import odc
from odc.cli import main
from odc.runtime import gradcheck as gc

# relu(t) with t = 0: every sample point of t lies exactly on the kink, where the central
# difference gives slope 1/2 and autodiff PyTorch's relu'(0) = 0
KINKY = """model Kinky():
    input image: f32[N, 1, 4, 4]
    param t: f32[10] = zeros
    return dense(flatten(image), 10) + relu(t)
"""


def test_points_on_a_kink_are_left_out_not_failed(tmp_path, capsys, monkeypatch):
    path = tmp_path / "kinky.od"
    path.write_text(KINKY)
    errors, kinks = gc.gradcheck(odc.load(path), samples=10)
    assert kinks == {"t": 10, "dense1.weight": 0, "dense1.bias": 0}
    assert errors["t"] is None and max(errors["dense1.weight"], errors["dense1.bias"]) < 1e-5
    assert main(["gradcheck", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^t +not checked  \(10 samples near a kink left out\)$", out, re.M)
    assert "2/3 parameters within 0.0001, 1 not checked;" in out
    monkeypatch.setattr(gc, "KINK", np.inf)  # without the kink test: the false failure it prevents
    assert gc.gradcheck(odc.load(path), samples=10)[0]["t"] > 0.1


# t lies 2e-7 to 8e-7 from relu's kink, within ±H: the central difference at H averages the
# two slopes, at H / 10 it does not. p is all zeros: every max-pool window is a tie
NEAR = """model Near():
    input image: f32[N, 1, 4, 4]
    param t: f32[10] = uniform(0.0000002, 0.0000008)
    param p: f32[1, 1, 4, 4] = zeros
    x = dense(flatten(image), 10) + relu(t)
    return x + dense(flatten(maxpool2d(p, 2)), 10)
"""


def test_points_within_h_of_a_kink_are_checked_with_a_smaller_step(tmp_path, capsys, monkeypatch):
    path = tmp_path / "near.od"
    path.write_text(NEAR)
    errors, kinks = gc.gradcheck(odc.load(path), samples=16)
    assert kinks["t"] == 0 and errors["t"] < 1e-5  # checked, at H / 10
    assert kinks["p"] == 16 and errors["p"] is None  # a tie stays a kink at any step
    assert all(kinks[n] == 0 and errors[n] < 1e-5 for n in errors if n.startswith("dense"))
    assert main(["gradcheck", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^t +\S+  ok$", out, re.M) and re.search(r"^p +not checked  \(16 samples", out, re.M)
    monkeypatch.setattr(gc, "KINK", np.inf)  # the false failures of central differences at H
    errors, _ = gc.gradcheck(odc.load(path), samples=16)
    assert errors["t"] > 0.1 and errors["p"] > 0.1


@pytest.mark.parametrize("model, param", [(KINKY, "dense1.weight"), (NEAR, "dense1.weight"), (NEAR, "t")])
def test_a_wrong_gradient_still_fails(model, param, tmp_path, monkeypatch, capsys):
    """Also for the points within H of a kink, which are checked at H / 10."""
    path = tmp_path / "m.od"
    path.write_text(model)
    real = gc.interp.run

    def wrong(g, feeds, dtype=None):  # the gradient of one parameter 1% off
        out = real(g, feeds, dtype)
        if f"grad.{param}" in out:
            out = {**out, f"grad.{param}": out[f"grad.{param}"] * 1.01}
        return out
    monkeypatch.setattr(gc.interp, "run", wrong)
    errors, kinks = gc.gradcheck(odc.load(path), samples=10)
    assert errors[param] > 5e-3 and kinks[param] == 0
    assert main(["gradcheck", str(path)]) == 1
    assert re.search(rf"^{re.escape(param)} +\S+  FAIL$", capsys.readouterr().out, re.M)
