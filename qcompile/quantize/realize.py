"""Realize: rewrite the annotated graph into real integer arithmetic.

``main`` is rebuilt binding by binding with a BlockBuilder. A layer whose rule can
realize it becomes integer ops on integer codes (int8/uint8/int16 operands, int32
or int64 accumulation, fixed-point requantize); its output lives on as a QTensor
(codes + scale + zero point). Every other binding stays in float and reads its
inputs through ``float_of``, which dequantizes a QTensor only where a float
consumer actually needs it. Integer-exact ops (max-pool, reshape, ReLU...) keep
tensors in the integer domain, so between two quantized layers there is no float
arithmetic at all; float appears only at the entry (quantize) and exit (dequantize)
of integer regions.

The requantize arithmetic is exactly ``fixed_point.requantize``:
``clamp(((int64(acc) * M + (1 << (S - 1))) >> S) + zp, lo, hi)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import fixed_point
from .layer import QTensor
from .observers import choose_qparams
from .weights import layer_weight, quantize_weight


def realize(state):
    """Pipeline stage: the realized IRModule for state.quant_info's plan and ranges."""
    import tvm

    plan = state.quant_info["plan"]
    ranges = state.quant_info["ranges"]
    qconfig = state.quant_info["qconfig"]
    rz = Realizer(plan, ranges, qconfig, state.quant_info.get("full_ranges"), state.quant_info.get("fixed_qparams"))
    func = rz.rebuild(plan.func)
    mod = plan.with_main(func)
    state.quant_info["realized"] = rz.realized
    state.quant_info["kept_float"] = rz.kept_float
    return mod


