"""Measure a model on remote boards over TVM RPC: the script to copy for device benchmarking.

    # boards registered with your tracker under key rpi4, artifacts cross-compiled for target rpi4
    python examples/bench_rpc.py --tracker 10.0.0.5:9190 --key rpi4 --target rpi4 [MODEL.onnx --calib CALIB.npz]

    # no boards at hand: start a tracker and two servers on 127.0.0.1 (this CPU plays the boards)
    python examples/bench_rpc.py --local-farm

It does what a user does by hand:
  1. point at a tracker (or start a local one with servers, stopped again at the end);
  2. compile the model for the boards' target, fp32 and int8 (calibrated);
  3. bench every artifact on up to --boards boards of the key, in parallel;
  4. write one JSON per artifact, then a comparison table, CSV and PNG chart (qcompile report).

On a board, start the server with:  qcompile rpc server --tracker TRACKER_HOST:9190 --key rpi4 --host 0.0.0.0
(an RPC server runs whatever library it is sent: only on a trusted network).
With no model, it uses the bundled digits CNN and its calibration split.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import qcompile
from qcompile import zoo
from qcompile.cli import write_json_atomic
from qcompile.report import format_table, plot_png, result_rows, write_csv_atomic
from qcompile.runtime.rpc import RunOptions, Tracker, bench_remote, parse_endpoint


def start_local_farm(log_dir: str, servers: int = 2, key: str = "x86"):
    """A tracker and `servers` RPC servers on 127.0.0.1 (qcompile rpc ...), as subprocesses in their own groups."""
    import socket

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    os.makedirs(log_dir, exist_ok=True)
    procs, port = [], free_port()
    cli = [sys.executable, "-m", "qcompile.cli", "rpc"]

    def spawn(name, argv):
        log = open(os.path.join(log_dir, f"{name}.log"), "wb")
        procs.append(subprocess.Popen(cli + argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    spawn("tracker", ["tracker", "--port", str(port)])
    for i in range(servers):
        spawn(f"server-{i}", ["server", "--tracker", f"127.0.0.1:{port}", "--key", key, "--port", str(free_port())])
    tracker = parse_endpoint(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # servers need a few seconds each to import TVM and register
        try:
            with Tracker(tracker, connect_timeout=1) as t:
                if t.boards().get(key, {}).get("free", 0) >= servers:
                    return tracker, procs
        except qcompile.QCompileError:
            pass
        time.sleep(0.5)
    stop_local_farm(procs)
    raise SystemExit(f"the local RPC farm did not come up; see the logs in {log_dir}")


def stop_local_farm(procs):
    import signal

    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the group: server, its listener and session children
        except ProcessLookupError:
            pass
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=zoo.DIGITS_MODEL)
    ap.add_argument("--calib", help="calibration .npz for the int8 build (default: the digits split, for the digits model)")
    ap.add_argument("--tracker", metavar="HOST:PORT", help="an existing RPC tracker")
    ap.add_argument("--key", default="x86", help="the boards' key at the tracker (default: x86)")
    ap.add_argument("--target", default="auto", help="what the boards run: a target name or .yaml (default: auto)")
    ap.add_argument("--local-farm", action="store_true", help="start a tracker and 2 servers on 127.0.0.1 first")
    ap.add_argument("--boards", type=int, default=2, help="boards to measure in parallel (default: 2)")
    ap.add_argument("--retries", type=int, default=1, help="move to another board this many times (default: 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--no-int8", action="store_true", help="only the fp32 build")
    ap.add_argument("--out", default="out_bench_rpc", help="artifacts, results and the report go here")
    args = ap.parse_args()
    if not args.tracker and not args.local_farm:
        ap.error("give --tracker HOST:PORT, or --local-farm to start one on 127.0.0.1")

    procs = []
    try:
        if args.local_farm:
            tracker, procs = start_local_farm(os.path.join(args.out, "farm-logs"), key=args.key)
            print(f"local farm: tracker {tracker}, key {args.key}")
        else:
            tracker = parse_endpoint(args.tracker)
        with Tracker(tracker) as t:  # fail early, and say what is there
            print(f"tracker {tracker}: {t.boards()}")

        builds = [("fp32", None, None)]
        if not args.no_int8:
            from qcompile.quantize.qconfig import QConfig

            calib = args.calib or (zoo.DIGITS_CALIB if args.model == zoo.DIGITS_MODEL else None)
            if calib is None:
                ap.error("the int8 build needs --calib CALIB.npz (or pass --no-int8)")
            builds.append(("int8", QConfig.from_cli(quantize="int8"), calib))

        result_files, rows = [], []
        for precision, qconfig, calib in builds:
            out_dir = os.path.join(args.out, f"{precision}")
            art = qcompile.compile(args.model, target=args.target, out_dir=out_dir, qconfig=qconfig, calib=calib)
            print(f"compiled {precision} for {art.target_name}: {out_dir}")
            run = bench_remote(art, tracker=tracker, key=args.key, boards=args.boards, retries=args.retries,
                               opts=RunOptions(threads=args.threads, repeat=args.repeat), progress=True,
                               log=lambda msg: print(f"note: {msg}"))
            for err in run.errors:
                print(f"error: {err}")
            if run.results:
                path = os.path.join(args.out, f"bench_{precision}.json")
                write_json_atomic(path, run.to_json(art, args.key, tracker))
                result_files.append(path)
                rows += result_rows(run.to_json(art, args.key, tracker), path)

        if rows:
            print()
            print(format_table(rows))
            write_csv_atomic(os.path.join(args.out, "report.csv"), rows)
            plot_png(rows, os.path.join(args.out, "report.png"))
            print(f"\nreport: {args.out}/report.csv, {args.out}/report.png "
                  f"(again: qcompile report {' '.join(result_files)} --png report.png)")
    finally:
        stop_local_farm(procs)


if __name__ == "__main__":
    main()
