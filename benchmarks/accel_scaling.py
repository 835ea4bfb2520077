"""Accelerator scaling: one quantized ResNet, several simulated core sizes.

    python benchmarks/accel_scaling.py                       # ResNet-18-like, 3 bundled cores
    python benchmarks/accel_scaling.py --model resnet50      # the onnx wheel's light ResNet-50 (seeded weights)
    python benchmarks/accel_scaling.py --cores vta_sim,my_core.yaml --size 160

The model is quantized once (int8, symmetric activations, min/max calibration on a few
seeded random images) and realized (once more with power-of-two scales if a core's target asks for
them, e.g. vta_sim_edge); the realized module is then offloaded to every core,
built for the host CPU and run through the simulator. Per core the table shows the
simulated cycles and latency of the offloaded layers, the GEMM-core utilization (useful
MACs / (cycles x MACs per cycle)) over all offloaded layers and over the conv layers,
DRAM traffic, the simulator's wall time per inference and its speed in simulated MACs
per wall-second, and whether the outputs are bit-exact with the same realized module run
entirely on the CPU. Results go to OUT.json and OUT.png (default benchmarks/results/accel_scaling_<model>).

Cycles and utilization are static (the cycle model does not depend on the data); wall
times depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- models

def resnet_like(size=224, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), classes=10, seed=0):
    """A ResNet-18-style ONNX model (conv+bias, ReLU, basic blocks with residual adds, GAP, Gemm)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def conv(x, cin, cout, k, stride, name, relu=True):
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        b = rng.standard_normal(cout) * 0.05
        nodes.append(helper.make_node("Conv", [x, const(name + "_w", w), const(name + "_b", b)], [name],
                                      name=name, strides=[stride, stride], pads=[k // 2] * 4))
        if relu:
            nodes.append(helper.make_node("Relu", [name], [name + "_r"], name=name + "_relu"))
            return name + "_r"
        return name

    x = conv("x", 3, widths[0], 7, 2, "conv1")
    nodes.append(helper.make_node("MaxPool", [x], ["pool1"], name="pool1", kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1]))
    x, cin = "pool1", widths[0]
    for s, (n, cout) in enumerate(zip(blocks, widths)):
        for b in range(n):
            stride = 2 if (b == 0 and s > 0) else 1
            name = f"l{s + 1}b{b}"
            y = conv(x, cin, cout, 3, stride, name + "_c1")
            y = conv(y, cout, cout, 3, 1, name + "_c2", relu=False)
            short = conv(x, cin, cout, 1, stride, name + "_ds", relu=False) if (stride != 1 or cin != cout) else x
            nodes.append(helper.make_node("Add", [y, short], [name + "_sum"], name=name + "_add"))
            nodes.append(helper.make_node("Relu", [name + "_sum"], [name + "_out"], name=name + "_relu"))
            x, cin = name + "_out", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    fc = rng.standard_normal((classes, cin)) * np.sqrt(1.0 / cin)
    nodes.append(helper.make_node("Gemm", ["flat", const("fc_w", fc), const("fc_b", np.zeros(classes))], ["y"],
                                  name="fc", transB=1))
    graph = helper.make_graph(nodes, "resnet_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def load_model(name, size):
    if name == "resnet_like":
        return resnet_like(size), "x", (1, 3, size, size)
    if name == "resnet50":
        from qcompile import zoo

        m = zoo.light_model("resnet50")
        inp = m.graph.input[0]
        shape = tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)
        return m, inp.name, shape
    raise SystemExit(f"unknown model {name!r} (resnet_like | resnet50)")


# ----------------------------------------------------------------------------- flow

def realize(model, input_name, shape, calib_samples, pow2_flags=(False,), seed=0):
    """Quantize once (import .. calibrate), realize once per power-of-two setting.

    Returns ({power_of_two_scales: realized IRModule}, seconds)."""
    import dataclasses

    import qcompile
    from qcompile.pipeline import CompileState
    from qcompile.quantize.qconfig import QConfig

    rng = np.random.default_rng(seed)
    calib = {input_name: rng.standard_normal((calib_samples,) + tuple(shape[1:])).astype(np.float32)}
    qconfig = QConfig(activation_dtype="int8", symmetric_activations=True, calib_method="minmax")
    pipe = qcompile.Pipeline(target="vta_sim", qconfig=qconfig, progress=False)
    state = CompileState(source=model, target=pipe.target, qconfig=qconfig, calib=calib)
    start = time.perf_counter()
    pipe.run_stages(state, ("import", "preprocess", "annotate", "calibrate"))
    base = state.quant_info["qconfig"]
    out = {}
    for flag in sorted(set(pow2_flags)):
        state.quant_info["qconfig"] = dataclasses.replace(base, power_of_two_scales=flag)
        pipe.run_stages(state, ("realize",))
        out[flag] = state.mod
    return out, time.perf_counter() - start


def build(mod, target):
    import tvm
    from tvm import relax

    from qcompile.build import build_passes, lower_passes

    t = target.tvm()
    with t, tvm.transform.PassContext(opt_level=3):
        for p in lower_passes(t):
            mod = p(mod)
    ex = tvm.compile(mod, t, relax_pipeline=tvm.transform.Sequential(build_passes(t)))
    return relax.VirtualMachine(ex, tvm.cpu())


def run_core(realized, core, x, runs, reference):
    import tvm

    from qcompile.accel import offload, runtime
    from qcompile.target import load_target

    spec = load_target(core)
    t0 = time.perf_counter()
    mod, report = offload(realized, spec)
    t_offload = time.perf_counter() - t0
    t0 = time.perf_counter()
    vm = build(mod, spec)
    t_build = time.perf_counter() - t0
    arg = tvm.runtime.tensor(x)
    t0 = time.perf_counter()
    first = vm["main"](arg).numpy()            # decodes + checks every layer program (token protocol, hazards)
    t_first = time.perf_counter() - t0
    runtime.reset_stats()
    t0 = time.perf_counter()
    for _ in range(runs):
        out = vm["main"](arg).numpy()
    t_runs = (time.perf_counter() - t0) / runs
    s = runtime.summary()
    tot = report["totals"]
    return {
        "core": spec.name, "description": report["description"], "config": report["config"],
        "macs_per_cycle": report["config"]["batch"] * report["config"]["block_in"] * report["config"]["block_out"],
        "clock_mhz": tot["clock_mhz"], "offloaded_layers": tot["offloaded"], "cpu_layers": report["cpu_layers"],
        "cycles": tot["cycles"], "sim_latency_ms": tot["time_us"] / 1e3, "macs": tot["macs"],
        "gemm_utilization": tot["gemm_utilization"], "conv_gemm_utilization": tot["conv_gemm_utilization"],
        "dram_mb": tot["dram_bytes"] / 1e6,
        "offload_compile_s": t_offload, "build_s": t_build, "first_run_s": t_first,
        "inference_wall_s": t_runs, "sim_wall_s": s["sim_seconds"] / max(1, runs),
        "sim_macs_per_s": s["sim_macs_per_second"],
        "bit_exact_with_cpu": None if reference is None else bool(np.array_equal(out, reference) and np.array_equal(first, reference)),
        "layers": report["layers"],
    }


def fmt_table(rows) -> str:
    head = ("core", "MAC/cyc", "MHz", "pow2", "layers", "cycles", "sim ms", "util%", "conv util%", "DRAM MB",
            "wall s/inf", "sim s/inf", "sim MMAC/s", "bit-exact")
    lines = [head]
    for r in rows:
        lines.append((r["core"], str(r["macs_per_cycle"]), f"{r['clock_mhz']:g}",
                      "yes" if r.get("power_of_two_scales") else "no", str(r["offloaded_layers"]),
                      f"{r['cycles']:,}", f"{r['sim_latency_ms']:.3f}", f"{100 * r['gemm_utilization']:.1f}",
                      f"{100 * r['conv_gemm_utilization']:.1f}", f"{r['dram_mb']:.1f}", f"{r['inference_wall_s']:.2f}",
                      f"{r['sim_wall_s']:.2f}", f"{(r['sim_macs_per_s'] or 0) / 1e6:.0f}",
                      {None: "-", True: "yes", False: "NO"}[r["bit_exact_with_cpu"]]))
    w = [max(len(l[i]) for l in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(l)) for l in lines)


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    names = [r["core"] for r in rows]
    axes[0].bar(names, [r["sim_latency_ms"] for r in rows], color="tab:blue")
    axes[0].set_ylabel("simulated latency of offloaded layers (ms)")
    axes[0].set_yscale("log")
    axes[1].bar(names, [100 * r["conv_gemm_utilization"] for r in rows], color="tab:green", label="conv layers")
    axes[1].plot(names, [100 * r["gemm_utilization"] for r in rows], "ko-", label="all offloaded layers")
    axes[1].axhline(70, color="gray", ls="--", lw=1)
    axes[1].set_ylim(0, 100)
    axes[1].set_ylabel("GEMM utilization (%)")
    axes[1].legend(fontsize=8)
    for r in rows:
        convs = [l for l in r["layers"] if l["op"] == "conv2d"]
        axes[2].plot(range(len(convs)), [100 * l["gemm_utilization"] for l in convs], ".-", label=r["core"])
    axes[2].set_xlabel("conv layer")
    axes[2].set_ylabel("GEMM utilization (%)")
    axes[2].set_ylim(0, 100)
    axes[2].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet_like", choices=["resnet_like", "resnet50"])
    ap.add_argument("--size", type=int, default=224, help="input size of resnet_like (default 224)")
    ap.add_argument("--cores", default="vta_sim_edge,vta_sim,vta_sim_large",
                    help="comma-separated target names or YAML paths with an accelerator section")
    ap.add_argument("--runs", type=int, default=2, help="timed inferences per core (default 2)")
    ap.add_argument("--calib", type=int, default=4, help="calibration samples (seeded random images, default 4)")
    ap.add_argument("--no-reference", action="store_true", help="skip the CPU-only run of the realized model")
    ap.add_argument("--out", help="output prefix (default benchmarks/results/accel_scaling_<model>)")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(HERE, "results", f"accel_scaling_{args.model}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    from qcompile.target import load_target

    cores = args.cores.split(",")
    pow2 = {core: load_target(core).quant.power_of_two_scales for core in cores}
    model, input_name, shape = load_model(args.model, args.size)
    print(f"model {args.model} input {shape}: quantizing (int8, {args.calib} calibration samples) ...", flush=True)
    realized, t_realize = realize(model, input_name, shape, args.calib, tuple(pow2.values()))
    print(f"  calibrated and realized ({len(realized)} variant(s): power-of-two scales "
          f"{sorted(realized)}) in {t_realize:.1f} s", flush=True)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    references, t_ref = {}, {}
    if not args.no_reference:
        import tvm

        for flag, mod in realized.items():
            t0 = time.perf_counter()
            vm = build(mod, load_target("x86_64"))
            references[flag] = vm["main"](tvm.runtime.tensor(x)).numpy()
            t_ref[str(flag)] = time.perf_counter() - t0
            print(f"  CPU-only int8 reference (power-of-two {flag}) built and run in {t_ref[str(flag)]:.1f} s", flush=True)
    rows = []
    for core in cores:
        print(f"core {core} ...", flush=True)
        r = run_core(realized[pow2[core]], core, x, args.runs, references.get(pow2[core]))
        r["power_of_two_scales"] = pow2[core]
        rows.append(r)
        print(f"  {r['offloaded_layers']} layers offloaded in {r['offload_compile_s']:.1f} s, built in {r['build_s']:.1f} s, "
              f"first (checked) run {r['first_run_s']:.1f} s", flush=True)
    table = fmt_table(rows)
    print()
    print(table)
    result = {"model": args.model, "input_shape": list(shape), "realize_s": t_realize, "cpu_reference_s": t_ref,
              "machine": os.uname().machine, "cores": rows}
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, out + ".png", f"{args.model} {shape}: accelerator core scaling")
    print(f"\nwrote {out}.json and {out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
