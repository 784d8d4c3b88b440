"""The memory plan of a compiled graph is bounded (plan_memory.MAX_ARENA_BYTES): a step that would
need more memory than a machine has is a CompileError at the line computing its largest value,
before anything is allocated; an ordinary large network at batch 256 passes
(tests/frontend/test_frontend_limits.py)."""
from pathlib import Path

import pytest

import odc
from odc.errors import CompileError
from odc.ir.passes import plan_memory

LENET = Path(__file__).parents[2] / "models" / "lenet5.od"


def test_a_step_that_needs_more_memory_than_the_limit_is_refused_where_its_largest_value_is_made():
    program = odc.load(LENET)
    with pytest.raises(CompileError) as e:
        program.lower("train", program.batch_bindings(1_000_000))  # the largest batch a recipe allows
    d = e.value.first
    line = LENET.read_text().splitlines()[d.span.line - 1]
    assert e.value.path == str(LENET) and line[d.span.col - 1:].startswith("conv2d(image")
    assert d.message.startswith("LeNet5.train_step would need ")
    gb = float(d.message.split(" would need ")[1].split(" GB")[0])
    assert gb * 1e9 > plan_memory.MAX_ARENA_BYTES
    assert f"odc allows at most {plan_memory.MAX_ARENA_BYTES / 1e9:.1f} GB" in d.message
    assert "f32[1000000, 6, 28, 28]" in d.message  # the first convolution's result, 18.8 GB
    assert d.hint == "train with a smaller batch, or use fewer channels or smaller images"


def test_the_same_model_at_an_ordinary_batch_plans_its_memory():
    program = odc.load(LENET)
    g = program.lower("train", program.batch_bindings(256))
    assert 0 < g.meta["arena_bytes"] <= plan_memory.MAX_ARENA_BYTES
