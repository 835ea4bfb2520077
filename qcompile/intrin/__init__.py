"""qcompile's integer dot-product tensor intrinsics: registering them with TVM, packing weights for them.

``DOT_INTRINSICS`` (qcompile.target.intrinsics, the data a target file names) describes them;
``register()`` (or ``ensure_registered``, on first use) registers
qcompile's own with TVM (``tvm.s_tir.TensorIntrin``). A target names the ones it wants in its YAML
``intrinsics:`` list (checked when the target loads); ``dot_intrin_for`` picks the one for a layer's
operand dtypes. Each intrinsic computes one block

    C[i] += int32(A[r]) * int32(B[i, r])        i < lanes, r < k

so a dense layer using it needs its weights packed as ``[N/lanes, K/k, lanes, k]`` (``pack.py``),
and its kernel scheduled around that block (``qcompile.schedule.default.TensorizedDense``, and
the MetaSchedule space in ``qcompile.tune.tuner``).

TVM's ARM ``dot_4x4_i8i8s32_sdot`` / ``_neon`` have the same form (registered by
``tvm.s_tir.tensor_intrin.arm_cpu``), so they are described here too.
"""

from __future__ import annotations

import sys

# the descriptions live with the targets that name them; re-exported for the kernels that use them
from ..target.intrinsics import (DOT_INTRINSICS, OWN, DotIntrin, check_names, dot_intrin_for,  # noqa: F401
                                 dot_intrins, own_dot_intrins)


def register():
    """Register qcompile's own intrinsics with TVM (idempotent). Done on first use, not on import:
    parsing their TVMScript takes about a second, which a compile without them should not pay."""
    from tvm.s_tir import TensorIntrin

    from . import x86

    for intrin in DOT_INTRINSICS.values():
        if intrin.module == OWN and TensorIntrin.get(intrin.name, allow_missing=True) is None:
            TensorIntrin.register(intrin.name, *x86.implementation(intrin))


def ensure_registered(intrin: DotIntrin):
    """Make sure TVM knows `intrin` (TVM's ARM ones are registered by importing their module, the
    light way: use_cpu_tensor_intrinsics)."""
    import importlib

    from tvm.s_tir import TensorIntrin

    if TensorIntrin.get(intrin.name, allow_missing=True) is not None:
        return
    if intrin.module != OWN:
        import tvm

        use_cpu_tensor_intrinsics(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}))
        importlib.import_module(intrin.module)
    else:
        register()


def use_cpu_tensor_intrinsics(target=None):
    """Register only the CPU tensor intrinsics instead of importing all of tvm.s_tir.tensor_intrin.

    MetaSchedule imports ``tvm.s_tir.tensor_intrin`` when it creates a tuning context and in every
    build; that package registers the CUDA, ROCm, Hexagon, ... intrinsics too, which parses
    thousands of TVMScript functions (90 s of CPU in TVM 0.27, minutes on a loaded machine).
    For an llvm target we put a bare package in sys.modules and import only the CPU families.
    """
    import importlib
    import importlib.util
    import types

    name = "tvm.s_tir.tensor_intrin"
    kind = "llvm"
    if target is not None:
        kind = target.kind.name if hasattr(target, "kind") else dict(target).get("kind", "llvm")
    if kind != "llvm":
        importlib.import_module(name)
        return
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        pkg = types.ModuleType(name)
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__, pkg.__file__, pkg.__package__ = spec, spec.origin, name
        pkg.__doc__ = "qcompile: CPU tensor intrinsics only (see qcompile.intrin.use_cpu_tensor_intrinsics)"
        sys.modules[name] = pkg
        import tvm.s_tir

        tvm.s_tir.tensor_intrin = pkg
    # every call: a process that tuned for ARM first has only arm_cpu's intrinsics so far, and
    # MetaSchedule's x86 rules then fail on an unregistered dot_16x4_vnni (a no-op when imported)
    importlib.import_module(f"{name}.{_cpu_family(target)}")
    register()  # qcompile's own intrinsics (the fixed VNNI one, the exact AVX2 ones)


def _cpu_family(target) -> str:
    """x86, arm_cpu or riscv_cpu: which CPU tensor-intrinsic module an llvm target needs."""
    import platform

    triple = ""
    if target is not None:
        triple = str(target.attrs.get("mtriple", "")) if hasattr(target, "attrs") else str(dict(target).get("mtriple", ""))
    arch = (triple.split("-")[0] if triple else platform.machine()).lower()
    if arch.startswith(("aarch64", "arm")):
        return "arm_cpu"
    if arch.startswith("riscv"):
        return "riscv_cpu"
    return "x86"