class Realizer:
    """Emits the rewritten ``main``; rules call back into it (qin, qparams, requantize...)."""

    def __init__(self, plan, ranges: dict, qconfig, full_ranges: dict | None = None, fixed: dict | None = None):
        from tvm import relax

        self.plan = plan
        self.ranges = ranges
        self.full_ranges = full_ranges or {}
        self.fixed = fixed or {}
        self.qconfig = qconfig
        self.bb = relax.BlockBuilder()
        self.float_map: dict = {}
        self.int_map: dict = {}
        self.realized: dict = {}
        self.kept_float: dict = dict(getattr(plan, "kept_float", {}))  # layer name -> why it stayed in fp32
        self.sim_dtype: dict = {}   # simulate mode: var -> the code dtype whose grid it was fake-quantized on
        self._by_anchor = {layer.anchor: layer for layer in plan.layers}
        self._absorbed = {b.var for layer in plan.layers for b in layer.bindings[1:]}

    # ------------------------------------------------------------------ driver
    def rebuild(self, func, outputs=None, extra_params=()):
        """Rebuild `func`; `outputs(realizer)` may choose what it returns (default: its own outputs).
        `extra_params` are appended to its parameters (e.g. the gates of a sensitivity model)."""
        from tvm import relax

        if len(func.body.blocks) != 1 or not isinstance(func.body.blocks[0], relax.DataflowBlock):
            raise NotImplementedError("quantization needs main to be one dataflow block (no control flow)")
        bb = self.bb
        attrs = dict(func.attrs) if func.attrs is not None else None
        with bb.function("main", list(func.params) + list(extra_params), attrs=attrs):
            with bb.dataflow():
                for b in func.body.blocks[0].bindings:
                    self._visit(b)
                result = outputs(self) if outputs else self._remap(func.body.body)
                gv = bb.emit_output(result)
            bb.emit_func_output(gv)
        return bb.get()["main"]

    def _visit(self, binding):
        layer = self._by_anchor.get(binding.var)
        if binding.var in self._absorbed:
            return
        if layer is not None and layer.precision != "fp32" and not self._keeps_float(layer):
            if self.qconfig.mode == "simulate":
                self._simulate(layer)
                return
            q = layer.rule.realize(layer, self)
            if isinstance(q, QTensor):
                self.int_map[layer.out] = q
                self.realized[layer.name] = q.dtype
                return
            if q is not None:  # an integer kernel with a float result (dynamic quantization, float_out)
                self.float_map[layer.out] = q
                self.realized[layer.name] = "dynamic-int8" if self.is_dynamic(layer) else self.act_dtype(layer)
                return
        for b in (layer.bindings if layer is not None else [binding]):
            self.float_map[b.var] = self.bb.emit(self._remap(b.value), name_hint=b.var.name)

    def _keeps_float(self, layer) -> bool:
        reason = layer.rule.keep_float(layer, self)
        if reason:
            self.kept_float[layer.name] = reason
        return bool(reason)

    # ------------------------------------------------------------------ simulation (fake quant)
    def _simulate(self, layer):
        """The layer in float on fake-quantized values: quantize->dequantize on its activation inputs and
        output, weights replaced by their dequantized codes. For debugging realize against the same grid.

        An exact layer (reshape, transpose, ReLU...) is what realize makes of it: realize runs it on its
        input's codes, keeping their dtype and grid (int16 codes stay int16 between two int16 layers), and
        leaves it in float when its input is float. So it adds no fake quantization of its own here."""
        if layer.rule.kind == "exact":
            for b in layer.bindings:
                self.float_map[b.var] = self.bb.emit(self._remap(b.value), name_hint=b.var.name)
            src = self.sim_dtype.get(layer.inputs[0]) if layer.inputs else None
            if src is not None:
                self.sim_dtype[layer.out] = src
                self.realized[layer.name] = f"sim-{src}"
            return
        dtype = self.act_dtype(layer)
        dynamic = self.is_dynamic(layer)
        own = {}  # a dynamic layer's run-time fake quantization is its own, not its inputs' other readers'
        for k, v in enumerate(layer.inputs):
            fq = self._fake_quant(self.float_of(v), v, dtype, dynamic_axis=(-1 if k == 0 else -2) if dynamic else None)
            if dynamic:
                own[v], self.float_map[v] = self.float_map.get(v), fq
            else:
                self.float_map[v] = fq
        for i, b in enumerate(layer.bindings):
            value = b.value
            if i == 0 and layer.weight is not None:
                value = self._with_fake_weight(layer, value)
            self.float_map[b.var] = self.bb.emit(self._remap(value), name_hint=b.var.name)
            if i == 0 and layer.weight is not None:
                self._shift_by_bias_correction(layer, b.var)
        for v, before in own.items():
            if before is None:
                del self.float_map[v]
            else:
                self.float_map[v] = before
        if dynamic:
            self.realized[layer.name] = "sim-dynamic-int8"
            return
        if not layer.attrs.get("float_out"):
            self.float_map[layer.out] = self._fake_quant(self.float_map[layer.out], layer.out, dtype)
            self.sim_dtype[layer.out] = dtype
        self.realized[layer.name] = f"sim-{dtype}"

    def _fake_quant(self, expr, var, dtype, dynamic_axis=None):
        """quantize -> dequantize on var's calibrated grid, or (dynamic_axis) on symmetric int8 scales from
        max|x| along that axis at run time, as ``dynamic_quantize`` computes them."""
        from tvm import relax

        if dynamic_axis is not None:
            codes, scale = self._dynamic_codes(expr, dynamic_axis)
            return self.emit(relax.op.multiply(codes, scale), var.name + "_dyn_fq")
        scale, zp = self.qparams(var, dtype)
        s, z = relax.const(scale, "float32"), relax.const(zp, "int32")
        q = self.bb.emit(relax.op.quantize(expr, s, z, axis=-1, out_dtype=dtype), name_hint=var.name + "_fq")
        return self.bb.emit(relax.op.dequantize(q, s, z, axis=-1, out_dtype="float32"), name_hint=var.name + "_fdq")

    def _shift_by_bias_correction(self, layer, var):
        """Add (corrected bias - own bias) to the anchor's float result, as the integer layer folds it."""
        from tvm import relax

        axis = 0 if layer.op == "relax.nn.conv2d" else 1
        _, _, bias = layer_weight(layer, self, axis=axis)
        if bias is layer.bias:
            return
        delta = np.asarray(bias, np.float64) - (0.0 if layer.bias is None else np.asarray(layer.bias, np.float64))
        ndim = len(var.ty.shape)
        shape = [1] * ndim
        shape[1 if layer.op == "relax.nn.conv2d" else ndim - 1] = -1
        shift = self._gated(relax.const(delta.astype(np.float32).reshape(shape)))
        self.float_map[var] = self.bb.emit(relax.op.add(self.float_map[var], shift), name_hint=var.name + "_bias_corrected")

    def _gated(self, expr):
        """A simulated quantization effect as it enters the model (a subclass may scale it by a gate)."""
        return expr

    def _with_fake_weight(self, layer, call):
        import tvm
        from tvm import relax

        axis = 0 if layer.op == "relax.nn.conv2d" else 1
        scale, codes = quantize_weight(layer.weight, self.weight_dtype(layer), self.qconfig, axis=axis)
        shape = [1] * codes.ndim
        shape[axis] = -1
        fake = (codes.astype(np.float32) * scale.reshape(shape)).astype(np.float32)
        args = [relax.const(fake) if isinstance(a, tvm.ir.expr.Constant) and a.value.numpy().shape == fake.shape else a
                for a in call.args]
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    # ------------------------------------------------------------------ float side
    def _remap(self, e):
        from tvm import relax

        if isinstance(e, relax.Var):
            return self.float_of(e)
        if isinstance(e, relax.Tuple):
            return relax.Tuple([self._remap(f) for f in e.fields])
        if isinstance(e, relax.TupleGetItem):
            return relax.TupleGetItem(self._remap(e.tuple_value), e.index)
        if isinstance(e, relax.Call):
            return relax.Call(e.op, [self._remap(a) for a in e.args], e.attrs, e.ty_args)
        return e

    def float_of(self, var):
        """The float value of an original var (dequantizing its QTensor once, if needed)."""
        from tvm import relax

        if var in self.float_map:
            return self.float_map[var]
        if var in self.int_map:
            q = self.int_map[var]
            deq = relax.op.dequantize(q.expr, relax.const(q.scale, "float32"), relax.const(q.zp, _zp_dtype(q.dtype)),
                                      axis=-1, out_dtype=str(var.ty.dtype))
            self.float_map[var] = self.bb.emit(deq, name_hint=var.name + "_dq")
            return self.float_map[var]
        return var  # a function parameter

    # ------------------------------------------------------------------ integer side
    def is_dynamic(self, layer) -> bool:
        """Activation scales computed at run time: every matmul in dynamic mode, or a layer calibration
        found static scales fail on (``layer.attrs["dynamic"]``, see smooth.Smoother)."""
        return self.qconfig.is_dynamic or bool(layer.attrs.get("dynamic"))

    def act_dtype(self, layer) -> str:
        return "int16" if layer.precision == "int16" else self.qconfig.activation_dtype

    def weight_dtype(self, layer) -> str:
        return "int16" if layer.precision == "int16" else self.qconfig.weight_dtype

    def dynamic_quantize(self, var, axis: int = -1):
        """Quantize a float tensor to symmetric int8 with scales computed at run time from max|x| along
        `axis`: per token (row) for axis -1, per column for axis -2 (a matmul's right operand).
        Returns (codes, scale expr shaped to broadcast against the matmul's result)."""
        from tvm import relax

        codes, scale = self._dynamic_codes(self.float_of(var), axis)
        return self.emit(relax.op.astype(codes, "int8"), "dyn_q"), scale

    def _dynamic_codes(self, x, axis: int):
        """(round(x / s) clipped to +-127 as a float expr, s = max(max|x| along axis, 1e-12) / 127)."""
        from tvm import relax

        amax = self.emit(relax.op.max(relax.op.abs(x), axis=[axis], keepdims=True), "amax")
        scale = self.emit(relax.op.divide(relax.op.maximum(amax, relax.const(1e-12, "float32")),
                                          relax.const(127.0, "float32")), "dyn_scale")
        return relax.op.clip(relax.op.round(relax.op.divide(x, scale)), -127, 127), scale

    def integer(self, var):
        """The QTensor of an original var if it already lives in the integer domain."""
        return self.int_map.get(var)

    def qparams(self, var, dtype) -> tuple[float, int]:
        if var in self.fixed:
            return fixed_qparams(self.fixed[var], dtype, bool(self.qconfig.symmetric_activations))
        if var not in self.ranges:
            raise KeyError(f"no calibrated range for {var.name}")
        lo, hi = self.full_ranges.get(var, self.ranges[var]) if dtype == "int16" else self.ranges[var]
        scale, zp = choose_qparams(lo, hi, dtype, bool(self.qconfig.symmetric_activations))
        return power_of_two(scale, zp, dtype) if self.qconfig.power_of_two_scales else (scale, zp)

    def real_range(self, var, dtype) -> tuple[float, float]:
        """The real interval `var`'s codes of `dtype` cover (from its calibrated or fixed qparams)."""
        scale, zp = self.qparams(var, dtype)
        qmin, qmax = fixed_point.qrange(dtype)
        return (qmin - zp) * scale, (qmax - zp) * scale

    def qin(self, var, dtype: str) -> QTensor:
        """`var` as integer codes of `dtype`: reuse its QTensor, else quantize its float value."""
        from tvm import relax

        q = self.int_map.get(var)
        if q is not None and q.dtype == dtype:
            return q
        scale, zp = self.qparams(var, dtype)
        if q is not None:  # a precision boundary: integer -> integer of another width
            return QTensor(self.requantize_codes(q, scale, zp, dtype), scale, zp, dtype)
        expr = relax.op.quantize(self.float_of(var), relax.const(scale, "float32"),
                                 relax.const(zp, _zp_dtype(dtype)), axis=-1, out_dtype=dtype)
        return QTensor(self.bb.emit(expr, name_hint=var.name + "_q"), scale, zp, dtype)

    def const(self, value, dtype):
        from tvm import relax

        return relax.const(np.asarray(value).astype(dtype), dtype)

    def emit(self, expr, name="q"):
        return self.bb.emit(expr, name_hint=name)

    def requantize(self, acc, real_scale, out_scale: float, out_zp: int, out_dtype: str, axis: int = 1,
                   clip=None, acc_bound: int | None = None, ndim: int = 4):
        """int32/int64 accumulator -> codes of out_dtype, by the fixed-point rule.

        real_scale -- scale of one accumulator unit (scalar, or per channel along `axis`)
        clip       -- (lo, hi) float bounds of a fused ReLU/clip, applied as an integer clamp
        """
        from tvm import relax

        m = np.asarray(real_scale, np.float64) / float(out_scale)
        bits = fixed_point.multiplier_bits_for(acc_bound) if acc_bound else fixed_point.MAX_MULTIPLIER_BITS
        mult, shift = fixed_point.quantize_multiplier(m, bits=bits)
        mult, shift = np.asarray(mult, np.int64), np.asarray(shift, np.int64)
        shape = [1] * ndim
        if mult.ndim and mult.size > 1:
            shape[axis] = mult.size
            mult, shift = mult.reshape(shape), shift.reshape(shape)
        rounding = np.left_shift(np.int64(1), shift - 1).astype(np.int64)
        x = acc if str(acc.ty.dtype) == "int64" else self.emit(relax.op.astype(acc, "int64"), "acc64")
        x = self.emit(relax.op.multiply(x, self.const(mult, "int64")), "scaled")
        x = self.emit(relax.op.add(x, self.const(rounding, "int64")), "rounded")
        x = self.emit(relax.op.right_shift(x, self.const(shift, "int64")), "shifted")
        return self.clamp_cast(x, out_scale, out_zp, out_dtype, clip)

    def dequantize_acc(self, acc, acc_scale, layer, axis: int, ndim: int):
        """The float result of an integer layer that writes float (``float_out``): ``float32(acc) * scale``
        with the scale of one accumulator unit (scalar or per channel along `axis`), then the fused
        ReLU/clip in float: ``reference.dequantize(acc, scale, 0, axis)`` then the clip, bit for bit."""
        from tvm import relax

        scale = np.asarray(acc_scale, np.float32)
        if scale.ndim and scale.size > 1:
            shape = [1] * ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
        out_dtype = str(layer.out.ty.dtype)
        y = self.emit(relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale, "float32")), "dequant_acc")
        y = self.float_clip(y, layer.clip)
        return y if out_dtype == "float32" else self.emit(relax.op.astype(y, out_dtype), "float_out")

    def float_clip(self, y, clip):
        """A fused ReLU/clip (lo, hi; None = unbounded) applied to a float result; no clip: y itself."""
        from tvm import relax

        if clip is None:
            return y
        lo, hi = clip
        return self.emit(relax.op.clip(y, relax.prim_value(float(lo) if lo is not None else -3.4e38),
                                       relax.prim_value(float(hi) if hi is not None else 3.4e38)), "act")

    def clamp_cast(self, x, out_scale, out_zp, out_dtype, clip=None):
        """x + zp, clamped to the dtype range (tightened by a fused ReLU/clip), cast to out_dtype."""
        from tvm import relax

        x = self.emit(relax.op.add(x, self.const(out_zp, str(x.ty.dtype))), "zp")
        lo, hi = clamp_bounds(out_scale, out_zp, out_dtype, clip)
        x = self.emit(relax.op.clip(x, relax.prim_value(int(lo)), relax.prim_value(int(hi))), "clamped")
        return self.emit(relax.op.astype(x, out_dtype), "requant")

    def requantize_codes(self, q: QTensor, out_scale: float, out_zp: int, out_dtype: str, clip=None):
        """Codes of one QTensor re-expressed with another scale / zero point / dtype."""
        from tvm import relax

        if q.scale == out_scale and q.zp == out_zp and q.dtype == out_dtype and clip is None:
            return q.expr
        centered = self.emit(relax.op.subtract(relax.op.astype(q.expr, "int64"), self.const(q.zp, "int64")), "centered")
        ndim = len(q.expr.ty.shape) if q.expr.ty.shape is not None else 0
        return self.requantize(centered, q.scale, out_scale, out_zp, out_dtype, clip=clip, ndim=max(ndim, 1))


