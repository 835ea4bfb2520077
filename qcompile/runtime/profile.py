"""Per-kernel profile of an artifact: where one inference spends its time (`qcompile bench --profile`).

TVM 0.27's Relax VM has no profiler, but it has an instrument hook (``vm.set_instrument``) that is
called before and after every call instruction: every fused TIR kernel, every ``vm.builtin.*``
(allocation, reshape, ...) and every packed function (e.g. the accelerator offload). The profile:

1. runs ``main`` `repeat` times with the hook on. It records the calls in order, their count per
   run, the time each takes inside the run ("in-run" time; the Python hook adds about 1 us per
   call, so it overstates small kernels), and keeps a copy of the arguments of each kernel's first
   call;
2. times each TIR kernel on its own with TVM's C++ ``time_evaluator`` on those arguments
   (`repeat` measurements of at least 1 ms each, median), so no hook overhead is counted. Caches
   are warm there, which a kernel may not see inside a run: compare with the in-run column;
3. reports each kernel's time per run (calls x median per call) as a share of ``total_ms``, the
   median latency of plain runs without the hook (what ``bench`` reports). What the kernels do not
   account for is the VM itself: its builtins (allocation, reshape views) and its interpreter.

Calls that are not TIR kernels of the library (packed functions other than ``vm.builtin.*``, e.g.
``qcompile.accel.run``) are counted with their in-run time.
"""

from __future__ import annotations

import os
import time

import numpy as np

PROFILE_KEY = "profile"  # the key `qcompile bench --profile --json` puts this under (stable)
VM_ROW = "(VM: builtins, interpreter)"
NAME_WIDTH = 60  # longer kernel names are cut in the table (the JSON has them whole)


def _library_modules(lib):
    """The module and every module it imports, depth first (the TIR kernels live in an import)."""
    yield lib
    for m in lib.imports:
        yield from _library_modules(m)


def _kernel_module(lib, name):
    for m in _library_modules(lib):
        if m.implements_function(name, False):
            return m
    return None


def _copy_arg(a, dev):
    import tvm

    if isinstance(a, tvm.runtime.Tensor):
        return tvm.runtime.tensor(a.numpy(), dev)
    return a


class _Recorder:
    """The instrument hook: per-symbol call counts and in-run seconds; first-call argument copies."""

    def __init__(self, dev, lib):
        self.dev = dev
        self.lib = lib
        self.kernels_of: dict = {}          # name -> module that implements it, or None
        self.calls: dict[str, int] = {}     # per run
        self.seconds: dict[str, float] = {}  # per run
        self.order: list[str] = []          # first-call order
        self.args: dict[str, list] = {}
        self.capture = True
        self._t0 = 0.0

    def start_run(self):
        self.calls, self.seconds = {}, {}

    def __call__(self, func, symbol, before_run, ret_value, *args):
        if before_run:
            if symbol not in self.kernels_of:
                self.kernels_of[symbol] = None if symbol.startswith("vm.builtin.") else _kernel_module(self.lib, symbol)
                self.order.append(symbol)
            if self.capture and symbol not in self.args and self.kernels_of[symbol] is not None:
                self.args[symbol] = [_copy_arg(a, self.dev) for a in args]
            self._t0 = time.perf_counter()
        else:
            dt = time.perf_counter() - self._t0
            self.calls[symbol] = self.calls.get(symbol, 0) + 1
            self.seconds[symbol] = self.seconds.get(symbol, 0.0) + dt
        return 0  # VMInstrumentReturnKind.NO_OP


