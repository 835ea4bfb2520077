"""Partition: offload the realized integer layers of a Relax module to the accelerator.

``OffloadToAccel`` is a Relax function pass. It looks for the binding chains the
quantizer's realize pass emits for each integer layer::

    [padded = nn.pad(x, pad_value=x_zp)]
    conv = nn.conv2d(x|padded, const int8 OIHW, out_dtype=int32)     | matmul(x, const int8 [K, N], int32)
    biased = add(conv, const int32)
    acc64 = astype(biased, int64); scaled = multiply(acc64, const M); rounded = add(scaled, const 2**(S-1))
    shifted = right_shift(rounded, const S); zp = add(shifted, const zp); clamped = clip(zp, lo, hi)
    requant = astype(clamped, int8)

and the residual add (``rules/eltwise.py``: two centred, left-shifted, rescaled int8 inputs,
summed and requantized). Each chain whose intermediates have no other users is lowered to an
accelerator program (``lower.py``); the chain is replaced by::

    requant = call_dps_packed("qcompile.accel.run", [program_blob (uint8 const), x, ...], out_ty=int8 tensor)

Everything else stays on the CPU, untouched. A layer the core cannot run (a tile that fits
no buffer, a requantize the ALU cannot reproduce exactly, ...) stays on the CPU too, and the
report says why.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..target.accelerator import AccelConfig
from .lower import AddLayer, ConvLayer, Requant, Unsupported, dense_layer, lower
from .runtime import FUNC_NAME


# ----------------------------------------------------------------------------- matching helpers

def _op(e, name):
    return isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name


def _const(e, dtype=None):
    if not isinstance(e, tvm.ir.expr.Constant):
        return None
    a = e.value.numpy()
    if dtype is not None and str(a.dtype) != dtype:
        return None
    return a


def _prim_int(e):
    value = getattr(e, "value", None)
    if isinstance(value, int):
        return value
    inner = getattr(value, "value", None)
    if isinstance(inner, (int, float)) and float(inner).is_integer():
        return int(inner)
    return None


def _dtype(e):
    ty = getattr(e, "ty", None)
    return str(getattr(ty, "dtype", ""))


def _shape(e):
    ty = getattr(e, "ty", None)
    shape = getattr(ty, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        return None


class _Graph:
    """Bindings of one dataflow block: value of each var, and how often each var is used."""

    def __init__(self, func):
        self.value = {}
        self.uses = {}
        self.order = {}
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.value[b.var] = b.value
                    self.order[b.var] = len(self.order)
                if isinstance(getattr(b, "value", None), relax.Var):   # an alias `y = x` is a use of x
                    self._use(b.value)
        relax.analysis.post_order_visit(func.body, self._count)

    def _count(self, e):
        if isinstance(e, relax.Call):
            for a in e.args:
                self._use(a)
        elif isinstance(e, relax.Tuple):
            for a in e.fields:
                self._use(a)
        elif isinstance(e, relax.TupleGetItem):
            self._use(e.tuple_value)
        elif isinstance(e, relax.SeqExpr):
            self._use(e.body)

    def _use(self, a):
        if isinstance(a, relax.Var):
            self.uses[a] = self.uses.get(a, 0) + 1

    def producer(self, var, op, single_use=True):
        """The call bound to `var` if it is `op` (and `var` is used once), else None."""
        if not isinstance(var, relax.Var) or var not in self.value:
            return None
        if single_use and self.uses.get(var, 0) != 1:
            return None
        v = self.value[var]
        return v if _op(v, op) else None


def _requant_tail(g: _Graph, var):
    """Match astype(clip(add(right_shift(add(multiply(X, M), R), S), ZP), lo, hi), int8) ending at `var`.

    Returns (X, Requant, absorbed vars) or None."""
    out = g.value.get(var)
    if not _op(out, "relax.astype") or str(out.attrs.dtype) != "int8":
        return None
    absorbed = []
    clamped = g.producer(out.args[0], "relax.clip")
    if clamped is None:
        return None
    absorbed.append(out.args[0])
    lo, hi = _prim_int(clamped.args[1]), _prim_int(clamped.args[2])
    zp_add = g.producer(clamped.args[0], "relax.add")
    if zp_add is None or lo is None or hi is None:
        return None
    absorbed.append(clamped.args[0])
    zp = _const(zp_add.args[1], "int64")
    shifted = g.producer(zp_add.args[0], "relax.right_shift")
    if zp is None or zp.size != 1 or shifted is None:
        return None
    absorbed.append(zp_add.args[0])
    shift = _const(shifted.args[1], "int64")
    rounded = g.producer(shifted.args[0], "relax.add")
    if shift is None or rounded is None:
        return None
    absorbed.append(shifted.args[0])
    rnd = _const(rounded.args[1], "int64")
    scaled = g.producer(rounded.args[0], "relax.multiply")
    if rnd is None or scaled is None:
        return None
    absorbed.append(rounded.args[0])
    mult = _const(scaled.args[1], "int64")
    if mult is None:
        return None
    absorbed.append(scaled.args[0])
    shift, mult, rnd = shift.reshape(-1), mult.reshape(-1), rnd.reshape(-1)
    if not (shift.size == mult.size == rnd.size) or (shift < 1).any() or \
            not np.array_equal(rnd, np.left_shift(np.int64(1), shift - 1)):
        return None
    return scaled.args[0], Requant(mult.astype(np.int64), shift.astype(np.int64), int(zp.reshape(-1)[0]), lo, hi), absorbed


def match_layer(g: _Graph, var, cfg: AccelConfig):
    """(layer, input vars, absorbed vars) for the chain ending at `var`, or (None, reason) / None."""
    tail = _requant_tail(g, var)
    if tail is None:
        return None
    x, rq, absorbed = tail
    name = getattr(var, "name", "layer")
    # ---- conv2d / dense
    acc64 = g.producer(x, "relax.astype")
    if acc64 is not None and str(acc64.attrs.dtype) == "int64":
        biased = g.producer(acc64.args[0], "relax.add")
        if biased is None:
            return None
        bias = _const(biased.args[1], "int32")
        if bias is None:
            return None
        core_var = biased.args[0]
        conv = g.producer(core_var, "relax.nn.conv2d")
        dense = g.producer(core_var, "relax.matmul")
        absorbed_core = absorbed + [x, acc64.args[0], core_var]
        if conv is not None:
            return _match_conv(g, conv, bias, rq, absorbed_core, cfg, core_var)
        if dense is not None:
            return _match_dense(g, dense, bias, rq, absorbed_core, cfg, core_var)
        return None
    # ---- residual add
    total = g.producer(x, "relax.add")
    if total is not None and "add" in cfg.offload:
        return _match_add(g, total, rq, absorbed + [x], cfg, getattr(x, "name", name))
    return None


def _match_conv(g, conv, bias, rq, absorbed, cfg, core_var):
    a = conv.attrs
    name = core_var.name
    w = _const(conv.args[1])
    data = conv.args[0]
    if w is None or w.dtype != np.int8 or _dtype(data) != "int8" or str(a.out_dtype) != "int32":
        return None
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or (a.out_layout or "NCHW") != "NCHW":
        return None
    if "conv2d" not in cfg.offload:
        return ("skip", name, "conv2d is not in this core's offload list")
    padding = [int(p) for p in a.padding]
    pad_value = 0
    pad = g.producer(data, "relax.nn.pad")
    if pad is not None and str(pad.attrs.pad_mode) == "constant" and not any(padding):
        pw = [int(p) for p in pad.attrs.pad_width]
        if pw[:4] == [0, 0, 0, 0] and float(pad.attrs.pad_value).is_integer():
            top, bottom, left, right = pw[4:]
            padding = [top, left, bottom, right]
            pad_value = int(pad.attrs.pad_value)
            absorbed = absorbed + [data]
            data = pad.args[0]
    x_shape = _shape(data)
    if x_shape is None or len(x_shape) != 4:
        return ("skip", name, "input shape is not static NCHW")
    layer = ConvLayer(name, x_shape, w, bias.reshape(-1).astype(np.int32), rq, tuple(int(s) for s in a.strides),
                      tuple(padding), tuple(int(d) for d in a.dilation), int(a.groups), pad_value)
    return layer, [data], absorbed


def _match_dense(g, mm, bias, rq, absorbed, cfg, core_var):
    name = core_var.name
    w = _const(mm.args[1])
    data = mm.args[0]
    if w is None or w.dtype != np.int8 or w.ndim != 2 or _dtype(data) != "int8" or str(mm.attrs.out_dtype) != "int32":
        return None
    if "dense" not in cfg.offload:
        return ("skip", name, "dense is not in this core's offload list")
    x_shape = _shape(data)
    if x_shape is None:
        return ("skip", name, "input shape is not static")
    return dense_layer(name, x_shape, w, bias.reshape(-1).astype(np.int32), rq), [data], absorbed


def _branch(g, var):
    """right_shift(add(multiply(left_shift(subtract(astype(q, int64), zp), L), M), R), S) -> (q, zp, L, M, S, vars)."""
    shifted = g.producer(var, "relax.right_shift")
    if shifted is None:
        return None
    s = _const(shifted.args[1], "int64")
    rounded = g.producer(shifted.args[0], "relax.add")
    if s is None or s.size != 1 or rounded is None:
        return None
    r = _const(rounded.args[1], "int64")
    scaled = g.producer(rounded.args[0], "relax.multiply")
    if r is None or scaled is None:
        return None
    m = _const(scaled.args[1], "int64")
    head = g.producer(scaled.args[0], "relax.left_shift")
    if m is None or m.size != 1 or head is None:
        return None
    lsh = _const(head.args[1], "int64")
    centered = g.producer(head.args[0], "relax.subtract")
    if lsh is None or centered is None:
        return None
    zp = _const(centered.args[1], "int64")
    wide = g.producer(centered.args[0], "relax.astype")
    if zp is None or wide is None or str(wide.attrs.dtype) != "int64" or _dtype(wide.args[0]) != "int8":
        return None
    s, r = int(s.reshape(-1)[0]), int(r.reshape(-1)[0])
    if s < 1 or r != 1 << (s - 1):
        return None
    return (wide.args[0], int(zp.reshape(-1)[0]), int(lsh.reshape(-1)[0]), int(m.reshape(-1)[0]), s,
            [var, shifted.args[0], rounded.args[0], scaled.args[0], head.args[0], centered.args[0]])


def _match_add(g, total, rq, absorbed, cfg, name):
    pa, pb = _branch(g, total.args[0]), _branch(g, total.args[1])
    if pa is None or pb is None or pa[2] != pb[2]:
        return None
    shape_a, shape_b = _shape(pa[0]), _shape(pb[0])
    if shape_a is None or shape_a != shape_b:
        return ("skip", name, "add of tensors with different (or dynamic) shapes")
    if rq.mult.size != 1:
        return None
    layer = AddLayer(name, shape_a, pa[1], pb[1], pa[2], pa[3], pa[4], pb[3], pb[4], rq)
    return layer, [pa[0], pb[0]], absorbed + pa[5] + pb[5]


# ----------------------------------------------------------------------------- the pass

def plan_offload(func, cfg: AccelConfig):
    """Find and lower the offloadable layers of a Relax function: (plans, cpu_layers)."""
    from . import timing

    g = _Graph(func)
    plans, cpu, taken = {}, [], set()
    for var in sorted(g.value, key=lambda v: -g.order[v]):  # from the outputs backwards: longest chains first
        if var in taken:
            continue
        m = match_layer(g, var, cfg)
        if m is None:
            continue
        if m[0] == "skip":
            cpu.append({"layer": m[1], "reason": m[2]})
            continue
        layer, inputs, absorbed = m
        if any(v in taken for v in absorbed):
            continue
        try:
            prog = lower(cfg, layer)
        except Unsupported as err:
            cpu.append({"layer": layer.name, "op": getattr(layer, "op", "add"), "reason": str(err)})
            continue
        prog.stats = timing.simulate(cfg, prog.insns, prog.meta.get("macs", 0))
        blob = prog.to_blob()
        prog.meta["program_bytes"] = int(blob.size)
        plans[var] = (prog, blob, inputs, absorbed)
        taken.update(absorbed)
        taken.add(var)
    return plans, cpu


def _make_mutator():
    @relax.expr_functor.mutator
    class _Offloader(relax.PyExprMutator):
        def __init__(self, mod, plans, absorbed):
            super().__init__(mod)
            self.plans = plans
            self.absorbed = absorbed

        def visit_var_binding_(self, binding):
            var = binding.var
            if var in self.absorbed:
                return
            plan = self.plans.get(var)
            if plan is None:
                super().visit_var_binding_(binding)
                return
            prog, blob, inputs, _ = plan
            args = [relax.const(blob, "uint8")] + [self.visit_expr(v) for v in inputs]
            call = relax.op.call_dps_packed(FUNC_NAME, args, out_ty=relax.TensorType(prog.output["shape"], "int8"))
            hint = f"accel_{prog.meta['layer']}"
            nv = self.builder_.emit(call, name_hint=hint) if isinstance(var, relax.DataflowVar) else \
                self.builder_.emit_output(call, name_hint=hint)
            self.set_var_remap(var, nv)

    return _Offloader


def offload_function(func, mod, cfg: AccelConfig):
    """(new function, layer reports, cpu layers)."""
    plans, cpu = plan_offload(func, cfg)
    if not plans:
        return func, [], cpu
    g = _Graph(func)
    absorbed = set()
    for plan in plans.values():
        absorbed.update(plan[3])
    new = _make_mutator()(mod, plans, absorbed).visit_expr(func)
    reports = [layer_report(plan[0]) for var, plan in sorted(plans.items(), key=lambda kv: g.order[kv[0]])]
    return new, reports, cpu


def layer_report(prog) -> dict:
    st = prog.stats or {}
    meta = prog.meta
    return {
        "layer": meta["layer"], "op": meta["op"], "input": meta.get("input"), "output": meta.get("output"),
        "kernel": meta.get("kernel"), "stride": meta.get("stride"), "groups": meta.get("groups"),
        "macs": meta.get("macs", 0), "cycles": st.get("cycles"), "time_us": st.get("time_us"),
        "gemm_utilization": st.get("gemm_utilization"), "gemm_busy_frac": st.get("gemm_busy_frac"),
        "gemm_cycles": st.get("gemm_cycles"), "alu_cycles": st.get("alu_cycles"),
        "modules": st.get("modules"), "dram_read_bytes": st.get("dram_read_bytes"),
        "dram_write_bytes": st.get("dram_write_bytes"), "dram_bytes": st.get("dram_bytes"),
        "ops_per_byte": st.get("ops_per_byte"), "achieved_gops": st.get("achieved_gops"),
        "insns": meta.get("insns"), "uops": meta.get("uops"), "tiling": meta.get("tiling"),
        "requantize": meta.get("requantize"), "program_bytes": meta.get("program_bytes"),
        "program_id": prog.pid.hex(),
    }


@relax.transform.function_pass(opt_level=0, name="OffloadToAccel")
class OffloadToAccel:
    """Relax function pass: offload the layers `cfg` can run; appends to `report` (layers, cpu_layers)."""

    def __init__(self, cfg: AccelConfig, report: dict | None = None):
        self.cfg = cfg
        self.report = report

    def transform_function(self, func, mod, ctx):
        if not isinstance(func, relax.Function) or not func.body.blocks:
            return func
        new, layers, cpu = offload_function(func, mod, self.cfg)
        if self.report is not None:
            self.report.setdefault("layers", []).extend(layers)
            self.report.setdefault("cpu_layers", []).extend(cpu)
        return new
