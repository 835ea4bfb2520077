"""A VTA-style int8 accelerator: ISA, compiler lowering, functional + cycle simulator.

The hardware is described by the ``accelerator:`` section of a target YAML
(``targets/vta_sim.yaml``; see ``config.py``). The pipeline offloads the realized integer
conv2d / dense / residual-add layers with::

    mod, report = qcompile.accel.offload(mod, target_spec)      # between realize and lower

and the compiled model calls ``qcompile.accel.run`` (registered by importing
``qcompile.accel.runtime``) for each offloaded layer. See docs/accelerator.md.

Modules: config (hardware description), isa (instructions, encoding), program (binary
program blobs), lower (compiler), sim (functional simulator), timing (cycle model),
partition (the Relax pass), runtime (packed function, statistics), report (tables, plots).
"""

from __future__ import annotations

from ..target import config_of
from ..target.accelerator import AccelConfig, default_config


def offload(mod, target, *, config: AccelConfig | None = None):
    """Offload what the accelerator of `target` can run. Returns (new IRModule, report dict).

    `target` is a TargetSpec (or target name / YAML path) with an ``accelerator:`` section;
    `config` overrides it. The report lists every offloaded layer with its static cycle
    statistics, the integer layers left on the CPU (and why), and totals.
    """
    from .partition import OffloadToAccel
    from .runtime import FUNC_NAME

    cfg = config if config is not None else config_of(target)
    if cfg is None:
        name = getattr(target, "name", target)
        raise ValueError(f"target '{name}' has no 'accelerator:' section")
    if already_offloaded(mod):
        raise ValueError(f"the module already calls {FUNC_NAME}: offload runs once per module. The pipeline's "
                         "'offload' stage does it for every target with an 'accelerator:' section, so remove "
                         "the offload pass you added (a second one would report nothing offloaded)")
    report: dict = {"core": cfg.name, "description": cfg.describe(), "config": cfg.to_json(),
                    "function": FUNC_NAME, "runtime_module": "qcompile.accel.runtime",
                    "layers": [], "cpu_layers": []}
    mod = OffloadToAccel(cfg, report)(mod)
    report["totals"] = totals(report["layers"], cfg)
    n = len(report["layers"])
    if n:
        t = report["totals"]
        report["note"] = (f"accelerator {cfg.name}: offloaded {n} layer(s), {t['cycles']} cycles = "
                          f"{t['time_us']:.1f} us at {cfg.clock_mhz:g} MHz, GEMM utilization "
                          f"{100 * t['gemm_utilization']:.1f}%")
    else:
        report["note"] = (f"accelerator {cfg.name}: nothing to offload (no realized int8 conv2d/dense/add chain "
                          "the core can run); the whole model runs on the CPU")
    if report["cpu_layers"]:
        report["note"] += f"; {len(report['cpu_layers'])} integer layer(s) kept on the CPU"
    return mod, report


def already_offloaded(mod) -> bool:
    """Whether a Relax function of `mod` already calls the accelerator runtime function."""
    from tvm import relax

    from .runtime import FUNC_NAME

    found = []

    def visit(expr):
        if isinstance(expr, relax.ExternFunc) and expr.global_symbol == FUNC_NAME:
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def offload_stage(state) -> None:
    """Pipeline stage between realize and lower: offload when the target has an accelerator.

    Sets state.mod, stores the report in state.quant_info["accelerator"] (-> metadata["accelerator"])
    and adds its one-line summary to state.notes."""
    if getattr(state.target, "accelerator", None) is None:
        return
    state.mod, report = offload(state.mod, state.target)
    if state.qconfig is None:
        report["note"] += " (compile with --quantize int8 to give the accelerator integer layers)"
    state.quant_info["accelerator"] = report
    state.notes.append(report["note"])


def totals(layers: list, cfg: AccelConfig) -> dict:
    cycles = sum(int(l["cycles"] or 0) for l in layers)
    macs = sum(int(l["macs"] or 0) for l in layers)
    conv = [l for l in layers if l["op"] == "conv2d"]
    conv_cycles = sum(int(l["cycles"] or 0) for l in conv)
    conv_macs = sum(int(l["macs"] or 0) for l in conv)
    peak = cfg.macs_per_cycle
    return {
        "offloaded": len(layers), "cycles": cycles, "time_us": cycles / cfg.clock_mhz, "macs": macs,
        "gemm_utilization": macs / (cycles * peak) if cycles else 0.0,
        "conv_gemm_utilization": conv_macs / (conv_cycles * peak) if conv_cycles else 0.0,
        "dram_bytes": sum(int(l["dram_bytes"] or 0) for l in layers),
        "clock_mhz": cfg.clock_mhz, "peak_gops": cfg.peak_gops,
    }


__all__ = ["offload", "offload_stage", "AccelConfig", "config_of", "default_config", "totals"]