def profile_vm(lib, dev, args, repeat: int = 20, warmup: int = 3, total_ms: float | None = None,
               progress: bool = False) -> dict:
    """Profile ``main`` of the runtime module `lib` (a loaded artifact library or an executable's
    module) on `args` (tvm tensors). `total_ms`: the plain median latency to take shares of
    (default: measured here, `repeat` runs). The TVM thread pool must be set by the caller."""
    from tvm import relax

    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    vm = relax.VirtualMachine(lib, dev)
    for _ in range(max(0, warmup)):
        vm["main"](*args)
    if total_ms is None:
        timer = vm.time_evaluator("main", dev, number=1, repeat=1)
        total_ms = float(np.median([timer(*args).results[0] for _ in range(repeat)]) * 1e3)

    rec = _Recorder(dev, lib)
    vm.set_instrument(rec)
    per_run_calls, per_run_s, run_s = [], [], []
    runs = range(repeat)
    if progress:
        from tqdm import tqdm

        runs = tqdm(runs, desc="profile: hooked runs", unit="run", leave=False)
    try:
        for _ in runs:
            rec.start_run()
            t = time.perf_counter()
            vm["main"](*args)
            run_s.append(time.perf_counter() - t)
            rec.capture = False
            per_run_calls.append(rec.calls)
            per_run_s.append(rec.seconds)
    finally:
        vm.set_instrument(None)

    calls = per_run_calls[0]
    in_run_ms = {s: float(np.median([r.get(s, 0.0) for r in per_run_s]) * 1e3) for s in rec.order}

    kernels = [s for s in rec.order if rec.kernels_of.get(s) is not None]
    items = [(s, i) for i, s in enumerate(kernels)]
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="profile: kernels", unit="kernel", leave=False)
    rows = []
    for s, _ in items:
        row = {"name": s, "kind": "kernel", "calls": calls.get(s, 0), "in_run_ms": in_run_ms[s]}
        try:
            timer = rec.kernels_of[s].time_evaluator(s, dev, number=1, repeat=repeat, min_repeat_ms=1)
            per_call = float(np.median(timer(*rec.args[s]).results))
            row.update({"us_per_call": per_call * 1e6, "ms": per_call * 1e3 * row["calls"], "timed": "isolated"})
        except Exception as err:  # noqa: BLE001 - e.g. a kernel taking shape arguments: keep its in-run time
            row.update({"us_per_call": in_run_ms[s] * 1e3 / max(1, row["calls"]), "ms": in_run_ms[s], "timed": "in-run",
                        "note": f"isolated timing failed: {str(err).strip().splitlines()[-1][:120] if str(err).strip() else type(err).__name__}"})
        rows.append(row)
    for s in rec.order:  # packed functions that are not kernels of this library (offload, ...)
        if rec.kernels_of.get(s) is None and not s.startswith("vm.builtin."):
            rows.append({"name": s, "kind": "packed", "calls": calls.get(s, 0), "in_run_ms": in_run_ms[s],
                         "us_per_call": in_run_ms[s] * 1e3 / max(1, calls.get(s, 1)), "ms": in_run_ms[s],
                         "timed": "in-run"})
    rows.sort(key=lambda r: -r["ms"])
    for r in rows:
        r["pct"] = 100.0 * r["ms"] / total_ms if total_ms > 0 else None
    accounted = sum(r["ms"] for r in rows)
    builtins = {s: {"calls": calls.get(s, 0), "in_run_ms": in_run_ms[s]} for s in rec.order if s.startswith("vm.builtin.")}
    return {
        "method": "kernels: TVM time_evaluator on each kernel's arguments from a real run (median of `repeat`, "
                  ">= 1 ms each); in_run_ms and packed calls: Relax VM instrument hook inside runs (median of `repeat`)",
        "total_ms": total_ms,
        "kernels_ms": accounted,
        "vm_ms": total_ms - accounted,
        "vm_pct": 100.0 * (total_ms - accounted) / total_ms if total_ms > 0 else None,
        "hooked_run_ms": float(np.median(run_s) * 1e3),
        "repeat": repeat,
        "calls_per_run": int(sum(calls.values())),
        "loadavg": list(os.getloadavg()),
        "rows": rows,
        "builtins": builtins,
    }


def format_profile(p: dict, limit: int | None = None) -> str:
    """The table `qcompile bench --profile` prints: kernels by time, then the VM's share and the total."""
    rows = p["rows"] if limit is None else p["rows"][:limit]
    w = min(NAME_WIDTH, max([len(VM_ROW), 27] + [len(r["name"]) for r in rows]))
    lines = [f"{'kernel / VM op':{w}s}  {'calls':>5s}  {'ms/run':>9s}  {'% total':>7s}  {'us/call':>9s}  {'in-run ms':>9s}",
             "-" * (w + 51)]
    for r in rows:
        flag = "" if r["timed"] == "isolated" else "  (in-run)"
        name = r["name"] if len(r["name"]) <= w else r["name"][:w - 3] + "..."
        lines.append(f"{name:{w}s}  {r['calls']:5d}  {r['ms']:9.4f}  {r['pct']:6.1f}%  {r['us_per_call']:9.2f}  "
                     f"{r['in_run_ms']:9.4f}{flag}")
    hidden = p["rows"][len(rows):]
    if hidden:
        ms = sum(r["ms"] for r in hidden)
        lines.append(f"{f'({len(hidden)} more)':{w}s}  {sum(r['calls'] for r in hidden):5d}  {ms:9.4f}  "
                     f"{100 * ms / p['total_ms']:6.1f}%")
    n_builtin = sum(b["calls"] for b in p["builtins"].values())
    lines.append(f"{VM_ROW:{w}s}  {n_builtin:5d}  {p['vm_ms']:9.4f}  {p['vm_pct']:6.1f}%")
    lines.append("-" * (w + 51))
    lines.append(f"{'total (median run, no hook)':{w}s}  {'':5s}  {p['total_ms']:9.4f}  {100.0:6.1f}%")
    lines.append(f"kernels timed alone (time_evaluator, warm caches, median of {p['repeat']}); in-run ms: inside runs "
                 f"through the VM hook (+~1 us per call); hooked run {p['hooked_run_ms']:.4f} ms; "
                 f"load average {p['loadavg'][0]:.2f}")
    if p["vm_ms"] < 0:
        lines.append("note: the kernels timed alone add up to more than a whole run: timing noise (other jobs on this "
                     "machine) or kernels that run faster inside the run; compare the in-run column")
    return "\n".join(lines)