def precision(realized: str) -> str:
    """A layer's precision label from what realize made of it: 'int8' for uint8 or int8 codes (the
    activation's signedness is the target's choice, not the layer's precision), 'int16', 'sim-int8', ..."""
    return realized.replace("uint", "int")


def power_of_two(scale: float, zp: int, dtype: str) -> tuple[float, int]:
    """Round a scale up to 2^k (the range only grows) and move the zero point to match, so every
    requantize multiplier of a layer becomes an exact power of two: a shift-only requantize."""
    new = float(2.0 ** np.ceil(np.log2(scale)))
    qmin, qmax = fixed_point.qrange(dtype)
    return new, int(np.clip(np.rint(zp * scale / new), qmin, qmax)) if zp else 0


def fixed_qparams(fixed, dtype: str, symmetric: bool) -> tuple[float, int]:
    """A pre-quantized tensor's (scale, zp, dtype) expressed in `dtype`: the same grid when both are
    8-bit (uint8 zp z is int8 zp z - 128), else the same real range re-quantized."""
    scale, zp, fdtype = fixed
    if fdtype == dtype:
        return scale, zp
    if {fdtype, dtype} == {"uint8", "int8"}:
        return scale, zp - 128 if dtype == "int8" else zp + 128
    qmin, qmax = fixed_point.qrange(fdtype)
    return choose_qparams((qmin - zp) * scale, (qmax - zp) * scale, dtype, symmetric)


def clamp_bounds(scale: float, zp: int, dtype: str, clip=None) -> tuple[int, int]:
    """Integer clamp range: the dtype's range, tightened by float bounds (lo, hi) of a fused activation."""
    qmin, qmax = fixed_point.qrange(dtype)
    if clip is not None:
        lo, hi = clip
        if lo is not None and np.isfinite(lo):
            qmin = max(qmin, int(zp + np.ceil(lo / scale - 1e-9)) if lo != 0 else zp)
        if hi is not None and np.isfinite(hi):
            qmax = min(qmax, int(zp + np.floor(hi / scale + 1e-9)))
    return qmin, max(qmin, qmax)


def _zp_dtype(dtype: str) -> str:
    """TVM's quantize/dequantize take an int32 zero point for every code dtype."""
    return "int32"
