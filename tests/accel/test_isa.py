"""ISA: binary encoding round-trips, field range checks, readable disassembly."""

import numpy as np
import pytest

from qcompile.accel import isa
from qcompile.target.accelerator import default_config
from qcompile.accel.program import Program

RNG = np.random.default_rng(0)


def random_insn(opcode):
    insn = isa.Insn(opcode)
    for name, bits, signed in isa.LAYOUTS[opcode]:
        if name == "opcode":
            continue
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        setattr(insn, name, int(RNG.integers(lo, hi, endpoint=True)))
    return insn


@pytest.mark.parametrize("opcode", sorted(isa.LAYOUTS))
def test_encode_decode_round_trip(opcode):
    for _ in range(200):
        insn = random_insn(opcode)
        raw = insn.encode()
        assert len(raw) == isa.INSN_BYTES
        assert isa.Insn.decode(raw) == insn


def test_stream_round_trip_and_disassembly():
    insns = [isa.load(isa.MEM_UOP, 0, 10, 1, 5, 5),
             isa.load(isa.MEM_INP, 16, 300, 4, 7, 9, pads=(1, 0, 2, 1), pad_value=-3, push_next=1),
             isa.gemm(0, 5, 4, 7, dst=(7, 1), src=(9, 1), pop_prev=1),
             isa.alu("MUL", 5, 6, 2, 28, dst=(28, 1), src=(4, 0), shr=33),
             isa.alu("MAX", 6, 7, 2, 28, dst=(28, 1), imm=0, push_next=1),
             isa.store(0, 64, 2, 28, 49, pop_prev=1, push_prev=1),
             isa.finish(pop_next=1)]
    raw = isa.encode_stream(insns)
    assert isa.decode_stream(raw) == insns
    text = isa.disassemble(insns)
    for needle in ("LOAD UOP", "LOAD INP", "pad(y 1,0 x 2,1 = -3)", "GEMM", "ALU MUL", "shr=33", "ALU MAX", "imm=0",
                   "STORE OUT", "FINISH", "[pop_prev push_prev]", "[push_next]"):
        assert needle in text, needle
    assert [i.module for i in insns] == [isa.COMPUTE_MODULE, isa.LOAD_MODULE, isa.COMPUTE_MODULE, isa.COMPUTE_MODULE,
                                         isa.COMPUTE_MODULE, isa.STORE_MODULE, isa.COMPUTE_MODULE]


def test_field_overflow_and_bad_streams_are_errors():
    with pytest.raises(isa.ISAError, match="'y_pad_0' = 300 does not fit 8 unsigned bits"):
        isa.load(isa.MEM_INP, 0, 0, 1, 1, 1, pads=(300, 0, 0, 0)).encode()
    with pytest.raises(isa.ISAError, match="'imm'"):
        isa.alu("ADD", 0, 1, 1, 1, imm=1 << 40).encode()
    with pytest.raises(isa.ISAError, match="'reset' is not part of a ALU"):
        isa.Insn(isa.OP_ALU, reset=1).encode()
    with pytest.raises(isa.ISAError, match="not a multiple"):
        isa.decode_stream(b"\0" * 33)
    with pytest.raises(isa.ISAError, match="unknown opcode 7"):
        isa.Insn.decode(bytes([7]) + b"\0" * 31)


def test_uop_round_trip():
    u = np.stack([RNG.integers(0, 1 << 21, 100), RNG.integers(0, 1 << 21, 100), RNG.integers(0, 1 << 22, 100)], 1)
    np.testing.assert_array_equal(isa.decode_uops(isa.encode_uops(u)), u)
    with pytest.raises(isa.ISAError, match="dst index"):
        isa.encode_uops(np.array([[1 << 21, 0, 0]]))


def test_program_blob_round_trip():
    cfg = default_config()
    insns = [isa.load(isa.MEM_UOP, 0, 0, 1, 1, 1), isa.finish()]
    dram = np.arange(256, dtype=np.uint8)
    prog = Program(cfg, insns, dram, [], {}, {"layer": "x"}, {"cycles": 5})
    blob = prog.to_blob()
    back = Program.from_blob(blob)
    assert back.insns == insns and back.cfg == cfg and back.meta == {"layer": "x"} and back.stats == {"cycles": 5}
    np.testing.assert_array_equal(back.dram, dram)
    assert Program.blob_id(blob) == prog.pid == back.pid
    bad = blob.copy()
    bad[0] = ord("X")
    with pytest.raises(ValueError, match="bad magic"):
        Program.from_blob(bad)
