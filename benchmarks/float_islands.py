"""Float ops between integer layers, before and after the graph preparation of qcompile/transform.

    python benchmarks/float_islands.py                        # light ResNet-50
    python benchmarks/float_islands.py --models resnet50,shufflenet,inception_v2

For each light model of the onnx wheel (seeded weights, zoo.light_model) the int8 plan is realized
twice, on 2 random calibration samples (minmax, no safety net: only the graph matters here):
  * before: the preprocess stage of old, DecomposeOpsForInference + CanonicalizeBindings + FoldConstant
    + DeadCodeElimination, which turns BatchNormalization into float subtract/divide/multiply/add after
    every conv and keeps ONNX Sum as broadcast_to+stack+sum;
  * after: pipeline.preprocess_passes() (FoldBatchNorm and SumToAdds first).
It counts, in the realized main, the calls that compute in float (float output: dequantize and every
float op), quantize calls (float -> integer crossings) and integer layers, and prints one row each.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))


def old_preprocess_passes():
    from tvm import relax

    return [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
            relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]


def realized_ops(model, passes, samples: int = 2, seed: int = 0) -> tuple[Counter, dict]:
    """(op name -> count of calls in the realized main, quant summary) of `model` preprocessed by `passes`."""
    import tvm
    from tvm import relax

    import qcompile
    from qcompile.pipeline import CompileState, _apply
    from qcompile.quantize.qconfig import QConfig

    pipe = qcompile.Pipeline(target="auto", qconfig=QConfig(calib_method="minmax", safety_net=False), progress=False)
    state = CompileState(source=model, target=pipe.target, qconfig=pipe.qconfig, progress=False)
    pipe.run_stages(state, ("import",))
    rng = np.random.default_rng(seed)
    state.calib = {s.name: rng.standard_normal((samples,) + tuple(s.shape[1:])).astype(np.float32)
                   for s in state.model.inputs}
    state.mod = _apply(passes, state)
    pipe.run_stages(state, ("annotate", "calibrate", "realize"))
    ops = Counter()

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and isinstance(e.ty, relax.TensorType):
            ops[(e.op.name, str(e.ty.dtype).startswith("float"))] += 1

    relax.analysis.post_order_visit(state.mod["main"], visit)
    return ops, state.quant_info


def summarize(ops: Counter, quant_info: dict) -> dict:
    floats = Counter({op: n for (op, is_float), n in ops.items() if is_float})
    return {"integer_layers": len(quant_info["realized"]), "float_ops": sum(floats.values()),
            "quantize": ops[("relax.quantize", False)], "dequantize": floats["relax.dequantize"],
            "float_by_op": dict(floats.most_common())}


def main(argv=None):
    from qcompile import zoo
    from qcompile.pipeline import preprocess_passes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50", help="comma-separated light model names")
    args = ap.parse_args(argv)
    print(f"{'model':14s} {'prep':7s} {'int layers':>10s} {'float ops':>9s} {'quantize':>8s} {'dequantize':>10s}  "
          "float ops by kind")
    for name in args.models.split(","):
        for label, passes in (("before", old_preprocess_passes()), ("after", preprocess_passes())):
            row = summarize(*realized_ops(zoo.light_model(name), passes))
            kinds = ", ".join(f"{op.split('.', 1)[1]} {n}" for op, n in row["float_by_op"].items())
            print(f"{name:14s} {label:7s} {row['integer_layers']:10d} {row['float_ops']:9d} {row['quantize']:8d} "
                  f"{row['dequantize']:10d}  {kinds}", flush=True)


if __name__ == "__main__":
    main()
