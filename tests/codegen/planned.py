"""Code generation of hand-made graphs with concrete shapes: they first go through the passes that
every pipeline runs before code generation (dce, fuse, plan-memory), as the driver's graphs do."""
from odc import codegen
from odc.ir import passes


def planned(g):
    return g if "arena_bytes" in g.meta else passes.run_passes(g, ("dce", "fuse", "plan-memory"))[-1][1]


def compile_graph(g):
    return codegen.compile_graph(planned(g))


def llvm_ir(g, optimized=True):
    return codegen.llvm_ir(planned(g), optimized)


def assembly(g):
    return codegen.assembly(planned(g))
