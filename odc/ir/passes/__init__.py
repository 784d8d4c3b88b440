"""The pass pipeline, in order, in one place.

Each pass is a module with a `name` and a `run(graph, ...) -> graph` that returns a new graph.
`odc.Program.stages` runs them. Shape inference comes first and may bind the batch symbol: the
graphs that are compiled are specialised to their batch size before autodiff, so every later
pass sees concrete shapes; dumps keep the symbol, and memory planning then has nothing to place.
"""
from odc.ir.passes import autodiff, dce, fuse, inference, optimizer, plan_memory, shape_infer

PIPELINE = [shape_infer, dce, inference, autodiff, optimizer, fuse, plan_memory]
