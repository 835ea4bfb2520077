"""SplitGroupedConv: a grouped conv2d (1 < groups < channels) becomes one ordinary conv2d per group.

TVM legalizes a grouped conv2d to one kernel whose input-channel index is
``oc // (O/G) * (C/G) + rc``: the output-channel axis indexes the activation too, so the default
schedule's register tiling (which vectorizes along an axis only the weight depends on) does not
apply, and the kernel stays a scalar loop nest. AlexNet's group-2 convolutions ran 12x slower than
ONNX Runtime that way, ShuffleNet's group-4 ones 10x.

After this pass each group is a plain conv2d on a channel slice of the input with its own slice
of the weights (sliced here, at compile time, when the weights are constants), and the results are
concatenated along the channels. The G convs have the same shape, so tuning sees one task.
Results are the same sums in the same order, so float outputs are identical and integer ones bit-exact.

Depthwise-like convs (few channels per group) are left alone: G kernels of one channel each would
cost more than they gain. Only NCHW/OIHW convs with static shapes are split.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .rewrite import rewrite_relax_functions

CONV2D = tvm.ir.Op.get("relax.nn.conv2d")


@mutator
class _Splitter(PyExprMutator):
    def __init__(self, mod, min_group_channels: int):
        super().__init__(mod)
        self.min_group_channels = min_group_channels
        self.split = 0

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if call.op != CONV2D:
            return call
        plan = self._plan(call)
        if plan is None:
            return call
        groups, cin, cout = plan
        x, w = call.args
        a = call.attrs
        parts = []
        for g in range(groups):
            xg = self.builder_.emit(relax.op.strided_slice(x, axes=[1], begin=[g * cin], end=[(g + 1) * cin]))
            if isinstance(w, tvm.ir.expr.Constant):   # weights sliced once, here
                wg = relax.const(w.value.numpy()[g * cout:(g + 1) * cout])
            else:
                wg = self.builder_.emit(relax.op.strided_slice(w, axes=[0], begin=[g * cout], end=[(g + 1) * cout]))
            parts.append(self.builder_.emit(relax.op.nn.conv2d(
                xg, wg, strides=a.strides, padding=a.padding, dilation=a.dilation, groups=1,
                data_layout=a.data_layout, kernel_layout=a.kernel_layout, out_layout=a.out_layout,
                out_dtype=a.out_dtype)))
        self.split += 1
        return relax.op.concat(parts, axis=1)

    def _plan(self, call):
        a = call.attrs
        groups = int(a.groups)
        if groups <= 1 or a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout != "NCHW":
            return None
        shapes = []
        for arg in call.args:
            dims = getattr(getattr(arg.ty, "shape", None), "values", None)
            if dims is None or len(dims) != 4 or not all(hasattr(d, "value") for d in dims):
                return None
            shapes.append([int(d) for d in dims])
        (_, channels, _, _), (out_channels, cin, _, _) = shapes
        cout = out_channels // groups
        if channels != cin * groups or min(cin, cout) < self.min_group_channels:
            return None
        return groups, cin, cout


@tvm.transform.module_pass(opt_level=0, name="SplitGroupedConv")
class SplitGroupedConv:
    """Rewrite each grouped conv2d with at least `min_group_channels` input and output channels per
    group into per-group conv2d + concat. `last_count` says how many convs the last run split."""

    def __init__(self, min_group_channels: int = 8):
        self.min_group_channels = min_group_channels
        self.last_count = 0

    def transform_module(self, mod, _ctx):
        splitter = _Splitter(mod, self.min_group_channels)
        new = rewrite_relax_functions(mod, splitter)
        self.last_count = splitter.split
        return new
