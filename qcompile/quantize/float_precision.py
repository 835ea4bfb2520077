"""fp16 / bf16 compute for the layers that stay out of integer arithmetic.

``LowerFloatCompute(dtype)`` casts the operands of every float32 conv2d / matmul to
float16 or bfloat16 and keeps float32 accumulation and output (``out_dtype``), the
way TVM's ToMixedPrecision treats fp16. The casts of constant weights fold away at
compile time, so weights are stored in the narrow type. It runs after realize, so
only layers that are still float (fp32 fallbacks, or a whole ``--quantize fp16``
model) are affected.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

FLOAT_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "float16": "float16", "bfloat16": "bfloat16"}


@mutator
class _CastCompute(PyExprMutator):
    def __init__(self, mod, dtype: str):
        super().__init__(mod)
        self.dtype = dtype
        self.count = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name not in ("relax.nn.conv2d", "relax.matmul"):
            return call
        a, b = call.args[0], call.args[1]
        if any(str(x.ty.dtype) != "float32" for x in (a, b)):
            return call
        a16, b16 = relax.op.astype(a, self.dtype), relax.op.astype(b, self.dtype)
        self.count += 1
        if call.op.name == "relax.matmul":
            return relax.op.matmul(a16, b16, out_dtype="float32")
        at = call.attrs
        return relax.op.nn.conv2d(a16, b16, strides=at.strides, padding=at.padding, dilation=at.dilation,
                                  groups=int(at.groups), data_layout=at.data_layout, kernel_layout=at.kernel_layout,
                                  out_layout=at.out_layout, out_dtype="float32")


@tvm.transform.module_pass(opt_level=0, name="LowerFloatCompute")
class LowerFloatCompute:
    """Run float32 conv2d/matmul with float16/bfloat16 operands and float32 accumulation."""

    def __init__(self, dtype: str = "float16"):
        self.dtype = FLOAT_DTYPES.get(dtype, dtype)
        self.count = 0

    def transform_module(self, mod, ctx):
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mutator_ = _CastCompute(mod, self.dtype)
                mod[gv] = mutator_.visit_expr(func)
                self.count += mutator_.count
        return mod
