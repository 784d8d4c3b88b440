"""Golden IR: each `<model>.od` under tests/golden/ beside its reviewed dumps
`<model>.<pass>.ir`; the IR after that pass must match the dump exactly."""
from pathlib import Path

import pytest

import odc

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(GOLDEN.glob("*.*.ir"))


@pytest.mark.parametrize("expected", CASES, ids=[p.name for p in CASES])
def test_golden(expected, monkeypatch):
    model, after, _ = expected.name.split(".")
    monkeypatch.chdir(GOLDEN)  # locations print as `tiny.od:5:14`
    assert odc.load(f"{model}.od").ir(after=after) == expected.read_text()
