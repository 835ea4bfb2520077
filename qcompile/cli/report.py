"""`qcompile report FILES... [--png OUT.png] [--csv [FILE]]`: compare bench results."""

from __future__ import annotations

import sys


def _add_report(sub):
    p = sub.add_parser("report", help="compare bench results: a table, and optionally a PNG chart or CSV",
                       description="Turn one or more 'qcompile bench --json' files (local or remote, one board or "
                                   "--boards N) into a comparison table of boards x models x precisions, with the "
                                   "speed-up of each integer model over its fp32 build on the same board.",
                       epilog="example: qcompile report fp32.json int8.json --png latency.png")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="result files written by 'qcompile bench --json', or vta_sim artifact folders "
                        "(per-layer cycles, utilization and a roofline chart)")
    p.add_argument("--png", metavar="OUT.png", help="also draw a bar chart (median, whisker to p90)")
    p.add_argument("--csv", nargs="?", const="-", metavar="FILE",
                   help="print the rows as CSV instead of the table, or write them to FILE")
    p.set_defaults(func=cmd_report)


def cmd_report(args):
    import os

    from . import accel_report
    from ..report import format_table, load_results, plot_png, to_csv, write_csv_atomic

    accel_files = [f for f in args.files if accel_report.from_path(f)]
    for f in accel_files:
        rep = accel_report.from_path(f)
        print(accel_report.format_layers(rep))
        if args.png:
            out = os.path.splitext(args.png)[0] + "_accel.png"
            accel_report.plot(rep, out)
            print(f"accelerator chart: {out}")
    files = [f for f in args.files if f not in accel_files]
    if not files:
        return 0
    rows = load_results(files)
    if args.csv == "-":
        sys.stdout.write(to_csv(rows))
    else:
        print(format_table(rows))
        if args.csv:
            write_csv_atomic(args.csv, rows)
    if args.png:
        plot_png(rows, args.png)
        print(f"chart: {args.png}", file=sys.stderr if args.csv == "-" else sys.stdout)
    return 0


COMMANDS = [_add_report]
