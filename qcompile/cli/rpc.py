"""`qcompile rpc tracker|server|status`, and the remote options of `qcompile bench` (and `qcompile tune`).

    qcompile rpc tracker [--host 127.0.0.1] [--port 9190]
    qcompile rpc server  [--tracker HOST:PORT --key KEY] [--host 127.0.0.1] [--port 9090]
    qcompile rpc status  --tracker HOST:PORT
    qcompile bench OUT_DIR --rpc-tracker HOST:PORT --rpc-key KEY [--boards N] [--retries N] [--timeout S]
    qcompile bench OUT_DIR --rpc HOST:PORT [--rpc-key KEY]

`tracker` and `server` exec TVM's own ``python -m tvm.exec.rpc_tracker`` / ``rpc_server`` (so a
board needs nothing of qcompile's), with safer defaults: they bind 127.0.0.1 unless --host says
otherwise, and the tracker takes exactly the port it is given.
"""

from __future__ import annotations

import json
import os
import sys

from ..runtime.bench import format_bench
from ..runtime.rpc import (DEFAULT_REQUEST_TIMEOUT_S, DEFAULT_SERVER_PORT, DEFAULT_SESSION_TIMEOUT_S, DEFAULT_TRACKER_PORT,
                  Tracker, describe_keys, parse_endpoint)

TRUST_WARNING = ("note: a TVM RPC server runs any library it is sent; {what} on {host} is reachable from other "
                 "machines. Use it only on a trusted network.")


# ----------------------------------------------------------------------------- qcompile rpc ...

def _add_rpc(sub):
    p = sub.add_parser("rpc", help="run a TVM RPC tracker or server, or show a tracker's boards",
                       description="Remote boards over TVM RPC. A board runs an RPC server that registers with a "
                                   "tracker under a key naming its hardware; 'qcompile bench --rpc-tracker' then "
                                   "measures artifacts on it. An RPC server runs whatever library it is sent: keep "
                                   "servers and trackers on a trusted network.")
    rsub = p.add_subparsers(title="rpc commands", metavar="COMMAND")

    t = rsub.add_parser("tracker", help="start a TVM RPC tracker (python -m tvm.exec.rpc_tracker)",
                        description="Start a TVM RPC tracker: the queue that hands boards out to clients.",
                        epilog="example: qcompile rpc tracker --port 9190")
    t.add_argument("--host", default="127.0.0.1",
                   help="the host IP address the tracker binds to (default: 127.0.0.1; 0.0.0.0 = every interface)")
    t.add_argument("--port", type=int, default=DEFAULT_TRACKER_PORT,
                   help=f"the port of the tracker (default: {DEFAULT_TRACKER_PORT})")
    t.add_argument("--port-end", type=int,
                   help="search ports [port, port-end) when the port is taken (default: use exactly --port)")
    t.add_argument("--silent", action="store_true", help="whether to run in silent mode")
    t.set_defaults(func=cmd_rpc_tracker)

    s = rsub.add_parser("server", help="start a TVM RPC server on this board (python -m tvm.exec.rpc_server)",
                        description="Start a TVM RPC server: it registers with the tracker under KEY and runs the "
                                    "libraries clients send it. Without --tracker it serves clients that connect "
                                    "directly ('qcompile bench --rpc HOST:PORT').",
                        epilog="example: qcompile rpc server --tracker 127.0.0.1:9190 --key rpi4")
    s.add_argument("--tracker", metavar="HOST:PORT",
                   help="the address of the RPC tracker in host:port format, e.g. 10.77.1.234:9190")
    s.add_argument("--key", default="", help="the key used to identify the device type in the tracker, e.g. rpi4")
    s.add_argument("--host", default="127.0.0.1",
                   help="the host IP address the server binds to (default: 127.0.0.1; 0.0.0.0 = every interface)")
    s.add_argument("--port", type=int, default=DEFAULT_SERVER_PORT,
                   help=f"the port of the server (default: {DEFAULT_SERVER_PORT})")
    s.add_argument("--port-end", type=int, help="the end of the port search range (default: port + 100)")
    s.add_argument("--custom-addr", metavar="IP", help="the address to report to the tracker (default: as seen by it)")
    s.add_argument("--load-library", metavar="LIB[:LIB...]", help="additional libraries to load")
    s.add_argument("--no-fork", action="store_true", help="use spawn instead of fork for session processes")
    s.add_argument("--silent", action="store_true", help="whether to run in silent mode")
    s.set_defaults(func=cmd_rpc_server)

    q = rsub.add_parser("status", help="show a tracker's boards and queue (python -m tvm.exec.query_rpc_tracker)",
                        description="Show the boards registered with a tracker, by key: total, free, pending.")
    q.add_argument("--tracker", metavar="HOST:PORT", default=f"127.0.0.1:{DEFAULT_TRACKER_PORT}",
                   help=f"the address of the RPC tracker (default: 127.0.0.1:{DEFAULT_TRACKER_PORT})")
    q.add_argument("--json", action="store_true", help="print the status as JSON")
    q.set_defaults(func=cmd_rpc_status)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _exec_python_module(module: str, argv: list[str]):
    """Replace this process with `python -m module argv...` (same PID: signals reach TVM directly)."""
    cmd = [sys.executable, "-m", module, *argv]
    print(" ".join(cmd), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, cmd)


