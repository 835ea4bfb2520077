"""Reports for accelerator artifacts: per-layer table, simulated latency, roofline plot.

The offload report (``qcompile.accel.offload(...)[1]``, stored by the pipeline as
``metadata["accelerator"]``) holds the static cycle statistics of every offloaded layer.
This module turns it into text and a PNG::

    python -m qcompile.cli.accel_report OUT_DIR [--png accel.png] [--run]

``--run`` also executes one inference (seeded random inputs) and checks the runtime's
recorded cycles against the static ones and reports how fast the simulator ran.
"""

from __future__ import annotations

import argparse
import json
import sys


def simulated_latency(report: dict) -> dict:
    """The accelerator's share of one inference: cycles and time at the configured clock."""
    t = report.get("totals") or {}
    cycles = int(t.get("cycles", 0))
    clock = float(t.get("clock_mhz") or report.get("config", {}).get("clock_mhz", 0) or 0)
    return {"core": report.get("core"), "offloaded_layers": len(report.get("layers", [])),
            "cpu_layers": len(report.get("cpu_layers", [])), "cycles": cycles, "clock_mhz": clock,
            "time_us": cycles / clock if clock else 0.0, "time_ms": cycles / clock / 1e3 if clock else 0.0,
            "macs": int(t.get("macs", 0)), "gemm_utilization": t.get("gemm_utilization", 0.0),
            "conv_gemm_utilization": t.get("conv_gemm_utilization", 0.0), "dram_bytes": int(t.get("dram_bytes", 0))}


def bench_fields(metadata: dict) -> dict:
    """Extra keys for `qcompile bench --json` of an accelerator artifact ({} for other artifacts)."""
    rep = (metadata or {}).get("accelerator")
    if not rep:
        return {}
    lat = simulated_latency(rep)
    return {"simulated_ms": lat["time_ms"], "simulated_cycles": lat["cycles"], "accelerator": rep}


def from_path(path: str) -> dict | None:
    """The offload report of an artifact folder or of a bench JSON written with bench_fields; None if absent."""
    import os

    if os.path.isdir(path):
        meta = os.path.join(path, "metadata.json")
        if not os.path.isfile(meta):
            return None
        with open(meta) as f:
            return json.load(f).get("accelerator")
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc.get("accelerator") if isinstance(doc, dict) else None


def format_latency(lat: dict) -> str:
    return (f"simulated accelerator ({lat['core']}): {lat['cycles']:,} cycles = {lat['time_ms']:.3f} ms at "
            f"{lat['clock_mhz']:g} MHz for {lat['offloaded_layers']} offloaded layer(s); GEMM utilization "
            f"{100 * lat['gemm_utilization']:.1f}% (conv {100 * lat['conv_gemm_utilization']:.1f}%), "
            f"DRAM {lat['dram_bytes'] / 1e6:.2f} MB" + (f"; {lat['cpu_layers']} integer layer(s) on the CPU"
                                                          if lat["cpu_layers"] else ""))


