"""Functional simulator: executes a Program on numpy arrays, bit-exactly.

Each instruction is executed as a whole: its two-level loop nest over a micro-op range
becomes index arrays and one batched numpy operation (a gather, one matrix product per
group of micro-ops that share their input pattern, a scatter), never a Python loop per
micro-op. The index arrays of an instruction are built once and cached, so running the
same program again (every inference) only does the arithmetic.

The first run of a program is *checked*:

* the three modules run as separate instruction queues synchronised only by the token
  queues; a state where no module can proceed is a ``DeadlockError`` that names each
  blocked instruction and the queue it waits on;
* every SRAM access is checked against the buffer sizes (``BufferOverflowError`` naming
  the instruction) and against the happens-before order the tokens establish (vector
  clocks): a load overwriting a buffer the compute module may still read, or a compute
  reading data no token says has arrived, is a ``HazardError`` -- a missing token is
  reported, never silently turned into a wrong answer. Reading an entry nothing wrote
  is an error too.
* tokens left in a queue after FINISH, or a missing FINISH, are ``ProtocolError``.

Later runs replay the order found by the checked run without the checks.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import QCompileError
from . import isa
from .isa import (ALU_ADD, ALU_MAX, ALU_MIN, ALU_MUL, ALU_SHR, COMPUTE_MODULE, LOAD_MODULE, MEM_ACC, MEM_ACC8,
                  MEM_INP, MEM_OUT, MEM_UOP, MEM_WGT, MODULE_NAMES, OP_ALU, OP_FINISH, OP_GEMM, OP_LOAD, OP_STORE,
                  STORE_MODULE)

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
F32_EXACT_K = 1024  # int8 x int8 dot products of up to 1024 terms are exact in float32 (|sum| <= 2**24)


class AccelError(QCompileError):
    """An accelerator program that cannot run correctly."""


class ProtocolError(AccelError):
    """Dependency-token misuse: a module without that neighbour, leftover tokens, no FINISH."""


class DeadlockError(ProtocolError):
    """No module can proceed: each waits for a token that will never come."""


class BufferOverflowError(AccelError):
    """An instruction addresses SRAM (or DRAM) outside the buffer."""


class HazardError(AccelError):
    """Two modules touch the same SRAM entries with no token ordering them (a race)."""


def where(i: int, insn) -> str:
    return f"instruction {i} [{MODULE_NAMES[insn.module]}] {insn.disasm().strip()}"


_BLAS = []


def single_threaded_blas():
    """The GEMMs are many small matrix products: multi-threaded BLAS only spins on a busy machine."""
    import contextlib

    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController())
        except ImportError:
            _BLAS.append(None)
    ctl = _BLAS[0]
    return ctl.limit(limits=1, user_api="blas") if ctl is not None else contextlib.nullcontext()


# ----------------------------------------------------------------------------- queues

def pop_queues(insn) -> list[str]:
    m, out = insn.module, []
    if insn.pop_prev:
        out.append({COMPUTE_MODULE: "l2c", STORE_MODULE: "c2s"}.get(m))
    if insn.pop_next:
        out.append({LOAD_MODULE: "c2l", COMPUTE_MODULE: "s2c"}.get(m))
    return out


def push_queues(insn) -> list[str]:
    m, out = insn.module, []
    if insn.push_prev:
        out.append({COMPUTE_MODULE: "c2l", STORE_MODULE: "s2c"}.get(m))
    if insn.push_next:
        out.append({LOAD_MODULE: "l2c", COMPUTE_MODULE: "c2s"}.get(m))
    return out


QUEUE_DESC = {"l2c": "load->compute", "c2l": "compute->load", "c2s": "compute->store", "s2c": "store->compute"}
QUEUE_SOURCE = {"l2c": LOAD_MODULE, "c2l": COMPUTE_MODULE, "c2s": COMPUTE_MODULE, "s2c": STORE_MODULE}


def check_protocol(insns):
    """Static checks: flags a module cannot use, exactly one FINISH, last on compute."""
    finishes = [i for i, insn in enumerate(insns) if insn.opcode == OP_FINISH]
    for i, insn in enumerate(insns):
        if None in pop_queues(insn) or None in push_queues(insn):
            side = "previous" if insn.module == LOAD_MODULE else "next"
            raise ProtocolError(f"{where(i, insn)}: the {MODULE_NAMES[insn.module]} module has no {side} module "
                                "to exchange tokens with")
        if insn.opcode == OP_LOAD and insn.mem_type not in (MEM_UOP, MEM_WGT, MEM_INP, MEM_ACC, MEM_ACC8):
            raise ProtocolError(f"{where(i, insn)}: LOAD cannot target memory type {insn.mem_type}")
        if insn.opcode == OP_STORE and insn.mem_type != MEM_OUT:
            raise ProtocolError(f"{where(i, insn)}: STORE must write memory type OUT")
    if not finishes:
        raise ProtocolError("the program has no FINISH instruction")
    if len(finishes) > 1:
        raise ProtocolError(f"the program has {len(finishes)} FINISH instructions (at {finishes})")
    last_compute = max(i for i, insn in enumerate(insns) if insn.module == COMPUTE_MODULE)
    if finishes[0] != last_compute:
        raise ProtocolError(f"FINISH (instruction {finishes[0]}) must be the last compute instruction")


# ----------------------------------------------------------------------------- machine

class Machine:
    """The SRAM buffers of one core."""

    def __init__(self, cfg):
        self.cfg = cfg
        b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
        self.inp = np.zeros((cfg.inp_entries, b, bi), np.int8)
        self.wgt = np.zeros((cfg.wgt_entries, bo, bi), np.int8)
        self.acc = np.zeros((cfg.acc_entries, b, bo), np.int32)
        self.uop = np.zeros((cfg.uop_entries, 3), np.int64)

    def buffer(self, name):
        return getattr(self, name)


_SRAM_OF_MEM = {MEM_UOP: "uop", MEM_WGT: "wgt", MEM_INP: "inp", MEM_ACC: "acc", MEM_ACC8: "acc", MEM_OUT: "acc"}


def dram_views(cfg, dram: np.ndarray) -> dict:
    """Typed, entry-indexed views of the DRAM image for each memory type."""
    b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out

    def view(dtype, shape):
        es = int(np.prod(shape)) * np.dtype(dtype).itemsize
        n = dram.size // es
        return dram[:n * es].view(dtype).reshape((n,) + shape)

    return {MEM_UOP: view(np.uint64, ()), MEM_WGT: view(np.int8, (bo, bi)), MEM_INP: view(np.int8, (b, bi)),
            MEM_ACC: view(np.int32, (b, bo)), MEM_ACC8: view(np.int8, (b, bo)), MEM_OUT: view(np.int8, (b, bo))}


_NEVER = np.iinfo(np.int64).max


def _entry(idx, pos) -> int:
    """The buffer entry at position `pos` of an index set (a slice or an array)."""
    if isinstance(idx, slice):
        return idx.start + int(pos)
    return int(idx[pos])


class _Tracker:
    """Happens-before bookkeeping of one SRAM buffer (vector clocks, last writer/readers).

    vc[k] is the number of module-k instructions the current instruction is ordered after;
    an access by module m is safe if every conflicting access by another module k has a
    sequence number <= vc[k]. Index sets are slices (contiguous) or index arrays."""

    def __init__(self, name, entries):
        self.name = name
        self.w_mod = np.full(entries, -1, np.int64)
        self.w_seq = np.zeros(entries, np.int64)
        self.w_insn = np.full(entries, -1, np.int64)
        self.r_seq = np.zeros((3, entries), np.int64)
        self.r_insn = np.full((3, entries), -1, np.int64)

    @staticmethod
    def _bounds(vc, m):
        b = np.empty(4, np.int64)           # index -1 (never written) -> _NEVER: always safe
        b[:3] = vc
        b[m] = _NEVER
        b[3] = _NEVER
        return b

    def read(self, idx, m, vc, seq, i, insn):
        wm = self.w_mod[idx]
        if wm.size and wm.min() < 0:
            e = _entry(idx, np.argmax(wm < 0))
            raise HazardError(f"{where(i, insn)} reads {self.name} entry {e}, which nothing has written")
        late = self.w_seq[idx] > self._bounds(vc, m)[wm]
        if late.any():
            e = _entry(idx, np.argmax(late))
            raise HazardError(f"{where(i, insn)} reads {self.name} entry {e} written by instruction "
                              f"{int(self.w_insn[e])} ({MODULE_NAMES[int(self.w_mod[e])]} module) with no "
                              "dependency token in between (a read-after-write race)")
        self.r_seq[m, idx] = seq
        self.r_insn[m, idx] = i

    def write(self, idx, m, vc, seq, i, insn):
        b = self._bounds(vc, m)
        late = self.r_seq[:, idx] > b[:3, None]
        if late.any():
            r, pos = np.unravel_index(np.argmax(late), late.shape)
            e = _entry(idx, pos)
            raise HazardError(f"{where(i, insn)} overwrites {self.name} entry {e} that instruction "
                              f"{int(self.r_insn[r, e])} ({MODULE_NAMES[r]} module) may still be reading; "
                              "a dependency token is missing (a write-after-read race)")
        late = self.w_seq[idx] > b[self.w_mod[idx]]
        if late.any():
            e = _entry(idx, np.argmax(late))
            raise HazardError(f"{where(i, insn)} overwrites {self.name} entry {e} written by instruction "
                              f"{int(self.w_insn[e])} with no dependency token in between (a write-after-write race)")
        self.w_mod[idx] = m
        self.w_seq[idx] = seq
        self.w_insn[idx] = i


def _index_set(idx: np.ndarray):
    """Unique entries of an index array, as a slice when they are contiguous."""
    u = np.unique(idx) if idx.size else idx.astype(np.int64)
    if u.size and u[-1] - u[0] == u.size - 1:
        return slice(int(u[0]), int(u[-1]) + 1)
    return u


# ----------------------------------------------------------------------------- simulator

_PLAN_FIELDS = [f for f in isa.Insn.__dataclass_fields__ if f not in ("opcode", "pop_prev", "pop_next", "push_prev",
                                                                       "push_next")]


class Simulator:
    """Runs one Program; keeps its SRAM, its working DRAM and the per-instruction plans."""

    def __init__(self, program):
        self.program = program
        self.cfg = program.cfg
        self.insns = program.insns
        self.machine = Machine(self.cfg)
        self.dram = program.dram.copy()
        self.views = dram_views(self.cfg, self.dram)
        self.plans: list = [None] * len(self.insns)
        self._shared: dict = {}        # identical instructions (same fields, same micro-ops) share one plan
        self._uop_version = 0
        self.schedule: list[int] | None = None
        self.runs = 0
        check_protocol(self.insns)

    # ------------------------------------------------------------------ public
    def run(self, inputs=()):
        """Run on logical input arrays; returns the logical output (or the DRAM image if the program has none)."""
        with single_threaded_blas():
            return self._run(inputs)

    def _run(self, inputs):
        if self.program.inputs:
            self.program.write_inputs(self.dram, inputs)
        if self.schedule is None:
            self.schedule = self._run_checked()
        else:
            for i in self.schedule:
                self._execute(i, None)
        self.runs += 1
        if self.program.output:
            return self.program.read_output(self.dram)
        return self.dram

    # ------------------------------------------------------------------ checked run
    def _run_checked(self) -> list[int]:
        insns = self.insns
        per_module = [[i for i, insn in enumerate(insns) if insn.module == m] for m in range(3)]
        heads = [0, 0, 0]
        queues = {q: deque() for q in QUEUE_DESC}
        vc = np.zeros((3, 3), np.int64)
        trackers = {name: _Tracker(name, len(self.machine.buffer(name))) for name in ("inp", "wgt", "acc", "uop")}
        order = []
        finished = False
        while True:
            progressed = False
            for m in range(3):
                while heads[m] < len(per_module[m]):
                    i = per_module[m][heads[m]]
                    insn = insns[i]
                    pops = pop_queues(insn)
                    if any(not queues[q] for q in pops):
                        break
                    for q in pops:
                        vc[m] = np.maximum(vc[m], queues[q].popleft())
                    vc[m, m] += 1
                    self._execute(i, (m, vc[m], int(vc[m, m]), trackers))
                    for q in push_queues(insn):
                        queues[q].append(vc[m].copy())
                    heads[m] += 1
                    order.append(i)
                    progressed = True
                    if insn.opcode == OP_FINISH:
                        finished = True
            if all(heads[m] == len(per_module[m]) for m in range(3)):
                break
            if not progressed:
                raise DeadlockError(self._deadlock_message(per_module, heads, queues))
        left = {q: len(v) for q, v in queues.items() if v}
        if left:
            raise ProtocolError("tokens left after FINISH: " + ", ".join(f"{n} on {QUEUE_DESC[q]}" for q, n in left.items())
                                + " (every pushed token must be popped)")
        assert finished
        return order

    def _deadlock_message(self, per_module, heads, queues) -> str:
        parts = []
        for m in range(3):
            if heads[m] == len(per_module[m]):
                parts.append(f"the {MODULE_NAMES[m]} module has finished")
                continue
            i = per_module[m][heads[m]]
            insn = self.insns[i]
            empty = [q for q in pop_queues(insn) if not queues[q]]
            src = QUEUE_SOURCE[empty[0]]
            done = " (which has no instructions left)" if heads[src] == len(per_module[src]) else ""
            parts.append(f"{where(i, insn)} waits for a token on the empty {QUEUE_DESC[empty[0]]} queue from the "
                         f"{MODULE_NAMES[src]} module{done}")
        return "deadlock: " + "; ".join(parts)

    # ------------------------------------------------------------------ dispatch
    def _execute(self, i, check):
        insn = self.insns[i]
        plan = self.plans[i]
        if plan is None:
            key = (insn.opcode, tuple(getattr(insn, f) for f in _PLAN_FIELDS), self._uop_version)
            plan = self._shared.get(key)
            if plan is None:
                plan = self._shared[key] = self._plan(i, insn)
            self.plans[i] = plan
            if insn.opcode == OP_LOAD and insn.mem_type == MEM_UOP:
                self._uop_version += 1
        if check is not None:
            self._check_hazards(i, insn, plan, check)
        plan.run(self)

    def _check_hazards(self, i, insn, plan, check):
        m, vc, seq, trackers = check
        for name, idx in plan.reads:
            trackers[name].read(idx, m, vc, seq, i, insn)
        for name, idx in plan.writes:
            trackers[name].write(idx, m, vc, seq, i, insn)

    def _plan(self, i, insn):
        if insn.opcode == OP_LOAD:
            return _LoadPlan(self, i, insn)
        if insn.opcode == OP_STORE:
            return _StorePlan(self, i, insn)
        if insn.opcode == OP_GEMM:
            return _GemmPlan(self, i, insn)
        if insn.opcode == OP_ALU:
            return _AluPlan(self, i, insn)
        return _FinishPlan()


# ----------------------------------------------------------------------------- per-instruction plans

def _overflow(i, insn, what, hi, size):
    raise BufferOverflowError(f"{where(i, insn)}: {what} reaches entry {hi}, but the buffer holds {size} entries")


def _loop_offsets(insn, fo, fi) -> np.ndarray:
    return (np.arange(insn.iter_out, dtype=np.int64)[:, None] * fo
            + np.arange(insn.iter_in, dtype=np.int64)[None, :] * fi).reshape(-1)


def _strided(view, base, rows, cols, row_stride):
    s0 = view.strides[0]
    return as_strided(view[base:], shape=(rows, cols) + view.shape[1:], strides=(row_stride * s0, s0) + view.strides[1:],
                      writeable=True)


class _FinishPlan:
    reads = writes = ()

    def run(self, sim):
        pass


def _const_source(sim, lo_entry, hi_entry, entry_bytes) -> bool:
    """True if DRAM entries [lo, hi) lie in the constant image (no input/output region)."""
    lo, hi = lo_entry * entry_bytes, hi_entry * entry_bytes
    return not any(lo < b and a < hi for a, b in sim.program.io_regions)


class _LoadPlan:
    def __init__(self, sim, i, insn):
        self.mem = insn.mem_type
        sram = sim.machine.buffer(_SRAM_OF_MEM[self.mem])
        view = sim.views[self.mem]
        rows = insn.y_pad_0 + insn.y_size + insn.y_pad_1
        cols = insn.x_pad_0 + insn.x_size + insn.x_pad_1
        self.insn = insn
        total = rows * cols
        if insn.sram_base + total > len(sram):
            _overflow(i, insn, f"{_SRAM_OF_MEM[self.mem]} SRAM write of {total} entries from {insn.sram_base}",
                      insn.sram_base + total - 1, len(sram))
        self.src = None
        if insn.y_size and insn.x_size:
            last = insn.dram_base + (insn.y_size - 1) * insn.x_stride + insn.x_size - 1
            if last >= len(view) or insn.x_size > insn.x_stride and insn.y_size > 1:
                raise BufferOverflowError(f"{where(i, insn)}: DRAM read reaches entry {last} of a "
                                          f"{len(view)}-entry image (or x_size exceeds x_stride)")
            constant = _const_source(sim, insn.dram_base, last + 1, view.strides[0])
            if self.mem == MEM_UOP and not constant:
                raise AccelError(f"{where(i, insn)}: micro-ops must come from the constant image, "
                                 "not from an input/output region")
            self.src = _strided(view, insn.dram_base, insn.y_size, insn.x_size, insn.x_stride)
            if constant:  # the constant image never changes: convert it once
                self.src = isa.decode_uops(self.src) if self.mem == MEM_UOP else np.array(self.src)
        if self.mem == MEM_INP and not -128 <= insn.pad_value <= 127:
            raise AccelError(f"{where(i, insn)}: pad value {insn.pad_value} does not fit int8")
        region = sram[insn.sram_base:insn.sram_base + total].reshape((rows, cols) + sram.shape[1:])
        self.pad = region if total != insn.y_size * insn.x_size else None
        self.dst = region[insn.y_pad_0:insn.y_pad_0 + insn.y_size, insn.x_pad_0:insn.x_pad_0 + insn.x_size]
        self.reads = ()
        self.writes = ((_SRAM_OF_MEM[self.mem], slice(insn.sram_base, insn.sram_base + total)),)

    def run(self, sim):
        if self.pad is not None:
            self.pad[...] = self.insn.pad_value
        if self.src is not None:
            self.dst[...] = self.src


class _StorePlan:
    def __init__(self, sim, i, insn):
        self.insn = insn
        acc = sim.machine.acc
        view = sim.views[MEM_OUT]
        n = insn.y_size * insn.x_size
        if insn.y_pad_0 or insn.y_pad_1 or insn.x_pad_0 or insn.x_pad_1:
            raise AccelError(f"{where(i, insn)}: STORE takes no padding")
        if insn.sram_base + n > len(acc):
            _overflow(i, insn, f"acc SRAM read of {n} entries from {insn.sram_base}", insn.sram_base + n - 1, len(acc))
        self.src = self.dst = None
        if n:
            last = insn.dram_base + (insn.y_size - 1) * insn.x_stride + insn.x_size - 1
            if last >= len(view) or (insn.x_size > insn.x_stride and insn.y_size > 1):
                raise BufferOverflowError(f"{where(i, insn)}: DRAM write reaches entry {last} of a "
                                          f"{len(view)}-entry image (or x_size exceeds x_stride)")
            self.src = acc[insn.sram_base:insn.sram_base + n].reshape((insn.y_size, insn.x_size) + acc.shape[1:])
            self.dst = _strided(view, insn.dram_base, insn.y_size, insn.x_size, insn.x_stride)
            self.tmp = np.empty(self.src.shape, np.int32)
        self.reads = (("acc", slice(insn.sram_base, insn.sram_base + n)),)
        self.writes = ()
        bits = sim.cfg.out_bits
        self.lo, self.hi = np.int32(-(1 << (bits - 1))), np.int32((1 << (bits - 1)) - 1)

    def run(self, sim):
        if self.src is not None:
            np.maximum(self.src, self.lo, out=self.tmp)
            np.minimum(self.tmp, self.hi, out=self.tmp)
            self.dst[...] = self.tmp


class _GemmPlan:
    def __init__(self, sim, i, insn):
        m = sim.machine
        self.insn = insn
        if not insn.uop_bgn <= insn.uop_end <= len(m.uop):
            _overflow(i, insn, f"micro-op range [{insn.uop_bgn}, {insn.uop_end})", insn.uop_end - 1, len(m.uop))
        uops = m.uop[insn.uop_bgn:insn.uop_end]
        d, s, w = uops[:, 0], uops[:, 1], uops[:, 2]
        od = _loop_offsets(insn, insn.dst_factor_out, insn.dst_factor_in)
        dst = od[:, None] + d[None, :]
        self.reads = [("uop", slice(insn.uop_bgn, insn.uop_end))]
        if dst.size and dst.max() >= len(m.acc):
            _overflow(i, insn, "accumulator index", int(dst.max()), len(m.acc))
        if insn.reset:
            self.kind = "reset"
            self.dst = _index_set(dst)
            self.writes = [("acc", self.dst)]
            return
        os_ = _loop_offsets(insn, insn.src_factor_out, insn.src_factor_in)
        ow = _loop_offsets(insn, insn.wgt_factor_out, insn.wgt_factor_in)
        src = os_[:, None] + s[None, :]
        wgt = ow[:, None] + w[None, :]
        if src.size and src.max() >= len(m.inp):
            _overflow(i, insn, "input index", int(src.max()), len(m.inp))
        if wgt.size and wgt.max() >= len(m.wgt):
            _overflow(i, insn, "weight index", int(wgt.max()), len(m.wgt))
        udst = _index_set(dst)
        n_udst = udst.stop - udst.start if isinstance(udst, slice) else udst.size
        self.reads += [("inp", _index_set(src)), ("wgt", _index_set(wgt)), ("acc", udst)]
        self.writes = [("acc", udst)]
        if insn.wgt_factor_out == 0 and insn.wgt_factor_in == 0:
            self.kind = "grouped"
            self._group(d, s, w, od, os_)
            self.unique = sum(b[3].size for b in self.buckets) == n_udst
        else:
            self.kind = "general"
            self.dst, self.src, self.wgt = dst, src, wgt

    def _group(self, d, s, w, od, os_):
        groups: dict = {}
        for k in range(len(d)):
            groups.setdefault(int(d[k]), []).append(k)
        buckets: dict = {}
        for dval, ks in groups.items():
            key = tuple(int(s[k]) for k in ks)
            buckets.setdefault(key, []).append((dval, [int(w[k]) for k in ks]))
        self.buckets = []
        for key, members in buckets.items():
            srcs = np.asarray(key, np.int64)
            wmat = np.asarray([wl for _, wl in members], np.int64)            # (G, L)
            dbase = np.asarray([dv for dv, _ in members], np.int64)           # (G,)
            sidx = os_[:, None] + srcs[None, :]                               # (P, L)
            didx = od[:, None] + dbase[None, :]                               # (P, G)
            self.buckets.append((sidx, wmat, srcs.size, didx))

    def run(self, sim):
        m = sim.machine
        if self.kind == "reset":
            m.acc[self.dst] = 0
            return
        b, bi, bo = m.acc.shape[1], m.inp.shape[2], m.acc.shape[2]
        if self.kind == "general":
            x = m.inp[self.src].astype(np.int64)           # (P, U, B, BI)
            wt = m.wgt[self.wgt].astype(np.int64)          # (P, U, BO, BI)
            r = np.einsum("pubi,puoi->pubo", x, wt)
            np.add.at(m.acc, self.dst, r.astype(np.int32))
            return
        for sidx, wmat, length, didx in self.buckets:
            p, g = didx.shape
            x = m.inp[sidx]                                 # (P, L, B, BI)
            wt = m.wgt[wmat]                                # (G, L, BO, BI)
            r = np.zeros((p * b, g * bo), np.int64) if length * bi > F32_EXACT_K else None
            step = max(1, F32_EXACT_K // bi)
            for c0 in range(0, length, step):
                xs = x[:, c0:c0 + step]
                ws = wt[:, c0:c0 + step]
                lc = xs.shape[1]
                xm = (xs.reshape(p, lc * bi) if b == 1 else xs.transpose(0, 2, 1, 3).reshape(p * b, lc * bi))
                wm = ws.transpose(1, 3, 0, 2).reshape(lc * bi, g * bo)
                part = xm.astype(np.float32) @ wm.astype(np.float32)
                if r is None:
                    r = part
                else:
                    r += part.astype(np.int64)
            res = r.reshape(p, b, g, bo).transpose(0, 2, 1, 3).astype(np.int64).astype(np.int32)
            if self.unique:
                m.acc[didx] += res
            else:
                np.add.at(m.acc, didx, res)


def _as_slice(idx: np.ndarray):
    """A slice equal to the index array, if it is a contiguous ascending range."""
    if idx.size and idx[-1] - idx[0] == idx.size - 1 and (idx.size == 1 or (np.diff(idx) == 1).all()):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return None


class _AluPlan:
    def __init__(self, sim, i, insn):
        m = sim.machine
        self.insn = insn
        if not insn.uop_bgn <= insn.uop_end <= len(m.uop):
            _overflow(i, insn, f"micro-op range [{insn.uop_bgn}, {insn.uop_end})", insn.uop_end - 1, len(m.uop))
        if insn.alu_op not in isa.ALU_NAMES:
            raise AccelError(f"{where(i, insn)}: unknown ALU op {insn.alu_op}")
        if insn.alu_op != ALU_MUL and (insn.shr or insn.round):
            raise AccelError(f"{where(i, insn)}: only MUL takes a shift/round")
        if not sim.cfg.has_alu_op(isa.ALU_NAMES[insn.alu_op]):
            raise AccelError(f"{where(i, insn)}: this core's ALU has no {isa.ALU_NAMES[insn.alu_op]}")
        uops = m.uop[insn.uop_bgn:insn.uop_end]
        od = _loop_offsets(insn, insn.dst_factor_out, insn.dst_factor_in)
        dst = (od[:, None] + uops[None, :, 0]).reshape(-1)
        if dst.size and dst.max() >= len(m.acc):
            _overflow(i, insn, "accumulator index", int(dst.max()), len(m.acc))
        self.dst = dst
        udst = _index_set(dst)
        self.reads = [("uop", slice(insn.uop_bgn, insn.uop_end)), ("acc", udst)]
        self.writes = [("acc", udst)]
        self.src = None
        if not insn.use_imm:
            os_ = _loop_offsets(insn, insn.src_factor_out, insn.src_factor_in)
            src = (os_[:, None] + uops[None, :, 1]).reshape(-1)
            if src.size and src.max() >= len(m.acc):
                _overflow(i, insn, "accumulator source index", int(src.max()), len(m.acc))
            self.src = src
            self.reads.append(("acc", _index_set(src)))
        self.vectorized = self._vectorizable()
        # fast paths: the destination as a slice, a source that only varies with the outer loop
        self.dslice = _as_slice(dst) if self.vectorized else None
        self.src_outer = None
        if self.src is not None and self.vectorized and insn.n_uops == 1 and insn.src_factor_in == 0:
            self.src_outer = self.src.reshape(insn.iter_out, insn.iter_in)[:, 0]
        self.imm = np.int64(insn.imm)

    def _vectorizable(self) -> bool:
        dst, src = self.dst, self.src
        if np.unique(dst).size != dst.size:
            return False
        if src is None:
            return True
        order = np.argsort(dst, kind="stable")
        pos = np.searchsorted(dst[order], src)
        pos = np.clip(pos, 0, dst.size - 1)
        hit = dst[order][pos] == src
        writer = order[pos]
        k = np.arange(src.size)
        return not np.any(hit & (writer < k))  # an element must not read a value written earlier in the same insn

    def run(self, sim):
        acc = sim.machine.acc
        insn = self.insn
        if self.vectorized:
            a = acc[self.dslice] if self.dslice is not None else acc[self.dst]
            if self.src is None:
                b = self.imm
            elif self.src_outer is not None:
                a = a.reshape((insn.iter_out, insn.iter_in) + acc.shape[1:])
                b = acc[self.src_outer][:, None]
            else:
                b = acc[self.src]
            r = alu_apply(insn.alu_op, a, b, insn.shr, insn.round).reshape((-1,) + acc.shape[1:])
            if self.dslice is not None:
                acc[self.dslice] = r
            else:
                acc[self.dst] = r
            return
        for k in range(self.dst.size):  # sequential semantics (e.g. a reduction into one entry)
            a = acc[self.dst[k]]
            b = self.imm if self.src is None else acc[self.src[k]]
            acc[self.dst[k]] = alu_apply(insn.alu_op, a, b, insn.shr, insn.round)


_I32_MIN, _I32_MAX = np.int64(INT32_MIN), np.int64(INT32_MAX)


def _saturate(r: np.ndarray) -> np.ndarray:
    np.maximum(r, _I32_MIN, out=r)
    np.minimum(r, _I32_MAX, out=r)
    return r.astype(np.int32)


def alu_apply(op, a: np.ndarray, b, shr: int = 0, round_: int = 0) -> np.ndarray:
    """One ALU op on int32 operands (arrays or an int64 immediate); the int32 result, saturated."""
    if op == ALU_MAX:
        return np.maximum(a, b).astype(np.int32)
    if op == ALU_MIN:
        return np.minimum(a, b).astype(np.int32)
    a = np.asarray(a, np.int64)
    if op == ALU_ADD:
        return _saturate(a + b)
    if op == ALU_SHR:
        b = np.asarray(b, np.int64)
        if b.ndim == 0:
            sh = int(b)
            if sh >= 0:
                return (a >> min(sh, 63)).astype(np.int32)
            return _saturate(a << min(-sh, 32))
        sh = np.clip(b, -32, 63)
        return _saturate(np.where(sh >= 0, a >> np.maximum(sh, 0), a << np.maximum(-sh, 0)))
    if op == ALU_MUL:
        r = a * b  # |a|, |b| < 2**31: exact in int64
        if shr:
            if round_:
                r += np.int64(1) << np.int64(shr - 1)
            r >>= np.int64(shr)
        return _saturate(r)
    raise AccelError(f"unknown ALU op {op}")


def run_program(program, inputs=()):
    """Run a Program once (checked) and return its output."""
    return Simulator(program).run(inputs)
