"""Smoothing (SmoothQuant): move activation outliers into the weights of the layers reading them.

Transformer activations carry a few channels tens of times larger than the rest (LayerNorm outputs,
the FFN's GELU output). One per-tensor activation scale must cover those channels, so every other
channel keeps a handful of int8 steps. For an activation ``x`` read by dense layers ``y = x @ W`` and a
factor ``s_k > 0`` per input channel ``k``,

    y = (x / s) @ (s[:, None] * W)

holds exactly in float, and ``s_k = max|x_k|^a / max|W_k|^(1-a)`` (Xiao et al., SmoothQuant, 2023)
flattens the activation's channels at the cost of the weight's (whose scales are per output column,
so they absorb it far better). NNCF's transformer mode does this.

``a`` (alpha) is chosen per activation among ``ALPHAS``, ``0`` (no smoothing) included, by the error of
the quantized product on calibration rows, computed in numpy: activation quantized per tensor (best of a
few clipping ratios), weights per output column, as realize quantizes them. So an activation is smoothed
only where that measurably helps, and a CNN's classifier head is left alone.

The rewrite (``SmoothActivations``, a Relax function pass) inserts ``x_s = multiply(x, 1/s)`` next to ``x``
and makes each smoothed dense layer read ``x_s`` with weight ``s[:, None] * W``. Every other binding
keeps its Var, so calibrated ranges stay valid; ``x_s`` is calibrated in the same pass as the rest
(``Smoother.tap``: its observer sees ``x * (1/s)``, computed from ``x``'s calibration output). The
multiply stays float and makes no layer (annotate's ``float_vars``).

The same search equalizes conv stacks (cross-layer equalization, activation-aware): a *float* activation
(a float op's output, so ``1/s`` joins that op's kernel) read only by int8 pointwise (1x1) or depthwise
convs. A pointwise conv is a dense layer over pixels; a depthwise conv's filters are quantized per channel,
so scaling them is free, the error is the activation's weighted by ``|s_k W_k|^2``, and ``a = 1`` (flat
channels) is a candidate too.

On the same rows, each dense input's per-row (per-token) error with its static scale is compared with
per-token run-time scales (``dynamic_tokens``): where static scales fail (``DYNAMIC_ABOVE``) and run-time
ones are far better (``DYNAMIC_GAIN``), its dense layers are realized with per-token dynamic int8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .observers import choose_qparams
from .reference import dequantize, quantize
from .weights import quantize_weight

ALPHAS = (0.0, 0.5, 0.75, 0.85, 0.95)
CLIP_RATIOS = (1.0, 0.8, 0.6, 0.45, 0.3)   # activation range candidates of the error estimate (of min/max)
STAT_SAMPLES = 64     # calibration samples the statistics (and the choice of alpha) come from
MAX_ROWS = 2048        # calibration rows kept per activation for choosing alpha (2048 x K floats each)
MIN_GAIN = 0.8         # smooth only when the error drops below this fraction of the unsmoothed error
MIN_RATIO = 4.0        # ... and it has outlier channels: max over channels of median|x_k| / their median >= this


DYNAMIC_ABOVE = 0.02   # per-token dynamic scales when the static per-token error (mean over rows) is above this
DYNAMIC_GAIN = 0.25    # ... and run-time per-token scales cut it to below this fraction


def applies(qconfig, state) -> bool:
    """Static int8 with smoothing or per-token fallback on, on a model that is not pre-quantized."""
    wanted = bool(getattr(qconfig, "smoothing", False)) or bool(getattr(qconfig, "dynamic_tokens", False))
    return (wanted and qconfig.precision == "int8" and not qconfig.is_dynamic and not qconfig.is_float
            and not state.quant_info.get("fixed_qparams"))


@dataclass(eq=False)
class Group:
    """One activation and the dense layers (kind "dense") or convolutions ("pointwise": 1x1, "depthwise")
    reading it."""

    var: object                      # the activation (relax.Var)
    layers: list                     # Layers with a constant weight reading it, all of one kind
    kind: str = "dense"
    absmax: np.ndarray | None = None  # per input channel, over calibration rows
    rows: list = field(default_factory=list)
    alpha: float = 0.0
    factors: np.ndarray | None = None   # s (x_s = x / s); None: not smoothed
    smoothed: object = None          # the relax.Var of x / s
    errors: dict = field(default_factory=dict)
    dynamic: bool = False            # static scales fail on x: its dense layers take per-token run-time scales

    @property
    def axis(self) -> int:
        """x's channel axis: last for dense inputs, 1 for NCHW convolution inputs."""
        return -1 if self.kind == "dense" else 1

    def weight(self) -> np.ndarray:
        """The consumers' weights as one [input channel, *] matrix: dense [K, sum N]; pointwise [C, sum O];
        depthwise [C, multiplier * kh * kw] (each input channel's own filters)."""
        if self.kind == "dense":
            return np.concatenate([layer.weight for layer in self.layers], axis=1)
        if self.kind == "pointwise":
            return np.concatenate([layer.weight[:, :, 0, 0].T for layer in self.layers], axis=1)
        c = self.layers[0].weight.shape[0] // _multiplier(self.layers[0])
        return np.concatenate([layer.weight.reshape(c, -1) for layer in self.layers], axis=1)

    def scaled_weight(self, layer, factors) -> np.ndarray:
        """`layer`'s weight with input channel k scaled by factors[k] (what it gets when it reads x / s)."""
        f = factors.astype(np.float64)
        if self.kind == "dense":
            return (layer.weight.astype(np.float64) * f[:, None]).astype(np.float32)
        if self.kind == "pointwise":
            return (layer.weight.astype(np.float64) * f[None, :, None, None]).astype(np.float32)
        per_out = np.repeat(f, _multiplier(layer))      # output channel o reads input channel o // multiplier
        return (layer.weight.astype(np.float64) * per_out[:, None, None, None]).astype(np.float32)


