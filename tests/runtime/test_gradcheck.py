"""`odc gradcheck` near kinks: a correct gradient at a ReLU kink is not a failure, a wrong one is."""
import re

import numpy as np

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


def test_a_wrong_gradient_still_fails(tmp_path, monkeypatch):
    path = tmp_path / "kinky.od"
    path.write_text(KINKY)
    real = gc.interp.run

    def wrong(g, feeds, dtype=None):  # the gradient of one weight 1% off
        out = real(g, feeds, dtype)
        if "grad.dense1.weight" in out:
            out = {**out, "grad.dense1.weight": out["grad.dense1.weight"] * 1.01}
        return out
    monkeypatch.setattr(gc.interp, "run", wrong)
    errors, kinks = gc.gradcheck(odc.load(path), samples=10)
    assert errors["dense1.weight"] > 5e-3 and kinks["dense1.weight"] == 0
    assert main(["gradcheck", str(path)]) == 1
