"""Pointwise activations as a lookup table on the codes: HardSwish, HardSigmoid, SiLU and the like.

A function of one tensor applied element by element maps each of the 2**bits input codes to one
output code, so the integer layer is ``take(table, q - qmin)`` with
``table[i] = quantize(f(dequantize(qmin + i)))`` (reference.lut_table): 256 entries for 8-bit
codes, 65536 for int16. No requantize, and any f.

The frontends decompose these activations into several Relax ops: ONNX HardSwish is
``x * (clip(x + 3, 0, 6) / 6)``, ONNX HardSigmoid ``clip(alpha * x + beta, 0, 1)``, torch's
``clip(x + 3, 0, 6) / 6``, SiLU ``x * sigmoid(x)`` (or ``relax.nn.silu``). The rule starts at the
first of them and follows the chain of sole users while every op is elementwise in the chain's value,
its input ``x`` and scalar constants (the ops in ``_NUMPY``), and keeps it if it holds a nonlinear
op (a lone relu/clip is the exact rule's; a linear chain stays what it was). f is that chain,
evaluated in numpy on the table's inputs. The layer is named after the function when it is a known
one (hardswish_0, hardsigmoid_0, silu_0), else pointwise_k.
"""

from __future__ import annotations

import numpy as np

from ..fixed_point import qrange
from ..layer import Layer, QTensor
from ..reference import lut_table
from . import Rule, register_pattern
from ._fuse import _is_op, prim_float


def _sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))  # no overflow warning for large |v|


_NUMPY = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply, "relax.divide": np.divide,
    "relax.minimum": np.minimum, "relax.maximum": np.maximum,
    "relax.clip": lambda v, lo, hi: np.clip(v, lo, hi), "relax.nn.relu": lambda v: np.maximum(v, 0.0),
    "relax.sigmoid": _sigmoid, "relax.tanh": np.tanh, "relax.nn.silu": lambda v: v * _sigmoid(v),
}
_LINEAR = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide"}
_STARTS = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.sigmoid", "relax.tanh",
           "relax.nn.silu")

# known functions a chain is named after: {name: f}, checked on a grid (HardSigmoid: any alpha, beta)
_KNOWN = {
    "hardswish": lambda v: v * np.clip(v + 3.0, 0.0, 6.0) / 6.0,
    "silu": lambda v: v * _sigmoid(v),
}


def evaluate(steps, x: np.ndarray) -> np.ndarray:
    """The chain `steps` ([(op name, [arg]), ...], an arg being "x", "y" (the previous step's value) or
    a float) applied to float64 `x`."""
    y = x
    for op, args in steps:
        y = _NUMPY[op](*(x if a == "x" else y if a == "y" else a for a in args))
    return y


@register_pattern(*_STARTS)
class LookupRule(Rule):
    needs_integer_reader = True  # a table / scale-shift read back in float gains nothing
    def match(self, binding, graph):
        x = _single_input(binding.value, graph)
        if x is None:
            return None
        step = _step(binding.value, x, None)
        if step is None or not _same_shape(binding.var, x):
            return None
        steps, chain = [step], [binding]
        while True:
            nxt = graph.sole_user(chain[-1].var)
            step = _step(nxt.value, x, chain[-1].var) if nxt is not None else None
            if step is None or not _same_shape(nxt.var, x):
                break
            steps.append(step)
            chain.append(nxt)
        ops = [op for op, _ in steps]
        if all(op in _LINEAR for op in ops) or (len(ops) == 1 and ops[0] != "relax.nn.silu"):
            return None
        layer = Layer.single(binding, self, graph, inputs=[x])
        layer.bindings = chain
        layer.attrs["steps"] = steps
        layer.op = f"relax.{_name(steps)}"
        return layer

    def realize(self, layer, rz):
        from tvm import relax

        dtype = rz.act_dtype(layer)
        q = rz.qin(layer.inputs[0], dtype)
        out_scale, out_zp = rz.qparams(layer.out, dtype)
        try:
            with np.errstate(all="ignore"):
                table = lut_table(lambda v: evaluate(layer.attrs["steps"], v), q.scale, q.zp, out_scale, out_zp, dtype)
        except ValueError:  # NaN somewhere (0/0, inf - inf): no table
            return None
        index = rz.emit(relax.op.subtract(relax.op.astype(q.expr, "int32"), rz.const(qrange(dtype)[0], "int32")),
                        "lut_index")
        # "clip": the index is in range by construction, and TVM warns at every build of a "fast" take
        out = rz.emit(relax.op.take(rz.const(table, dtype), index, axis=0, mode="clip"), "lut")
        return QTensor(out, out_scale, out_zp, dtype)


def _single_input(call, graph):
    """The one float tensor var the first op of a chain reads (its other arguments constants)."""
    tensors = [a for a in call.args if graph.is_tensor_var(a)]
    return tensors[0] if len(tensors) == 1 else None


def _step(call, x, prev):
    """(op, args) of a chain op reading the previous value `prev` (or `x` first), else None."""
    if not any(_is_op(call, name) for name in _NUMPY):
        return None
    args = []
    for a in call.args:
        if prev is not None and a.same_as(prev):
            args.append("y")
        elif a.same_as(x):
            args.append("x" if prev is not None else "y")
        else:
            value = _scalar(a)
            if value is None:
                return None
            args.append(value)
    if "y" not in args:
        return None
    return call.op.name, args


def _scalar(e):
    """A scalar constant or prim value argument as a float, else None."""
    value = prim_float(e)
    if value is not None:
        return value
    tensor = getattr(getattr(e, "value", None), "numpy", None)
    if tensor is None:
        return None
    value = tensor()
    return float(value.reshape(-1)[0]) if value.size == 1 and value.dtype.kind == "f" else None


def _same_shape(v, x) -> bool:
    dims = [getattr(getattr(e.ty, "shape", None), "values", None) for e in (v, x)]
    if dims[0] is None or dims[1] is None:
        return False
    try:
        return [int(d) for d in dims[0]] == [int(d) for d in dims[1]]
    except TypeError:
        return False


def _name(steps) -> str:
    grid = np.linspace(-8.0, 8.0, 161)
    with np.errstate(all="ignore"):
        got = evaluate(steps, grid)
    for name, fn in _KNOWN.items():
        if np.allclose(got, fn(grid), atol=1e-6):
            return name
    inside = (got > 1e-6) & (got < 1 - 1e-6)
    if inside.sum() >= 2:
        alpha, beta = np.polyfit(grid[inside], got[inside], 1)
        if alpha > 0 and np.allclose(got, np.clip(alpha * grid + beta, 0.0, 1.0), atol=1e-6):
            return "hardsigmoid"
    return "pointwise"
