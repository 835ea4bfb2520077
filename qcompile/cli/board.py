"""`qcompile board qemu-aarch64`: build an emulated aarch64 board and serve it over TVM RPC.

    qcompile board qemu-aarch64 [--dir DIR] [--tracker HOST:PORT] [--key aarch64-qemu] [--setup-only]

The first run builds the board in DIR (arm64 Debian + TVM's aarch64 wheels, a few minutes and
~620 MB); later runs reuse it. Then it starts TVM's RPC server on the board, registers it with
the tracker under KEY and stays in the foreground until Ctrl-C. Without --tracker it starts a
tracker on 127.0.0.1:9190 too. Then, from another shell:

    qcompile compile model.onnx --target arm_neon -o out_arm
    qcompile bench out_arm --rpc-tracker 127.0.0.1:9190 --rpc-key aarch64-qemu

Emulated timings are not performance (qemu-user is tens of times slower than a real core).
"""

from __future__ import annotations

import json
import sys
import time

DEFAULT_TRACKER = "127.0.0.1:9190"


def add_board_parser(sub):
    p = sub.add_parser("board", help="build and serve an emulated board (qemu-aarch64) for the ARM targets",
                       description="Emulated boards for running cross-compiled artifacts through the same RPC "
                                   "path as real hardware. Their timings are not performance numbers.")
    bsub = p.add_subparsers(title="boards", metavar="BOARD")
    q = bsub.add_parser("qemu-aarch64", help="arm64 Debian + TVM under qemu-user, served over TVM RPC",
                        description="Build (once, cached in --dir) an arm64 Debian root with TVM's aarch64 wheels, "
                                    "then run TVM's RPC server on it under qemu-user, registered with a tracker. "
                                    "Needs qemu-user-static and debootstrap (Debian), root for the first build, "
                                    "and network access to a Debian mirror and PyPI.",
                        epilog="example: qcompile board qemu-aarch64 --dir ~/.cache/qcompile/boards/qemu-aarch64 "
                               "--tracker 127.0.0.1:9190")
    from ..runtime.boards.qemu_aarch64 import DEFAULT_KEY, DEFAULT_MIRROR, DEFAULT_SUITE, default_dir

    q.add_argument("--dir", default=None, metavar="DIR",
                   help=f"where the board is built and cached (default: $QCOMPILE_BOARD_DIR/qemu-aarch64 or {default_dir()})")
    q.add_argument("--tracker", metavar="HOST:PORT",
                   help=f"register with this RPC tracker (default: start one on {DEFAULT_TRACKER})")
    q.add_argument("--key", default=DEFAULT_KEY, help=f"the board's key at the tracker (default: {DEFAULT_KEY})")
    q.add_argument("--setup-only", action="store_true", help="build the board (if needed) and exit; start no server")
    q.add_argument("--host", default="127.0.0.1", help="the address the board's RPC server binds to (default: 127.0.0.1)")
    q.add_argument("--port", type=int, default=9090, help="first port the board's RPC server tries (default: 9090)")
    q.add_argument("--cpu", default="max",
                   help="the CPU qemu emulates, e.g. cortex-a72 (no dotprod) or max (default: max, has dotprod)")
    q.add_argument("--suite", default=DEFAULT_SUITE, help=f"Debian suite of the root filesystem (default: {DEFAULT_SUITE})")
    q.add_argument("--mirror", default=DEFAULT_MIRROR, help=f"Debian mirror (default: {DEFAULT_MIRROR})")
    q.add_argument("--ready-timeout", type=float, default=300.0, metavar="S",
                   help="how long to wait for the server to register with the tracker (default: 300)")
    q.add_argument("--json", action="store_true", help="print the board's build record (board.json) as JSON")
    q.set_defaults(func=cmd_board_qemu_aarch64)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def cmd_board_qemu_aarch64(args):
    from ..runtime.boards.qemu_aarch64 import QemuAarch64Board

    board = QemuAarch64Board(args.dir, suite=args.suite, mirror=args.mirror, cpu=args.cpu)
    start = time.perf_counter()
    state = board.setup()
    print(_describe(board, state, time.perf_counter() - start), file=sys.stderr)
    if args.json:
        print(json.dumps(state, indent=2))
    if args.setup_only:
        return 0
    return _serve(board, args)


def _serve(board, args) -> int:
    """Start the tracker (if needed) and the board's server; block until Ctrl-C or the server exits."""
    from ..runtime.rpc import Tracker as TrackerClient
    from ..runtime.rpc import parse_endpoint

    from ..errors import TrackerUnreachableError

    own_tracker = None
    if args.tracker:
        ep = parse_endpoint(args.tracker, "--tracker")
        TrackerClient(ep).close()  # fail now, with a clear message, if nothing answers there
    else:
        ep = parse_endpoint(DEFAULT_TRACKER, "--tracker")
        try:
            TrackerClient(ep).close()
            print(f"[board] using the RPC tracker already running at {ep}", file=sys.stderr)
        except TrackerUnreachableError:
            own_tracker = _start_tracker(ep)
            print(f"[board] started an RPC tracker on {ep}", file=sys.stderr)
    _stop_on_sigterm()
    server = board.start_server((ep.host, ep.port), key=args.key, host=args.host, port=args.port)
    try:
        took = server.wait_registered(timeout=args.ready_timeout)
        print(f"[board] ready in {took:.0f} s: key '{args.key}' at tracker {ep} (emulated aarch64; timings are not "
              f"performance)\n[board] run: qcompile bench OUT_DIR --rpc-tracker {ep} --rpc-key {args.key}\n"
              "[board] Ctrl-C stops the board", file=sys.stderr, flush=True)
        code = server.proc.wait()
        print(f"[board] the board's RPC server exited with code {code} (log: {server.log_path})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[board] stopping", file=sys.stderr)
        return 0
    finally:
        server.stop()
        if own_tracker is not None:
            own_tracker.terminate()


def _stop_on_sigterm():
    """SIGTERM (and a SIGINT that a background shell set to 'ignore') end the board cleanly, like Ctrl-C."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def _start_tracker(ep):
    from tvm.rpc.tracker import Tracker

    from ..runtime.boards.qemu_aarch64 import BoardError

    try:
        return Tracker(ep.host, port=ep.port, port_end=ep.port + 1, silent=True)
    except (ValueError, OSError) as err:
        raise BoardError(f"cannot start an RPC tracker on {ep} ({err}); start one elsewhere with "
                         "'qcompile rpc tracker --port PORT' and pass --tracker HOST:PORT") from None


def _describe(board, state: dict, seconds: float) -> str:
    sizes, check = state.get("sizes", {}), state.get("check", {})
    steps = ", ".join(f"{k} {state[k]['seconds']} s" for k in ("rootfs", "site", "bytecode")
                      if state.get(k, {}).get("seconds") is not None)
    return (f"[board] qemu-aarch64 in {board.dir}: {sizes.get('total_mb', '?')} MB "
            f"(rootfs {sizes.get('rootfs_mb', '?')} MB, wheels {sizes.get('site_mb', '?')} MB); built in: {steps}; "
            f"this run {seconds:.0f} s; tvm {check.get('tvm', '?')}, import tvm {check.get('import_tvm_seconds', '?')} s "
            f"emulated ({check.get('import_tvm_runtime_only_seconds', '?')} s runtime only)")


COMMANDS = [add_board_parser]
