"""Quantization options of `qcompile compile` (and `qcompile tune`)."""

from __future__ import annotations

from ..quantize.qconfig import CALIB_METHODS, QConfig, parse_budget

COMMANDS: list = []  # no subcommands of its own; the options join `compile`


def add_quantize_options(p):
    g = p.add_argument_group("quantization")
    g.add_argument("--quantize", "-q", choices=["int8", "int16", "fp16", "bf16", "none"], default="none",
                   help="int8/int16: real integer arithmetic; fp16/bf16: narrow float operands with fp32 "
                        "accumulation (default: none = fp32)")
    g.add_argument("--qconfig", metavar="FILE.yaml", help="quantization config file (see qcompile/quantize/qconfig.py)")
    g.add_argument("--calib", metavar="FILE.npz|DIR",
                   help="calibration data: .npz (keys = input names, first axis = samples) or a folder of them")
    g.add_argument("--calib-method", choices=CALIB_METHODS, help="activation range method (default: auto: per tensor, the candidate range of minmax/percentile/entropy/mse with the smallest error at its consumer's output)")
    g.add_argument("--calib-samples", type=int, metavar="N", help="use at most N calibration samples")
    g.add_argument("--activation-dtype", choices=["int8", "uint8", "int16"], help="default: the target's preference")
    g.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (default: per-channel)")
    g.add_argument("--symmetric", action="store_true", help="symmetric activations (zero point 0 / 128)")
    g.add_argument("--keep-fp32", action="append", default=[], metavar="PATTERN",
                   help="keep matching layers in fp32: an op ('softmax'), a layer name ('conv2d_3') "
                        "or a regex ('re:matmul_.*'); repeatable")
    g.add_argument("--keep-int16", action="append", default=[], metavar="PATTERN",
                   help="run matching layers in int16 (same pattern forms as --keep-fp32)")
    g.add_argument("--budget", metavar="METRIC:VALUE",
                   help="mixed precision: move the most sensitive layers to int16/fp32 until the budget holds, e.g. "
                        "cosine:0.99 (output cosine vs fp32), agreement:0.995 (argmax agreement), "
                        "top1_drop:0.005 (needs --eval-labels)")
    g.add_argument("--fallback", choices=["int16", "fp32"], help="first precision sensitive layers move to (default: int16)")
    g.add_argument("--float-dtype", choices=["float32", "float16", "bfloat16"],
                   help="compute type of the layers left in float (default: float32)")
    g.add_argument("--eval", metavar="FILE.npz", help="held-out inputs for --budget (default: last quarter of --calib)")
    g.add_argument("--eval-labels", metavar="FILE.npz", help="labels for --eval (an .npz with one array)")
    g.add_argument("--export-qdq", action="store_true",
                   help="also write model_qdq.onnx into the artifact: the quantized model as ONNX QDQ, "
                        "to check in ONNX Runtime (ONNX sources, opset >= 13)")
    g.add_argument("--report", action="store_true",
                   help="print a per-layer error table (SNR, cosine, max error vs fp32) and save quant_report.json/.png "
                        "in the artifact")


def qconfig_from_args(args):
    """(QConfig or None, calibration source, evaluation dict or None) from parsed CLI args."""
    if args.quantize in ("fp16", "bf16"):
        return QConfig.from_cli(quantize=args.quantize, qconfig_path=args.qconfig), None, None
    if args.quantize == "none" and not args.qconfig:
        if args.calib or args.budget:
            from ..errors import ConfigError

            raise ConfigError("--calib/--budget given without --quantize int8|int16")
        return None, None, None
    qconfig = QConfig.from_cli(
        quantize=None if args.quantize == "none" else args.quantize,
        qconfig_path=args.qconfig,
        calib_method=args.calib_method,
        num_samples=args.calib_samples,
        activation_dtype=args.activation_dtype,
        per_channel=False if args.per_tensor else None,
        symmetric_activations=True if args.symmetric else None,
        keep_fp32=args.keep_fp32,
        keep_int16=args.keep_int16,
        budget=parse_budget(args.budget) if args.budget else None,
        fallback=args.fallback,
        float_dtype=args.float_dtype,
    )
    return qconfig, args.calib, _evaluation(args)


def _evaluation(args):
    if not args.eval:
        return None
    from ..io import load_npz

    evaluation = {"inputs": load_npz(args.eval)}
    if args.eval_labels:
        labels = load_npz(args.eval_labels)
        evaluation["labels"] = next(iter(labels.values()))
    return evaluation
