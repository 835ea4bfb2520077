"""qcompile's integer dot-product tensor intrinsics, and what the compiler needs to know about them.

``DOT_INTRINSICS`` describes them; ``register()`` (or ``ensure_registered``, on first use) registers
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


_OWN = "qcompile.intrin"
_TVM_ARM = "tvm.s_tir.tensor_intrin.arm_cpu"

DOT_INTRINSICS = {i.name: i for i in (
    DotIntrin("qcompile_dot_16x4_vnni", "uint8", "int8", 16, 4, ("avx512f", "avx512_vnni"), _OWN),
    DotIntrin("qcompile_dot_8x2_u8i8_avx2", "uint8", "int8", 8, 2, ("avx2",), _OWN),
    DotIntrin("qcompile_dot_8x2_i8i8_avx2", "int8", "int8", 8, 2, ("avx2",), _OWN),
    DotIntrin("dot_4x4_i8i8s32_sdot", "int8", "int8", 4, 4, ("asimddp",), _TVM_ARM),
    DotIntrin("dot_4x4_i8i8s32_neon", "int8", "int8", 4, 4, ("asimd",), _TVM_ARM),
)}


def register():
    """Register qcompile's own intrinsics with TVM (idempotent). Done on first use, not on import:
    parsing their TVMScript takes about a second, which a compile without them should not pay."""
    from tvm.s_tir import TensorIntrin

    from . import x86

    for intrin in DOT_INTRINSICS.values():
        if intrin.module == _OWN and TensorIntrin.get(intrin.name, allow_missing=True) is None:
            TensorIntrin.register(intrin.name, *x86.implementation(intrin))


def ensure_registered(intrin: DotIntrin):
    """Make sure TVM knows `intrin` (TVM's ARM ones are registered by importing their module, the
    light way: qcompile.tune.tuner.use_cpu_tensor_intrinsics)."""
    import importlib

    from tvm.s_tir import TensorIntrin

    if TensorIntrin.get(intrin.name, allow_missing=True) is not None:
        return
    if intrin.module != _OWN:
        import tvm

        from ..tune.tuner import use_cpu_tensor_intrinsics

        use_cpu_tensor_intrinsics(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}))
        importlib.import_module(intrin.module)
    else:
        register()


def dot_intrins(names) -> list[DotIntrin]:
    """The DotIntrins among `names` (a target's ``intrinsics:``); other names are ignored here
    (``check_names`` refuses them when a target file is loaded)."""
    return [DOT_INTRINSICS[n] for n in names if n in DOT_INTRINSICS]


def check_names(names):
    """Raise TargetError for names that are not described here: in a target file, a typo would
    silently leave every kernel untensorized."""
    unknown = [n for n in names if n not in DOT_INTRINSICS]
    if unknown:
        from ..errors import TargetError

        raise TargetError(f"unknown tensor intrinsic(s) {', '.join(map(repr, unknown))} in 'intrinsics:'; "
                          f"known: {', '.join(DOT_INTRINSICS)}")


def own_dot_intrins(names) -> list[DotIntrin]:
    """The ones among `names` that qcompile registers (TVM's own tuning rules do not know them)."""
    return [i for i in dot_intrins(names) if i.module == _OWN]


def dot_intrin_for(names, a_dtype: str, b_dtype: str) -> DotIntrin | None:
    """The first intrinsic among `names` for activations `a_dtype` times weights `b_dtype`."""
    for intrin in dot_intrins(names):
        if (intrin.a_dtype, intrin.b_dtype) == (str(a_dtype), str(b_dtype)):
            return intrin
    return None

