"""Compiler: realized integer layers -> accelerator Programs (instructions + DRAM image).

Supported layers (what the quantizer's realize pass produces):

* conv2d NCHW/OIHW, int8 x int8 -> int32, any stride / padding (with the input zero
  point as pad value) / dilation / groups (grouped and depthwise convs become a dense conv
  with block-sparse weights; all-zero weight blocks get no micro-ops);
* dense / matmul with a constant weight (a 1x1 conv over the rows);
* the residual add of two int8 tensors (TFLite's integer scheme, all on the ALU);

each followed by its bias add and fixed-point requantize with clamp (the fused ReLU).

Data layout: activations are blocked ``(N/BATCH, C/BLOCK_IN, H, W, BATCH, BLOCK_IN)``,
weights ``(O/BLOCK_OUT, C/BLOCK_IN, KH, KW, BLOCK_OUT, BLOCK_IN)``; channel counts are
padded with zeros to whole blocks.

Tiling: an output tile is ``to`` output-channel blocks x ``th`` rows x ``tw`` columns;
its reduction over input-channel blocks runs in chunks of ``ti`` blocks. Input chunks,
weight tiles and accumulator tiles are double buffered (ping-pong halves) so the load
module fetches chunk k+1 and the store module writes tile t-1 while the compute module
works on chunk k / tile t; the dependency tokens enforce exactly the needed order.
Weights are either *resident* (an output-channel tile's whole weight slice loaded once and
reused by every spatial tile) or *streamed* with each chunk; the tiler estimates the cycles
of every tiling that fits the buffers and keeps the best.

Requantize on the ALU (bit-exact with ``fixed_point.requantize``)::

    acc += bias                                   ADD  (per-channel vector)
    power-of-two multipliers (M_c = 2**j_c):      ADD  rounding   SHR  n_c        (no multiplier)
    one shift for all channels:                   MUL  M, shr=S, round            (64-bit product)
    per-channel shifts S_c:                       MUL  M, shr=a   ADD 2**(b_c-1)   SHR b_c
                                                  with a = min(S) - 1, b_c = S_c - a (nested floors are exact)
    + zero point, MAX lo, MIN hi                  (the store saturates to int8 for free)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import isa
from ..target.accelerator import UOP_BYTES, AccelConfig
from .isa import MEM_ACC, MEM_ACC8, MEM_INP, MEM_UOP, MEM_WGT
from .program import Program, nchw_shape, packed_shape

INT32_MAX = (1 << 31) - 1


class Unsupported(Exception):
    """This layer cannot run on the accelerator (the reason is shown in the offload report)."""


class TilingError(Unsupported):
    """No tiling of this layer fits the on-chip buffers."""


# ----------------------------------------------------------------------------- layer descriptions

@dataclass
class Requant:
    """clamp(((acc * mult + 2**(shift-1)) >> shift) + zp, lo, hi), per output channel."""

    mult: np.ndarray
    shift: np.ndarray
    zp: int = 0
    lo: int = -128
    hi: int = 127


@dataclass
class ConvLayer:
    name: str
    x_shape: tuple                  # logical input shape (NCHW, or (..., K) for dense)
    weight: np.ndarray              # int8 OIHW
    bias: np.ndarray | None         # int32 [O] (zero-point correction folded in)
    rq: Requant
    stride: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)   # top, left, bottom, right
    dilation: tuple = (1, 1)
    groups: int = 1
    pad_value: int = 0              # the input zero point
    view: str = "nchw"              # "dense": x is (..., K) and the weight was [K, N]
    op: str = "conv2d"

    @property
    def out_shape(self):
        if self.view == "dense":
            return tuple(self.x_shape[:-1]) + (self.weight.shape[0],)
        n, _, h, w = self.x_shape
        return (n, self.weight.shape[0]) + conv_out_hw(h, w, self.weight.shape[2:], self.stride, self.padding,
                                                       self.dilation)


def conv_out_hw(h, w, k, stride, padding, dilation):
    top, left, bottom, right = padding
    oh = (h + top + bottom - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
    ow = (w + left + right - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
    return oh, ow


def dense_layer(name, x_shape, w_kn, bias, rq, pad_value=0) -> ConvLayer:
    """matmul(x[..., K], w[K, N]) as a 1x1 conv."""
    w = np.ascontiguousarray(np.asarray(w_kn).T)[:, :, None, None]
    return ConvLayer(name, tuple(x_shape), w, bias, rq, pad_value=pad_value, view="dense", op="dense")


# ----------------------------------------------------------------------------- requantize on the ALU

@dataclass
class AluStep:
    op: str                 # ADD MAX MIN SHR MUL
    imm: int | None = None  # immediate operand, or
    vec: str | None = None  # name of a per-channel constant vector
    shr: int = 0
    round: int = 0


@dataclass
class RequantPlan:
    steps: list
    vectors: dict = field(default_factory=dict)     # name -> int32 [O]
    kind: str = ""

    @property
    def names(self) -> list:
        return list(self.vectors)


def _uniform(v):
    v = np.asarray(v)
    return v.size == 0 or bool((v == v.flat[0]).all())


def plan_requant(cfg: AccelConfig, bias, rq: Requant, acc_bound: int, out_range=(-128, 127)) -> RequantPlan:
    """ALU steps computing requantize(acc + bias) exactly, given |acc| <= acc_bound."""
    o = rq.mult.size
    mult = np.asarray(rq.mult, np.int64).reshape(-1)
    shift = np.asarray(rq.shift, np.int64).reshape(-1)
    bias = np.zeros(o, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(-1)
    if bias.size == 1 and o > 1:
        bias = np.full(o, int(bias[0]), np.int64)
    if mult.size == 1 and o > 1:
        mult, shift = np.full(o, mult[0]), np.full(o, shift[0])
    if (mult < 0).any() or (shift < 1).any() or (shift > 62).any():
        raise Unsupported("requantize multiplier/shift outside the fixed-point rule's range")
    x_bound = int(acc_bound) + int(np.abs(bias).max(initial=0))
    if x_bound > INT32_MAX:
        raise Unsupported(f"accumulator + bias can reach {x_bound}, beyond int32")
    # channels whose result is 0 for every reachable accumulator are "dead": multiplier 0
    dead = (mult == 0) | (x_bound * mult < (np.int64(1) << (shift - 1)))
    steps, vectors = [], {}

    def operand(name, values):
        values = np.asarray(values, np.int64)
        if _uniform(values):
            return {"imm": int(values.flat[0]) if values.size else 0}
        if values.min() < -(1 << 31) or values.max() > INT32_MAX:
            raise Unsupported(f"requantize constant '{name}' does not fit int32")
        vectors[name] = values.astype(np.int32)
        return {"vec": name}

    live = ~dead
    pow2 = bool(((mult[live] & (mult[live] - 1)) == 0).all())
    if pow2:
        n = np.zeros(o, np.int64)
        add = np.zeros(o, np.int64)
        n[live] = shift[live] - np.log2(mult[live]).astype(np.int64)
        rnd = np.where(n >= 1, np.left_shift(np.int64(1), np.maximum(n - 1, 0)), 0)
        add[live] = (bias + rnd)[live]
        n[dead], add[dead] = 31, 1 << 30          # (acc + 2**30) >> 31 == 0 for |acc| < 2**30
        fits = (n[live] <= 30).all() and (not dead.any() or acc_bound < (1 << 30) - 1) \
            and x_bound + int(rnd[live].max(initial=0)) <= INT32_MAX
        if fits:
            steps.append(AluStep("ADD", **operand("bias_round", add)))
            steps.append(AluStep("SHR", **operand("shift", n)))
            steps += _zp_clamp(rq, out_range)
            return RequantPlan(_drop_noops(steps), vectors, "shift-only (power-of-two scales)")
    if not cfg.has_alu_op("MUL"):
        raise Unsupported("requantize multipliers are not powers of two and this core's ALU has no MUL "
                          "(quantize with power-of-two scales: target quant.power_of_two_scales)")
    if (bias != 0).any():
        steps.append(AluStep("ADD", **operand("bias", bias)))
    if dead.all():
        steps.append(AluStep("MUL", imm=0))
        steps += _zp_clamp(rq, out_range)
        return RequantPlan(steps, vectors, "all channels constant")
    s_live = shift[live]
    shift = np.where(dead, s_live.max(), shift)
    mult = np.where(dead, 0, mult)
    if _uniform(shift):
        s = int(shift[0])
        steps.append(AluStep("MUL", shr=s, round=1, **operand("mult", mult)))
        kind = "multiply + rounding shift"
    else:
        a = int(shift.min()) - 1
        b = shift - a
        rnd = np.left_shift(np.int64(1), b - 1)
        lo, hi = rq.lo, rq.hi
        q_bound = (x_bound * int(mult.max())) >> a if a >= 0 else x_bound * int(mult.max())
        if q_bound + int(rnd.max()) > INT32_MAX:
            # saturation of the int32 intermediate must not change the clamped result
            top = int((((1 << 31) - 1) >> b).min()) + rq.zp
            bottom = int(((-(1 << 31) + rnd) >> b).max()) + rq.zp
            if b.max() > 30 or top < hi or bottom > lo:
                raise Unsupported(f"per-channel shifts spread over {int(b.max())} bits; the int32 intermediate "
                                  "could saturate to a wrong value")
        steps.append(AluStep("MUL", shr=a, round=0, **operand("mult", mult)))
        steps.append(AluStep("ADD", **operand("round", rnd)))
        steps.append(AluStep("SHR", **operand("shift_b", b)))
        kind = "multiply + per-channel shift"
    steps += _zp_clamp(rq, out_range)
    return RequantPlan(_drop_noops(steps), vectors, kind)


def _zp_clamp(rq: Requant, out_range) -> list:
    steps = []
    if rq.zp:
        steps.append(AluStep("ADD", imm=int(rq.zp)))
    if rq.lo > out_range[0]:
        steps.append(AluStep("MAX", imm=int(rq.lo)))
    if rq.hi < out_range[1]:
        steps.append(AluStep("MIN", imm=int(rq.hi)))
    return steps


def _drop_noops(steps):
    out = []
    for s in steps:
        if s.vec is None and ((s.op == "ADD" and s.imm == 0) or (s.op == "SHR" and s.imm == 0)):
            continue
        out.append(s)
    return out


def requant_reference(acc, bias, rq: Requant, axis=1) -> np.ndarray:
    """The CPU semantics (fixed_point.requantize) of the layer tail, for tests."""
    from ..quantize import fixed_point

    x = np.asarray(acc, np.int64)
    if bias is not None:
        b = np.asarray(bias, np.int64).reshape(-1)
        shape = [1] * x.ndim
        shape[axis] = b.size
        x = x + b.reshape(shape)
    m, s = np.asarray(rq.mult).reshape(-1), np.asarray(rq.shift).reshape(-1)
    if m.size == 1:
        m, s = m[0], s[0]
    return fixed_point.requantize(x, m, s, rq.zp, rq.lo, rq.hi, axis=axis).astype(np.int8)


# ----------------------------------------------------------------------------- geometry / tiling

@dataclass
class Geometry:
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    oh: int
    ow: int
    stride: tuple
    pad: tuple
    dil: tuple
    groups: int
    nb: int
    cb: int
    ob: int

    @property
    def kk(self):
        return self.kh * self.kw

    def in_rows(self, th):
        return (th - 1) * self.stride[0] + (self.kh - 1) * self.dil[0] + 1

    def in_cols(self, tw):
        return (tw - 1) * self.stride[1] + (self.kw - 1) * self.dil[1] + 1


@dataclass
class Tiling:
    to: int
    ti: int
    th: int
    tw: int
    resident: bool
    estimate: float = 0.0

    def to_json(self):
        return {"to": self.to, "ti": self.ti, "th": self.th, "tw": self.tw,
                "weights": "resident" if self.resident else "streamed", "estimated_cycles": int(self.estimate)}


def _balanced(total, tile):
    """The same number of tiles, evened out: 56 rows in tiles of 27 -> 3 tiles of 19."""
    n = -(-total // max(1, tile))
    return -(-total // n)


def _pow2_upto(n):
    out, v = [], 1
    while v < n:
        out.append(v)
        v *= 2
    return sorted(set(out + [n]))


def ib_ranges(g: Geometry, cfg: AccelConfig, to: int):
    """Input-channel block range [lo, hi) each output-channel tile reduces over (groups)."""
    bo, bi = cfg.block_out, cfg.block_in
    og, cg = g.o // g.groups, g.c // g.groups
    out = []
    for ob0 in range(0, g.ob, to):
        o_lo, o_hi = ob0 * bo, min(g.o, (ob0 + to) * bo)
        g_lo, g_hi = o_lo // og, (o_hi - 1) // og
        out.append((g_lo * cg // bi, -(-((g_hi + 1) * cg) // bi)))
    return out


def search_tilings(g: Geometry, cfg: AccelConfig, n_consts: int, nnz_blocks: int, n_alu: int) -> list:
    """Tilings that fit the buffers, best estimated first."""
    cands = []
    for to in _pow2_upto(g.ob):
        ranges = ib_ranges(g, cfg, to)
        ibr_max = max(hi - lo for lo, hi in ranges)
        n_ot = len(ranges)
        for ti in _pow2_upto(ibr_max):
            for resident in (True, False):
                halves_w = 2 if (n_ot > 1 if resident else True) else 1
                w_need = halves_w * to * (ibr_max if resident else ti) * g.kk
                if w_need > cfg.wgt_entries:
                    continue
                acc_free = cfg.acc_entries - to * n_consts
                if acc_free < 2 * to:
                    continue
                max_ts = acc_free // (2 * to)
                inp_half = cfg.inp_entries // 2

                def fits(th, tw):
                    return th * tw <= max_ts and ti * g.in_rows(th) * g.in_cols(tw) <= inp_half

                if not fits(1, 1):
                    continue
                tw = g.ow
                if not fits(1, tw):
                    lo_, hi_ = 1, g.ow
                    while lo_ < hi_:
                        mid = (lo_ + hi_ + 1) // 2
                        lo_, hi_ = (mid, hi_) if fits(1, mid) else (lo_, mid - 1)
                    tw = _balanced(g.ow, lo_)
                lo_, hi_ = 1, g.oh
                while lo_ < hi_:
                    mid = (lo_ + hi_ + 1) // 2
                    lo_, hi_ = (mid, hi_) if fits(mid, tw) else (lo_, mid - 1)
                th = _balanced(g.oh, lo_)
                t = Tiling(to, min(ti, ibr_max), th, tw, resident)
                t.estimate = estimate_cycles(g, cfg, t, ranges, n_consts, nnz_blocks, n_alu)
                cands.append(t)
    if not cands:
        raise TilingError(f"no tile of this layer fits the buffers (input {cfg.inp_entries} entries, weight "
                          f"{cfg.wgt_entries}, accumulator {cfg.acc_entries}); kernel {g.kh}x{g.kw}, "
                          f"{g.cb} input-channel blocks")
    uniq = {}
    for t in sorted(cands, key=lambda t: t.estimate):
        uniq.setdefault((t.to, t.ti, t.th, t.tw, t.resident), t)
    return list(uniq.values())[:cfg.max_tile_candidates]


def estimate_cycles(g, cfg, t: Tiling, ranges, n_consts, nnz_blocks, n_alu) -> float:
    n_ot = len(ranges)
    n_sp = -(-g.oh // t.th) * -(-g.ow // t.tw)
    n_tiles = g.nb * n_ot * n_sp
    n_chunks = g.nb * n_sp * sum(-(-(hi - lo) // t.ti) for lo, hi in ranges)
    pos = g.nb * g.oh * g.ow
    gemm = pos * g.kk * nnz_blocks + pos * g.ob + (n_chunks + n_tiles) * cfg.gemm_pipeline_cycles
    alu = n_alu * pos * g.ob * cfg.alu_cycles_per_vector + n_tiles * n_alu * cfg.alu_pipeline_cycles
    lat, bw = cfg.dram_latency_cycles, cfg.dram_bytes_per_cycle
    consts = n_ot * (lat + t.to * n_consts * cfg.acc_entry_bytes / bw) if n_consts else 0
    compute = gemm + alu + consts
    ibr_total = sum(hi - lo for lo, hi in ranges)
    rows, cols = g.in_rows(t.th), g.in_cols(t.tw)
    inp_bytes = g.nb * n_sp * ibr_total * min(rows, g.h) * min(cols, g.w) * cfg.inp_entry_bytes
    inp_insns = g.nb * n_sp * ibr_total
    w_bytes = sum((hi - lo) * t.to for lo, hi in ranges) * g.kk * cfg.wgt_entry_bytes
    w_insns = n_ot
    if not t.resident:
        w_bytes *= g.nb * n_sp
        w_insns = n_chunks
    load = (inp_insns + w_insns) * lat + (inp_bytes + w_bytes) / bw
    out_bytes = pos * g.ob * cfg.out_entry_bytes
    store = n_tiles * t.to * lat + out_bytes / bw
    dram = (inp_bytes + w_bytes + out_bytes) / bw
    return max(compute, load, store, dram) + load / max(1, n_chunks) + store / max(1, n_tiles)


# ----------------------------------------------------------------------------- code generation

class UopOverflow(Exception):
    pass


class _Emitter:
    def __init__(self, cfg):
        self.cfg = cfg
        self.insns = []
        self.uops = []
        self._sets = {}

    def uop_range(self, key, make):
        r = self._sets.get(key)
        if r is None:
            lst = make()
            bgn = len(self.uops)
            self.uops.extend(lst)
            if len(self.uops) > self.cfg.uop_entries:
                raise UopOverflow()
            r = self._sets[key] = (bgn, len(self.uops))
        return r

    def emit(self, insn):
        self.insns.append(insn)
        return insn


def _align(n, a):
    return -(-n // a) * a


def unfold_width(cfg: AccelConfig, layer: ConvLayer):
    """A conv with few input channels (the stem of a CNN) as a conv over width-unfolded input.

    ``x_u[n, c*KW + kx, y, ox] = pad(x)[n, c, y, ox*sw + kx*dw]`` (the host packs it that way) and
    ``w_u[o, c*KW + kx, ky, 0] = w[o, c, ky, kx]``: the same output from a (KH x 1) kernel whose
    reduction packs C*KW channels into the GEMM blocks instead of padding C to a whole block.
    3-channel 7x7: 7 x 2 instead of 49 x 1 micro-ops per output vector. None if it does not pay."""
    if layer.view != "nchw" or layer.groups != 1:
        return None
    o, c, kh, kw = layer.weight.shape
    bi = cfg.block_in
    if kw == 1 or -(-(c * kw) // bi) >= kw * -(-c // bi):
        return None
    n, _, h, w = layer.x_shape
    oh, ow = conv_out_hw(h, w, (kh, kw), layer.stride, layer.padding, layer.dilation)
    top, left, bottom, right = layer.padding
    sw, dw = layer.stride[1], layer.dilation[1]
    weight = np.ascontiguousarray(layer.weight.transpose(0, 1, 3, 2).reshape(o, c * kw, kh, 1))
    inner = ConvLayer(layer.name, (n, c * kw, h, ow), weight, layer.bias, layer.rq, (layer.stride[0], 1),
                      (top, 0, bottom, 0), (layer.dilation[0], 1), 1, layer.pad_value, "nchw", layer.op)
    params = {"kw": int(kw), "stride": int(sw), "dilation": int(dw), "left": int(left), "ow": int(ow),
              "pad_value": int(layer.pad_value)}
    return inner, params


def lower_conv2d(cfg: AccelConfig, layer: ConvLayer, allow_unfold: bool = True) -> Program:
    """A conv2d / dense layer with its requantize -> Program (raises Unsupported)."""
    if layer.weight.dtype != np.int8:
        raise Unsupported(f"weights are {layer.weight.dtype}, the core multiplies int8")
    outer, unfold = layer, None
    unfolded = unfold_width(cfg, layer) if allow_unfold else None
    if unfolded is not None:
        layer, unfold = unfolded
    nchw = nchw_shape(layer.x_shape, layer.view, cfg.batch)
    n, c, h, w = (int(v) for v in nchw)
    o, cg, kh, kw = layer.weight.shape
    groups = int(layer.groups)
    if c != cg * groups or o % groups:
        raise Unsupported(f"groups={groups} does not fit input channels {c} and weight {layer.weight.shape}")
    oh, ow = conv_out_hw(h, w, (kh, kw), layer.stride, layer.padding, layer.dilation)
    if oh < 1 or ow < 1:
        raise Unsupported("empty output")
    b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
    g = Geometry(n, c, h, w, o, kh, kw, oh, ow, tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation),
                 groups, -(-n // b), -(-c // bi), -(-o // bo))

    # dense block-sparse weight, packed
    og = o // groups
    wd = np.zeros((g.ob * bo, g.cb * bi, kh, kw), np.int8)
    for gi in range(groups):
        wd[gi * og:(gi + 1) * og, gi * cg:(gi + 1) * cg] = layer.weight[gi * og:(gi + 1) * og]
    wpacked = np.ascontiguousarray(wd.reshape(g.ob, bo, g.cb, bi, kh, kw).transpose(0, 2, 4, 5, 1, 3))
    nz = wpacked.reshape(g.ob, g.cb, -1).any(axis=2)

    k_red = cg * kh * kw
    acc_bound = k_red * 128 * int(np.abs(layer.weight.astype(np.int64)).max(initial=0))
    plan = plan_requant(cfg, layer.bias, layer.rq, acc_bound)
    names = plan.names
    nc = len(names)
    consts = np.zeros((g.ob, nc, b, bo), np.int32)
    for k, name in enumerate(names):
        vec = np.zeros(g.ob * bo, np.int32)
        vec[:o] = plan.vectors[name]
        consts[:, k] = vec.reshape(g.ob, 1, bo)
    alu_steps = plan.steps
    nnz_total = int(nz.sum())

    last_err = None
    for tiling in search_tilings(g, cfg, nc, nnz_total, len(alu_steps)):
        try:
            prog = _codegen(cfg, outer, g, tiling, wpacked, nz, consts, names, alu_steps, nchw, unfold)
        except UopOverflow:
            last_err = TilingError(f"micro-ops of every candidate tiling overflow the {cfg.uop_entries}-entry uop buffer")
            continue
        prog.meta.update({"requantize": plan.kind, "alu_steps": len(alu_steps)})
        if unfold:
            prog.meta.update({"kernel": list(outer.weight.shape[2:]), "stride": list(outer.stride),
                              "padding": list(outer.padding), "dilation": list(outer.dilation),
                              "layout": "width-unfolded input (few input channels)"})
        return prog
    raise last_err or TilingError("no tiling fits")


def _codegen(cfg, layer, g: Geometry, t: Tiling, wpacked, nz, consts, names, alu_steps, nchw, unfold=None) -> Program:
    b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
    nc = len(names)
    kk = g.kk
    ranges = ib_ranges(g, cfg, t.to)
    ibr_max = max(hi - lo for lo, hi in ranges)
    sh, sw = g.stride
    dh, dw = g.dil
    pt, pl = g.pad[0], g.pad[1]

    # ---- the tile list
    tiles = []
    for j, (ib_lo, ib_hi) in enumerate(ranges):
        ob0 = j * t.to
        to_ = min(t.to, g.ob - ob0)
        for nb in range(g.nb):
            for y0 in range(0, g.oh, t.th):
                for x0 in range(0, g.ow, t.tw):
                    chunks = [(r0, min(t.ti, ib_hi - ib_lo - r0)) for r0 in range(0, ib_hi - ib_lo, t.ti)]
                    tiles.append((j, ob0, to_, ib_lo, ib_hi, nb, y0, min(t.th, g.oh - y0), x0, min(t.tw, g.ow - x0),
                                  chunks))
    n_tiles = len(tiles)
    n_chunks = sum(len(tl[-1]) for tl in tiles)
    n_ot = len(ranges)

    # ---- SRAM allocation
    rows_max, cols_max = g.in_rows(t.th), g.in_cols(t.tw)
    islot = rows_max * cols_max
    inp_halves = 2 if n_chunks > 1 else 1
    ihalf = t.ti * islot
    if t.resident:
        wgt_halves, whalf = (2 if n_ot > 1 else 1), t.to * ibr_max * kk
    else:
        wgt_halves, whalf = (2 if n_chunks > 1 else 1), t.to * t.ti * kk
    acc_halves = 2 if n_tiles > 1 else 1
    ts = t.th * t.tw
    ahalf = t.to * ts
    c_base = acc_halves * ahalf
    assert inp_halves * ihalf <= cfg.inp_entries and wgt_halves * whalf <= cfg.wgt_entries
    assert c_base + t.to * nc <= cfg.acc_entries

    # ---- DRAM image layout (entry-addressed per memory type; regions aligned to every entry size)
    align = max(cfg.wgt_entry_bytes, cfg.acc_entry_bytes, cfg.inp_entry_bytes, cfg.out_entry_bytes, 64)
    wgt_off = 0
    const_off = _align(wgt_off + wpacked.nbytes, align)
    inp_bytes = g.nb * g.cb * g.h * g.w * cfg.inp_entry_bytes
    out_bytes = g.nb * g.ob * g.oh * g.ow * cfg.out_entry_bytes
    inp_off = _align(const_off + consts.nbytes, align)
    out_off = _align(inp_off + inp_bytes, align)
    uop_off = _align(out_off + out_bytes, align)
    wgt_e, const_e = wgt_off // cfg.wgt_entry_bytes, const_off // cfg.acc_entry_bytes
    inp_e, out_e, uop_e = inp_off // cfg.inp_entry_bytes, out_off // cfg.out_entry_bytes, uop_off // UOP_BYTES

    em = _Emitter(cfg)
    uop_load = em.emit(isa.load(MEM_UOP, 0, uop_e, 1, 0, 0))
    k = 0
    alu_codes = [(s, isa.ALU_CODES[s.op]) for s in alu_steps]
    for tidx, (j, ob0, to_, ib_lo, ib_hi, nb, y0, th_, x0, tw_, chunks) in enumerate(tiles):
        ah = tidx % acc_halves
        a_base = ah * ahalf
        first_of_j = tidx == 0 or tiles[tidx - 1][0] != j
        ibr = ib_hi - ib_lo
        # input window of this tile
        iy0 = y0 * sh - pt
        ih_ = g.in_rows(th_)
        iy_pad0 = min(max(0, -iy0), ih_)
        iy_size = max(0, min(iy0 + ih_, g.h) - max(iy0, 0))
        iy_pad1 = ih_ - iy_pad0 - iy_size
        ix0 = x0 * sw - pl
        iw_ = g.in_cols(tw_)
        ix_pad0 = min(max(0, -ix0), iw_)
        ix_size = max(0, min(ix0 + iw_, g.w) - max(ix0, 0))
        ix_pad1 = iw_ - ix_pad0 - ix_size
        for c_idx, (r0, ti_) in enumerate(chunks):
            ih = k % inp_halves
            i_base = ih * ihalf
            # ---------------- load module
            loads = []
            if t.resident:
                wh = j % wgt_halves
                if first_of_j and c_idx == 0:
                    loads.append(isa.load(MEM_WGT, wh * whalf, wgt_e + (ob0 * g.cb + ib_lo) * kk, to_, ibr * kk,
                                          g.cb * kk))
                w_row, w_off = ibr * kk, r0 * kk
            else:
                wh = k % wgt_halves
                loads.append(isa.load(MEM_WGT, wh * whalf, wgt_e + (ob0 * g.cb + ib_lo + r0) * kk, to_, ti_ * kk,
                                      g.cb * kk))
                w_row, w_off = ti_ * kk, 0
            w_base = wh * whalf
            for it in range(ti_):
                ib = ib_lo + r0 + it
                if iy_size and ix_size:
                    dram = inp_e + ((nb * g.cb + ib) * g.h + max(iy0, 0)) * g.w + max(ix0, 0)
                    loads.append(isa.load(MEM_INP, i_base + it * islot, dram, iy_size, ix_size, g.w,
                                          pads=(iy_pad0, iy_pad1, ix_pad0, ix_pad1), pad_value=layer.pad_value))
                else:  # the whole window is padding
                    loads.append(isa.load(MEM_INP, i_base + it * islot, inp_e, 0, 0, g.w, pads=(ih_, 0, iw_, 0),
                                          pad_value=layer.pad_value))
            if k >= 2:
                loads[0].pop_next = 1
            loads[-1].push_next = 1
            for ld in loads:
                em.emit(ld)
            # ---------------- compute module
            if c_idx == 0:
                if first_of_j and nc:
                    em.emit(isa.load(MEM_ACC, c_base, const_e + ob0 * nc, 1, to_ * nc, to_ * nc))
                ub, ue = em.uop_range(("reset", ah), lambda: [(a_base, 0, 0)])
                reset = em.emit(isa.gemm(ub, ue, to_, th_ * tw_, dst=(ts, 1), reset=1))
                if tidx >= 2:
                    reset.pop_next = 1
            nzkey = nz[ob0:ob0 + to_, ib_lo + r0:ib_lo + r0 + ti_].tobytes()

            def make_gemm_uops(to_=to_, ti_=ti_, r0=r0, ib_lo=ib_lo, ob0=ob0, a_base=a_base, i_base=i_base,
                               w_base=w_base, w_row=w_row, w_off=w_off, iw_=iw_):
                out = []
                for it in range(ti_):
                    for ot in range(to_):
                        if not nz[ob0 + ot, ib_lo + r0 + it]:
                            continue
                        for ky in range(g.kh):
                            for kx in range(g.kw):
                                out.append((a_base + ot * ts, i_base + it * islot + ky * dh * iw_ + kx * dw,
                                            w_base + ot * w_row + w_off + it * kk + ky * g.kw + kx))
                return out

            key = ("gemm", ah, ih, wh, to_, ti_, iw_, w_row, w_off, nzkey)
            ub, ue = em.uop_range(key, make_gemm_uops)
            main = em.emit(isa.gemm(ub, ue, th_, tw_, dst=(tw_, 1), src=(sh * iw_, sw), pop_prev=1))
            if k + 2 < n_chunks:
                main.push_prev = 1
            last = main
            if c_idx == len(chunks) - 1:
                for step, code in alu_codes:
                    if step.vec is not None:
                        kidx = names.index(step.vec)
                        ub, ue = em.uop_range(("alu", ah, kidx), lambda kidx=kidx: [(a_base, c_base + kidx, 0)])
                        last = em.emit(isa.alu(code, ub, ue, to_, th_ * tw_, dst=(ts, 1), src=(nc, 0), shr=step.shr,
                                               round_=step.round))
                    else:
                        ub, ue = em.uop_range(("alu", ah, -1), lambda: [(a_base, 0, 0)])
                        last = em.emit(isa.alu(code, ub, ue, to_, th_ * tw_, dst=(ts, 1), imm=step.imm,
                                               shr=step.shr, round_=step.round))
                last.push_next = 1
            k += 1
        # ---------------- store module
        stores = []
        if tw_ == g.ow and th_ * tw_ == ts:
            stores.append(isa.store(a_base, out_e + ((nb * g.ob + ob0) * g.oh + y0) * g.ow, to_, ts, g.oh * g.ow))
        else:
            for ot in range(to_):
                dram = out_e + ((nb * g.ob + ob0 + ot) * g.oh + y0) * g.ow + x0
                if tw_ == g.ow:
                    stores.append(isa.store(a_base + ot * ts, dram, 1, th_ * tw_, th_ * tw_))
                else:
                    stores.append(isa.store(a_base + ot * ts, dram, th_, tw_, g.ow))
        stores[0].pop_prev = 1
        if tidx + 2 < n_tiles or tidx == n_tiles - 1:
            stores[-1].push_prev = 1
        for st in stores:
            em.emit(st)
    em.emit(isa.finish(pop_next=1))
    uop_load.x_size = len(em.uops)
    uop_load.x_stride = len(em.uops)

    dram = np.zeros(uop_off + len(em.uops) * UOP_BYTES, np.uint8)
    dram[wgt_off:wgt_off + wpacked.nbytes] = wpacked.view(np.uint8).reshape(-1)
    dram[const_off:const_off + consts.nbytes] = consts.view(np.uint8).reshape(-1)
    if em.uops:
        dram[uop_off:] = isa.encode_uops(np.asarray(em.uops, np.int64)).view(np.uint8)
    in_spec = {"name": "x", "offset": inp_off, "nbytes": inp_bytes, "shape": list(layer.x_shape),
               "view": "unfold_w" if unfold else layer.view, "nchw": list(nchw),
               "packed": list(packed_shape(nchw, b, bi)), "role": "inp"}
    if unfold:
        in_spec["unfold"] = unfold
    out_nchw = (g.n, g.o, g.oh, g.ow)
    out_spec = {"offset": out_off, "nbytes": out_bytes, "shape": list(layer.out_shape), "view": layer.view,
                "nchw": list(out_nchw), "packed": list(packed_shape(out_nchw, b, bo)), "role": "out", "dtype": "int8"}
    macs = g.n * g.o * g.oh * g.ow * (g.c // g.groups) * g.kk
    meta = {"layer": layer.name, "op": layer.op, "input": list(layer.x_shape), "output": list(layer.out_shape),
            "kernel": [g.kh, g.kw], "stride": list(g.stride), "padding": list(g.pad), "dilation": list(g.dil),
            "groups": g.groups, "macs": int(macs), "tiling": t.to_json(), "tiles": n_tiles, "chunks": n_chunks,
            "uops": len(em.uops), "insns": len(em.insns), "weight_bytes": int(wpacked.nbytes)}
    return Program(cfg, em.insns, dram, [in_spec], out_spec, meta)


# ----------------------------------------------------------------------------- residual add on the ALU

@dataclass
class AddLayer:
    """TFLite-style integer add of two int8 tensors of the same shape (reference.add_requantized)."""

    name: str
    shape: tuple
    a_zp: int
    b_zp: int
    left_shift: int
    a_mult: int
    a_shift: int
    b_mult: int
    b_shift: int
    rq: Requant                     # the final requantize (scalar mult/shift)


def rescale_steps(cfg: AccelConfig, mult: int, shift: int, x_bound: int) -> list:
    """ALU steps for (x * mult + 2**(shift-1)) >> shift on |x| <= x_bound: a shift when mult is a power of two."""
    if mult > 0 and mult & (mult - 1) == 0:
        n = shift - (mult.bit_length() - 1)
        if n >= 1:
            if n > 30 or x_bound + (1 << (n - 1)) > INT32_MAX:
                raise Unsupported("rescale shift out of the int32 range")
            return [("ADD", 1 << (n - 1), 0, 0), ("SHR", n, 0, 0)]
        if x_bound << -n > INT32_MAX:
            raise Unsupported("rescaled value exceeds int32")
        return [("SHR", n, 0, 0)] if n else []
    if not cfg.has_alu_op("MUL"):
        raise Unsupported("the add rescales with a multiplier that is not a power of two and this core's ALU has "
                          "no MUL (quantize with power-of-two scales: target quant.power_of_two_scales)")
    return [("MUL", mult, shift, 1)]


def lower_add(cfg: AccelConfig, layer: AddLayer) -> Program:
    """Both inputs are loaded into the accumulator (sign-extended), rescaled and summed by the ALU."""
    shape = tuple(int(v) for v in layer.shape)
    if len(shape) != 4:
        raise Unsupported(f"add of rank-{len(shape)} tensors (only NCHW is offloaded)")
    n, c, h, w = shape
    b, bo = cfg.batch, cfg.block_out
    nb, cb = -(-n // b), -(-c // bo)
    total = nb * cb * h * w                           # accumulator entries of one operand
    # per operand: (x - zp) << L, then (x * M + 2**(S-1)) >> S; inputs are int8 so x << L < 2**28
    for m_, s_ in ((layer.a_mult, layer.a_shift), (layer.b_mult, layer.b_shift)):
        if not (0 <= m_ < (1 << 31) and 1 <= s_ <= 62):
            raise Unsupported("add rescale multiplier out of range")
    x_bound = 256 << layer.left_shift
    if x_bound > INT32_MAX:
        raise Unsupported("add headroom shift too large for int32")
    sum_bound = 2 * (((255 << layer.left_shift) * max(layer.a_mult, layer.b_mult)) >> min(layer.a_shift, layer.b_shift)) + 2
    if sum_bound > INT32_MAX:
        raise Unsupported("rescaled add operands can exceed int32")
    plan = plan_requant(cfg, None, layer.rq, sum_bound)
    if plan.vectors:
        raise Unsupported("per-channel requantize of an add")
    half = (cfg.acc_entries // 2) // 2                # two operand slots per ping-pong half
    if half < 1:
        raise TilingError("accumulator buffer too small for an add tile")
    chunk = min(total, half)
    steps_a = [("ADD", -layer.a_zp, 0, 0), ("SHR", -layer.left_shift, 0, 0)] + \
        rescale_steps(cfg, layer.a_mult, layer.a_shift, x_bound)
    steps_b = [("ADD", -layer.b_zp, 0, 0), ("SHR", -layer.left_shift, 0, 0)] + \
        rescale_steps(cfg, layer.b_mult, layer.b_shift, x_bound)

    align = max(cfg.acc_entry_bytes, 64)
    ebytes = b * bo  # int8 entries of ACC8 / OUT
    a_off = 0
    b_off = _align(total * ebytes, align)
    out_off = _align(b_off + total * ebytes, align)
    uop_off = _align(out_off + total * ebytes, align)
    em = _Emitter(cfg)
    uop_load = em.emit(isa.load(MEM_UOP, 0, uop_off // UOP_BYTES, 1, 0, 0))
    pieces = [(p0, min(chunk, total - p0)) for p0 in range(0, total, chunk)]
    halves = 2 if len(pieces) > 1 else 1
    for pidx, (p0, size) in enumerate(pieces):
        base = (pidx % halves) * 2 * chunk
        la = em.emit(isa.load(MEM_ACC8, base, a_off // ebytes + p0, 1, size, size))
        em.emit(isa.load(MEM_ACC8, base + chunk, b_off // ebytes + p0, 1, size, size))
        if pidx >= 2:
            la.pop_next = 1
        for off, steps in ((0, steps_a), (chunk, steps_b)):
            ub, ue = em.uop_range(("u", base + off), lambda v=base + off: [(v, 0, 0)])
            for op, imm, shr, rnd in steps:
                if op == "ADD" and imm == 0:
                    continue
                em.emit(isa.alu(op, ub, ue, 1, size, dst=(0, 1), imm=imm, shr=shr, round_=rnd))
        ub, ue = em.uop_range(("sum", base), lambda v=base: [(v, v + chunk, 0)])
        last = em.emit(isa.alu("ADD", ub, ue, 1, size, dst=(0, 1), src=(0, 1)))
        ub, ue = em.uop_range(("u", base), lambda v=base: [(v, 0, 0)])
        for step in plan.steps:
            last = em.emit(isa.alu(step.op, ub, ue, 1, size, dst=(0, 1), imm=step.imm, shr=step.shr, round_=step.round))
        last.push_next = 1
        st = em.emit(isa.store(base, out_off // ebytes + p0, 1, size, size, pop_prev=1))
        if pidx + 2 < len(pieces) or pidx == len(pieces) - 1:
            st.push_prev = 1
    em.emit(isa.finish(pop_next=1))
    uop_load.x_size = uop_load.x_stride = len(em.uops)
    dram = np.zeros(uop_off + len(em.uops) * UOP_BYTES, np.uint8)
    dram[uop_off:] = isa.encode_uops(np.asarray(em.uops, np.int64)).view(np.uint8)
    packed = list(packed_shape(shape, b, bo))
    specs = [{"name": nm, "offset": off, "nbytes": total * ebytes, "shape": list(shape), "view": "nchw",
              "nchw": list(shape), "packed": packed, "role": "acc8"} for nm, off in (("a", a_off), ("b", b_off))]
    out_spec = {"offset": out_off, "nbytes": total * ebytes, "shape": list(shape), "view": "nchw", "nchw": list(shape),
                "packed": packed, "role": "out", "dtype": "int8"}
    meta = {"layer": layer.name, "op": "add", "input": list(shape), "output": list(shape), "macs": 0,
            "tiles": len(pieces), "chunks": len(pieces), "uops": len(em.uops), "insns": len(em.insns),
            "requantize": plan.kind, "alu_steps": len(steps_a) + len(steps_b) + 1 + len(plan.steps)}
    return Program(cfg, em.insns, dram, specs, out_spec, meta)


def add_reference(a, b, layer: AddLayer) -> np.ndarray:
    """The CPU semantics of the realized add chain."""
    from ..quantize import fixed_point

    def part(x, zp, m, s):
        c = (np.asarray(x, np.int64) - zp) << layer.left_shift
        return fixed_point.rescale(c, m, s)

    total = part(a, layer.a_zp, layer.a_mult, layer.a_shift) + part(b, layer.b_zp, layer.b_mult, layer.b_shift)
    return fixed_point.requantize(total, int(layer.rq.mult.reshape(-1)[0]), int(layer.rq.shift.reshape(-1)[0]),
                                  layer.rq.zp, layer.rq.lo, layer.rq.hi).astype(np.int8)


def lower(cfg: AccelConfig, layer) -> Program:
    prog = lower_add(cfg, layer) if isinstance(layer, AddLayer) else lower_conv2d(cfg, layer)
    return prog


__all__ = ["ConvLayer", "AddLayer", "Requant", "Unsupported", "TilingError", "lower", "lower_conv2d", "lower_add",
           "dense_layer", "plan_requant", "requant_reference", "add_reference"]
