"""Compile a model for an x86 CPU and check it against ONNX Runtime: the script to copy for x86.

    python examples/compile_x86.py [MODEL.onnx] [--target auto|x86_64|x86_vnni] [--out out_x86]

With no model, it uses the bundled digits CNN and its test split.
"""

import argparse

import numpy as np

import qcompile
from qcompile import zoo


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=zoo.DIGITS_MODEL)
    ap.add_argument("--target", default="auto")
    ap.add_argument("--out", default="out_x86")
    ap.add_argument("--input-shape", action="append", default=[])
    args = ap.parse_args()

    art = qcompile.compile(args.model, target=args.target, out_dir=args.out, input_shapes=args.input_shape)
    print(f"compiled for {art.target_name}: {args.out}")
    if args.model == zoo.DIGITS_MODEL:
        inputs, labels = zoo.digits_test()
    else:
        inputs = {s.name: np.random.default_rng(0).standard_normal(s.shape).astype(s.dtype) for s in art.inputs}
        labels = None
    outputs = art.run(inputs)
    try:
        import onnxruntime as ort
    except ImportError:
        print("install onnxruntime to compare with it")
        return
    ref = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"]).run(None, inputs)
    for (name, ours), theirs in zip(outputs.items(), ref):
        print(f"{name}: max |qcompile - onnxruntime| = {np.abs(ours - theirs).max():.3e}")
    if labels is not None:
        print(f"top-1: {(outputs['logits'].argmax(1) == labels).mean():.4f}")


if __name__ == "__main__":
    main()
