"""ChannelsLast: keep the tensors between packed integer convs in NHWC, so no transpose runs between them.

``PackConvWeights`` computes a conv channels-last and hands its result back in NCHW:
``permute_dims(conv_nhwc, [0, 3, 1, 2])``; the next packed conv reads its input as
``permute_dims(x, [0, 2, 3, 1])``. Between the two sit the requantize epilogue, residual adds and
pooling, all NCHW. After fusion that meant every conv kernel wrote its output transposed (its
accumulator tile is NHWC: one byte per channel, HW bytes apart) and every next conv transposed it
back in a kernel of its own. On light ResNet-50 int8 (x86_vnni, 1 thread) a 1x1 64->256 conv at 56x56
with its epilogue ran 1.26 ms written NCHW and 0.43 ms written NHWC.

This pass moves each ``permute_dims(u, [0, 3, 1, 2])`` (u: NHWC) down through the ops that do not care
about the layout, doing them on ``u`` instead:

* elementwise ops (``astype``, ``clip``, ``add``, ``multiply``, ``right_shift``, ...): the other operand
  of a binary op is a scalar, or a rank-4 constant (transposed at compile time), or a [1, C, 1, 1]
  tensor (permuted: C values), or another NCHW view;
* ``max_pool2d`` / ``avg_pool2d`` in NCHW become the same pool with ``layout="NHWC"``;
* a depthwise ``conv2d`` (constant weight) becomes the same conv in NHWC / HWIO (1.4-3x faster on
  x86_vnni than NCHW, and no transposes around it);
* ``concat`` along channels (axis 1) of NCHW views becomes a concat along axis 3; ``nn.pad`` pads the
  same amounts on the NHWC axes; ``sum``/``mean``/``max``/``min`` over H and W (global pooling) reduce
  axes 1 and 2 (without keepdims the result is [N, C] either way);
* ``permute_dims(v, [0, 2, 3, 1])`` of a view ``v`` of ``u`` is ``u`` itself: the transposes cancel.

Every converted op leaves its NCHW result as ``permute_dims(new, [0, 3, 1, 2])``, so any op this pass
does not know (a reshape, a depthwise conv, the function's output) still reads NCHW, through one
transpose at the region's exit; the NCHW views nobody reads are removed. Integer elementwise ops and
max/avg pooling give the same values in either layout (pooling sums the same window in the same
order), so no output bit changes.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.expr_functor import PyExprMutator, mutator

from .rewrite import is_op, rewrite_relax_functions

TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)

UNARY = ("relax.astype", "relax.clip", "relax.nn.relu")
BINARY = ("relax.add", "relax.subtract", "relax.multiply", "relax.right_shift", "relax.left_shift",
          "relax.maximum", "relax.minimum", "relax.divide", "relax.floor_divide")
POOLS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d")
REDUCTIONS = ("relax.sum", "relax.mean", "relax.max", "relax.min")  # over H and W (global pooling)


def _axes(call) -> tuple | None:
    axes = call.attrs.axes
    return None if axes is None else tuple(int(a) for a in axes)


def _shape(e) -> list[int] | None:
    dims = getattr(getattr(getattr(e, "ty", None), "shape", None), "values", None)
    if dims is None or not all(hasattr(d, "value") for d in dims):
        return None
    return [int(d) for d in dims]


@mutator
class _ChannelsLast(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.moved = 0      # ops now computed in NHWC
        self.cancelled = 0  # NCHW -> NHWC transposes that became no-ops

    def nhwc_of(self, e):
        """The NHWC tensor `e` is an NCHW view of (e = permute_dims(u, [0, 3, 1, 2])), else None."""
        if not isinstance(e, relax.Var):
            return None
        value = self.lookup_binding(e)
        if is_op(value, "relax.permute_dims") and _axes(value) == TO_NCHW and _shape(value.args[0]) is not None \
                and len(_shape(value.args[0])) == 4:
            return value.args[0]
        return None

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if is_op(call, "relax.permute_dims") and _axes(call) == TO_NHWC:
            u = self.nhwc_of(call.args[0])
            if u is not None:
                self.cancelled += 1
                return u
            return call
        new = self._in_nhwc(call)
        if new is None:
            return call
        self.moved += 1
        if is_op(call, *REDUCTIONS) and not call.attrs.keepdims:  # [N, C] either way
            return new
        return relax.op.permute_dims(self.builder_.emit(new, name_hint="nhwc"), list(TO_NCHW))

    def _in_nhwc(self, call):
        """The same op on the NHWC tensors, when `call` reads at least one NCHW view and all of its
        operands can follow; else None."""
        if is_op(call, *UNARY):
            u = self.nhwc_of(call.args[0])
            return None if u is None else relax.Call(call.op, [u, *call.args[1:]], call.attrs, call.ty_args)
        if is_op(call, *BINARY):
            a, b = (self.nhwc_of(x) for x in call.args[:2])
            if a is None and b is None:
                return None
            a = a if a is not None else self._operand(call.args[0])
            b = b if b is not None else self._operand(call.args[1])
            if a is None or b is None:
                return None
            return relax.Call(call.op, [a, b, *call.args[2:]], call.attrs, call.ty_args)
        if is_op(call, *POOLS):
            u = self.nhwc_of(call.args[0])
            at = call.attrs
            if u is None or at.layout != "NCHW" or (at.out_layout or "NCHW") != "NCHW":
                return None
            pool = relax.op.nn.max_pool2d if is_op(call, "relax.nn.max_pool2d") else relax.op.nn.avg_pool2d
            return pool(u, pool_size=[int(p) for p in at.pool_size], strides=[int(s) for s in at.strides],
                        padding=[int(p) for p in at.padding], dilation=[int(d) for d in at.dilation],
                        ceil_mode=bool(at.ceil_mode), count_include_pad=bool(at.count_include_pad),
                        layout="NHWC", out_layout="NHWC")
        if is_op(call, "relax.nn.pad"):
            u = self.nhwc_of(call.args[0])
            width = [int(p) for p in call.attrs.pad_width]
            if u is None or len(width) != 8:
                return None
            n, c, h, w = (width[i:i + 2] for i in range(0, 8, 2))
            return relax.op.nn.pad(u, pad_width=n + h + w + c, pad_mode=call.attrs.pad_mode,
                                   pad_value=float(call.attrs.pad_value))
        if is_op(call, *REDUCTIONS):
            u = self.nhwc_of(call.args[0])
            axes = call.attrs.axis
            if u is None or axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
                return None
            reduce = {"relax.sum": relax.op.sum, "relax.mean": relax.op.mean, "relax.max": relax.op.max,
                      "relax.min": relax.op.min}[call.op.name]
            return reduce(u, axis=[1, 2], keepdims=bool(call.attrs.keepdims))
        if is_op(call, "relax.nn.conv2d"):
            return self._depthwise(call)
        if is_op(call, "relax.concat"):
            fields = getattr(call.args[0], "fields", None)
            if fields is None or call.attrs.axis is None or int(call.attrs.axis) not in (1, -3):
                return None
            us = [self.nhwc_of(f) for f in fields]
            if any(u is None for u in us):
                return None
            return relax.op.concat(us, axis=3)
        return None

    def _depthwise(self, call):
        """A depthwise conv2d (groups = input channels, constant OIHW weight) on a view: the same conv with
        data_layout NHWC and the weight as HWIO (TOPI's generic grouped conv; on x86_vnni it ran 1.4-3x
        faster than in NCHW, channels contiguous). Plain convs are PackConvWeights' business."""
        u = self.nhwc_of(call.args[0])
        at, w = call.attrs, call.args[1]
        if u is None or not isinstance(w, Constant) or (at.data_layout, at.kernel_layout) != ("NCHW", "OIHW"):
            return None
        channels = _shape(u)[3]
        if (at.out_layout or "NCHW") != "NCHW" or int(at.groups) != channels or channels == 1:
            return None
        hwio = np.ascontiguousarray(w.value.numpy().transpose(2, 3, 1, 0))
        return relax.op.nn.conv2d(u, relax.const(hwio, str(w.value.dtype)), strides=[int(x) for x in at.strides],
                                  padding=[int(x) for x in at.padding], dilation=[int(x) for x in at.dilation],
                                  groups=channels, data_layout="NHWC", kernel_layout="HWIO", out_layout="NHWC",
                                  out_dtype=str(at.out_dtype) if str(at.out_dtype) else None)

    def _operand(self, e):
        """The other operand of a binary op in NHWC terms: a scalar as it is, a rank-4 constant
        transposed now, a [1, C, 1, 1] tensor permuted (C values); None for anything else."""
        shape = _shape(e)
        if shape is None:
            return None
        if len(shape) <= 4 and all(d == 1 for d in shape):  # a scalar broadcasts alike in both layouts
            return e
        if len(shape) != 4:
            return None
        if isinstance(e, Constant):
            return relax.const(np.ascontiguousarray(e.value.numpy().transpose(TO_NHWC)), str(e.value.dtype))
        if shape[0] == 1 and shape[2] == 1 and shape[3] == 1:
            return self.builder_.emit(relax.op.permute_dims(e, list(TO_NHWC)), name_hint="per_channel_nhwc")
        return None


@tvm.transform.module_pass(opt_level=0, name="qcompile.ChannelsLast")
class ChannelsLast:
    """Move NHWC -> NCHW transposes below the layout-free ops after them and cancel them against the
    next NCHW -> NHWC transpose; `last_moved` / `last_cancelled` say how many ops and transposes."""

    def __init__(self):
        self.last_moved = 0
        self.last_cancelled = 0

    def transform_module(self, mod, _ctx):
        rewriter = _ChannelsLast(mod)
        new = rewrite_relax_functions(mod, rewriter)
        self.last_moved, self.last_cancelled = rewriter.moved, rewriter.cancelled
        if not rewriter.moved and not rewriter.cancelled:
            return mod
        # a cancelled transpose left `x_nhwc = u`: bind readers to u itself, then drop unread NCHW views
        return relax.transform.DeadCodeElimination()(relax.transform.CanonicalizeBindings()(new))
