"""Op lowerings: each turns one node (or a fused group) into a `Kernel` (`odc.codegen.kernel`);
importing this package fills `LOWER` from its modules."""
from __future__ import annotations

from odc.codegen.builder import I1, VOID, KernelBuilder
from odc.codegen.kernel import LOWER, Kernel
from odc.codegen.kernels import augment, conv, elementwise, gemm, layout, pool, reduce  # noqa: F401 (they fill LOWER)
from odc.errors import OdcError
from odc.ir import ops
from odc.ir.graph import Graph
from odc.ir.passes.fuse import Group, is_elementwise
from odc.ir.passes.plan_memory import nbytes, output_owners


def lower_group(g: Graph, grp: Group) -> Kernel:
    first = g.node(grp.nodes[0])
    if grp.anchor is None and (first.op == "const" or is_elementwise(g, grp.nodes[0])):
        return elementwise.kernel(g, grp.nodes, grp.stored)
    head = grp.anchor if grp.anchor is not None else grp.nodes[0]
    node = g.node(head)
    if node.op not in LOWER:
        raise OdcError(f"the compiler cannot generate code for {node.op} on {node.type} yet")
    if node.type.dtype not in ops.get(node.op).dtypes:
        raise OdcError(f"the compiler generates {node.op} for {', '.join(ops.get(node.op).dtypes)} tensors "
                       f"only, got {node.type}")
    k = LOWER[node.op](g, head)
    epilogue = [m for m in grp.nodes if m != head]
    if not epilogue:
        return k
    ep = elementwise.kernel(g, epilogue, [m for m in grp.stored if m != head], rows=True)
    assert k.extent == ep.extent, (k.extent, ep.extent)

    def emit(kb: KernelBuilder, lo, hi):
        k.emit(kb, lo, hi)
        ep.emit(kb, lo, hi)

    return Kernel(k.values + ep.values, k.extent, k.cost + ep.cost, emit, k.scratch, k.status,
                  k.names + ep.names)


def output_copies(g: Graph) -> list[Kernel]:
    """Copies into returned arrays that no kernel writes directly (a returned argument, a
    view, a value returned under two names)."""
    owners = output_owners(g)
    kernels = []
    for name, v in g.outputs:
        if owners.get(v) == name:
            continue
        size = nbytes(g, v)

        def emit(kb: KernelBuilder, lo, hi, v=v, name=name, size=size):
            kb.call("llvm.memcpy.p0.p0.i64", VOID,
                    [kb.ptr(("out", name)), kb.ptr(v), kb.i64(size), kb.const(0, I1)])

        kernels.append(Kernel([v, ("out", name)], 1, size / 16, emit, names=["copy"]))
    return kernels
