"""Helpers for rules that absorb the bias add and activation after their anchor op."""

from __future__ import annotations

import numpy as np


def absorb_bias(layer, graph, channels: int, axis: int, ndim: int):
    """If the anchor's sole user is `add(anchor, const)` with a per-channel constant, absorb it."""
    nxt = graph.sole_user(layer.out)
    if nxt is None or not _is_op(nxt.value, "relax.add"):
        return
    a, b = nxt.value.args
    other = b if a.same_as(layer.out) else a if b.same_as(layer.out) else None
    value = graph.const(other) if other is not None else None
    if value is None or value.dtype.kind != "f":
        return
    shape = [1] * ndim
    shape[axis] = channels
    try:
        vec = np.broadcast_to(value, tuple(shape)).reshape(-1)
    except ValueError:
        return
    if value.ndim > ndim or value.size not in (1, channels) or np.broadcast_shapes(value.shape, tuple(shape)) != tuple(shape):
        return
    layer.bias = vec.astype(np.float64) + (layer.bias if layer.bias is not None else 0.0)
    layer.bindings.append(nxt)


def absorb_activation(layer, graph):
    """Absorb a following ReLU / clip (ReLU6, hardtanh) as integer clamp bounds."""
    nxt = graph.sole_user(layer.out)
    if nxt is None:
        return
    v = nxt.value
    if _is_op(v, "relax.nn.relu"):
        layer.clip = (0.0, None)
    elif _is_op(v, "relax.clip") and len(v.args) == 3:
        lo, hi = prim_float(v.args[1]), prim_float(v.args[2])
        if lo is None or hi is None:
            return
        layer.clip = (lo, hi)
    else:
        return
    layer.bindings.append(nxt)


def prim_float(e):
    """The float of a Relax prim value argument (clip bounds), else None."""
    value = getattr(e, "value", None)
    if isinstance(value, (int, float)):
        return float(value)
    inner = getattr(value, "value", None)
    return float(inner) if isinstance(inner, (int, float)) else None


def _is_op(e, name: str) -> bool:
    import tvm
    from tvm import relax

    return isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name
