"""The shipped models check clean, and `odc check` reports them (or the errors, with exit code 1)."""
from pathlib import Path

import pytest
import torch

from odc.cli import main
from odc.frontend import parse_file

MODELS = sorted((Path(__file__).parents[2] / "models").glob("*.od"))


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_every_model_checks_clean(path):
    module = parse_file(path)
    assert module.models and set(module.recipes) == set(module.models)


def test_odc_check_prints_the_model_summary(capsys, monkeypatch):
    monkeypatch.chdir(MODELS[0].parent.parent)
    lenet = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.Conv2d(6, 16, 5), torch.nn.Linear(400, 120),
                                torch.nn.Linear(120, 84), torch.nn.Linear(84, 47))
    values = sum(p.numel() for p in lenet.parameters())
    assert main(["check", "models/lenet5.od"]) == 0
    assert capsys.readouterr().out == (f"models/lenet5.od: ok — model LeNet5: 10 parameters ({values:,} values), "
                                       f"output f32[N, 47]\n")


def test_odc_check_reports_errors_with_exit_code_1(tmp_path, capsys):
    bad = tmp_path / "bad.od"
    line = "    return dense(x, 3) + y"
    bad.write_text(f"model M():\n    input x: f32[N, 4]\n{line}\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}:3:{line.index('y') + 1}: error: unknown name 'y'\n{line}\n")
    assert main(["check", str(tmp_path / "missing.od")]) == 1
    assert capsys.readouterr().err == f"{tmp_path / 'missing.od'}: error: no such file\n"
