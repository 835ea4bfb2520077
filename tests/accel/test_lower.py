"""Lowering: every layer kind, lowered and simulated, is bit-exact with the numpy integer reference."""

import numpy as np
import pytest

from qcompile.accel import timing
from qcompile.target.accelerator import default_config
from qcompile.accel.lower import (AddLayer, ConvLayer, Requant, Unsupported, add_reference, dense_layer, lower,
                                  lower_conv2d, plan_requant, requant_reference)
from qcompile.accel.sim import Simulator, alu_apply
from qcompile.accel import isa
from qcompile.quantize import fixed_point, reference

RNG = np.random.default_rng(0)
DEFAULT = default_config()
SMALL = default_config(inp_buffer_kib=2, wgt_buffer_kib=16, acc_buffer_kib=4, uop_buffer_kib=4)   # many tiles/chunks
BATCH2 = default_config(batch=2, block_in=8, block_out=16)
LARGE = default_config(block_in=32, block_out=32, inp_buffer_kib=128, wgt_buffer_kib=1024, acc_buffer_kib=512)
NO_MUL = default_config(alu_ops=("ADD", "MAX", "MIN", "SHR"))


def conv_case(cfg, n, c, h, w, o, k, stride=1, pad=0, dil=1, groups=1, zp=0, clip=(-128, 127), per_channel=True,
              pow2=False, out_zp=0):
    x = RNG.integers(-128, 128, (n, c, h, w)).astype(np.int8)
    wq = RNG.integers(-127, 128, (o, c // groups, k, k)).astype(np.int8)
    bias = RNG.integers(-3000, 3000, o).astype(np.int64)
    wsum = wq.reshape(o, -1).sum(1).astype(np.int64)
    if pow2:
        mult = np.full(o, 1 << 30, np.int64)
        shift = RNG.integers(36, 42, o if per_channel else 1).astype(np.int64)
    else:
        mult, shift = fixed_point.quantize_multiplier(RNG.uniform(2e-4, 2e-3, o if per_channel else 1))
    rq = Requant(np.atleast_1d(mult), np.atleast_1d(shift), out_zp, clip[0], clip[1])
    pads = pad if isinstance(pad, tuple) else (pad,) * 4
    layer = ConvLayer("conv", x.shape, wq, (bias - zp * wsum).astype(np.int32), rq, (stride, stride), pads,
                      (dil, dil), groups, pad_value=zp)
    acc = reference.qconv2d(x, zp, wq, 0, stride=stride, padding=pads, dilation=dil, groups=groups)
    return layer, x, requant_reference(acc, bias, rq)


def run(cfg, layer, *inputs):
    prog = lower(cfg, layer)
    sim = Simulator(prog)
    y = sim.run(list(inputs))
    np.testing.assert_array_equal(sim.run(list(inputs)), y)  # the replayed run agrees with the checked one
    return prog, y


CONV_CASES = {
    "3x3 pad1 relu": dict(n=1, c=3, h=8, w=8, o=8, k=3, pad=1, clip=(0, 127)),
    "stride2 pad1 groups2": dict(n=2, c=4, h=9, w=9, o=6, k=3, stride=2, pad=1, groups=2),
    "depthwise dilated, zero point padding": dict(n=1, c=8, h=9, w=9, o=8, k=3, pad=2, dil=2, groups=8, zp=5),
    "depthwise 40 channels": dict(n=1, c=40, h=7, w=7, o=40, k=3, pad=1, groups=40, clip=(0, 6)),
    "grouped 4x16": dict(n=1, c=64, h=6, w=6, o=64, k=3, pad=1, groups=4),
    "1x1 per-tensor": dict(n=1, c=5, h=7, w=7, o=7, k=1, per_channel=False),
    "asymmetric pads stride 2": dict(n=1, c=20, h=11, w=10, o=24, k=3, stride=2, pad=(0, 1, 1, 0), zp=-7, out_zp=4),
    "7x7 stride 2": dict(n=1, c=3, h=20, w=20, o=16, k=7, stride=2, pad=3),
    "deep 3x3": dict(n=1, c=96, h=10, w=10, o=80, k=3, pad=1, clip=(0, 127)),
    "shift-only (power-of-two scales)": dict(n=1, c=16, h=6, w=6, o=24, k=3, pad=1, pow2=True, clip=(0, 127)),
}


@pytest.mark.parametrize("cfg", [DEFAULT, SMALL, BATCH2, LARGE], ids=["1x16x16", "small-buffers", "2x8x16", "1x32x32"])
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv2d_bit_exact(cfg, name):
    layer, x, expected = conv_case(cfg, **CONV_CASES[name])
    prog, y = run(cfg, layer, x)
    np.testing.assert_array_equal(y, expected)
    st = timing.simulate(cfg, prog.insns, prog.meta["macs"])
    assert st["cycles"] > 0 and 0 < st["gemm_utilization"] <= 1


def test_small_buffers_really_tile():
    layer, x, expected = conv_case(SMALL, **CONV_CASES["deep 3x3"])
    prog, y = run(SMALL, layer, x)
    np.testing.assert_array_equal(y, expected)
    assert prog.meta["tiles"] > 4 and prog.meta["chunks"] > prog.meta["tiles"]


def test_shift_only_requantize_needs_no_multiplier():
    layer, x, expected = conv_case(NO_MUL, **CONV_CASES["shift-only (power-of-two scales)"])
    prog, y = run(NO_MUL, layer, x)
    np.testing.assert_array_equal(y, expected)
    assert prog.meta["requantize"] == "shift-only (power-of-two scales)"
    assert not any(i.opcode == isa.OP_ALU and i.alu_op == isa.ALU_MUL for i in prog.insns)
    layer, x, _ = conv_case(NO_MUL, **CONV_CASES["3x3 pad1 relu"])
    with pytest.raises(Unsupported, match="no MUL"):
        lower(NO_MUL, layer)


@pytest.mark.parametrize("cfg", [DEFAULT, BATCH2], ids=["1x16x16", "2x8x16"])
@pytest.mark.parametrize("m, k, n", [(1, 32, 10), (3, 100, 37), (4, 256, 64), ((2, 3), 40, 24)])
def test_dense_bit_exact(cfg, m, k, n):
    x = RNG.integers(-128, 128, (m if isinstance(m, tuple) else (m,)) + (k,)).astype(np.int8)
    w = RNG.integers(-127, 128, (k, n)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, n).astype(np.int32)
    mult, shift = fixed_point.quantize_multiplier(RNG.uniform(1e-4, 1e-3, n))
    rq = Requant(mult, shift, 2, -128, 127)
    _, y = run(cfg, dense_layer("fc", x.shape, w, bias, rq), x)
    acc = reference.qmatmul(x, 0, w, 0)
    np.testing.assert_array_equal(y, requant_reference(acc, bias, rq, axis=-1))


@pytest.mark.parametrize("shape", [(1, 32, 4, 4), (1, 20, 9, 9), (2, 64, 28, 28)])
@pytest.mark.parametrize("pow2", [False, True], ids=["multiplier", "power-of-two"])
def test_residual_add_on_the_alu(shape, pow2):
    a = RNG.integers(-128, 128, shape).astype(np.int8)
    b = RNG.integers(-128, 128, shape).astype(np.int8)
    sa, sb, so = (0.0625, 0.03125, 0.125) if pow2 else (0.05, 0.031, 0.07)
    twice = 2 * max(sa, sb)
    am, ash = fixed_point.quantize_multiplier(sa / twice)
    bm, bsh = fixed_point.quantize_multiplier(sb / twice)
    om, osh = fixed_point.quantize_multiplier(twice / (2 ** 20 * so))
    layer = AddLayer("add", shape, 3, -2, 20, am, ash, bm, bsh, Requant(np.array([om]), np.array([osh]), 1, 0, 127))
    cfg = default_config(acc_buffer_kib=16, alu_ops=("ADD", "MAX", "MIN", "SHR") if pow2 else tuple(isa.ALU_NAMES.values()))
    prog, y = run(cfg, layer, a, b)
    np.testing.assert_array_equal(y, add_reference(a, b, layer))
    ref = reference.add_requantized(a, sa, 3, b, sb, -2, so, 1, "int8")
    np.testing.assert_array_equal(y, np.maximum(ref, 0))
    assert any(i.opcode == isa.OP_ALU and i.alu_op == isa.ALU_MUL for i in prog.insns) != pow2


def test_requantize_plans_are_exact_over_the_accumulator_range():
    """plan_requant's ALU steps against fixed_point.requantize on extreme and random accumulators."""
    bound = 9 * 64 * 128 * 127
    kinds = set()
    for trial in range(40):
        o = 16
        scales = RNG.uniform(1e-6, 3e-2, o) * (10.0 ** RNG.integers(-2, 2, o))
        if trial % 4 == 0:
            scales[RNG.integers(0, o)] = 0.0                   # a dead channel
        if trial % 4 in (1, 2):
            scales = 2.0 ** RNG.integers(-20, -4, o)           # power-of-two multipliers
        if trial % 4 == 2:
            scales[RNG.integers(0, o)] = 0.0                   # ... with a dead channel
        mult, shift = fixed_point.quantize_multiplier(scales)
        bias = RNG.integers(-10000, 10000, o)
        zp = int(RNG.integers(-5, 5))
        lo, hi = sorted(int(v) for v in RNG.integers(-128, 128, 2))
        rq = Requant(mult, shift, zp, lo, hi)
        try:
            plan = plan_requant(NO_MUL if trial % 4 in (1, 2) else DEFAULT, bias, rq, bound)
        except Unsupported:
            continue
        kinds.add(plan.kind)
        acc = np.concatenate([RNG.integers(-bound, bound, (500, o)), np.full((1, o), bound), np.full((1, o), -bound),
                              np.zeros((1, o), np.int64)]).astype(np.int64)
        expected = requant_reference(acc, bias, rq, axis=1)
        x = acc.astype(np.int32)
        for step in plan.steps:
            b = np.int64(step.imm) if step.vec is None else plan.vectors[step.vec].astype(np.int64)[None, :]
            x = alu_apply(isa.ALU_CODES[step.op], x, b, step.shr, step.round)
        np.testing.assert_array_equal(np.clip(x, -128, 127).astype(np.int8), expected)
    assert kinds == {"shift-only (power-of-two scales)", "multiply + per-channel shift"}


def test_stem_conv_is_width_unfolded():
    """A 3-channel 7x7 stem packs C*KW = 21 channels into the GEMM blocks instead of padding 3 to 16."""
    layer, x, expected = conv_case(DEFAULT, n=1, c=3, h=32, w=30, o=64, k=7, stride=2, pad=3, zp=-3, clip=(0, 127))
    prog, y = run(DEFAULT, layer, x)
    np.testing.assert_array_equal(y, expected)
    assert prog.meta["layout"].startswith("width-unfolded") and prog.meta["kernel"] == [7, 7]
    plain = lower_conv2d(DEFAULT, layer, allow_unfold=False)
    np.testing.assert_array_equal(Simulator(plain).run([x]), expected)
    assert "layout" not in plain.meta
    fast, slow = (timing.simulate(DEFAULT, p.insns)["cycles"] for p in (prog, plain))
    assert fast < 0.6 * slow
