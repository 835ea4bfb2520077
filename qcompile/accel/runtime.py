"""Runtime: the packed function the compiled model calls for every offloaded layer.

Importing this module registers ``qcompile.accel.run`` with TVM's FFI registry. The Relax
graph calls it through ``call_dps_packed("qcompile.accel.run", [program_blob, x, ...])``:
the blob is a uint8 constant of the compiled model holding the layer's binary program
(see program.py), the remaining tensors are the layer's int8 inputs, and the last argument
is the output tensor to fill.

Decoded programs (with their simulators, SRAM state and cached per-instruction index
plans) are kept per program id, so only the first call of a layer decodes and checks it.

Per-layer statistics for ``qcompile bench`` / ``qcompile report``::

    qcompile.accel.runtime.reset_stats()
    artifact.run(inputs)
    qcompile.accel.runtime.stats()   # {layer: {calls, cycles, total_cycles, time_us, macs, sim_seconds, ...}}

``cycles`` come from the cycle model, which does not depend on the data, so they are
computed once at compile time and carried in the program header.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .program import Program
from .sim import Simulator

FUNC_NAME = "qcompile.accel.run"

_lock = threading.Lock()
_programs: dict = {}
_stats: dict = {}


def program_for(blob: np.ndarray) -> tuple[Program, Simulator]:
    pid = Program.blob_id(blob)
    entry = _programs.get(pid)
    if entry is None:
        prog = Program.from_blob(blob)
        entry = _programs[pid] = (prog, Simulator(prog))
    return entry


def run_blob(blob: np.ndarray, *inputs: np.ndarray) -> np.ndarray:
    """Execute one offloaded layer on numpy inputs; record its statistics."""
    with _lock:
        prog, sim = program_for(blob)
        start = time.perf_counter()
        out = sim.run(list(inputs))
        wall = time.perf_counter() - start
        name = prog.meta.get("layer", prog.pid.hex()[:8])
        st = prog.stats or {}
        s = _stats.get(name)
        if s is None:
            s = _stats[name] = {"op": prog.meta.get("op"), "calls": 0, "cycles": int(st.get("cycles", 0)),
                                "time_us": float(st.get("time_us", 0.0)), "macs": int(prog.meta.get("macs", 0)),
                                "gemm_utilization": st.get("gemm_utilization"), "total_cycles": 0,
                                "sim_seconds": 0.0, "dram_bytes": int(st.get("dram_bytes", 0)),
                                "clock_mhz": prog.cfg.clock_mhz}
        s["calls"] += 1
        s["total_cycles"] += s["cycles"]
        s["sim_seconds"] += wall
        return out


def stats() -> dict:
    """Per-layer statistics of the accelerator calls since the last reset_stats()."""
    with _lock:
        out = {k: dict(v) for k, v in _stats.items()}
    for v in out.values():
        v["sim_macs_per_second"] = v["macs"] * v["calls"] / v["sim_seconds"] if v["sim_seconds"] else None
    return out


def summary() -> dict:
    """Totals over the recorded calls: simulated cycles/latency per inference and simulator speed."""
    s = stats()
    calls = max([v["calls"] for v in s.values()], default=0)
    total_cycles = sum(v["total_cycles"] for v in s.values())
    clock = next((v["clock_mhz"] for v in s.values()), None)
    wall = sum(v["sim_seconds"] for v in s.values())
    macs = sum(v["macs"] * v["calls"] for v in s.values())
    return {"layers": len(s), "inferences": calls,
            "cycles_per_inference": total_cycles / calls if calls else 0,
            "latency_us_per_inference": total_cycles / calls / clock if calls and clock else 0.0,
            "sim_seconds": wall, "sim_macs_per_second": macs / wall if wall else None}


def reset_stats():
    with _lock:
        _stats.clear()


def clear_cache():
    with _lock:
        _programs.clear()


def _register():
    import tvm_ffi

    def packed(blob, *args):
        if not args:
            raise ValueError(f"{FUNC_NAME}: expected (program, inputs..., output)")
        ins = [np.from_dlpack(a) for a in args[:-1]]
        out = np.from_dlpack(args[-1])
        out[...] = run_blob(np.from_dlpack(blob), *ins)

    tvm_ffi.register_global_func(FUNC_NAME, packed, override=True)


_register()
