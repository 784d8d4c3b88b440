"""LLVM IR → machine code for this host, through llvmlite.

The target machine is the host's CPU name and feature string (so AVX-512 and FMA are used
where present), or the CPU that ``$ODC_CPU`` names (an LLVM CPU name such as ``haswell``, with
that CPU's own features, or those of ``$ODC_CPU_FEATURES`` such as ``+avx2,+fma,-avx512f``):
code for another, smaller CPU runs here too. Both are read once per process. A CPU name LLVM
does not know would abort the process inside LLVM, so it is tried in a child process first.
`vector_bits` tells the kernels how wide the target's vector registers are.

A module is optimized with LLVM's default ``O3`` pipeline (new pass manager), emitted as an
object file (what the disk cache stores) and loaded into an MCJIT engine, which resolves
``GOMP_parallel`` and libm from the process after libgomp is loaded with
`llvm.load_library_permanently`. An engine stays alive as long as the code it owns.
"""
from __future__ import annotations

import ctypes.util
import functools
import os
import subprocess
import sys

import llvmlite.binding as llvm

from odc.errors import OdcError


@functools.lru_cache(maxsize=None)
def target_machine() -> llvm.TargetMachine:
    """The host's target machine, shared by optimization and code emission."""
    return _new_target_machine()


def _new_target_machine() -> llvm.TargetMachine:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()
    cpu, features = target()
    return llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(
        cpu=cpu, features=features, opt=3, codemodel="jitdefault")


def host_features() -> str:
    return llvm.get_host_cpu_features().flatten()


@functools.lru_cache(maxsize=None)
def target() -> tuple[str, str]:
    """(CPU name, feature string) that code is generated for."""
    cpu = os.environ.get("ODC_CPU", "")
    features = os.environ.get("ODC_CPU_FEATURES")
    if not cpu:
        return llvm.get_host_cpu_name(), host_features() if features is None else features
    features = features or ""
    check = subprocess.run([sys.executable, "-c", _CHECK, cpu, features], capture_output=True, text=True)
    if check.returncode or "not a recognized" in check.stderr:
        problem = (check.stderr.strip().splitlines() or ["LLVM failed"])[0]
        raise OdcError(f"ODC_CPU={cpu!r} ODC_CPU_FEATURES={features!r}: {problem}\n"
                       "hint: name a CPU that LLVM knows (haswell, skylake-avx512, znver4, ...) "
                       "or unset ODC_CPU")
    return cpu, features


@functools.lru_cache(maxsize=None)
def vector_bits() -> int:
    """The width of the registers in which the target holds a vector of 16 floats: 512
    (AVX-512), 256 (AVX) or 128, as LLVM's code for one such addition shows."""
    asm = emit_assembly(llvm.parse_assembly(_PROBE))
    return 512 if "%zmm" in asm else 256 if "%ymm" in asm else 128


_PROBE = """define void @probe(ptr %p) {
  %v = load <16 x float>, ptr %p
  %w = fadd <16 x float> %v, %v
  store <16 x float> %w, ptr %p
  ret void
}"""
_CHECK = f"""import sys, llvmlite.binding as llvm
llvm.initialize_native_target(); llvm.initialize_native_asmprinter(); llvm.initialize_native_asmparser()
target = llvm.Target.from_triple(llvm.get_process_triple())
tm = target.create_target_machine(cpu=sys.argv[1], features=sys.argv[2])
tm.emit_assembly(llvm.parse_assembly({_PROBE!r}))
"""


def llvm_version() -> str:
    return ".".join(map(str, llvm.llvm_version_info))


@functools.lru_cache(maxsize=None)
def openmp_available() -> bool:
    """Load libgomp into the process (once); False if it cannot be found."""
    for name in ("libgomp.so.1", ctypes.util.find_library("gomp")):
        if not name:
            continue
        try:
            llvm.load_library_permanently(name)
            return True
        except RuntimeError:
            continue
    return False


def optimize(ir_text: str) -> llvm.ModuleRef:
    tm = target_machine()
    mod = llvm.parse_assembly(ir_text)
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return mod


def emit_object(mod: llvm.ModuleRef) -> bytes:
    return target_machine().emit_object(mod)


def emit_assembly(mod: llvm.ModuleRef) -> str:
    return target_machine().emit_assembly(mod)


class Loaded:
    """Machine code loaded into memory; keeps its engine alive."""

    def __init__(self, obj: bytes):
        openmp_available()
        # an engine owns (and frees) its target machine, so it gets its own
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _new_target_machine())
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()

    def address(self, symbol: str) -> int:
        addr = self._engine.get_function_address(symbol)
        if not addr:
            raise RuntimeError(f"symbol {symbol} not found in the compiled code")
        return addr
