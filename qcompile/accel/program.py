"""Program: one offloaded layer as the accelerator sees it, and its binary form.

A program is an instruction stream plus a DRAM image. The image holds the constants
the compiler packed (blocked weights, per-channel requantize vectors, micro-ops) and
reserves regions for the layer's inputs and output. The runtime writes the packed
input into its region, runs the instructions, and reads the packed output back.

The binary blob (what the compiled model carries as a uint8 constant) is::

    "QACC" | u32 version | 16-byte program id | u32 header length | u32 insn bytes | u64 DRAM bytes
    header (JSON: config, I/O regions, layer metadata, static cycle statistics)
    instructions (32 bytes each) | DRAM image

The program id is a hash of everything else, so the runtime caches decoded programs by it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

import numpy as np

from . import isa
from ..target.accelerator import AccelConfig

MAGIC = b"QACC"
VERSION = 1
_FIXED = struct.Struct("<4sI16sIIQ")


class BlobError(ValueError):
    """A program blob that is not one, or from another version."""


@dataclass
class Program:
    cfg: AccelConfig
    insns: list
    dram: np.ndarray                    # uint8 DRAM image (constants filled, I/O regions zero)
    inputs: list                        # [{"name", "offset", "nbytes", "shape", "view", "packed"}]
    output: dict                        # {"offset", "nbytes", "shape", "view", "packed"}
    meta: dict = field(default_factory=dict)
    stats: dict | None = None           # static cycle statistics (timing.simulate)
    pid: bytes = b""

    @property
    def io_regions(self) -> list[tuple[int, int]]:
        regions = list(self.inputs) + ([self.output] if self.output else [])
        return [(r["offset"], r["offset"] + r["nbytes"]) for r in regions]

    def header(self) -> dict:
        return {"config": self.cfg.to_json(), "inputs": self.inputs, "output": self.output, "meta": self.meta,
                "stats": self.stats}

    def to_blob(self) -> np.ndarray:
        head = json.dumps(self.header(), sort_keys=True).encode()
        head += b" " * (-len(head) % 8)
        insns = isa.encode_stream(self.insns)
        dram = np.ascontiguousarray(self.dram, np.uint8).tobytes()
        pid = hashlib.blake2b(head + insns + dram, digest_size=16).digest()
        self.pid = pid
        fixed = _FIXED.pack(MAGIC, VERSION, pid, len(head), len(insns), len(dram))
        return np.frombuffer(fixed + head + insns + dram, np.uint8).copy()

    @staticmethod
    def from_blob(blob) -> "Program":
        raw = np.asarray(blob, np.uint8)
        if raw.size < _FIXED.size:
            raise BlobError("accelerator program blob is truncated")
        magic, version, pid, hlen, ilen, dlen = _FIXED.unpack(raw[:_FIXED.size].tobytes())
        if magic != MAGIC:
            raise BlobError("not an accelerator program (bad magic)")
        if version != VERSION:
            raise BlobError(f"accelerator program format {version} is not {VERSION}; recompile the model")
        if raw.size != _FIXED.size + hlen + ilen + dlen:
            raise BlobError("accelerator program blob has the wrong size")
        o = _FIXED.size
        head = json.loads(raw[o:o + hlen].tobytes())
        insns = isa.decode_stream(raw[o + hlen:o + hlen + ilen].tobytes())
        dram = raw[o + hlen + ilen:].copy()
        cfg = AccelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in head["config"].items()})
        return Program(cfg, insns, dram, head["inputs"], head["output"], head["meta"], head.get("stats"), pid)

    @staticmethod
    def blob_id(blob) -> bytes:
        raw = np.asarray(blob, np.uint8)
        return raw[8:24].tobytes()

    def disassemble(self, limit=None) -> str:
        return isa.disassemble(self.insns, limit=limit)

    # ------------------------------------------------------------------ data in / out
    def write_inputs(self, dram: np.ndarray, arrays) -> None:
        for spec, a in zip(self.inputs, arrays):
            packed = to_packed(np.asarray(a), spec, self.cfg)
            dram[spec["offset"]:spec["offset"] + spec["nbytes"]] = packed.view(np.uint8).reshape(-1)

    def read_output(self, dram: np.ndarray) -> np.ndarray:
        spec = self.output
        raw = dram[spec["offset"]:spec["offset"] + spec["nbytes"]].view(np.int8).reshape(spec["packed"])
        return from_packed(raw, spec, self.cfg)


# ----------------------------------------------------------------------------- layouts

def packed_shape(nchw, rows: int, cols: int):
    """(N, C, H, W) -> blocked (N/rows, C/cols, H, W, rows, cols), rounding N and C up."""
    n, c, h, w = nchw
    return (-(-n // rows), -(-c // cols), h, w, rows, cols)


def pack_nchw(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    n, c, h, w = x.shape
    nb, cb = -(-n // rows), -(-c // cols)
    if nb * rows != n or cb * cols != c:
        x = np.pad(x, ((0, nb * rows - n), (0, cb * cols - c), (0, 0), (0, 0)))
    return np.ascontiguousarray(x.reshape(nb, rows, cb, cols, h, w).transpose(0, 2, 4, 5, 1, 3))


def unpack_nchw(p: np.ndarray, n: int, c: int) -> np.ndarray:
    nb, cb, h, w, rows, cols = p.shape
    return p.transpose(0, 4, 1, 5, 2, 3).reshape(nb * rows, cb * cols, h, w)[:n, :c]


def as_nchw(x: np.ndarray, view: str, batch_rows: int) -> np.ndarray:
    """A logical tensor in the conv view the accelerator computes on."""
    if view == "nchw":
        return x
    if view == "dense":  # (..., M, K): rows of the matmul are positions (BATCH 1) or batch rows
        k = x.shape[-1]
        x2 = x.reshape(-1, k)
        if batch_rows == 1:
            return x2.T.reshape(1, k, 1, x2.shape[0])
        return x2.reshape(x2.shape[0], k, 1, 1)
    raise ValueError(f"unknown layout view {view!r}")


def nchw_shape(shape, view: str, batch_rows: int):
    if view == "nchw":
        return tuple(shape)
    k, m = shape[-1], int(np.prod(shape[:-1]))
    return (1, k, 1, m) if batch_rows == 1 else (m, k, 1, 1)


def from_nchw(y: np.ndarray, view: str, shape, batch_rows: int) -> np.ndarray:
    if view == "nchw":
        return y
    if batch_rows == 1:  # (1, N, 1, M)
        return np.ascontiguousarray(y[0, :, 0, :].T).reshape(shape)
    return np.ascontiguousarray(y[:, :, 0, 0]).reshape(shape)  # (M, N, 1, 1)


def unfold_w(x: np.ndarray, kw: int, stride: int, dilation: int, left: int, ow: int, pad_value: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C*KW, H, OW): column ox of channel c*KW + kx is input column ox*stride + kx*dilation
    of the input padded on the left by `left` (and on the right as needed) with `pad_value`."""
    n, c, h, w = x.shape
    need = (ow - 1) * stride + (kw - 1) * dilation + 1
    right = max(0, need - left - w)
    xp = np.pad(x, ((0, 0), (0, 0), (0, 0), (left, right)), constant_values=pad_value)
    cols = np.arange(ow)[:, None] * stride + np.arange(kw)[None, :] * dilation      # (OW, KW)
    u = xp[:, :, :, cols]                                                            # (N, C, H, OW, KW)
    return np.ascontiguousarray(u.transpose(0, 1, 4, 2, 3)).reshape(n, c * kw, h, ow)


def to_packed(x: np.ndarray, spec: dict, cfg: AccelConfig) -> np.ndarray:
    cols = cfg.block_in if spec.get("role", "inp") == "inp" else cfg.block_out
    if spec["view"] == "unfold_w":
        return pack_nchw(unfold_w(x, **spec["unfold"]), cfg.batch, cols)
    return pack_nchw(as_nchw(x, spec["view"], cfg.batch), cfg.batch, cols)


def from_packed(p: np.ndarray, spec: dict, cfg: AccelConfig) -> np.ndarray:
    n, c = spec["nchw"][0], spec["nchw"][1]
    return from_nchw(unpack_nchw(p, n, c), spec["view"], tuple(spec["shape"]), cfg.batch)
