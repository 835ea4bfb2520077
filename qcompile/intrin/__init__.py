"""qcompile's integer dot-product tensor intrinsics, and what the compiler needs to know about them.

Importing this package registers qcompile's own intrinsics with TVM (``tvm.s_tir.TensorIntrin``).
A target names the ones it wants in its YAML ``intrinsics:`` list; ``dot_intrin_for`` picks the one
for a layer's operand dtypes. Each intrinsic computes one block

    C[i] += int32(A[r]) * int32(B[i, r])        i < lanes, r < k

so a dense layer using it needs its weights packed as ``[N/lanes, K/k, lanes, k]`` (``pack.py``),
and its kernel scheduled around that block (``qcompile.tune.default_schedule.TensorizedDense``, and
the MetaSchedule space in ``qcompile.tune.tuner``).

TVM's ARM ``dot_4x4_i8i8s32_sdot`` / ``_neon`` have the same form (registered by
``tvm.s_tir.tensor_intrin.arm_cpu``), so they are described here too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DotIntrin:
    """A registered tensor intrinsic C[lanes] += A[k] . B[lanes, k] (int32 accumulators)."""

    name: str
    a_dtype: str          # activation operand
    b_dtype: str          # weight operand
    lanes: int            # output lanes: the packed weight block is [lanes, k]
    k: int                # reduction length per instruction
    cpu_flags: tuple      # /proc/cpuinfo flags a CPU needs to run it
    module: str           # who registers it: "qcompile.intrin" or a tvm.s_tir.tensor_intrin module


def _own():
    from . import x86

    return x86.intrinsics()


DOT_INTRINSICS = {name: DotIntrin(name, a, b, lanes, k, flags, "qcompile.intrin")
                  for name, a, b, lanes, k, flags, _, _ in _own()}
DOT_INTRINSICS.update({
    "dot_4x4_i8i8s32_sdot": DotIntrin("dot_4x4_i8i8s32_sdot", "int8", "int8", 4, 4, ("asimddp",),
                                      "tvm.s_tir.tensor_intrin.arm_cpu"),
    "dot_4x4_i8i8s32_neon": DotIntrin("dot_4x4_i8i8s32_neon", "int8", "int8", 4, 4, ("asimd",),
                                      "tvm.s_tir.tensor_intrin.arm_cpu"),
})


def register():
    """Register qcompile's intrinsics with TVM (idempotent: the import does it once)."""
    from tvm.s_tir import TensorIntrin

    for name, _, _, _, _, _, desc, impl in _own():
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, desc, impl)


def ensure_registered(intrin: DotIntrin):
    """Make sure TVM knows `intrin` (TVM's ARM ones are registered by importing their module, the
    light way: qcompile.tune.tuner.use_cpu_tensor_intrinsics)."""
    import importlib

    from tvm.s_tir import TensorIntrin

    if TensorIntrin.get(intrin.name, allow_missing=True) is not None:
        return
    if intrin.module != "qcompile.intrin":
        import tvm

        from ..tune.tuner import use_cpu_tensor_intrinsics

        use_cpu_tensor_intrinsics(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}))
        importlib.import_module(intrin.module)
    else:
        register()


def dot_intrins(names) -> list[DotIntrin]:
    """The DotIntrins among `names` (a target's ``intrinsics:``); other names are ignored."""
    return [DOT_INTRINSICS[n] for n in names if n in DOT_INTRINSICS]


def own_dot_intrins(names) -> list[DotIntrin]:
    """The ones among `names` that qcompile registers (TVM's own tuning rules do not know them)."""
    return [i for i in dot_intrins(names) if i.module == "qcompile.intrin"]


def dot_intrin_for(names, a_dtype: str, b_dtype: str) -> DotIntrin | None:
    """The first intrinsic among `names` for activations `a_dtype` times weights `b_dtype`."""
    for intrin in dot_intrins(names):
        if (intrin.a_dtype, intrin.b_dtype) == (str(a_dtype), str(b_dtype)):
            return intrin
    return None


register()
