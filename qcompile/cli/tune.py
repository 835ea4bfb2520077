"""`qcompile tune`: tune a model's kernels with MetaSchedule and keep the schedules as records.

    qcompile tune MODEL [--target NAME] [--input-shape NAME:DIMS] [--trials N] [--records DIR]
                  [--trials-per-task N] [--timeout-per-task SEC] [--work-dir DIR] [quantization options]
"""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Auto-tune the kernels of a model with MetaSchedule for a target, and add the best
schedule of each kernel to a tuning-record folder (a MetaSchedule JSON database).

The kernels tuned are the ones 'qcompile compile' builds with the same options: the
pipeline runs up to its 'lower' stage and each fused TIR function becomes a task.
Records match kernels by structure, so one folder serves every model that shares
them. 'qcompile compile' applies schedules/<target>/ by default, and any folder
given with --records.

Kernels are measured on this machine (the target must run here), or on boards of a TVM RPC
tracker with --rpc-tracker HOST:PORT --rpc-key KEY (built here, measured there). Each measured
batch's improvements are saved at once: an interrupted (Ctrl-C) or failing run
keeps what it found, and the record folder is never left half-written."""

EPILOG = """\
examples:
  qcompile tune model.onnx --target x86_64 --trials 400
  qcompile tune model.onnx --target x86_64 --records my_records/ --task conv2d
  qcompile compile model.onnx --target x86_64 --records my_records/ -o out/

exit status: 0 when tuning ran (a table lists failed tasks, if any), 130 when
interrupted (records found so far are kept), 2 on bad input or when every task failed."""


def add_tune_parser(sub):
    from ..cli import add_compile_options

    p = sub.add_parser("tune", help="auto-tune a model's kernels with MetaSchedule; save the schedules as records",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compile_options(p)
    for action in p._actions:  # same flag as compile's, but here it names the folder written
        if action.dest == "records":
            action.help = ("tuning-record folder to add the best schedules to; created if needed "
                           "(default: schedules/<target name>/, which compile applies by default)")
    g = p.add_argument_group("tuning")
    g.add_argument("--trials", type=int, metavar="N",
                   help="total number of measurement trials over all tasks (default: the target's "
                        "tuning.max_trials_global)")
    g.add_argument("--trials-per-task", type=int, metavar="N",
                   help="at most N trials per task (default: the target's tuning.max_trials_per_task)")
    g.add_argument("--trials-per-iter", type=int, metavar="N",
                   help="candidates built and measured per batch (default: the target's tuning.num_trials_per_iter)")
    g.add_argument("--timeout-per-task", type=float, metavar="SEC",
                   help="stop scheduling a task once SEC seconds of wall time went to it (default: no limit)")
    g.add_argument("--task", action="append", default=[], metavar="NAME",
                   help="tune only tasks whose name contains NAME, e.g. conv2d (repeatable; default: all tasks)")
    g.add_argument("--threads", type=int, default=1, metavar="N",
                   help="TVM threads kernels are measured with, and the num-cores tuned for; 0 = all cores "
                        "(default: 1, as 'qcompile bench')")
    g.add_argument("--strategy", choices=["evolutionary", "replay-trace"], default="evolutionary",
                   help="search strategy: evolutionary (cost-model guided) or replay-trace (random samples) "
                        "(default: evolutionary)")
    g.add_argument("--seed", type=int, metavar="N",
                   help="random seed of the search: a run with the same seed samples the same candidates "
                        "(sampled on one thread); the evolutionary search also follows the measured times "
                        "(default: a new seed each run)")
    g.add_argument("--work-dir", metavar="DIR",
                   help="keep MetaSchedule's logs and full database of every trial in DIR "
                        "(default: a temporary folder, removed afterwards)")
    g.add_argument("--json", metavar="FILE", help="write the tuning report as JSON")
    g.add_argument("-v", "--verbose", action="store_true", help="print MetaSchedule's own log and task table")
    p.add_argument("--pass", dest="passes", action="append", default=[], metavar="MODULE:OBJECT",
                   help="a user Relax pass, as in compile: tune the module compile builds with it (pair with --at)")
    p.add_argument("--at", action="append", default=[], metavar="WHEN:STAGE",
                   help="where the matching --pass goes, e.g. after:preprocess")
    try:
        from .quantize import add_quantize_options
    except ModuleNotFoundError:
        pass
    else:
        add_quantize_options(p)
    try:
        from .rpc import add_tune_rpc_options
    except ModuleNotFoundError:
        pass
    else:
        add_tune_rpc_options(p)  # --rpc-tracker, --rpc-key, --rpc-session-timeout
    p.set_defaults(func=cmd_tune)
    return p


def cmd_tune(args):
    from . import make_pipeline, write_json_atomic
    from ..errors import ConfigError
    from ..schedule.records import SCHEDULES_DIR
    from ..tune.tuner import TuneError, tune

    qconfig, calib = None, None
    if hasattr(args, "quantize"):
        from .quantize import qconfig_from_args

        qconfig, calib = qconfig_from_args(args)[:2]
    if len(args.records) > 1:
        raise ConfigError("tune writes one record folder: give --records DIR once")
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    if args.timeout_per_task is not None and args.timeout_per_task <= 0:
        raise ConfigError(f"--timeout-per-task must be > 0, got {args.timeout_per_task}")
    records_dir = args.records[0] if args.records else None
    args.records = []  # tuning starts from the lowered module; nothing is applied before it
    pipe = make_pipeline(args, qconfig)
    runner = None
    if getattr(args, "rpc_tracker", None):
        from .rpc import runner_from_args

        runner = runner_from_args(args)  # MetaSchedule RPCRunner: candidates built here, measured on the boards
    report = tune(args.model, pipeline=pipe, records_dir=records_dir, trials=args.trials, runner=runner,
                  trials_per_task=args.trials_per_task, num_trials_per_iter=args.trials_per_iter,
                  calib=calib, work_dir=args.work_dir, threads=args.threads or None,
                  timeout_per_task=args.timeout_per_task, tasks=args.task or None, strategy=args.strategy,
                  seed=args.seed, verbose=args.verbose, progress=True)
    print(report.table())
    if report.work_dir:
        print(f"MetaSchedule logs and database: {report.work_dir}")
    if args.json:
        write_json_atomic(args.json, report.to_json())
    where = report.records_dir
    if report.interrupted:
        print(f"qcompile: interrupted; {report.saved} record(s) saved in {where}", file=sys.stderr)
        return 130
    if report.error:
        raise TuneError(f"{report.error} ({report.saved} record(s) saved in {where} before that)")
    if report.all_failed:
        raise TuneError(f"{report.failure_message()}; {where} unchanged; {_where_the_logs_are(report)}")
    if report.failed:
        print(f"warning: {report.failure_message()}; {_where_the_logs_are(report)}", file=sys.stderr)
    default = os.path.abspath(where).startswith(os.path.abspath(SCHEDULES_DIR) + os.sep)
    how = "applies them by default" if default else f"applies them with --records {where}"
    print(f"records: {where} ('qcompile compile ... --target {report.target}' {how})")
    return 0


def _where_the_logs_are(report) -> str:
    """MetaSchedule's task logs hold every failed trial's whole error, its TIR and its trace."""
    if report.work_dir:
        return f"every failed trial's traceback and schedule are in {os.path.join(report.work_dir, 'logs')}"
    return "rerun with --work-dir DIR to keep every failed trial's traceback and schedule in DIR/logs"


COMMANDS = [add_tune_parser]
