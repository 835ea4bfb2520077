"""Integer conv2d on the target's dot-product intrinsic: constant weights packed at compile time,
the activation read channels-last.

After ``realize`` an integer conv2d is ``conv2d(x[N, C, H, W], W[O, C, KH, KW], out_dtype="int32")``
(NCHW / OIHW, ``x`` int8 or uint8, ``W`` an int8 constant), followed by the integer requantize
epilogue. ``PackConvWeights`` (a Relax module pass, run in the ``lower`` stage next to
``PackDenseWeights``) rewrites each one it can into

    xt  = pad(permute_dims(x, NHWC), spatial padding, channels up to Cp)     (its own kernel)
    acc[n, y, x, o] = sum_{kh, kw, c < Cp} int32(xt[n, y*sh + kh*dh, x*sw + kw*dw, c])
                                         * int32(Wp[o / lanes, kh, kw, c / k, o % lanes, c % k])
    out[n, y, x, o] = acc[n, y, x, o]                                          (o < O)
    permute_dims(out, NCHW)                                                    (Relax, after the call)

with ``Wp[O/lanes, KH, KW, Cp/k, lanes, k]`` the weights packed once, zero-padded to whole blocks.
The reduction block carries ``qcompile.dot_intrin`` = the intrinsic's name, exactly as a packed dense
does, so the same machinery tensorizes it: the ``TensorizedConv`` default-schedule rule and, in
``qcompile tune``, the ``MultiLevelTilingWithIntrin`` space of ``qcompile.tune.tuner``. The zero
padding adds zero products, so results are bit-exact.

Design, and why:

* **Direct conv on packed weights, not im2col + the packed dense** (ONNX Runtime's QLinearConv).
  The intrinsic ``C[lanes] += A[k] . B[lanes, k]`` broadcasts k activation bytes and loads one
  contiguous ``[lanes, k]`` weight block; with the activation channels-last, A is k consecutive
  input channels at one pixel, so a 3x3 conv reads its input in place. im2col would write a
  KH*KW times larger copy of every activation per layer first.
* **The weight layout** ``[O/lanes, KH, KW, C/k, lanes, k]`` is the O-blocked one of TVM's x86
  ``conv2d_NCHWc_int8``: one vector load per intrinsic call, walked in order over the reduction.
* **The accumulator and the output are NHWC** (output channels innermost, like the dense's
  ``[.., N]``): one intrinsic call fills one register of consecutive output channels, and the fused
  requantize epilogue, which the schedule runs per register tile, reads and writes whole vectors.
* **Activation layout: channels-last between packed convs.** The conv hands its result back as
  ``permute_dims(out, NCHW)`` and reads its input through ``permute_dims(x, NHWC)``;
  ``transform.ChannelsLast`` (run right after this pass) moves the first down through the
  requantize epilogue, residual adds, pooling and channel concats and cancels it against the second.
  What it cannot move past stays one transpose at the integer region's exit. Without it each conv
  wrote its output transposed (one byte per channel, H*W bytes apart) and each next conv transposed
  it back: a 1x1 64->256 conv at 56x56 with its epilogue took 1.26 ms that way, 0.43 ms channels-last
  (x86_vnni, 1 thread). TVM's ``ConvertLayout`` stops at ``clip`` and ``nn.pad``, which the requantize
  chain and realize's padding use, hence a pass of our own.
* **Grouped and depthwise convs stay on the existing path** (``TiledReduction``): each output
  channel reduces over only C/groups inputs, so there is no k-channel dot product across lanes.
  So do int16 layers (no 8-bit intrinsic), non-constant weights, and convs already in another
  layout. A target without dot ``intrinsics:`` is left untouched.
"""

from __future__ import annotations

import numpy as np

from . import DotIntrin, dot_intrin_for, dot_intrins
from .pack import ANNOTATION


