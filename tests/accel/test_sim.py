"""Simulator: token protocol (deadlock, races, leftovers), buffer overflows, and the cycle model by hand."""

import copy
import math

import numpy as np
import pytest

from qcompile.accel import isa, timing
from qcompile.target.accelerator import default_config
from qcompile.accel.lower import ConvLayer, Requant, TilingError, lower_conv2d
from qcompile.accel.program import Program
from qcompile.accel.sim import BufferOverflowError, DeadlockError, HazardError, ProtocolError, Simulator
from qcompile.quantize import fixed_point

RNG = np.random.default_rng(1)
CFG = default_config(dram_latency_cycles=64, dram_bytes_per_cycle=16, gemm_pipeline_cycles=4, alu_pipeline_cycles=4)


def single_gemm_program(cfg=CFG):
    """out[8 positions, 16 ch] = inp[8, 16] @ wgt.T, two micro-ops accumulating two input/weight pairs.

    DRAM bytes: input at 0 (16 B entries 0..15), weights at 1024 (256 B entries 4, 5), micro-ops at 2048
    (8 B entries 256..258), output at 3072."""
    b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
    x = RNG.integers(-128, 128, (16, b, bi)).astype(np.int8)
    w = RNG.integers(-127, 128, (2, bo, bi)).astype(np.int8)
    uops = np.array([[8, 0, 0],            # the reset micro-op: acc[8 + i]
                     [8, 0, 0],            # acc[8 + i] += inp[0 + i] @ wgt[0].T
                     [8, 8, 1]], np.int64)  # acc[8 + i] += inp[8 + i] @ wgt[1].T
    dram = np.zeros(4096, np.uint8)
    dram[0:x.nbytes] = x.view(np.uint8).reshape(-1)                 # inp entries 0..15
    dram[1024:1024 + w.nbytes] = w.view(np.uint8).reshape(-1)       # wgt entries 4, 5
    dram[2048:2048 + 24] = isa.encode_uops(uops).view(np.uint8)      # uop entries 256..258
    insns = [
        isa.load(isa.MEM_UOP, 0, 256, 1, 3, 3),                                      # compute: 24 B
        isa.load(isa.MEM_INP, 0, 0, 1, 16, 16),                                      # load: 256 B
        isa.load(isa.MEM_WGT, 0, 4, 1, 2, 2, push_next=1),                           # load: 512 B
        isa.gemm(0, 1, 1, 8, dst=(0, 1), reset=1),                                   # compute: 8 cycles
        isa.gemm(1, 3, 2, 4, dst=(4, 1), src=(4, 1), pop_prev=1, push_next=1),       # compute: 2*2*4 = 16 cycles
        isa.store(8, 3072 // 16, 1, 8, 8, pop_prev=1, push_prev=1),                  # store: 8 entries * 16 B
        isa.finish(pop_next=1),
    ]
    prog = Program(cfg, insns, dram, [], {}, {"layer": "single_gemm"})
    acc = np.zeros((8, b, bo), np.int64)
    for p in range(8):
        acc[p] = x[p].astype(np.int64) @ w[0].astype(np.int64).T + x[8 + p].astype(np.int64) @ w[1].astype(np.int64).T
    expected = np.clip(acc, -128, 127).astype(np.int8)
    return prog, expected


def test_single_gemm_functional():
    prog, expected = single_gemm_program()
    dram = Simulator(prog).run()
    got = dram[3072:3072 + 8 * 16].view(np.int8).reshape(8, 1, 16)
    np.testing.assert_array_equal(got, expected)


def test_cycle_model_single_gemm_by_hand():
    prog, _ = single_gemm_program()
    st = timing.simulate(CFG, prog.insns, useful_macs=2 * 8 * 16 * 16)
    lat, bw = 64, 16
    # t=0: LOAD INP (load) and LOAD UOP (compute) both ready; the load module is served first on DRAM.
    inp_end = 0 + math.ceil(256 / bw) + lat                       # 16 + 64 = 80, DRAM busy [0, 16)
    uop_end = 16 + math.ceil(24 / bw) + lat                       # waits for DRAM: 16 + 2 + 64 = 82
    wgt_end = inp_end + math.ceil(512 / bw) + lat                 # 80 + 32 + 64 = 176, pushes l2c
    reset_end = uop_end + 4 + 1 * 1 * 8                           # 82 + 12 = 94
    gemm_end = max(reset_end, wgt_end) + 4 + 2 * 2 * 4            # 176 + 20 = 196, pushes c2s
    store_end = gemm_end + math.ceil(8 * 16 / bw) + lat           # 196 + 8 + 64 = 268, pushes s2c
    finish_end = store_end + 1                                    # 269
    assert st["cycles"] == finish_end == 269
    assert st["gemm_cycles"] == 16 and st["gemm_reset_cycles"] == 8
    assert st["modules"]["load"]["busy"] == inp_end + (wgt_end - inp_end)
    assert st["modules"]["compute"]["busy"] == (uop_end - 0) + (reset_end - uop_end) + (gemm_end - 176) + 1
    assert st["modules"]["store"]["busy"] == store_end - gemm_end
    assert st["dram_read_bytes"] == 256 + 512 + 24 and st["dram_write_bytes"] == 128
    assert st["gemm_utilization"] == pytest.approx(2 * 8 * 256 / (269 * 256))
    assert st["time_us"] == pytest.approx(269 / CFG.clock_mhz)


def test_deadlock_names_the_blocked_instructions():
    prog, _ = single_gemm_program()
    broken = copy.deepcopy(prog)
    broken.insns[2].push_next = 0          # the weights never announce themselves
    with pytest.raises(DeadlockError) as err:
        Simulator(broken).run()
    msg = str(err.value)
    assert "instruction 4 [compute] GEMM" in msg and "empty load->compute queue" in msg
    assert "load module (which has no instructions left)" in msg
    with pytest.raises(DeadlockError, match="instruction 4"):
        timing.simulate(CFG, broken.insns)


def test_deadlock_in_a_lowered_program():
    prog = small_conv_program()
    broken = copy.deepcopy(prog)
    stores = [i for i, insn in enumerate(broken.insns) if insn.opcode == isa.OP_STORE and insn.push_prev]
    broken.insns[stores[0]].push_prev = 0  # the store of tile 0 never frees its accumulator half
    with pytest.raises(DeadlockError, match=r"waits for a token on the empty store->compute queue"):
        Simulator(broken).run([np.zeros(prog.inputs[0]["shape"], np.int8)])


def test_missing_token_is_a_race_not_a_wrong_answer():
    prog = small_conv_program()
    broken = copy.deepcopy(prog)
    loads = [i for i, insn in enumerate(broken.insns) if insn.opcode == isa.OP_LOAD and insn.pop_next]
    assert loads, "the program double-buffers its input"
    broken.insns[loads[0]].pop_next = 0    # load chunk 2 without waiting for compute to release the buffer
    with pytest.raises(HazardError, match=r"GEMM .* reads inp entry \d+ written by instruction \d+ \(load module\) "
                                          r"with no dependency token in between \(a read-after-write race\)"):
        Simulator(broken).run([np.zeros(prog.inputs[0]["shape"], np.int8)])


def test_protocol_errors():
    prog, _ = single_gemm_program()
    extra = copy.deepcopy(prog)
    extra.insns[5].push_prev = 1
    extra.insns[4].push_prev = 1           # an extra compute->load token nobody pops
    with pytest.raises(ProtocolError, match="tokens left after FINISH: 1 on compute->load"):
        Simulator(extra).run()
    nofinish = copy.deepcopy(prog)
    nofinish.insns = nofinish.insns[:-1]
    with pytest.raises(ProtocolError, match="no FINISH"):
        Simulator(nofinish)
    wrong = copy.deepcopy(prog)
    wrong.insns[1].pop_prev = 1            # the load module has no previous module
    with pytest.raises(ProtocolError, match="load module has no previous module"):
        Simulator(wrong)


def test_buffer_overflow_names_the_instruction():
    prog, _ = single_gemm_program()
    big = copy.deepcopy(prog)
    big.insns[1] = isa.load(isa.MEM_INP, CFG.inp_entries - 8, 0, 1, 16, 16)
    with pytest.raises(BufferOverflowError) as err:
        Simulator(big).run()
    assert "instruction 1 [load] LOAD INP" in str(err.value)
    assert f"buffer holds {CFG.inp_entries} entries" in str(err.value)
    far = copy.deepcopy(prog)
    far.insns[4].iter_out = 5000           # the GEMM walks off the accumulator
    with pytest.raises(BufferOverflowError, match=r"instruction 4 \[compute\] GEMM.*accumulator index"):
        Simulator(far).run()
    dram = copy.deepcopy(prog)
    dram.insns[1].dram_base = 10 ** 6
    with pytest.raises(BufferOverflowError, match="DRAM read"):
        Simulator(dram).run()


def test_uninitialised_read_is_reported():
    prog, _ = single_gemm_program()
    noreset = copy.deepcopy(prog)
    noreset.insns[3] = isa.alu("ADD", 0, 1, 1, 8, dst=(0, 1), imm=1)   # instead of the reset: read garbage
    with pytest.raises(HazardError, match="nothing has written"):
        Simulator(noreset).run()


def test_tile_that_does_not_fit_is_a_compile_error():
    tiny = default_config(inp_buffer_kib=0.25, acc_buffer_kib=0.5)   # 16 input entries, 8 accumulator entries
    layer = ConvLayer("big", (1, 64, 16, 16), np.ones((16, 64, 7, 7), np.int8), None,
                      Requant(np.array([1 << 30]), np.array([40])), padding=(3, 3, 3, 3))
    with pytest.raises(TilingError, match="no tile of this layer fits the buffers"):
        lower_conv2d(tiny, layer)


def small_conv_program():
    x_shape = (1, 48, 12, 12)
    w = RNG.integers(-127, 128, (32, 48, 3, 3)).astype(np.int8)
    mult, shift = fixed_point.quantize_multiplier(RNG.uniform(1e-4, 1e-3, 32))
    cfg = default_config(inp_buffer_kib=2, acc_buffer_kib=8)           # forces several tiles and chunks
    prog = lower_conv2d(cfg, ConvLayer("c", x_shape, w, None, Requant(mult, shift), padding=(1, 1, 1, 1)))
    assert prog.meta["chunks"] > 2 and prog.meta["tiles"] > 2
    return prog