def cmd_rpc_tracker(args):
    from ..errors import ConfigError

    port_end = args.port_end if args.port_end is not None else args.port + 1
    if port_end <= args.port:
        raise ConfigError(f"--port-end {port_end} must be greater than --port {args.port}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(TRUST_WARNING.format(what="a tracker", host=args.host), file=sys.stderr)
    argv = ["--host", args.host, "--port", str(args.port), "--port-end", str(port_end)]
    _exec_python_module("tvm.exec.rpc_tracker", argv + (["--silent"] if args.silent else []))


def cmd_rpc_server(args):
    from ..errors import ConfigError

    port_end = args.port_end if args.port_end is not None else args.port + 100
    if port_end <= args.port:
        raise ConfigError(f"--port-end {port_end} must be greater than --port {args.port}")
    argv = ["--host", args.host, "--port", str(args.port), "--port-end", str(port_end)]
    if args.tracker:
        parse_endpoint(args.tracker, "--tracker")
        if not args.key:
            raise ConfigError("--key is required with --tracker: it names this board's kind of hardware, e.g. rpi4")
        argv += ["--tracker", args.tracker, "--key", args.key]
    elif args.key:
        argv += ["--key", args.key]
    for flag, value in (("--custom-addr", args.custom_addr), ("--load-library", args.load_library)):
        if value:
            argv += [flag, value]
    argv += (["--no-fork"] if args.no_fork else []) + (["--silent"] if args.silent else [])
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(TRUST_WARNING.format(what="this server", host=args.host), file=sys.stderr)
    _exec_python_module("tvm.exec.rpc_server", argv)


def cmd_rpc_status(args):
    ep = parse_endpoint(args.tracker, "--tracker")
    with Tracker(ep) as t:
        summary = t.summary()
        boards = t.boards()
    if args.json:
        print(json.dumps({"tracker": str(ep), "boards": boards, "raw": summary}, indent=2))
        return 0
    print(format_status(str(ep), boards))
    return 0


def format_status(tracker: str, boards: dict) -> str:
    lines = [f"tracker {tracker}: {describe_keys(boards)}"]
    if boards:
        width = max(3, *(len(k) for k in boards))
        lines.append(f"  {'key':<{width}}  total  free  pending  servers")
        for key, b in sorted(boards.items()):
            lines.append(f"  {key:<{width}}  {b['total']:5d}  {b['free']:4d}  {b['pending']:7d}  "
                         f"{', '.join(sorted(b['servers']))}")
    return "\n".join(lines)


COMMANDS = [_add_rpc]


# ----------------------------------------------------------------------------- qcompile bench --rpc-tracker ...

def add_remote_bench_options(p):
    """The remote-board options of `qcompile bench`."""
    g = p.add_argument_group("remote boards (TVM RPC)",
                             "measure on boards instead of this machine; timings are taken on the board")
    g.add_argument("--rpc-tracker", metavar="HOST:PORT", help="the RPC tracker to request boards from")
    g.add_argument("--rpc-key", metavar="KEY", default="",
                   help="the key of the boards to use (with --rpc: the server's own --key, if it has one)")
    g.add_argument("--rpc", action="append", default=[], metavar="HOST:PORT",
                   help="an RPC server to connect to directly, without a tracker (repeatable)")
    g.add_argument("--boards", type=int, default=1, metavar="N",
                   help="measure up to N boards of the key in parallel, one result each (default: 1)")
    g.add_argument("--retries", type=int, default=0, metavar="N",
                   help="when a board dies mid-run, move to another board of the key, up to N times (default: 0)")
    g.add_argument("--timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, metavar="S",
                   help=f"how long to wait for a free board, in seconds (default: {DEFAULT_REQUEST_TIMEOUT_S:g})")
    g.add_argument("--session-timeout", type=float, default=DEFAULT_SESSION_TIMEOUT_S, metavar="S",
                   help="the board ends a session older than this, in seconds "
                        f"(default: {DEFAULT_SESSION_TIMEOUT_S:g})")


def is_remote(args) -> bool:
    return bool(getattr(args, "rpc_tracker", None) or getattr(args, "rpc", None))


def check_local_bench_args(args):
    """Remote-only options on a local bench are a mistake (the user meant a board): say so."""
    from ..errors import ConfigError

    given = [flag for flag, dest, default in (("--rpc-key", "rpc_key", ""), ("--boards", "boards", 1),
                                               ("--retries", "retries", 0),
                                               ("--timeout", "timeout", DEFAULT_REQUEST_TIMEOUT_S),
                                               ("--session-timeout", "session_timeout", DEFAULT_SESSION_TIMEOUT_S))
             if getattr(args, dest, default) != default]
    if given:
        raise ConfigError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to remote boards: add "
                          "--rpc-tracker HOST:PORT --rpc-key KEY (or --rpc HOST:PORT)")


