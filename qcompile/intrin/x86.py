"""x86 integer dot-product tensor intrinsics (registered by ``qcompile.intrin``).

Every intrinsic here has the shape of TVM's ``dot_16x4_vnni``: ``C[i] += sum_k A[k] * B[i, k]``
with ``A`` a few activation bytes broadcast to every lane, ``B`` one contiguous ``[lanes, k]`` block
of packed weights and ``C`` one SIMD register of int32 accumulators.

* ``qcompile_dot_16x4_vnni``: ``vpdpbusd`` zmm, u8 x s8, 16 lanes x 4. TVM's own ``dot_16x4_vnni``
  passes ``<16 x i32>`` operands to ``llvm.x86.avx512.vpdpbusd.512``, which the LLVM in the 0.27
  wheel declares as ``(<16 x i32>, <64 x i8>, <64 x i8>)``: the build fails. Same description; the
  implementation hands the bytes over as ``int8x64``.
* ``qcompile_dot_8x2_{u8,i8}i8_avx2``: AVX2 has no exact 8-bit dot product. ``vpmaddubsw`` adds two
  u8 x s8 products into int16 with saturation (255 * 127 * 2 = 64770 > 32767), so it is wrong for
  full-range operands. These widen both operands to int16 (``vpmovzxbw`` / ``vpmovsxbw``) and use
  ``vpmaddwd`` (``llvm.x86.avx2.pmadd.wd``): pairs of int16 products summed into int32, exact for
  any 8-bit operands (|product pair| <= 2 * 128 * 255 = 65280). 8 lanes x 2 per instruction.
"""

from __future__ import annotations

from tvm.script import tirx as T


def dot_desc(a_dtype: str, b_dtype: str, lanes: int, k: int):
    """The description: ``C[i] += int32(A[r]) * int32(B[i, r])`` for i < lanes, r < k."""

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((k,), a_dtype, offset_factor=1), B: T.Buffer((lanes, k), b_dtype, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:k], B[0:lanes, 0:k])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for r in T.serial(0, k):
                    with T.sblock("update"):
                        vi, vr = T.axis.remap("SR", [i, r])
                        C[vi] = C[vi] + T.cast(A[vr], "int32") * T.cast(B[vi, vr], "int32")

    return desc


@T.prim_func(s_tir=True)
def _vnni_16x4_impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
                    C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"),
            T.reinterpret(T.broadcast(a_i32, 16), dtype="int8x64"),   # u8 bytes, as LLVM's <64 x i8>
            B.vload([0, 0], dtype="int8x64"),
            dtype="int32x16",
        )


def _avx2_8x2_impl(a_dtype: str):
    """vpmaddwd on operands widened to int16 (zero- or sign-extended A, sign-extended B)."""

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), a_dtype, offset_factor=1), B: T.Buffer((8, 2), "int8", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            a_pair = T.reinterpret(T.cast(A.vload([0], a_dtype + "x2"), "int16x2"), dtype="int32")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(T.broadcast(a_pair, 8), dtype="int16x16"),
                T.cast(B.vload([0, 0], dtype="int8x16"), "int16x16"),
                dtype="int32x8",
            )

    return impl


def implementation(intrin):
    """(description, implementation) PrimFuncs of one of qcompile's x86 DotIntrins."""
    desc = dot_desc(intrin.a_dtype, intrin.b_dtype, intrin.lanes, intrin.k)
    if (intrin.lanes, intrin.k, intrin.a_dtype) == (16, 4, "uint8"):
        return desc, _vnni_16x4_impl
    if (intrin.lanes, intrin.k) == (8, 2):
        return desc, _avx2_8x2_impl(intrin.a_dtype)
    raise ValueError(f"no x86 implementation for {intrin}")
