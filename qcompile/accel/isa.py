"""The accelerator's instruction set: VTA's decoupled access-execute ISA, with wider fields.

Three modules run concurrently and talk only through four dependency-token queues::

    load  --l2c-->  compute  --c2s-->  store
    load  <--c2l--  compute  <--s2c--  store

Every instruction carries four flags. ``pop_prev``/``pop_next`` wait for (and consume)
a token from the previous/next module before it starts; ``push_prev``/``push_next``
send one when it has finished. "Previous" of compute is load, "next" of compute is
store; load has only a next, store only a previous.

Instructions (all 256 bits, little-endian, fields packed from bit 0):

``LOAD``   2-D strided copy DRAM -> SRAM with on-chip padding. Memory type INP/WGT
           runs on the load module; UOP/ACC/ACC8 on the compute module.
           ``y_size`` rows of ``x_size`` entries, DRAM row stride ``x_stride``, plus
           ``y_pad_0/1`` rows and ``x_pad_0/1`` columns of ``pad_value`` around them,
           written contiguously from ``sram_base``. ACC8 reads int8 DRAM entries and
           sign-extends them into the accumulator (residual adds).
``STORE``  2-D strided copy of accumulator entries -> DRAM, narrowing int32 to the
           output width with saturation (store module).
``GEMM``   for i0 < iter_out, i1 < iter_in, uop in [uop_bgn, uop_end):
               acc[dst] += inp[src] @ wgt[wgt].T          (or acc[dst] = 0 with reset)
           where dst = uop.dst + i0*dst_factor_out + i1*dst_factor_in, same for src and wgt.
``ALU``    the same loop nest over (dst, src) micro-ops: acc[dst] = acc[dst] OP (acc[src] | imm),
           OP in ADD, MAX, MIN, SHR (negative amount = left shift), MUL (64-bit product,
           then arithmetic shift right by ``shr``, rounding half up when ``round`` is set).
           ADD/MUL/SHR saturate to int32.
``FINISH`` marks the end of the program (compute module).

A micro-op is 64 bits: dst (bits 0-20), src (21-41), wgt (42-63), entry indices into the
accumulator, input and weight buffers. ``disassemble`` prints a readable listing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

OP_LOAD, OP_STORE, OP_GEMM, OP_ALU, OP_FINISH = range(5)
OPCODE_NAMES = {OP_LOAD: "LOAD", OP_STORE: "STORE", OP_GEMM: "GEMM", OP_ALU: "ALU", OP_FINISH: "FINISH"}

MEM_UOP, MEM_WGT, MEM_INP, MEM_ACC, MEM_OUT, MEM_ACC8 = range(6)
MEM_NAMES = {MEM_UOP: "UOP", MEM_WGT: "WGT", MEM_INP: "INP", MEM_ACC: "ACC", MEM_OUT: "OUT", MEM_ACC8: "ACC8"}

ALU_ADD, ALU_MAX, ALU_MIN, ALU_SHR, ALU_MUL = range(5)
ALU_NAMES = {ALU_ADD: "ADD", ALU_MAX: "MAX", ALU_MIN: "MIN", ALU_SHR: "SHR", ALU_MUL: "MUL"}
ALU_CODES = {v: k for k, v in ALU_NAMES.items()}

LOAD_MODULE, COMPUTE_MODULE, STORE_MODULE = range(3)
MODULE_NAMES = ("load", "compute", "store")

INSN_BYTES = 32
UOP_DST_BITS, UOP_SRC_BITS, UOP_WGT_BITS = 21, 21, 22

_COMMON = (("opcode", 3, False), ("pop_prev", 1, False), ("pop_next", 1, False), ("push_prev", 1, False),
           ("push_next", 1, False))
_MEM = _COMMON + (("mem_type", 3, False), ("sram_base", 24, False), ("dram_base", 32, False), ("y_size", 16, False),
                  ("x_size", 16, False), ("x_stride", 24, False), ("y_pad_0", 8, False), ("y_pad_1", 8, False),
                  ("x_pad_0", 8, False), ("x_pad_1", 8, False), ("pad_value", 16, True))
_LOOPS = (("uop_bgn", 16, False), ("uop_end", 17, False), ("iter_out", 16, False), ("iter_in", 16, False),
          ("dst_factor_out", 20, False), ("dst_factor_in", 20, False), ("src_factor_out", 20, False),
          ("src_factor_in", 20, False))
_GEMM = _COMMON + (("reset", 1, False),) + _LOOPS + (("wgt_factor_out", 20, False), ("wgt_factor_in", 20, False))
_ALU = _COMMON + _LOOPS + (("alu_op", 3, False), ("use_imm", 1, False), ("imm", 32, True), ("shr", 6, False),
                           ("round", 1, False))
LAYOUTS = {OP_LOAD: _MEM, OP_STORE: _MEM, OP_GEMM: _GEMM, OP_ALU: _ALU, OP_FINISH: _COMMON}
for _layout in LAYOUTS.values():
    assert sum(b for _, b, _ in _layout) <= INSN_BYTES * 8


class ISAError(ValueError):
    """An instruction that cannot be encoded or decoded."""


@dataclass
class Insn:
    """One instruction. Fields an opcode does not use stay 0."""

    opcode: int
    pop_prev: int = 0
    pop_next: int = 0
    push_prev: int = 0
    push_next: int = 0
    # LOAD / STORE
    mem_type: int = 0
    sram_base: int = 0
    dram_base: int = 0
    y_size: int = 0
    x_size: int = 0
    x_stride: int = 0
    y_pad_0: int = 0
    y_pad_1: int = 0
    x_pad_0: int = 0
    x_pad_1: int = 0
    pad_value: int = 0
    # GEMM / ALU
    reset: int = 0
    uop_bgn: int = 0
    uop_end: int = 0
    iter_out: int = 1
    iter_in: int = 1
    dst_factor_out: int = 0
    dst_factor_in: int = 0
    src_factor_out: int = 0
    src_factor_in: int = 0
    wgt_factor_out: int = 0
    wgt_factor_in: int = 0
    alu_op: int = 0
    use_imm: int = 0
    imm: int = 0
    shr: int = 0
    round: int = 0

    @property
    def module(self) -> int:
        if self.opcode == OP_LOAD:
            return LOAD_MODULE if self.mem_type in (MEM_INP, MEM_WGT) else COMPUTE_MODULE
        if self.opcode == OP_STORE:
            return STORE_MODULE
        return COMPUTE_MODULE

    @property
    def name(self) -> str:
        if self.opcode in (OP_LOAD, OP_STORE):
            return f"{OPCODE_NAMES[self.opcode]} {MEM_NAMES.get(self.mem_type, '?')}"
        if self.opcode == OP_ALU:
            return f"ALU {ALU_NAMES.get(self.alu_op, '?')}"
        return OPCODE_NAMES.get(self.opcode, "?")

    @property
    def n_uops(self) -> int:
        return max(0, self.uop_end - self.uop_bgn)

    def encode(self) -> bytes:
        layout = LAYOUTS.get(self.opcode)
        if layout is None:
            raise ISAError(f"unknown opcode {self.opcode}")
        word, pos = 0, 0
        used = {name for name, _, _ in layout}
        for name, bits, signed in layout:
            value = int(getattr(self, name))
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            if not lo <= value <= hi:
                raise ISAError(f"{self.name}: field '{name}' = {value} does not fit {bits} "
                               f"{'signed' if signed else 'unsigned'} bits")
            word |= (value & ((1 << bits) - 1)) << pos
            pos += bits
        for f in fields(self):
            if f.name not in used and getattr(self, f.name) != f.default:
                raise ISAError(f"{self.name}: field '{f.name}' is not part of a {OPCODE_NAMES[self.opcode]} instruction")
        return word.to_bytes(INSN_BYTES, "little")

    @staticmethod
    def decode(raw: bytes) -> "Insn":
        if len(raw) != INSN_BYTES:
            raise ISAError(f"an instruction is {INSN_BYTES} bytes, got {len(raw)}")
        word = int.from_bytes(raw, "little")
        opcode = word & 0b111
        layout = LAYOUTS.get(opcode)
        if layout is None:
            raise ISAError(f"unknown opcode {opcode}")
        values, pos = {}, 0
        for name, bits, signed in layout:
            v = (word >> pos) & ((1 << bits) - 1)
            if signed and v >> (bits - 1):
                v -= 1 << bits
            values[name] = v
            pos += bits
        if word >> pos:
            raise ISAError(f"{OPCODE_NAMES[opcode]}: stray bits set above bit {pos}")
        return Insn(**values)

    def flags(self) -> str:
        f = [n for n in ("pop_prev", "pop_next", "push_prev", "push_next") if getattr(self, n)]
        return f"  [{' '.join(f)}]" if f else ""

    def disasm(self) -> str:
        op = self.opcode
        if op in (OP_LOAD, OP_STORE):
            pads = ""
            if self.y_pad_0 or self.y_pad_1 or self.x_pad_0 or self.x_pad_1:
                pads = f" pad(y {self.y_pad_0},{self.y_pad_1} x {self.x_pad_0},{self.x_pad_1} = {self.pad_value})"
            return (f"{self.name:<10s} sram={self.sram_base:#07x} dram={self.dram_base:#09x} "
                    f"y={self.y_size} x={self.x_size} stride={self.x_stride}{pads}{self.flags()}")
        if op == OP_GEMM:
            body = "reset" if self.reset else (f"wgt=({self.wgt_factor_out},{self.wgt_factor_in})")
            return (f"{self.name:<10s} uop=[{self.uop_bgn},{self.uop_end}) loop={self.iter_out}x{self.iter_in} "
                    f"dst=({self.dst_factor_out},{self.dst_factor_in}) src=({self.src_factor_out},{self.src_factor_in}) "
                    f"{body}{self.flags()}")
        if op == OP_ALU:
            operand = f"imm={self.imm}" if self.use_imm else f"src=({self.src_factor_out},{self.src_factor_in})"
            extra = f" shr={self.shr}{' round' if self.round else ''}" if self.alu_op == ALU_MUL else ""
            return (f"{self.name:<10s} uop=[{self.uop_bgn},{self.uop_end}) loop={self.iter_out}x{self.iter_in} "
                    f"dst=({self.dst_factor_out},{self.dst_factor_in}) {operand}{extra}{self.flags()}")
        return f"{self.name:<10s}{self.flags()}"


# ----------------------------------------------------------------------------- constructors

def load(mem_type, sram_base, dram_base, y_size, x_size, x_stride, pads=(0, 0, 0, 0), pad_value=0, **deps) -> Insn:
    """LOAD; pads = (y_pad_0, y_pad_1, x_pad_0, x_pad_1)."""
    return Insn(OP_LOAD, mem_type=mem_type, sram_base=sram_base, dram_base=dram_base, y_size=y_size, x_size=x_size,
                x_stride=x_stride, y_pad_0=pads[0], y_pad_1=pads[1], x_pad_0=pads[2], x_pad_1=pads[3],
                pad_value=pad_value, **deps)


def store(sram_base, dram_base, y_size, x_size, x_stride, **deps) -> Insn:
    return Insn(OP_STORE, mem_type=MEM_OUT, sram_base=sram_base, dram_base=dram_base, y_size=y_size, x_size=x_size,
                x_stride=x_stride, **deps)


def gemm(uop_bgn, uop_end, iter_out, iter_in, dst=(0, 0), src=(0, 0), wgt=(0, 0), reset=0, **deps) -> Insn:
    return Insn(OP_GEMM, reset=reset, uop_bgn=uop_bgn, uop_end=uop_end, iter_out=iter_out, iter_in=iter_in,
                dst_factor_out=dst[0], dst_factor_in=dst[1], src_factor_out=src[0], src_factor_in=src[1],
                wgt_factor_out=wgt[0], wgt_factor_in=wgt[1], **deps)


def alu(op, uop_bgn, uop_end, iter_out, iter_in, dst=(0, 0), src=(0, 0), imm=None, shr=0, round_=0, **deps) -> Insn:
    code = ALU_CODES[op] if isinstance(op, str) else op
    return Insn(OP_ALU, alu_op=code, uop_bgn=uop_bgn, uop_end=uop_end, iter_out=iter_out, iter_in=iter_in,
                dst_factor_out=dst[0], dst_factor_in=dst[1], src_factor_out=0 if imm is not None else src[0],
                src_factor_in=0 if imm is not None else src[1], use_imm=int(imm is not None),
                imm=int(imm) if imm is not None else 0, shr=shr, round=round_, **deps)


def finish(**deps) -> Insn:
    return Insn(OP_FINISH, **deps)


# ----------------------------------------------------------------------------- streams

def encode_stream(insns) -> bytes:
    out = bytearray()
    for i, insn in enumerate(insns):
        try:
            out += insn.encode()
        except ISAError as err:
            raise ISAError(f"instruction {i}: {err}") from None
    return bytes(out)


def decode_stream(raw: bytes) -> list[Insn]:
    if len(raw) % INSN_BYTES:
        raise ISAError(f"instruction stream of {len(raw)} bytes is not a multiple of {INSN_BYTES}")
    out = []
    for i in range(0, len(raw), INSN_BYTES):
        try:
            out.append(Insn.decode(raw[i:i + INSN_BYTES]))
        except ISAError as err:
            raise ISAError(f"instruction {i // INSN_BYTES}: {err}") from None
    return out


def disassemble(insns, limit: int | None = None) -> str:
    lines = []
    for i, insn in enumerate(insns):
        if limit is not None and i >= limit:
            lines.append(f"... ({len(insns) - limit} more)")
            break
        lines.append(f"{i:6d}  {MODULE_NAMES[insn.module][0]}  {insn.disasm()}")
    return "\n".join(lines)


def encode_uops(uops: np.ndarray) -> np.ndarray:
    """(n, 3) int array of (dst, src, wgt) -> n uint64 words."""
    u = np.asarray(uops, np.int64).reshape(-1, 3)
    for col, bits, name in ((0, UOP_DST_BITS, "dst"), (1, UOP_SRC_BITS, "src"), (2, UOP_WGT_BITS, "wgt")):
        if u.size and (u[:, col].min() < 0 or u[:, col].max() >= 1 << bits):
            raise ISAError(f"micro-op {name} index {int(u[:, col].max())} does not fit {bits} bits")
    w = u[:, 0].astype(np.uint64) | (u[:, 1].astype(np.uint64) << np.uint64(UOP_DST_BITS)) \
        | (u[:, 2].astype(np.uint64) << np.uint64(UOP_DST_BITS + UOP_SRC_BITS))
    return w


def decode_uops(words: np.ndarray) -> np.ndarray:
    w = np.asarray(words, np.uint64)
    dst = w & np.uint64((1 << UOP_DST_BITS) - 1)
    src = (w >> np.uint64(UOP_DST_BITS)) & np.uint64((1 << UOP_SRC_BITS) - 1)
    wgt = (w >> np.uint64(UOP_DST_BITS + UOP_SRC_BITS)) & np.uint64((1 << UOP_WGT_BITS) - 1)
    return np.stack([dst, src, wgt], axis=-1).astype(np.int64)