def _multiplier(layer) -> int:
    """A depthwise conv's output channels per input channel."""
    return layer.weight.shape[0] // int(layer.call.attrs.groups)


def conv_kind(layer) -> str | None:
    """"pointwise" (1x1, one group), "depthwise" (a group per input channel) or None for another conv."""
    w, attrs = layer.weight, layer.call.attrs
    if w is None or w.ndim != 4 or attrs.data_layout != "NCHW":
        return None
    groups = int(attrs.groups)
    if groups == 1 and w.shape[2:] == (1, 1):
        return "pointwise"
    if groups > 1 and w.shape[1] == 1 and w.shape[0] % groups == 0 and int(layer.inputs[0].ty.shape[1]) == groups:
        return "depthwise"
    return None


def groups_of(plan) -> list[Group]:
    """Activations read by int8 dense layers (matmul with a constant [K, N] weight), and float activations
    (made by a float op: the scaling joins that op's kernel, no integer layer gets a float op after it)
    read only by int8 pointwise or depthwise convolutions."""
    found: dict = {}
    for layer in plan.layers:
        if layer.weight is None or layer.precision != "int8":
            continue
        if layer.op == "relax.matmul":
            kind = "dense"
        elif layer.op == "relax.nn.conv2d":
            kind = conv_kind(layer) or "other"
        else:
            continue
        found.setdefault(layer.inputs[0], []).append((kind, layer))
    integer_out = {layer.out for layer in plan.layers if layer.precision != "fp32" and layer.name not in plan.kept_float}
    graph_readers = _reader_counts(plan.func)
    groups = []
    for x, items in found.items():
        kinds = {k for k, _ in items}
        if kinds == {"dense"}:
            groups.append(Group(var=x, layers=[layer for _, layer in items]))
        elif len(kinds) == 1 and kinds <= {"pointwise", "depthwise"} and x not in integer_out \
                and graph_readers.get(x, 0) == len(items):
            groups.append(Group(var=x, layers=[layer for _, layer in items], kind=kinds.pop()))
    return groups