def cmd_remote_bench(args, artifact, inputs, write_json_atomic) -> int:
    """`qcompile bench` on boards: print each board's line, write what finished, then raise the first failure."""
    from ..errors import ConfigError
    from ..report import result_rows, write_csv_atomic
    from ..runtime.rpc import RunOptions, bench_remote

    if args.rpc_tracker and args.rpc:
        raise ConfigError("give either --rpc-tracker (boards from a tracker) or --rpc (servers addressed directly)")
    if args.rpc_tracker and not args.rpc_key:
        raise ConfigError("--rpc-tracker needs --rpc-key KEY: which kind of board to use "
                          f"(see 'qcompile rpc status --tracker {args.rpc_tracker}')")
    tracker = parse_endpoint(args.rpc_tracker, "--rpc-tracker") if args.rpc_tracker else None
    direct = [parse_endpoint(a, "--rpc") for a in args.rpc]
    opts = RunOptions(threads=args.threads, warmup=args.warmup, repeat=args.repeat,
                      session_timeout=args.session_timeout, inputs=inputs)
    run = bench_remote(artifact, tracker=tracker, key=args.rpc_key, direct=direct, boards=args.boards,
                       retries=args.retries, timeout=args.timeout, opts=opts, progress=True,
                       log=lambda msg: print(f"note: {msg}", file=sys.stderr))
    for r in run.results:
        emulated = "  (emulated board: not a hardware timing)" if r.get("emulated") else ""
        print(f"board {r['board']}  key {r['rpc_key'] or '-'}  {r.get('board_cpu') or ''}{emulated}")
        print("  " + format_bench(r).replace("\n", "\n  "))
    multi = args.boards > 1 or len(direct) > 1
    if run.results:
        doc = run.to_json(artifact, args.rpc_key, tracker) if multi else run.results[0]
        if args.json:
            write_json_atomic(args.json, doc)
        if args.csv:
            write_csv_atomic(args.csv, [row for r in run.results for row in result_rows(r)])
    if run.errors:
        if len(run.errors) > 1 or run.results:
            for err in run.errors[1:]:
                print(f"qcompile: error: {err}", file=sys.stderr)
            if run.results:
                print(f"note: {len(run.results)} board(s) finished; their results were kept"
                      + (" and written" if args.json or args.csv else ""), file=sys.stderr)
        raise run.errors[0]
    return 0


# ----------------------------------------------------------------------------- qcompile tune --rpc-tracker ...

def add_tune_rpc_options(p):
    """The options with which `qcompile tune` measures candidates on boards (MetaSchedule RPCRunner)."""
    g = p.add_argument_group("measure on boards (TVM RPC)",
                             "build candidates here, time them on the tracker's boards")
    g.add_argument("--rpc-tracker", metavar="HOST:PORT", help="the RPC tracker whose boards measure candidates")
    g.add_argument("--rpc-key", metavar="KEY", default="", help="the key of the boards to measure on")
    g.add_argument("--rpc-session-timeout", type=float, default=60.0, metavar="S",
                   help="seconds one candidate's measurement may take on a board (default: 60)")


def runner_from_args(args):
    """A MetaSchedule RPCRunner when --rpc-tracker was given, else None (measure locally)."""
    from ..errors import ConfigError
    from ..runtime.rpc import make_rpc_runner

    if not getattr(args, "rpc_tracker", None):
        return None
    if not args.rpc_key:
        raise ConfigError("--rpc-tracker needs --rpc-key KEY: which kind of board to tune on")
    return make_rpc_runner(parse_endpoint(args.rpc_tracker, "--rpc-tracker"), args.rpc_key,
                           session_timeout=args.rpc_session_timeout, threads=getattr(args, "threads", None) or None)
