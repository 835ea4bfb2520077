"""SumToAdds: ONNX's n-ary ``Sum`` as a chain of binary adds.

The Relax ONNX frontend imports ``Sum(a, b, ...)`` with static shapes as
``sum(stack([broadcast_to(a, S), broadcast_to(b, S), ...], axis=0), axis=[0])``: a copy of every
input, a stacked tensor and a reduction, none of which the quantizer has a rule for, so every
residual connection of a Caffe2-exported ResNet left the integer domain. ``add(add(a, b), ...)`` is
the same sum (in the same order, so the same float result) and each add takes the integer add rule.

Only a stack whose only user is the sum is rewritten (the broadcast copies become dead); the add
chain broadcasts like the copies did, and a ``broadcast_to`` stays at the end only if the inputs'
common shape is smaller than the Sum's.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .rewrite import is_op, rewrite_relax_functions, use_counts


@mutator
class _SumRewriter(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.users = {}
        self.count = 0

    def visit_function_(self, func):
        self.users, _ = use_counts(func)
        return super().visit_function_(func)

    def visit_call_(self, call):
        inputs = self._summands(call)
        if inputs is None:
            return super().visit_call_(call)
        total = self.visit_expr(inputs[0])
        for x in inputs[1:]:
            total = self.builder_.emit(relax.op.add(total, self.visit_expr(x)), name_hint="sum")
        if [int(d) for d in total.ty.shape.values] != [int(d) for d in call.ty.shape.values]:
            total = relax.op.broadcast_to(total, call.ty.shape)
        self.count += 1
        return total

    def _summands(self, call):
        """The Sum's inputs (before their broadcast copies) if `call` is sum(stack(...), axis=[0])."""
        if not is_op(call, "relax.sum") or call.attrs.keepdims or call.attrs.axis is None:
            return None
        stacked = call.args[0]
        if [int(a) for a in call.attrs.axis] != [0] or not isinstance(stacked, relax.Var):
            return None
        if self.users.get(stacked, 0) != 1:
            return None
        stack = self.lookup_binding(stacked)
        if not is_op(stack, "relax.stack") or int(stack.attrs.axis) != 0:
            return None
        fields = stack.args[0]
        fields = getattr(fields, "fields", None)
        if fields is None or len(fields) < 2 or not all(_static(f) for f in fields):
            return None
        inputs = []
        for f in fields:
            copy = self.lookup_binding(f) if isinstance(f, relax.Var) else None
            inputs.append(copy.args[0] if is_op(copy, "relax.broadcast_to") and _static(copy.args[0]) else f)
        return inputs


def _static(e) -> bool:
    shape = getattr(getattr(e, "ty", None), "shape", None)
    dims = getattr(shape, "values", None)
    return dims is not None and all(hasattr(d, "value") for d in dims)


@tvm.transform.module_pass(opt_level=0, name="SumToAdds")
class SumToAdds:
    """Rewrite each sum-of-stack (ONNX Sum) into binary adds; `last_count` says how many."""

    def __init__(self):
        self.last_count = 0

    def transform_module(self, mod, _ctx):
        rewriter = _SumRewriter(mod)
        new = rewrite_relax_functions(mod, rewriter)
        self.last_count = rewriter.count
        return new
