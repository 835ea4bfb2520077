"""qcompile's integer dot-product tensor intrinsics: registering them with TVM, packing weights for them.

``DOT_INTRINSICS`` (qcompile.target.intrinsics, the data a target file names) describes them;
``register()`` (or ``ensure_registered``, on first use) registers
qcompile's own with TVM (``tvm.s_tir.TensorIntrin``). A target names the ones it wants in its YAML
``intrinsics:`` list (checked when the target loads); ``dot_intrin_for`` picks the one for a layer's
operand dtypes. Each intrinsic computes one block

    C[i] += int32(A[r]) * int32(B[i, r])        i < lanes, r < k

so a dense layer using it needs its weights packed as ``[N/lanes, K/k, lanes, k]`` (``pack.py``),
and its kernel scheduled around that block (``qcompile.tune.default_schedule.TensorizedDense``, and
the MetaSchedule space in ``qcompile.tune.tuner``).

TVM's ARM ``dot_4x4_i8i8s32_sdot`` / ``_neon`` have the same form (registered by
``tvm.s_tir.tensor_intrin.arm_cpu``), so they are described here too.
"""

from __future__ import annotations

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
    light way: qcompile.tune.tuner.use_cpu_tensor_intrinsics)."""
    import importlib

    from tvm.s_tir import TensorIntrin

    if TensorIntrin.get(intrin.name, allow_missing=True) is not None:
        return
    if intrin.module != OWN:
        import tvm

        from ..tune.tuner import use_cpu_tensor_intrinsics

        use_cpu_tensor_intrinsics(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}))
        importlib.import_module(intrin.module)
    else:
        register()


