"""Compile a model for the simulated VTA-style accelerator: the script to copy for an accelerator target.

    python examples/compile_vta.py                                # bundled digits CNN on targets/vta_sim.yaml
    python examples/compile_vta.py --target vta_sim_large
    python examples/compile_vta.py --core 1x32x32 --out out_vta   # a new core size, described in YAML on the fly
    python examples/compile_vta.py MODEL.onnx --calib calib.npz --input-shape x:1x3x224x224

The integer conv2d / dense / residual-add layers run on the simulated core (qcompile/accel), the
rest on the host CPU. The script prints the per-layer cycle report, checks the outputs against
the same model compiled for the CPU alone (they must be bit-exact), and writes OUT/accelerator.png
(cycles, utilization, roofline).

Describing a new core: copy targets/vta_sim.yaml and edit its `accelerator:` section, e.g.

    accelerator:
      name: my-core
      batch: 1
      block_in: 32          # GEMM core: BATCH x BLOCK_IN x BLOCK_OUT int8 MACs per cycle
      block_out: 32
      inp_buffer_kib: 64    # on-chip SRAMs
      wgt_buffer_kib: 512
      acc_buffer_kib: 256
      uop_buffer_kib: 32
      dram_bytes_per_cycle: 32
      dram_latency_cycles: 64
      clock_mhz: 400
      alu_ops: [ADD, MAX, MIN, SHR, MUL]   # drop MUL for a shift-only ALU (then set quant.power_of_two_scales)

then pass `--target my_core.yaml`. `--core BxIxO` below does exactly that for the core shape.
"""

import argparse
import dataclasses
import os
import tempfile

import numpy as np
import yaml

import qcompile
from qcompile import zoo
from qcompile.cli import accel_report as report
from qcompile.quantize.qconfig import QConfig
from qcompile.target import load_target


def core_yaml(base: str, shape: str, out_dir: str) -> str:
    """A copy of target `base` with the GEMM core shape BxIxO (buffers scaled with it)."""
    b, bi, bo = (int(v) for v in shape.lower().split("x"))
    spec = load_target(base)
    with open(spec.source) as f:
        data = yaml.safe_load(f)
    acc = data["accelerator"]
    scale = (bi * bo) / (acc.get("block_in", 16) * acc.get("block_out", 16))
    acc.update(name=f"vta-{shape}", batch=b, block_in=bi, block_out=bo)
    for key in ("inp_buffer_kib", "wgt_buffer_kib", "acc_buffer_kib"):
        acc[key] = max(4, acc.get(key, 32) * scale)
    data["name"] = f"vta_sim_{shape}"
    path = os.path.join(out_dir, f"vta_sim_{shape}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=zoo.DIGITS_MODEL)
    ap.add_argument("--target", default="vta_sim", help="a target with an accelerator section (name or YAML)")
    ap.add_argument("--core", metavar="BxIxO", help="derive a core of this shape from --target, e.g. 1x32x32")
    ap.add_argument("--calib", help="calibration .npz (default: the digits calibration split)")
    ap.add_argument("--input-shape", action="append", default=[])
    ap.add_argument("--out", default="out_vta")
    args = ap.parse_args()

    target = args.target
    if args.core:
        target = core_yaml(args.target, args.core, tempfile.mkdtemp(prefix="qcompile-core-"))
    spec = load_target(target)
    calib = args.calib or (zoo.digits_calib() if args.model == zoo.DIGITS_MODEL else None)
    qconfig = QConfig(activation_dtype="int8", symmetric_activations=True)

    # The pipeline's `offload` stage (between realize and lower) partitions the graph for any target
    # with an `accelerator:` section; its report is stored in the artifact's metadata, where
    # `qcompile bench` and `qcompile report` read it.
    pipe = qcompile.Pipeline(target=spec, qconfig=qconfig, input_shapes=args.input_shape)
    art = pipe.run(args.model, out_dir=args.out, calib=calib)
    rep = art.metadata["accelerator"]
    print(f"compiled for {spec.name} ({rep['description']}) -> {args.out}")
    print(report.format_layers(rep))
    os.makedirs(args.out, exist_ok=True)
    print(f"plot: {report.plot(rep, os.path.join(args.out, 'accelerator.png'))}")

    if args.model == zoo.DIGITS_MODEL:
        inputs, labels = zoo.digits_test()
    else:
        inputs = {s.name: np.random.default_rng(0).standard_normal(s.shape).astype(s.dtype) for s in art.inputs}
        labels = None
    ours = art.run(inputs)
    # the accelerator writes requantized codes where an integer region ends; so does this CPU build
    # (float_outputs off), so the two compare bit for bit
    cpu = qcompile.Pipeline(target="x86_64", qconfig=dataclasses.replace(qconfig, float_outputs=False), input_shapes=args.input_shape, progress=False)
    theirs = cpu.run(args.model, calib=calib).run(inputs)
    for name in ours:
        same = np.array_equal(ours[name], theirs[name])
        print(f"{name}: {'bit-exact with' if same else 'DIFFERS from'} the CPU-only int8 build")
        if labels is not None:
            print(f"  top-1 on {spec.name}: {(ours[name].argmax(1) == labels).mean():.4f}, "
                  f"CPU int8: {(theirs[name].argmax(1) == labels).mean():.4f}")
    print(report.format_run(report.run_once(art)))


if __name__ == "__main__":
    main()
