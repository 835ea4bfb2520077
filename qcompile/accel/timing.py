"""Cycle model: the load, compute and store modules run concurrently, synchronised by tokens.

Each module executes its own instructions in program order. An instruction starts when
its module is free and every token it pops has been pushed (a token is available at the
cycle the pushing instruction finished). Costs, all in core clock cycles:

* ``LOAD``/``STORE``: ``dram_latency_cycles + ceil(bytes / dram_bytes_per_cycle)``. The DRAM
  channel is shared: transfers of different modules are served first-come first-served,
  each occupying the channel for ``ceil(bytes / bandwidth)`` cycles; the latency overlaps.
  Padding is generated on chip and moves no bytes (a load of padding only costs 1 cycle).
* ``GEMM``: ``gemm_pipeline_cycles + (uop_end - uop_bgn) * iter_out * iter_in`` -- one
  micro-op (a BATCH x BLOCK_IN x BLOCK_OUT matrix product) per cycle. A reset GEMM has the
  same cost but does no multiply-accumulates.
* ``ALU``: ``alu_pipeline_cycles + uops * iter_out * iter_in * alu_cycles_per_vector``.
* ``FINISH``: 1 cycle.

The model is a discrete-event simulation of the three in-order queues (no data), so it
is deterministic and cheap; the same DeadlockError as the functional simulator is raised
if the tokens cannot be satisfied.
"""

from __future__ import annotations

import math
from collections import deque

from .isa import (COMPUTE_MODULE, MEM_ACC, MEM_ACC8, MEM_INP, MEM_UOP, MEM_WGT, MODULE_NAMES, OP_ALU, OP_FINISH,
                  OP_GEMM, OP_LOAD, OP_STORE)
from .sim import DeadlockError, QUEUE_DESC, check_protocol, pop_queues, push_queues, where


def entry_bytes(cfg, mem_type: int) -> int:
    return {MEM_UOP: 8, MEM_WGT: cfg.wgt_entry_bytes, MEM_INP: cfg.inp_entry_bytes, MEM_ACC: cfg.acc_entry_bytes,
            MEM_ACC8: cfg.batch * cfg.block_out}.get(mem_type, cfg.out_entry_bytes)


def insn_bytes(cfg, insn) -> int:
    if insn.opcode not in (OP_LOAD, OP_STORE):
        return 0
    return insn.y_size * insn.x_size * entry_bytes(cfg, insn.mem_type)


def simulate(cfg, insns, useful_macs: int | None = None) -> dict:
    """Cycle statistics of an instruction stream (see the module docstring for the cost rules)."""
    check_protocol(insns)
    per_module = [[i for i, insn in enumerate(insns) if insn.module == m] for m in range(3)]
    heads = [0, 0, 0]
    clock = [0, 0, 0]
    busy = [0, 0, 0]
    queues = {q: deque() for q in QUEUE_DESC}
    dram_free = 0
    s = {"gemm_cycles": 0, "gemm_reset_cycles": 0, "alu_cycles": 0, "dram_read_bytes": 0, "dram_write_bytes": 0,
         "dram_busy_cycles": 0, "compute_load_cycles": 0}
    counts: dict = {}
    bw = float(cfg.dram_bytes_per_cycle)
    while True:
        best = None
        for m in range(3):
            if heads[m] == len(per_module[m]):
                continue
            insn = insns[per_module[m][heads[m]]]
            pops = pop_queues(insn)
            if any(not queues[q] for q in pops):
                continue
            start = max([clock[m]] + [queues[q][0] for q in pops])
            if best is None or start < best[0]:
                best = (start, m)
        if best is None:
            if all(heads[m] == len(per_module[m]) for m in range(3)):
                break
            blocked = []
            for m in range(3):
                if heads[m] < len(per_module[m]):
                    i = per_module[m][heads[m]]
                    empty = [QUEUE_DESC[q] for q in pop_queues(insns[i]) if not queues[q]]
                    blocked.append(f"{where(i, insns[i])} waits on the empty {', '.join(empty)} queue")
            raise DeadlockError("deadlock: " + "; ".join(blocked))
        start, m = best
        i = per_module[m][heads[m]]
        insn = insns[i]
        for q in pop_queues(insn):
            queues[q].popleft()
        counts[insn.name] = counts.get(insn.name, 0) + 1
        op = insn.opcode
        if op in (OP_LOAD, OP_STORE):
            nbytes = insn_bytes(cfg, insn)
            if nbytes:
                xfer = math.ceil(nbytes / bw)
                xs = max(start, dram_free)
                dram_free = xs + xfer
                end = xs + xfer + cfg.dram_latency_cycles
                s["dram_busy_cycles"] += xfer
            else:
                end = start + 1
            s["dram_write_bytes" if op == OP_STORE else "dram_read_bytes"] += nbytes
            if m == COMPUTE_MODULE:
                s["compute_load_cycles"] += end - start
        elif op == OP_GEMM:
            work = insn.n_uops * insn.iter_out * insn.iter_in
            end = start + cfg.gemm_pipeline_cycles + work
            s["gemm_reset_cycles" if insn.reset else "gemm_cycles"] += work
        elif op == OP_ALU:
            work = insn.n_uops * insn.iter_out * insn.iter_in * cfg.alu_cycles_per_vector
            end = start + cfg.alu_pipeline_cycles + work
            s["alu_cycles"] += work
        else:
            assert op == OP_FINISH
            end = start + 1
        busy[m] += end - start
        clock[m] = end
        for q in push_queues(insn):
            queues[q].append(end)
        heads[m] += 1
    total = max(clock)
    out = {
        "cycles": int(total),
        "time_us": total / cfg.clock_mhz,
        "modules": {MODULE_NAMES[m]: {"busy": int(busy[m]), "idle": int(total - busy[m]),
                                       "busy_frac": busy[m] / total if total else 0.0,
                                       "insns": len(per_module[m])} for m in range(3)},
        "insn_counts": counts,
        "issued_macs": s["gemm_cycles"] * cfg.macs_per_cycle,
        "gemm_busy_frac": s["gemm_cycles"] / total if total else 0.0,
        **{k: int(v) for k, v in s.items()},
    }
    out["dram_bytes"] = out["dram_read_bytes"] + out["dram_write_bytes"]
    if useful_macs is not None:
        out["useful_macs"] = int(useful_macs)
        out["gemm_utilization"] = useful_macs / (total * cfg.macs_per_cycle) if total else 0.0
        out["ops_per_byte"] = 2.0 * useful_macs / out["dram_bytes"] if out["dram_bytes"] else None
        out["achieved_gops"] = 2.0 * useful_macs * cfg.clock_mhz / 1e3 / total if total else 0.0
    return out


def cycles_of(insn, cfg) -> int:
    """Stand-alone cost of one instruction (no waiting, no DRAM contention)."""
    if insn.opcode in (OP_LOAD, OP_STORE):
        n = insn_bytes(cfg, insn)
        return cfg.dram_latency_cycles + math.ceil(n / cfg.dram_bytes_per_cycle) if n else 1
    if insn.opcode == OP_GEMM:
        return cfg.gemm_pipeline_cycles + insn.n_uops * insn.iter_out * insn.iter_in
    if insn.opcode == OP_ALU:
        return cfg.alu_pipeline_cycles + insn.n_uops * insn.iter_out * insn.iter_in * cfg.alu_cycles_per_vector
    assert insn.opcode == OP_FINISH
    return 1