def _reader_counts(func) -> dict:
    from collections import Counter

    from tvm import relax

    counts = Counter()
    for block in func.body.blocks:
        for b in block.bindings:
            for v in relax.analysis.free_vars(b.value):
                counts[v] += 1
    for v in relax.analysis.free_vars(func.body.body):
        counts[v] += 1
    return counts


class Smoother:
    """Collects per-channel statistics of the grouped activations, picks alpha, rewrites main."""

    def __init__(self, plan, qconfig):
        self.qconfig = qconfig
        self.groups = groups_of(plan)
        self.report: dict = {}

    def __bool__(self):
        return bool(self.groups)

    # -------------------------------------------------------------- statistics
    def observe(self, tensors: list, outs) -> None:
        """One calibration batch: `outs[i]` is the value of `tensors[i]`."""
        for g in self.groups:
            i = self._index(tensors, g.var)
            if i is None:
                continue
            a = outs[i].numpy() if hasattr(outs[i], "numpy") else np.asarray(outs[i])
            a = np.moveaxis(a, g.axis, -1)
            rows = a.reshape(-1, a.shape[-1]).astype(np.float32)
            m = np.abs(rows).max(axis=0)
            g.absmax = m if g.absmax is None else np.maximum(g.absmax, m)
            if g.kind != "dense":  # pixels: a spread sample of each image, not its first rows
                rows = rows[:: max(1, len(rows) // 256)]
            if sum(len(r) for r in g.rows) < MAX_ROWS:
                g.rows.append(rows[: MAX_ROWS - sum(len(r) for r in g.rows)])

    @staticmethod
    def _index(tensors, var):
        for i, v in enumerate(tensors):
            if v.same_as(var):
                return i
        return None

    # -------------------------------------------------------------- choice
    def choose(self) -> dict:
        """Pick alpha per group (0: not smoothed). Returns {activation name: report row}."""
        from tvm import relax

        report = {}
        for g in self.groups:
            if g.absmax is None or not g.rows:
                continue
            x = np.concatenate(g.rows, axis=0)
            w = g.weight()
            row = report[g.var.name] = {"alpha": 0.0}
            if getattr(self.qconfig, "smoothing", False):
                self._choose_alpha(g, x, w, row)
            if getattr(self.qconfig, "dynamic_tokens", False) and g.kind == "dense":
                # after smoothing: a dense layer leaves static int8 only where even the smoothed input fails
                s = g.factors if g.factors is not None else np.ones(w.shape[0], np.float32)
                static, dynamic = self._token_errors((x / s).astype(np.float32), (w * s[:, None]).astype(np.float32), x, w)
                row["token_error"] = {"static": round(static, 6), "dynamic": round(dynamic, 6)}
                if static > DYNAMIC_ABOVE and dynamic < DYNAMIC_GAIN * static:
                    g.dynamic, g.alpha, g.factors, g.smoothed = True, 0.0, None, None
                    row.update(alpha=0.0, dynamic=True)
        self.report = report
        return report

    def _choose_alpha(self, g, x, w, row: dict) -> None:
        from tvm import relax

        # Systematic outlier channels (large on every row) are what smoothing fixes; rare spikes that
        # land in random channels are not: their factors would not hold on unseen rows, and a spike
        # in a channel the statistics saw as quiet would be amplified. So the test is on each channel's
        # median |x|, which rare spikes do not move.
        typical = np.median(np.abs(x), axis=0)
        ratio = float(typical.max() / max(np.median(typical), 1e-12))
        row["outlier_ratio"] = round(ratio, 2)
        if ratio < MIN_RATIO:
            return
        # depthwise filters are scaled per channel for free, so full flattening (alpha 1) is a candidate too
        alphas = ALPHAS + ((1.0,) if g.kind == "depthwise" else ())
        errors = {a: self._error(x, w, g.absmax, a, g.kind) for a in alphas}
        best = min(errors, key=lambda a: (errors[a], a))
        g.errors = errors
        if best > 0 and errors[best] < MIN_GAIN * errors[0.0]:
            g.alpha = best
            g.factors = factors(g.absmax, w, best)
            g.smoothed = relax.DataflowVar(g.var.name + "_smoothed", g.var.ty)
        row["alpha"] = g.alpha
        row["error"] = {str(a): round(float(e), 6) for a, e in errors.items()}

    def note(self) -> str:
        done = self.smoothed
        alphas = ", ".join(f"{g.var.name} (alpha {g.alpha}, {len(g.layers)} layer(s))" for g in done[:4])
        more = f" and {len(done) - 4} more" if len(done) > 4 else ""
        return (f"smoothing: {len(done)} of {len(self.groups)} dense/pointwise/depthwise input(s) had their outlier "
                f"channels moved into the weights: {alphas}{more}")

    def dynamic_note(self) -> str:
        done = self.dynamic
        names = ", ".join(f"{g.var.name} ({len(g.layers)} layer(s), per-token error "
                          f"{self.report[g.var.name]['token_error']['static']:.3g} static -> "
                          f"{self.report[g.var.name]['token_error']['dynamic']:.3g})" for g in done[:4])
        more = f" and {len(done) - 4} more" if len(done) > 4 else ""
        return (f"per-token dynamic int8: static scales fail on {len(done)} of {len(self.groups)} dense-layer "
                f"input(s), which get run-time scales per token: {names}{more}")

    def _error(self, x, w, absmax, alpha, kind: str = "dense") -> float:
        """Relative error of the quantized product (x/s) @ (s W) against x @ W. Depthwise: each channel's
        filters are quantized on their own scale whatever s is, so the error is the activation's, channel k
        weighted by |s_k W_k|^2 (what reaches the output)."""
        s = factors(absmax, w, alpha) if alpha > 0 else np.ones(w.shape[0], np.float32)
        xs = (x / s).astype(np.float32)
        if kind == "depthwise":
            energy = (w.astype(np.float64) ** 2).sum(axis=1)
            gain = (s.astype(np.float64) ** 2) * energy
            ref = float(((x.astype(np.float64) ** 2) @ energy).sum())
            best = min(float((((self._fake_quant(xs, r) - xs) ** 2) @ gain).sum()) for r in CLIP_RATIOS)
            return best / max(ref, 1e-30)
        ws = (w * s[:, None]).astype(np.float32)
        ref = x @ w
        w_scale, w_q = quantize_weight(ws, "int8", self.qconfig, axis=1)
        wd = dequantize(w_q, w_scale, 0, axis=1)
        best = min(float(((self._fake_quant(xs, r) @ wd - ref) ** 2).sum()) for r in CLIP_RATIOS)
        return best / max(float((ref ** 2).sum()), 1e-30)

    def _fake_quant(self, xs, ratio: float) -> np.ndarray:
        """xs on the activation grid of its min/max times `ratio` (per tensor, as realize quantizes it)."""
        dtype = self.qconfig.activation_dtype
        scale, zp = choose_qparams(float(xs.min()) * ratio, float(xs.max()) * ratio, dtype,
                                   bool(self.qconfig.symmetric_activations))
        return dequantize(quantize(xs, scale, zp, dtype), scale, zp)

    def _token_errors(self, xs, ws, x, w) -> tuple[float, float]:
        """Mean over rows (tokens) of each row's relative output error: (static per-tensor scale on the
        layer's static input xs with weight ws, best of the clipping ratios; per-token run-time scales on
        x with w). Per row, because a row whose values are small next to the tensor's range keeps few int8
        steps, and a LayerNorm or softmax downstream makes every row count alike, however small."""
        ref = x @ w
        norms = np.maximum((ref ** 2).sum(axis=1), 1e-30)

        def row_error(xd, weight):
            return float(np.mean(((xd @ weight - ref) ** 2).sum(axis=1) / norms))

        def codes_of(weight):
            w_scale, w_q = quantize_weight(weight, "int8", self.qconfig, axis=1)
            return dequantize(w_q, w_scale, 0, axis=1)

        wsd = codes_of(ws)
        static = min(row_error(self._fake_quant(xs, r), wsd) for r in CLIP_RATIOS)
        s = np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-12) / 127.0
        dynamic = row_error(np.clip(np.round(x / s), -127, 127) * s, codes_of(w))
        return static, dynamic

    @property
    def dynamic(self) -> list[Group]:
        return [g for g in self.groups if g.dynamic]

    @property
    def smoothed(self) -> list[Group]:
        return [g for g in self.groups if g.factors is not None]

    # -------------------------------------------------------------- calibration of x / s
    def tap(self, tensors: list) -> list[tuple[int, object, np.ndarray]]:
        """[(index of x in tensors, x_s var, 1/s)] for feeding x_s's observer from x's output."""
        return [(self._index(tensors, g.var), g.smoothed, inverse(g)) for g in self.smoothed]

    # -------------------------------------------------------------- rewrite
    def rewrite(self, mod):
        """mod with main smoothed (see SmoothActivations)."""
        return SmoothActivations(self.smoothed)(mod)


def inverse(g: Group) -> np.ndarray:
    """1/s shaped to broadcast along the group's channel axis."""
    inv = (1.0 / g.factors).astype(np.float32)
    return inv if g.axis == -1 else inv.reshape(1, -1, 1, 1)


def factors(absmax: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """s_k = max|x_k|^alpha / max|W_k|^(1-alpha), 1 where a channel is all zero, kept within [1e-5, 1e5]."""
    wmax = np.abs(w).max(axis=1)
    s = np.power(np.maximum(absmax, 1e-8), alpha) / np.power(np.maximum(wmax, 1e-8), 1.0 - alpha)
    s = np.where((absmax <= 0) | (wmax <= 0), 1.0, s)
    return np.clip(s, 1e-5, 1e5).astype(np.float32)


def SmoothActivations(groups):
    """Relax function pass: for each group, ``x_s = multiply(x, 1/s)`` bound after ``x`` (first in the
    block when ``x`` is a parameter), and its dense layers reading ``x_s`` with ``s[:, None] * W``."""
    import tvm
    from tvm import relax

    by_var = {g.var: g for g in groups}
    by_anchor = {layer.anchor: (g, layer) for g in groups for layer in g.layers}

    @relax.expr_functor.mutator
    class _Mutator(relax.PyExprMutator):
        def visit_dataflow_block_(self, block):
            self.builder_._begin_dataflow_block()
            for g in groups:
                if isinstance(g.var, relax.Var) and not any(b.var.same_as(g.var) for b in block.bindings):
                    self._emit_smoothed(g)
            for binding in block.bindings:
                self.visit_binding(binding)
            return self.builder_._end_block()

        def visit_var_binding_(self, binding):
            hit = by_anchor.get(binding.var)
            if hit is None:
                super().visit_var_binding_(binding)
            else:
                g, layer = hit
                call = binding.value
                weight = g.scaled_weight(layer, g.factors)
                new = self.builder_.normalize(relax.Call(call.op, [g.smoothed, relax.const(weight)], call.attrs))
                self.builder_.emit_normalized(relax.VarBinding(binding.var, new))
            g = by_var.get(binding.var)
            if g is not None:
                self._emit_smoothed(g)

        def _emit_smoothed(self, g):
            value = self.builder_.normalize(relax.op.multiply(g.var, relax.const(inverse(g))))
            self.builder_.emit_normalized(relax.VarBinding(g.smoothed, value))

    @relax.transform.function_pass(opt_level=0, name="SmoothActivations")
    class _Pass:
        def transform_function(self, func, mod, ctx):
            return _Mutator(mod).visit_expr(func)

    def apply(mod):
        out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
        out["main"] = _Pass()(tvm.IRModule({"main": mod["main"]}))["main"]
        return out

    return apply