def pack_conv_weight(w: np.ndarray, lanes: int, k: int) -> np.ndarray:
    """[O, C, KH, KW] -> [ceil(O/lanes), KH, KW, ceil(C/k), lanes, k], zero-padded:
    Wp[a, h, w, b, i, r] = W[a*lanes + i, b*k + r, h, w]."""
    if w.ndim != 4:
        raise ValueError(f"pack_conv_weight takes an [O, C, KH, KW] weight, got shape {w.shape}")
    o, c, kh, kw = w.shape
    op, cp = -(-o // lanes) * lanes, -(-c // k) * k
    padded = np.zeros((op, cp, kh, kw), dtype=w.dtype)
    padded[:o, :c] = w
    return np.ascontiguousarray(padded.reshape(op // lanes, lanes, cp // k, k, kh, kw).transpose(0, 4, 5, 2, 1, 3))


def packed_conv_te(x, wp, out_channels: int, strides, dilation, intrin_name: str):
    """The TE compute of the packed conv: x [N, H, W, Cp] (channels-last, already padded) times Wp ->
    int32 [N, OH, OW, out_channels], channels-last (see the module doc)."""
    from tvm import te

    blocks_o, kh, kw, blocks_c, lanes, kb = (int(d) for d in wp.shape)
    n, h, w, cp = (int(d) for d in x.shape)
    if cp != blocks_c * kb:
        raise ValueError(f"packed conv: x has {cp} channels, the packed weight {blocks_c * kb}")
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"packed conv: a {kh}x{kw} kernel (dilation {dh}x{dw}) does not fit a {h}x{w} input")
    rh, rw = te.reduce_axis((0, kh), name="rh"), te.reduce_axis((0, kw), name="rw")
    rc = te.reduce_axis((0, cp), name="rc")

    def dot(b, y, z, o):
        a = x[b, y * sh + rh * dh, z * sw + rw * dw, rc].astype("int32")
        return te.sum(a * wp[o // lanes, rh, rw, rc // kb, o % lanes, rc % kb].astype("int32"), axis=[rh, rw, rc])

    acc = te.compute([n, oh, ow, blocks_o * lanes], dot, name="qcompile_packed_conv", attrs={ANNOTATION: intrin_name})
    return te.compute([n, oh, ow, out_channels], lambda b, y, z, o: acc[b, y, z, o], name="qcompile_conv_nhwc")


def _static_shape(expr):
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    if not all(isinstance(d, int) or hasattr(d, "value") for d in shape.values):
        return None
    return [int(d) for d in shape.values]


def _conv_intrin(call, names) -> DotIntrin | None:
    """The intrinsic for this call when it is a plain (groups=1) NCHW/OIHW int32 conv2d of a static
    4-D activation by a constant weight, with dtypes one of `names` takes."""
    import tvm

    if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d" or len(call.args) != 2:
        return None
    attrs = call.attrs
    if str(attrs.out_dtype) != "int32" or int(attrs.groups) != 1:
        return None
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or "NCHW") != ("NCHW", "OIHW", "NCHW"):
        return None
    x, w = call.args
    if not isinstance(w, tvm.ir.expr.Constant) or len(w.value.shape) != 4:
        return None
    shape = _static_shape(x)
    if shape is None or len(shape) != 4 or shape[1] != int(w.value.shape[1]):
        return None
    return dot_intrin_for(names, x.ty.dtype, str(w.value.dtype))


def PackConvWeights(intrinsics):  # noqa: N802 - a pass factory, as TVM names them
    """The module pass: rewrite every conv2d one of `intrinsics` (names, as in a target's
    ``intrinsics:``) can compute into the packed, channels-last form. A no-op when none of them is
    a dot intrinsic."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from ..transform.rewrite import rewrite_relax_functions

    names = tuple(intrinsics)
    dots = dot_intrins(names)  # checked here, as PackDenseWeights does

    @mutator
    class Packer(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.packed = 0

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            intrin = _conv_intrin(call, names)
            if intrin is None:
                return call
            x, w = call.args
            out_channels, channels = (int(d) for d in w.value.shape[:2])
            wp = pack_conv_weight(w.value.numpy(), intrin.lanes, intrin.k)
            top, left, bottom, right = (int(p) for p in call.attrs.padding)
            extra_c = wp.shape[3] * intrin.k - channels
            # its own kernel: padding inside the conv kernel is no tensorize pattern (see pack.py)
            xt = self.builder_.emit(relax.op.permute_dims(x, [0, 2, 3, 1]), "x_nhwc")
            if top or left or bottom or right or extra_c:
                xt = self.builder_.emit(relax.op.nn.pad(xt, [0, 0, top, bottom, left, right, 0, extra_c]),
                                        "x_nhwc_pad")
            self.packed += 1
            out = self.builder_.emit(self.builder_.call_te(packed_conv_te, xt, relax.const(wp), out_channels,
                                                           [int(s) for s in call.attrs.strides],
                                                           [int(d) for d in call.attrs.dilation], intrin.name,
                                                           primfunc_name_hint="qcompile_packed_conv"), "conv_nhwc")
            # NCHW for the ops after it; transform.ChannelsLast moves this transpose down and cancels it
            return relax.op.permute_dims(out, [0, 3, 1, 2])

    @tvm.transform.module_pass(opt_level=0, name="qcompile.PackConvWeights")
    def pack(mod, _ctx):
        if not dots:
            return mod
        packer = Packer(mod)
        new = rewrite_relax_functions(mod, packer)
        return new if packer.packed else mod

    return pack
