"""Cross-compile a model for an ARM board, then run and time it there over RPC: the script to copy for ARM.

    python examples/compile_arm.py [MODEL.onnx] [--target arm_neon|arm_neon_dotprod|rpi4|rpi5]
                                   [--quantize int8|none] [--calib CALIB.npz] [--out out_arm]
                                   [--rpc-tracker HOST:PORT --rpc-key KEY]

With no model it uses the bundled digits CNN, its calibration split and its test split.

1. Compile on this (x86) machine: the library is linked by aarch64-linux-gnu-gcc
   (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross).
2. With --rpc-tracker/--rpc-key: upload the library to a board of that key, run the inputs
   there, and compare with the same model compiled for this x86 CPU with the same qconfig.
   Integer (int8) outputs must be bit-identical: both targets compute the same integer
   arithmetic with int8 activations. Then time it on the board.

A board is a real Raspberry Pi / Graviton running ``python -m tvm.exec.rpc_server --tracker
HOST:PORT --key rpi4``, or the emulated one: ``qcompile board qemu-aarch64`` (key aarch64-qemu).
Emulated timings are not performance.
"""

import argparse
import sys

import numpy as np

import qcompile
from qcompile import zoo


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=zoo.DIGITS_MODEL)
    ap.add_argument("--target", default="arm_neon", help="arm_neon, arm_neon_dotprod, rpi4, rpi5 or a .yaml")
    ap.add_argument("--quantize", choices=["int8", "none"], default="int8")
    ap.add_argument("--calib", help="calibration .npz (keys = input names); default: the bundled model's")
    ap.add_argument("--input-shape", action="append", default=[], metavar="NAME:DIMS")
    ap.add_argument("--out", default="out_arm")
    ap.add_argument("--rpc-tracker", metavar="HOST:PORT", help="run and time on a board from this tracker")
    ap.add_argument("--rpc-key", default="aarch64-qemu", help="the board's key (default: aarch64-qemu)")
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()

    bundled = args.model == zoo.DIGITS_MODEL
    shapes = args.input_shape or (["input:1x1x8x8"] if bundled else None)
    qconfig = calib = None
    if args.quantize == "int8":
        from qcompile.quantize.qconfig import QConfig

        qconfig = QConfig()
        calib = args.calib or (zoo.DIGITS_CALIB if bundled else None)
        if calib is None:
            sys.exit("--quantize int8 needs --calib CALIB.npz for your model")

    # 1. cross-compile
    art = qcompile.compile(args.model, target=args.target, out_dir=args.out, input_shapes=shapes,
                           qconfig=qconfig, calib=calib)
    from qcompile.runtime.rpc import library_arch

    print(f"compiled for {art.target_name} ({library_arch(art.library_path)} library): {args.out}")
    if not args.rpc_tracker:
        print(f"run it on a board: qcompile bench {args.out} --rpc-tracker HOST:PORT --rpc-key KEY")
        return

    # 2. run on the board, compare with the x86 build of the same model and qconfig
    from qcompile.runtime.boards import is_emulated_key
    from qcompile.runtime.boards.remote_run import run_remote

    if bundled:
        inputs, labels = zoo.digits_test()
    else:
        inputs, labels = {s.name: np.random.default_rng(0).standard_normal(s.shape).astype(s.dtype)
                          for s in art.inputs}, None
    on_board = run_remote(art, inputs, tracker=args.rpc_tracker, key=args.rpc_key)
    host = qcompile.compile(args.model, target="x86_64", input_shapes=shapes, qconfig=qconfig, calib=calib)
    on_x86 = host.run(inputs)
    for name in on_board:
        a, b = on_board[name], on_x86[name]
        same = "bit-identical" if np.array_equal(a, b) else f"max |diff| {np.abs(a - b).max():.3e}"
        print(f"{name}: board vs x86: {same}")
        if labels is not None:
            print(f"{name}: top-1 on the board {(a.argmax(1) == labels).mean():.4f}")

    # 3. time it on the board (the timings are taken there, without network latency)
    from qcompile.runtime.rpc import RunOptions, bench_remote, parse_endpoint

    run = bench_remote(art, tracker=parse_endpoint(args.rpc_tracker), key=args.rpc_key,
                       opts=RunOptions(repeat=args.repeat, warmup=5))
    for r in run.results:
        note = "  (EMULATED board: not a hardware timing)" if is_emulated_key(args.rpc_key) else ""
        print(f"board {r['board']}: median {r['median_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms{note}")
    for err in run.errors:
        print(f"error: {err}", file=sys.stderr)


if __name__ == "__main__":
    main()
