"""Weight prepacking: integer dense layers rewritten to read their weights in the blocked layout the
target's dot-product intrinsic loads (``qcompile.intrin``).

After ``realize`` an integer dense layer is ``matmul(x[..., K], W[K, N], out_dtype="int32")`` with
``W`` a constant. ``PackDenseWeights`` (a Relax module pass, run first in the ``lower`` stage) packs
``W`` once, at compile time, into ``Wp[N/lanes, K/k, lanes, k]``: one intrinsic's ``[lanes, k]``
block is contiguous, so one vector load reads it. N and K are padded with zero weights up to the
block. The matmul becomes a ``call_tir`` of

    acc[..., n] = sum_{r < Kp} int32(x[..., r]) * int32(Wp[n / lanes, r / k, n % lanes, r % k])

(``x`` padded with zeros along K by an ``nn.pad`` of its own when K is not a multiple of k: inside
the dense kernel MetaSchedule may inline the padding into the reduction, which then no longer matches
the intrinsic; ``acc`` cut back to N columns when N is not a multiple of lanes), whose reduction block is annotated with the intrinsic's name
(``qcompile.dot_intrin``). Legalization fuses the bias and requantize epilogue into it as before;
the default schedule and the tuner tensorize blocks carrying that annotation. The padding adds
zero products, so results are bit-exact.

Only activation x constant-weight matmuls whose dtypes an intrinsic of the target takes are packed
(u8 x s8 for VNNI; s8 x s8 or u8 x s8 for the AVX2 one). Activation x activation matmuls
(attention) have no constant to pack, int16 layers no intrinsic; both are left as they are, and so is
every module on a target without ``intrinsics:``.
"""

from __future__ import annotations

import numpy as np

from . import DotIntrin, dot_intrin_for, dot_intrins

ANNOTATION = "qcompile.dot_intrin"


def pack_weight(w: np.ndarray, lanes: int, k: int) -> np.ndarray:
    """[K, N] -> [ceil(N/lanes), ceil(K/k), lanes, k], zero-padded: Wp[a, b, i, r] = W[b*k + r, a*lanes + i]."""
    if w.ndim != 2:
        raise ValueError(f"pack_weight takes a [K, N] matrix, got shape {w.shape}")
    kk, n = w.shape
    kp, np_ = -(-kk // k) * k, -(-n // lanes) * lanes
    padded = np.zeros((kp, np_), dtype=w.dtype)
    padded[:kk, :n] = w
    return np.ascontiguousarray(padded.reshape(kp // k, k, np_ // lanes, lanes).transpose(2, 0, 3, 1))


def packed_dense_te(x, wp, n: int, intrin_name: str):
    """The TE compute of the packed dense: x [..., Kp] (already padded) times Wp -> int32 [..., n]."""
    from tvm import te

    blocks_n, blocks_k, lanes, kb = (int(d) for d in wp.shape)
    kp, np_ = blocks_k * kb, blocks_n * lanes
    lead = list(x.shape[:-1])
    if int(x.shape[-1]) != kp:
        raise ValueError(f"packed dense: x has {x.shape[-1]} columns, the packed weight {kp}")
    r = te.reduce_axis((0, kp), name="r")

    def dot(*i):
        j = i[-1]
        a = x[(*i[:-1], r)].astype("int32")
        return te.sum(a * wp[j // lanes, r // kb, j % lanes, r % kb].astype("int32"), axis=r)

    acc = te.compute(lead + [np_], dot, name="qcompile_packed_dense", attrs={ANNOTATION: intrin_name})
    if np_ == n:
        return acc
    return te.compute(lead + [n], lambda *i: acc[i], name="qcompile_unpad_n")


def _dense_intrin(call, names) -> DotIntrin | None:
    """The intrinsic for this call when it is an activation x constant [K, N] int32 matmul."""
    import tvm
    from tvm import relax

    if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.matmul" or len(call.args) != 2:
        return None
    if str(call.attrs.out_dtype) != "int32":
        return None
    x, w = call.args
    if not isinstance(w, tvm.ir.expr.Constant) or len(w.value.shape) != 2:
        return None
    shape = getattr(x.ty, "shape", None)
    if shape is None or not hasattr(shape, "values") or len(shape.values) < 1:
        return None
    if not all(isinstance(d, int) or hasattr(d, "value") for d in shape.values):
        return None
    if int(shape.values[-1]) != int(w.value.shape[0]):
        return None
    return dot_intrin_for(names, x.ty.dtype, str(w.value.dtype))


def PackDenseWeights(intrinsics):  # noqa: N802 - a pass factory, as TVM names them
    """The module pass: pack the weights of every dense layer one of `intrinsics` (names, as in a
    target's ``intrinsics:``) can compute. A no-op when none of them is a dot intrinsic."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from ..transform.rewrite import rewrite_relax_functions

    names = tuple(intrinsics)
    dots = dot_intrins(names)

    @mutator
    class Packer(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.packed = 0

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            intrin = _dense_intrin(call, names)
            if intrin is None:
                return call
            x, w = call.args
            kk, n = (int(d) for d in w.value.shape)
            wp = pack_weight(w.value.numpy(), intrin.lanes, intrin.k)
            self.packed += 1
            if kk % intrin.k:  # a kernel of its own: padding inside the dense kernel is no tensorize pattern
                ndim = len(x.ty.shape.values)
                x = self.builder_.emit(relax.op.nn.pad(x, [0] * (2 * ndim - 1) + [wp.shape[1] * intrin.k - kk]),
                                       "x_pad_k")
            return self.builder_.call_te(packed_dense_te, x, relax.const(wp), n, intrin.name,
                                         primfunc_name_hint="qcompile_packed_dense")

    @tvm.transform.module_pass(opt_level=0, name="qcompile.PackDenseWeights")
    def pack(mod, _ctx):
        if not dots:
            return mod
        packer = Packer(mod)
        new = rewrite_relax_functions(mod, packer)
        return new if packer.packed else mod

    return pack
