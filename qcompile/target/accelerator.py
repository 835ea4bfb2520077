"""AccelConfig: the hardware description of a VTA-style accelerator, from a target YAML.

A target file gets one optional section, ``accelerator:``, validated here::

    accelerator:
      name: vta-1x16x16
      batch: 1              # GEMM core shape: BATCH x BLOCK_IN x BLOCK_OUT
      block_in: 16
      block_out: 16
      inp_bits: 8           # operand / accumulator widths (int8 x int8 -> int32)
      wgt_bits: 8
      acc_bits: 32
      out_bits: 8
      inp_buffer_kib: 32    # on-chip SRAMs
      wgt_buffer_kib: 256
      acc_buffer_kib: 128
      uop_buffer_kib: 32
      dram_bytes_per_cycle: 16
      dram_latency_cycles: 64
      clock_mhz: 200
      alu_ops: [ADD, MAX, MIN, SHR, MUL]
      offload: [conv2d, dense, add]

Every field has a default (VTA's published 1x16x16 configuration), so ``accelerator: {}``
is a valid section. An unknown or mistyped key is an error that names it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import TargetError

ALU_OP_NAMES = ("ADD", "MAX", "MIN", "SHR", "MUL")
OFFLOADABLE = ("conv2d", "dense", "add")
UOP_BYTES = 8  # one micro-op: dst (21 bits) | src (21 bits) | wgt (22 bits)


@dataclass(frozen=True)
class AccelConfig:
    name: str = "vta"
    batch: int = 1
    block_in: int = 16
    block_out: int = 16
    inp_bits: int = 8
    wgt_bits: int = 8
    acc_bits: int = 32
    out_bits: int = 8
    inp_buffer_kib: float = 32
    wgt_buffer_kib: float = 256
    acc_buffer_kib: float = 128
    uop_buffer_kib: float = 32
    dram_bytes_per_cycle: float = 16.0
    dram_latency_cycles: int = 64
    clock_mhz: float = 200.0
    gemm_pipeline_cycles: int = 4      # fixed cost of every GEMM instruction (pipeline fill/drain)
    alu_pipeline_cycles: int = 4       # fixed cost of every ALU instruction
    alu_cycles_per_vector: int = 1     # ALU throughput: one accumulator vector (BATCH x BLOCK_OUT) per cycle
    alu_ops: tuple = ALU_OP_NAMES
    offload: tuple = OFFLOADABLE
    max_tile_candidates: int = 24      # compile-time search effort of the tiler

    # ------------------------------------------------------------------ derived sizes
    @property
    def inp_entry_bytes(self) -> int:
        return self.batch * self.block_in * self.inp_bits // 8

    @property
    def wgt_entry_bytes(self) -> int:
        return self.block_out * self.block_in * self.wgt_bits // 8

    @property
    def acc_entry_bytes(self) -> int:
        return self.batch * self.block_out * self.acc_bits // 8

    @property
    def out_entry_bytes(self) -> int:
        return self.batch * self.block_out * self.out_bits // 8

    @property
    def inp_entries(self) -> int:
        return int(self.inp_buffer_kib * 1024) // self.inp_entry_bytes

    @property
    def wgt_entries(self) -> int:
        return int(self.wgt_buffer_kib * 1024) // self.wgt_entry_bytes

    @property
    def acc_entries(self) -> int:
        return int(self.acc_buffer_kib * 1024) // self.acc_entry_bytes

    @property
    def uop_entries(self) -> int:
        return int(self.uop_buffer_kib * 1024) // UOP_BYTES

    @property
    def macs_per_cycle(self) -> int:
        return self.batch * self.block_in * self.block_out

    @property
    def peak_gops(self) -> float:
        return 2.0 * self.macs_per_cycle * self.clock_mhz / 1e3

    def has_alu_op(self, name: str) -> bool:
        return name in self.alu_ops

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["alu_ops"] = list(self.alu_ops)
        d["offload"] = list(self.offload)
        return d

    def describe(self) -> str:
        return (f"{self.name}: {self.batch}x{self.block_in}x{self.block_out} int{self.inp_bits} GEMM "
                f"({self.macs_per_cycle} MAC/cycle @ {self.clock_mhz:g} MHz = {self.peak_gops:.1f} GOPS), "
                f"SRAM inp {self.inp_buffer_kib:g} KiB / wgt {self.wgt_buffer_kib:g} KiB / acc {self.acc_buffer_kib:g} KiB "
                f"/ uop {self.uop_buffer_kib:g} KiB, DRAM {self.dram_bytes_per_cycle:g} B/cycle")

    @staticmethod
    def from_dict(data: dict | None, source: str = "") -> "AccelConfig":
        """Validate an ``accelerator:`` section; errors name the file and the key."""
        where = f"{source}: " if source else ""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise TargetError(f"{where}'accelerator' must be a mapping of hardware parameters")
        fields = {f.name: f for f in dataclasses.fields(AccelConfig)}
        kwargs = {}
        for key, value in data.items():
            if key not in fields:
                raise TargetError(f"{where}unknown key 'accelerator.{key}'; valid keys here: {', '.join(sorted(fields))}")
            kwargs[key] = _coerce(fields[key], value, f"{where}'accelerator.{key}'")
        cfg = AccelConfig(**kwargs)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = ""):
        def bad(key, msg):
            raise TargetError(f"{where}'accelerator.{key}' {msg}")

        for key in ("batch", "block_in", "block_out"):
            v = getattr(self, key)
            if v < 1 or v & (v - 1):
                bad(key, f"must be a power of two >= 1, got {v}")
        if self.block_in < 2 or self.block_out < 2:
            bad("block_in", "and block_out must be at least 2")
        for key, allowed in (("inp_bits", (8,)), ("wgt_bits", (8,)), ("acc_bits", (32,)), ("out_bits", (8,))):
            if getattr(self, key) not in allowed:
                bad(key, f"must be one of {allowed} (this simulator models int8 x int8 -> int32), got {getattr(self, key)}")
        for key in ("inp_buffer_kib", "wgt_buffer_kib", "acc_buffer_kib", "uop_buffer_kib", "dram_bytes_per_cycle", "clock_mhz"):
            if getattr(self, key) <= 0:
                bad(key, f"must be > 0, got {getattr(self, key)}")
        for key in ("dram_latency_cycles", "gemm_pipeline_cycles", "alu_pipeline_cycles"):
            if getattr(self, key) < 0:
                bad(key, f"must be >= 0, got {getattr(self, key)}")
        if self.alu_cycles_per_vector < 1:
            bad("alu_cycles_per_vector", f"must be >= 1, got {self.alu_cycles_per_vector}")
        for key, entries, limit in (("inp_buffer_kib", self.inp_entries, 1 << 21), ("wgt_buffer_kib", self.wgt_entries, 1 << 22),
                                    ("acc_buffer_kib", self.acc_entries, 1 << 21), ("uop_buffer_kib", self.uop_entries, 1 << 16)):
            if entries < 1:
                bad(key, "is smaller than one buffer entry")
            if entries > limit:
                bad(key, f"holds {entries} entries, more than the ISA can address ({limit})")
        for op in self.alu_ops:
            if op not in ALU_OP_NAMES:
                bad("alu_ops", f"has unknown op {op!r}; known: {', '.join(ALU_OP_NAMES)}")
        for op in ("ADD", "MAX", "SHR"):
            if op not in self.alu_ops:
                bad("alu_ops", f"must include {op} (bias add, clamp and requantize shift need it)")
        for op in self.offload:
            if op not in OFFLOADABLE:
                bad("offload", f"has unknown op kind {op!r}; known: {', '.join(OFFLOADABLE)}")
        if self.max_tile_candidates < 1:
            bad("max_tile_candidates", "must be >= 1")


def _coerce(f, value, key):
    kind = str(f.type)
    if kind.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise TargetError(f"{key} must be a list of names")
        return tuple(v.upper() if f.name == "alu_ops" else v for v in value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TargetError(f"{key} must be an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TargetError(f"{key} must be a number, got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise TargetError(f"{key} must be a string, got {value!r}")
        return value
    return value


def default_config(**overrides) -> AccelConfig:
    cfg = dataclasses.replace(AccelConfig(), **overrides)
    cfg.validate()
    return cfg


__all__ = ["AccelConfig", "default_config", "ALU_OP_NAMES", "OFFLOADABLE", "UOP_BYTES"]
