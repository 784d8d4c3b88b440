"""LLVM IR → machine code for this host, through llvmlite.

The target machine is the host's CPU name and feature string (so AVX-512 and FMA are used
where present). A module is optimized with LLVM's default ``O3`` pipeline (new pass manager),
emitted as an object file (what the disk cache stores) and loaded into an MCJIT engine,
which resolves ``GOMP_parallel`` and libm from the process after libgomp is loaded with
`llvm.load_library_permanently`. An engine stays alive as long as the code it owns.
"""
from __future__ import annotations

import ctypes.util
import functools

import llvmlite.binding as llvm


@functools.lru_cache(maxsize=None)
def target_machine() -> llvm.TargetMachine:
    """The host's target machine, shared by optimization and code emission."""
    return _new_target_machine()


def _new_target_machine() -> llvm.TargetMachine:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(cpu=host_cpu(), features=host_features(), opt=3,
                                        codemodel="jitdefault")


def host_cpu() -> str:
    return llvm.get_host_cpu_name()


def host_features() -> str:
    return llvm.get_host_cpu_features().flatten()


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