def format_layers(report: dict) -> str:
    """A per-layer table (cycles, utilization, module busy fractions, DRAM traffic)."""
    rows = [("layer", "op", "output", "MMACs", "cycles", "us", "util%", "gemm%", "load%", "comp%", "store%",
             "DRAM KB", "ops/B")]
    for l in report.get("layers", []):
        m = l.get("modules") or {}
        rows.append((l["layer"], l["op"], "x".join(str(d) for d in (l.get("output") or [])),
                     f"{(l.get('macs') or 0) / 1e6:.2f}", f"{l['cycles']:,}", f"{l['time_us']:.1f}",
                     f"{100 * (l.get('gemm_utilization') or 0):.1f}", f"{100 * (l.get('gemm_busy_frac') or 0):.1f}",
                     *(f"{100 * m.get(k, {}).get('busy_frac', 0):.0f}" for k in ("load", "compute", "store")),
                     f"{(l.get('dram_bytes') or 0) / 1024:.1f}",
                     f"{l['ops_per_byte']:.1f}" if l.get("ops_per_byte") else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lat = simulated_latency(report)
    lines.append(format_latency(lat))
    for c in report.get("cpu_layers", []):
        lines.append(f"  on the CPU: {c['layer']}: {c['reason']}")
    return "\n".join(lines)


def plot(report: dict, path: str, title: str | None = None) -> str:
    """Per-layer cycles, per-layer GEMM utilization and a roofline, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = report.get("layers", [])
    cfg = report.get("config", {})
    peak = 2.0 * cfg.get("batch", 1) * cfg.get("block_in", 16) * cfg.get("block_out", 16)   # ops / cycle
    bw = float(cfg.get("dram_bytes_per_cycle", 16))
    names = [l["layer"] for l in layers]
    x = np.arange(len(layers))
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    ax = axes[0]
    gemm = np.array([l.get("gemm_cycles") or 0 for l in layers], float)
    alu = np.array([l.get("alu_cycles") or 0 for l in layers], float)
    total = np.array([l.get("cycles") or 0 for l in layers], float)
    ax.bar(x, gemm, label="GEMM (MAC cycles)")
    ax.bar(x, alu, bottom=gemm, label="ALU")
    ax.bar(x, np.maximum(total - gemm - alu, 0), bottom=gemm + alu, label="other / waiting on DRAM")
    ax.set_title("cycles per layer")
    ax.set_xticks(x, names, rotation=90, fontsize=6)
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(x, [100 * (l.get("gemm_utilization") or 0) for l in layers], color="tab:green")
    ax.axhline(70, color="gray", ls="--", lw=1)
    ax.set_ylim(0, 100)
    ax.set_title("GEMM utilization per layer (%)")
    ax.set_xticks(x, names, rotation=90, fontsize=6)
    ax = axes[2]
    ai = np.array([l.get("ops_per_byte") or np.nan for l in layers], float)
    perf = np.array([2.0 * (l.get("macs") or 0) / l["cycles"] if l.get("cycles") else np.nan for l in layers])
    lo = np.nanmin(ai) / 2 if np.isfinite(ai).any() else 0.1
    hi = np.nanmax(ai) * 2 if np.isfinite(ai).any() else 1000
    grid = np.logspace(np.log10(max(lo, 1e-2)), np.log10(max(hi, 10)), 200)
    ax.loglog(grid, np.minimum(peak, bw * grid), "k-", lw=1.5, label=f"roof: {peak:g} ops/cycle, {bw:g} B/cycle")
    ax.scatter(ai, perf, c=["tab:blue" if l["op"] == "conv2d" else "tab:orange" for l in layers], s=18)
    for a, p, n in zip(ai, perf, names):
        if np.isfinite(a) and np.isfinite(p):
            ax.annotate(n, (a, p), fontsize=5, alpha=0.7)
    ax.set_xlabel("arithmetic intensity (ops / DRAM byte)")
    ax.set_ylabel("ops / cycle")
    ax.set_title("roofline (blue: conv, orange: other)")
    ax.legend(fontsize=8)
    fig.suptitle(title or format_latency(simulated_latency(report)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qcompile.cli.accel_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", metavar="OUT_DIR")
    ap.add_argument("--png", help="write the cycles / utilization / roofline plot here")
    ap.add_argument("--json", help="write the offload report as JSON")
    ap.add_argument("--run", action="store_true", help="run one inference through the simulator and check it")
    args = ap.parse_args(argv)
    from ..artifact import Artifact

    art = Artifact.load(args.artifact)
    report = art.metadata.get("accelerator")
    if not report:
        print(f"{args.artifact}: not an accelerator artifact (compile it for a target with an 'accelerator:' section)",
              file=sys.stderr)
        return 2
    print(format_layers(report))
    if args.png:
        print(f"wrote {plot(report, args.png)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.run:
        print(format_run(run_once(art)))
    return 0


def run_once(art, inputs=None) -> dict:
    """One inference with fresh runtime statistics: simulated cycles (checked against the static
    report), wall time of the simulator, simulated MACs per wall-second."""
    import time

    from ..accel import runtime
    from ..model import Model

    if inputs is None:
        inputs = Model(None, art.inputs, art.outputs).random_inputs()
    art.run(inputs)                 # decode + check every program once
    runtime.reset_stats()
    start = time.perf_counter()
    art.run(inputs)
    wall = time.perf_counter() - start
    s = runtime.summary()
    s["inference_wall_seconds"] = wall
    s["static_cycles"] = simulated_latency(art.metadata["accelerator"])["cycles"]
    return s


def format_run(s: dict) -> str:
    rate = s.get("sim_macs_per_second")
    return (f"one inference: {s['cycles_per_inference']:,.0f} simulated cycles (static report: {s['static_cycles']:,}), "
            f"{s['latency_us_per_inference'] / 1e3:.3f} ms simulated; wall {s['inference_wall_seconds']:.3f} s "
            f"(simulator {s['sim_seconds']:.3f} s" + (f", {rate / 1e6:.0f} M simulated MACs/s)" if rate else ")"))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["simulated_latency", "bench_fields", "from_path", "format_latency", "format_layers", "plot", "run_once", "format_run", "main"]
