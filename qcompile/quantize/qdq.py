"""Pre-quantized (QDQ) models: take their scales instead of calibrating.

An ONNX QDQ model (from quantization-aware training, or ORT's quantize_static) imports
as ``dequantize(quantize(x, s, zp))`` around float ops, with weights that FoldConstant
has already turned back into float constants lying on their quantization grid.
``fold_qdq`` removes each activation quantize->dequantize pair and records
``(s, zp, dtype)`` for the tensor ``x``; realize then uses those parameters, so the
model runs on the same integer kernels as a calibrated one. Symmetric per-channel
max-scaled weights (ORT's and PyTorch's default) re-quantize onto exactly their codes.
"""

from __future__ import annotations

import tvm

from .annotate import Graph, QuantPlan
from .realize import Realizer


def _is(e, name):
    return isinstance(e, tvm.relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name


def find_pairs(func) -> dict:
    """{dequantize var: (x, scale, zp, dtype, quantize var)} for per-tensor QDQ pairs on activations."""
    graph = Graph(func)
    pairs = {}
    for b in graph.bindings:
        if not _is(b.value, "relax.dequantize") or not isinstance(b.value.args[0], tvm.relax.Var):
            continue
        qvar = b.value.args[0]
        q = graph.value.get(qvar)
        if q is None or not _is(q, "relax.quantize") or graph.users[qvar] != 1:
            continue
        scale, zp = graph.const(q.args[1]), graph.const(q.args[2])
        dscale, dzp = graph.const(b.value.args[1]), graph.const(b.value.args[2])
        if scale is None or zp is None or scale.size != 1 or zp.size != 1:
            continue  # per-axis activation quantization: leave it in place
        if dscale is None or dzp is None or float(dscale.ravel()[0]) != float(scale.ravel()[0]) \
                or int(dzp.ravel()[0]) != int(zp.ravel()[0]):
            continue
        pairs[b.var] = (q.args[0], float(scale.ravel()[0]), int(zp.ravel()[0]), str(qvar.ty.dtype), qvar)
    return pairs


class _QDQFolder(Realizer):
    """Rebuild main without the QDQ pairs (reusing the realizer's float rebuilding)."""

    def __init__(self, func, pairs: dict):
        super().__init__(QuantPlan(layers=[], observe=[], func=func, mod=None), {}, None)
        self.pairs = pairs
        self.skip = {p[4] for p in pairs.values()}

    def _visit(self, binding):
        if binding.var in self.skip:
            return
        if binding.var in self.pairs:
            self.float_map[binding.var] = self.float_of(self.pairs[binding.var][0])
            return
        super()._visit(binding)


def fold_qdq(mod):
    """(mod without activation QDQ pairs, {new var of x: (scale, zp, dtype)}); ({}, unchanged) if none."""
    func = mod["main"]
    pairs = find_pairs(func)
    if not pairs:
        return mod, {}
    folder = _QDQFolder(func, pairs)
    new_func = folder.rebuild(func)
    qparams = {}
    for x, scale, zp, dtype, _ in pairs.values():
        qparams[folder.float_of(x)] = (scale, zp, dtype)
    new_mod = mod.clone() if hasattr(mod, "clone") else mod
    new_mod["main"] = new_func
    return new_mod, qparams


def has_qdq(mod) -> bool:
    found = []
    tvm.relax.analysis.post_order_visit(mod["main"], lambda e: found.append(1) if _is(e, "relax.quantize") else None)
    return bool(found)
