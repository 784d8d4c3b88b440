"""The element types: one table of what every layer needs to know about each.

For each IR element type: its numpy dtype (what arrays hold; bf16 has none, so the interpreter
holds it in float32), its size in bytes (memory planning, buffers), its LLVM type (how code
generation loads and stores it; bf16 is stored as 16 bits) and whether it is a float.
`COMPUTE` are the types odc computes in today: the front end refuses the others where they
are declared, and code generation checks each op's `dtypes` (`odc.ir.ops`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir


@dataclass(frozen=True)
class DType:
    name: str
    np: type
    size: int
    llvm: ir.Type
    is_float: bool


TABLE = {d.name: d for d in (
    DType("f32", np.float32, 4, ir.FloatType(), True),
    DType("f64", np.float64, 8, ir.DoubleType(), True),
    DType("f16", np.float16, 2, ir.HalfType(), True),
    DType("bf16", np.float32, 2, ir.IntType(16), True),
    DType("i32", np.int32, 4, ir.IntType(32), False),
    DType("i64", np.int64, 8, ir.IntType(64), False),
    DType("u8", np.uint8, 1, ir.IntType(8), False),
)}
NAMES = tuple(TABLE)
FLOATS = tuple(n for n, d in TABLE.items() if d.is_float)
COMPUTE = ("f32",)
NP_DTYPES = {n: d.np for n, d in TABLE.items()}
