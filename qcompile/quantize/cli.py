"""Quantization options of `qcompile compile` (and `qcompile tune`)."""

from __future__ import annotations

from .qconfig import CALIB_METHODS, QConfig

COMMANDS: list = []  # no subcommands of its own; the options join `compile`


def add_quantize_options(p):
    g = p.add_argument_group("quantization")
    g.add_argument("--quantize", "-q", choices=["int8", "int16", "none"], default="none",
                   help="quantize to real integer arithmetic (default: none = fp32)")
    g.add_argument("--qconfig", metavar="FILE.yaml", help="quantization config file (see qcompile/quantize/qconfig.py)")
    g.add_argument("--calib", metavar="FILE.npz|DIR",
                   help="calibration data: .npz (keys = input names, first axis = samples) or a folder of them")
    g.add_argument("--calib-method", choices=CALIB_METHODS, help="activation range method (default: mse)")
    g.add_argument("--calib-samples", type=int, metavar="N", help="use at most N calibration samples")
    g.add_argument("--activation-dtype", choices=["int8", "uint8", "int16"], help="default: the target's preference")
    g.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (default: per-channel)")
    g.add_argument("--symmetric", action="store_true", help="symmetric activations (zero point 0 / 128)")
    g.add_argument("--keep-fp32", action="append", default=[], metavar="PATTERN",
                   help="keep matching layers in fp32: an op ('softmax'), a layer name ('conv2d_3') "
                        "or a regex ('re:matmul_.*'); repeatable")
    g.add_argument("--keep-int16", action="append", default=[], metavar="PATTERN",
                   help="run matching layers in int16 (same pattern forms as --keep-fp32)")


def qconfig_from_args(args):
    """(QConfig or None, calibration source) from parsed CLI args."""
    if args.quantize == "none" and not args.qconfig:
        if args.calib:
            from ..errors import ConfigError

            raise ConfigError("--calib given without --quantize int8|int16")
        return None, None
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
    )
    return qconfig, args.calib
