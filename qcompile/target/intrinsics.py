"""The tensor intrinsics a target file may name in ``intrinsics:``, described as data.

``DOT_INTRINSICS`` says what each one computes (operand dtypes, the [lanes, k] block) and who
registers it with TVM; ``check_names`` refuses an unknown name when a target file loads (a typo
would silently leave every kernel untensorized); ``dot_intrin_for`` picks the one for a layer's
operand dtypes. Registering them with TVM and packing weights for them is qcompile.intrin's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TargetError

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


OWN = "qcompile.intrin"
_TVM_ARM = "tvm.s_tir.tensor_intrin.arm_cpu"

DOT_INTRINSICS = {i.name: i for i in (
    DotIntrin("qcompile_dot_16x4_vnni", "uint8", "int8", 16, 4, ("avx512f", "avx512_vnni"), OWN),
    DotIntrin("qcompile_dot_8x2_u8i8_avx2", "uint8", "int8", 8, 2, ("avx2",), OWN),
    DotIntrin("qcompile_dot_8x2_i8i8_avx2", "int8", "int8", 8, 2, ("avx2",), OWN),
    DotIntrin("dot_4x4_i8i8s32_sdot", "int8", "int8", 4, 4, ("asimddp",), _TVM_ARM),
    DotIntrin("dot_4x4_i8i8s32_neon", "int8", "int8", 4, 4, ("asimd",), _TVM_ARM),
)}


def dot_intrins(names) -> list[DotIntrin]:
    """The DotIntrins among `names` (a target's ``intrinsics:``); other names are ignored here
    (``check_names`` refuses them when a target file is loaded)."""
    return [DOT_INTRINSICS[n] for n in names if n in DOT_INTRINSICS]


def check_names(names):
    """Raise TargetError for names that are not described here: in a target file, a typo would
    silently leave every kernel untensorized."""
    unknown = [n for n in names if n not in DOT_INTRINSICS]
    if unknown:
        raise TargetError(f"unknown tensor intrinsic(s) {', '.join(map(repr, unknown))} in 'intrinsics:'; "
                          f"known: {', '.join(DOT_INTRINSICS)}")


def own_dot_intrins(names) -> list[DotIntrin]:
    """The ones among `names` that qcompile registers (TVM's own tuning rules do not know them)."""
    return [i for i in dot_intrins(names) if i.module == OWN]


def dot_intrin_for(names, a_dtype: str, b_dtype: str) -> DotIntrin | None:
    """The first intrinsic among `names` for activations `a_dtype` times weights `b_dtype`."""
    for intrin in dot_intrins(names):
        if (intrin.a_dtype, intrin.b_dtype) == (str(a_dtype), str(b_dtype)):
            return intrin
    return None

