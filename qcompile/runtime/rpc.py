"""Measuring an artifact on remote boards over TVM RPC.

A board is any machine running TVM's RPC server (``qcompile rpc server``), usually registered
with a tracker under a key that names the kind of hardware ("rpi4", "x86"). The flow for one
board is TVM's own: request a board from the tracker, upload the artifact's library, load it
remotely, build a Relax VM on the remote CPU and time ``main`` with a remote time_evaluator, so
the timings are taken on the board and carry no network latency.

What this module adds around TVM's RPC client, and why:

* timeouts everywhere. TVM's ``TrackerSession`` retries a refused tracker connection for 60 s
  and waits forever for a free board; a command line must fail within ``--timeout`` and say
  which keys the tracker does have. :class:`Tracker` talks the tracker protocol itself.
* a target check before anything runs. An aarch64 library sent to an x86 board fails in
  ``dlopen`` with "cannot open shared object file: No such file or directory", and an AVX-512
  library on an AVX2 board kills the server with an illegal instruction. The library's ELF
  header and the board's LLVM triple/CPU are compared first (:func:`check_board_target`); a
  board without LLVM (runtime-only TVM) cannot be asked, so its dlopen refusal and a crash on the
  first run are explained instead, and not retried on other boards.
* failures as one-line :class:`~qcompile.errors.RemoteError` s that name the board, and retries:
  a board that dies mid-run (:class:`~qcompile.errors.BoardLostError`) is replaced by another
  board of the same key when ``retries`` allows.
* several boards in parallel (:func:`bench_remote` with ``boards=N``), keeping the results of
  the boards that finished when others fail.

The security model is TVM's: an RPC server runs whatever library it is sent. Keep servers and
trackers on a trusted network (they bind 127.0.0.1 unless asked otherwise).
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..cpu_features import to_cpuinfo
from ..errors import (BoardLostError, ConfigError, InputError, NoBoardError, RemoteError, RemoteLoadError,
                      SessionTimeoutError, TargetMismatchError, TrackerUnreachableError)
from .bench import stats_ms

DEFAULT_TRACKER_PORT = 9190
DEFAULT_SERVER_PORT = 9090
CONNECT_TIMEOUT_S = 5.0          # TCP connect + handshake with a tracker or server
DEFAULT_REQUEST_TIMEOUT_S = 60.0  # waiting for a free board
DEFAULT_SESSION_TIMEOUT_S = 600.0  # the server kills a session older than this
PROGRESS_CHUNKS = 20              # timed runs are fetched in this many remote calls (progress, liveness)


# ----------------------------------------------------------------------------- addresses

@dataclass(frozen=True)
class Endpoint:
    """HOST:PORT of a tracker or an RPC server."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_endpoint(text: str, option: str = "--rpc-tracker") -> Endpoint:
    """'127.0.0.1:9190' -> Endpoint; a malformed value is a ConfigError naming the option."""
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{option} '{text}': expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_TRACKER_PORT}")
    return Endpoint(host.strip("[]"), int(port))


# ----------------------------------------------------------------------------- tracker

class Tracker:
    """A connection to a TVM RPC tracker that fails fast and explains itself.

    Speaks the tracker's JSON protocol (tvm.rpc.base) directly instead of using
    ``tvm.rpc.connect_tracker``: that one retries a refused connection for 60 s, and its
    ``request`` blocks until a board is free, with no timeout.
    """

    def __init__(self, endpoint: Endpoint, connect_timeout: float = CONNECT_TIMEOUT_S):
        from tvm.rpc import base

        self.endpoint = endpoint
        try:
            self._sock = socket.create_connection((endpoint.host, endpoint.port), timeout=connect_timeout)
        except OSError as err:
            raise TrackerUnreachableError(
                f"cannot reach the RPC tracker at {endpoint}: {err.strerror or err}; start one with "
                f"'qcompile rpc tracker --port {endpoint.port}' or check --rpc-tracker") from None
        try:
            self._sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(self._sock, 4))[0]
        except OSError as err:
            self.close()
            raise TrackerUnreachableError(f"{endpoint} accepted a connection but did not answer as an RPC tracker "
                                          f"({err})") from None
        if magic != base.RPC_TRACKER_MAGIC:
            self.close()
            raise TrackerUnreachableError(f"{endpoint} is not a TVM RPC tracker (it may be an RPC server: use --rpc)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _call(self, message, timeout: float | None):
        from tvm.rpc import base

        self._sock.settimeout(timeout)
        base.sendjson(self._sock, message)
        return base.recvjson(self._sock)

    def summary(self) -> dict:
        """The tracker's raw summary: {"queue_info": {key: {free, pending}}, "server_info": [...]}."""
        from tvm.rpc.base import TrackerCode

        try:
            reply = self._call([TrackerCode.SUMMARY], CONNECT_TIMEOUT_S)
        except OSError as err:
            raise TrackerUnreachableError(f"the RPC tracker at {self.endpoint} stopped answering ({err})") from None
        if reply[0] != TrackerCode.SUCCESS:
            raise TrackerUnreachableError(f"the RPC tracker at {self.endpoint} refused a summary request: {reply}")
        return reply[1]

    def boards(self) -> dict[str, dict]:
        """{key: {"total": registered servers, "free": idle servers, "pending": waiting requests, "servers": [...]}}."""
        return boards_by_key(self.summary())

    def request(self, key: str, timeout: float, priority: int = 0) -> "Board":
        """Wait up to `timeout` s for a free board with `key`; NoBoardError names the keys there are.

        The tracker hands out each board to one requester at a time, until that requester's
        session with the board ends.
        """
        from tvm.rpc.base import TrackerCode

        try:
            reply = self._call([TrackerCode.REQUEST, key, "", priority], timeout)
        except (socket.timeout, TimeoutError):
            self.close()  # the request stays queued on this socket; closing it withdraws it
            raise NoBoardError(no_board_message(self.endpoint, key, timeout)) from None
        except OSError as err:
            raise TrackerUnreachableError(f"the RPC tracker at {self.endpoint} dropped the connection while "
                                          f"waiting for a board with key '{key}' ({err})") from None
        if reply[0] != TrackerCode.SUCCESS:
            raise RemoteError(f"the RPC tracker at {self.endpoint} refused the request for key '{key}': {reply}")
        host, port, matchkey = reply[1]
        return Board(key=key, host=host, port=int(port), matchkey=matchkey, tracker=self.endpoint)


def boards_by_key(summary: dict) -> dict[str, dict]:
    """Regroup a tracker summary by key (servers report as 'server:KEY')."""
    out: dict[str, dict] = {}
    for info in summary.get("server_info", []):
        key = info.get("key", "").split(":", 1)[-1]
        entry = out.setdefault(key, {"total": 0, "free": 0, "pending": 0, "servers": []})
        entry["total"] += 1
        entry["servers"].append(":".join(map(str, info.get("addr", ["?", "?"]))))
    for key, q in summary.get("queue_info", {}).items():
        if key in out:
            out[key]["free"], out[key]["pending"] = q.get("free", 0), q.get("pending", 0)
    return out


def describe_keys(boards: dict[str, dict]) -> str:
    """'x86 (2 boards, 1 free), rpi4 (1 board, 0 free)' or 'no boards at all'."""
    if not boards:
        return "no boards at all"
    return ", ".join(f"{k} ({v['total']} board{'s' if v['total'] != 1 else ''}, {v['free']} free)"
                     for k, v in sorted(boards.items()))


def no_board_message(endpoint: Endpoint, key: str, timeout: float) -> str:
    try:
        with Tracker(endpoint) as t:
            boards = t.boards()
    except RemoteError:
        boards = None
    if boards is None:
        have = "the tracker stopped answering"
    elif key in boards:
        have = f"all {boards[key]['total']} board(s) with key '{key}' stayed busy; the tracker has: {describe_keys(boards)}"
    else:
        have = f"the tracker has: {describe_keys(boards)}"
    return f"no board with key '{key}' became free at tracker {endpoint} within {timeout:g} s ({have})"


# ----------------------------------------------------------------------------- boards

@dataclass
class Board:
    """One RPC server: handed out by a tracker (with a one-time match key) or addressed directly."""

    key: str
    host: str
    port: int
    matchkey: str = ""
    tracker: Endpoint | None = None

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        return f"board {self.name} (key {self.key})" if self.key else f"board {self.name}"

    def connect(self, session_timeout: float):
        """Open an RPC session; the server ends it after `session_timeout` s."""
        from tvm import rpc

        matchkey = self.matchkey if self.tracker else self.key
        try:
            return rpc.connect(self.host, self.port, matchkey, session_timeout=max(1, int(round(session_timeout))))
        except Exception as err:  # noqa: BLE001 - TVM raises InternalError/RuntimeError/OSError for the same thing
            msg = _last_line(err)
            if self.tracker is None:
                hint = (" (the server expects another key: pass its --key as --rpc-key)" if "matches key" in msg
                        else "; start one with 'qcompile rpc server --port PORT' or check --rpc")
                raise TrackerUnreachableError(f"cannot open an RPC session with {self.describe()}: {msg}{hint}") from None
            raise BoardLostError(f"{self.describe()} was handed out by the tracker but refused the session: {msg}") from None


def direct_board(endpoint: Endpoint, key: str = "") -> Board:
    """A server addressed without a tracker; `key` is the server's own --key ('' if it has none)."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise TrackerUnreachableError(f"cannot reach the RPC server at {endpoint}: {err.strerror or err}; "
                                      "start one with 'qcompile rpc server' or check --rpc") from None
    return Board(key=key, host=endpoint.host, port=endpoint.port)


# ----------------------------------------------------------------------------- target check

# ELF e_machine values (System V ABI) -> the architecture names LLVM triples start with.
_ELF_MACHINES = {3: "i386", 8: "mips", 20: "powerpc", 21: "powerpc64", 40: "arm", 62: "x86_64",
                 183: "aarch64", 243: "riscv", 258: "loongarch"}
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x86-64": "x86_64", "i686": "i386", "i586": "i386",
                 "i486": "i386", "x86": "i386", "ppc64": "powerpc64", "ppc64le": "powerpc64"}
_GENERIC_CPUS = {"", "generic", "x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4", "i686"}


def library_arch(path: str) -> str | None:
    """The architecture an ELF shared library was built for ('x86_64', 'aarch64', ...), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    endian = "<" if head[5] == 1 else ">"
    machine = struct.unpack(endian + "H", head[18:20])[0]
    arch = _ELF_MACHINES.get(machine, f"elf-machine-{machine}")
    if arch in ("riscv", "loongarch"):
        arch += "64" if head[4] == 2 else "32"
    return arch


def triple_arch(triple: str) -> str:
    """'x86_64-conda-linux-gnu' -> 'x86_64'; 'armv7l-...' -> 'arm'; 'arm64-apple-...' -> 'aarch64'."""
    arch = triple.split("-", 1)[0].lower()
    arch = _ARCH_ALIASES.get(arch, arch)
    if arch.startswith(("armv", "thumb")) or arch == "armeb":
        return "arm"
    return arch


@dataclass
class BoardInfo:
    """What a board says about itself: LLVM's host triple and CPU name (None if it runs without LLVM)."""

    triple: str | None = None
    cpu: str | None = None

    @property
    def arch(self) -> str | None:
        return triple_arch(self.triple) if self.triple else None


def query_board(remote) -> BoardInfo:
    """Ask the board's TVM for its host triple and CPU (runtime-only servers have no LLVM: both None)."""
    info = BoardInfo()
    for attr, func in (("triple", "target.llvm_get_system_triple"), ("cpu", "target.llvm_get_system_cpu")):
        try:
            f = remote.get_function(func)
        except AttributeError:  # TVM: "Module has no function '...'"
            continue
        setattr(info, attr, str(f()))
    return info


def cpu_features(triple: str, cpu: str) -> set[str] | None:
    """LLVM's feature set for a named CPU (computed locally), or None when the CPU is generic/unknown."""
    if cpu in _GENERIC_CPUS:
        return None
    import tvm

    try:
        feats = tvm.get_global_func("target.llvm_get_cpu_features")(
            tvm.target.Target({"kind": "llvm", "mtriple": triple, "mcpu": cpu}))
    except Exception:  # noqa: BLE001 - an LLVM that does not know this CPU: no opinion
        return None
    return {str(k) for k in feats}


def check_board_target(artifact, board: Board, info: BoardInfo):
    """Raise TargetMismatchError unless the artifact's library can run on this board."""
    t = artifact.target
    lib_arch = library_arch(artifact.library_path)
    if lib_arch and info.arch and lib_arch != info.arch:
        raise TargetMismatchError(
            f"artifact built for {lib_arch} (target {t['name']}) but {board.describe()} is {info.arch} "
            f"({info.triple}); compile for the board's target, or pick a board key for {lib_arch}")
    # the artifact's LLVM features (derived from its tvm_target) against the board CPU's, by LLVM's names
    if not (info.triple and info.cpu) or not t.get("cpu_features"):
        return
    feats = cpu_features(info.triple, info.cpu)
    if feats is None:
        return
    missing = list(to_cpuinfo([f for f in t["cpu_features"] if f not in feats], triple_arch(info.triple)))
    if missing:
        raise TargetMismatchError(
            f"artifact built for target {t['name']} needs CPU features {missing}, which board {board.name} "
            f"({'key ' + board.key + ', ' if board.key else ''}CPU {info.cpu}) lacks; compile for a target that "
            "CPU has (see 'qcompile targets')")


# ----------------------------------------------------------------------------- one board

def _last_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _is_remote_exception(err: BaseException) -> bool:
    """True if the board ran the call and raised (as opposed to the connection breaking)."""
    from tvm.error import RPCError

    return isinstance(err, RPCError) and "Error caught from RPC call" in str(err)


def classify_failure(err: BaseException, board: Board, step: str, session_timeout: float) -> RemoteError:
    """Turn what TVM raised during `step` into a one-line RemoteError naming the board."""
    from tvm.error import RPCSessionTimeoutError

    if isinstance(err, RemoteError):
        return err
    if isinstance(err, RPCSessionTimeoutError) or "RPCSessionTimeoutError" in str(err):
        return SessionTimeoutError(
            f"{board.describe()}: the {session_timeout:g} s RPC session expired during {step}; "
            "raise --session-timeout or lower --repeat")
    if _is_remote_exception(err):
        return RemoteError(f"{board.describe()} failed during {step}: {_last_line(err)}")
    return BoardLostError(f"{board.describe()} dropped the connection during {step} ({_last_line(err)}); "
                          "it died or was stopped")


@dataclass
class RunOptions:
    """How to measure: the same meaning as local `qcompile bench`."""

    threads: int = 1
    warmup: int = 10
    repeat: int = 100
    session_timeout: float = DEFAULT_SESSION_TIMEOUT_S
    inputs: dict | None = None

    def check(self):
        if self.repeat < 1:
            raise InputError(f"--repeat must be >= 1, got {self.repeat}")
        if self.threads < 0:
            raise InputError(f"--threads must be >= 0, got {self.threads}")
        if self.session_timeout <= 0:
            raise ConfigError(f"--session-timeout must be > 0, got {self.session_timeout:g}")


def bench_inputs(artifact, inputs=None) -> list[np.ndarray]:
    """One batch of inputs in signature order (seeded random data by default), validated."""
    if inputs is None:
        from ..model import Model

        inputs = Model(None, artifact.inputs, artifact.outputs).random_inputs()
    arrays = artifact.check_inputs(inputs)
    if any(a.shape != s.shape for a, s in zip(arrays, artifact.inputs)):
        raise InputError("bench inputs must have exactly the model's input shapes (one batch)")
    return [np.ascontiguousarray(a) for a in arrays]


def measure_on_board(artifact, board: Board, opts: RunOptions, progress=None, before_release=None) -> dict:
    """Upload, load and time the artifact on one board; the result has the local bench keys plus board info.

    `progress` is a tqdm bar (or None), advanced as timed runs come back. `before_release` is
    called after the timed runs, while the session (and so the board) is still held.
    """
    import tvm
    from tvm import relax

    arrays = bench_inputs(artifact, opts.inputs)
    step = "connecting"
    remote = board.connect(opts.session_timeout)
    try:
        step = "querying the board"
        info = query_board(remote)
        check_board_target(artifact, board, info)
        lib_name = os.path.basename(artifact.library_path)
        step = f"uploading {lib_name}"
        remote.upload(artifact.library_path, lib_name)
        step = f"loading {lib_name}"
        rlib = _load_remote_library(remote, artifact, board, info, lib_name)
        step = "setting up the Relax VM"
        dev = remote.cpu()
        remote.get_function("runtime.config_threadpool")(1, int(opts.threads))
        vm = relax.VirtualMachine(rlib, dev)
        vm.set_input("main", *[tvm.runtime.tensor(a, dev) for a in arrays])
        step = "the first run"
        _first_run(vm, artifact, board, lib_name)
        if opts.warmup > 0:
            step = "warmup"
            vm.time_evaluator("invoke_stateful", dev, number=1, repeat=opts.warmup)("main")
        step = "the timed runs"
        times = _timed_runs(vm, dev, opts.repeat, progress)
        if before_release is not None:
            before_release()
    except Exception as err:  # noqa: BLE001 - every TVM failure becomes a one-line RemoteError
        failure = classify_failure(err, board, step, opts.session_timeout)
    else:
        failure = None
    finally:
        # Dropping the last references closes the session; the server then frees the board.
        # (set to None, not just left: a traceback would keep this frame's locals alive)
        rlib = vm = dev = None  # noqa: F841
        remote = None  # noqa: F841
        # TVM objects can also sit in reference cycles (frames of caught errors, the VM's closures):
        # collect them now, so the board is free for the next session instead of whenever gc runs.
        gc.collect()
    if failure is not None:
        # Raised without the TVM exception and tracebacks behind it: their frames hold the session,
        # and an error kept by the caller (RemoteRun.errors) would keep the board busy.
        failure.__context__ = failure.__cause__ = None
        raise failure.with_traceback(None)
    result = stats_ms(times)
    result.update({"repeat": opts.repeat, "warmup": opts.warmup, "threads": opts.threads,
                   "target": artifact.target_name})
    result.update(board_fields(artifact, board, info))
    return result


def _first_run(vm, artifact, board: Board, lib_name: str):
    """Run main once, untimed; a session that dies here was killed by the library, not by the board."""
    try:
        vm.invoke_stateful("main")
    except Exception as err:  # noqa: BLE001
        if _is_remote_exception(err):
            raise
        # An illegal instruction (CPU features the board lacks) is the usual cause; retrying on
        # another board would crash that one too.
        flags = list(artifact.target.get("requires_cpu_flags") or [])
        needs = f", needs CPU features {flags}" if flags else ""
        raise RemoteLoadError(
            f"{board.describe()} crashed the first time it ran {lib_name} ({_last_line(err)}); the artifact "
            f"(target {artifact.target_name}{needs}) probably uses instructions the board lacks. A crashed TVM "
            "server stops serving: restart it") from None


def _timed_runs(vm, dev, repeat: int, progress=None) -> list[float]:
    """`repeat` timed calls of main (seconds each), fetched in PROGRESS_CHUNKS remote calls.

    One time_evaluator call per chunk: one network round trip per chunk, not per run, and a
    dead board is noticed within a chunk.
    """
    times: list[float] = []
    chunk = max(1, -(-repeat // PROGRESS_CHUNKS))
    timers = {}
    while len(times) < repeat:
        n = min(chunk, repeat - len(times))
        if n not in timers:
            timers[n] = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=n)
        times.extend(timers[n]("main").results)
        if progress is not None:
            progress.update(n)
    return times


def _load_remote_library(remote, artifact, board: Board, info: BoardInfo, lib_name: str):
    """remote.load_module, with its failures explained (the dlopen messages are misleading)."""
    try:
        return remote.load_module(lib_name)
    except Exception as err:  # noqa: BLE001
        if not _is_remote_exception(err):
            # The session died inside dlopen: the library crashed it (truncated file -> SIGBUS, ...).
            # Not retried on another board: it would crash that one too.
            raise RemoteLoadError(f"{board.describe()} crashed while loading {lib_name} of {artifact.path} "
                                  f"({_last_line(err)}); the library is likely corrupt, recompile it. A crashed "
                                  "TVM server stops serving: restart it") from None
        msg = _last_line(err)
        if _rejected_as_foreign(msg, lib_name):
            # glibc says "No such file or directory" (or "wrong ELF class") for a library built
            # for another machine; a board without LLVM could not tell us its architecture first.
            lib_arch = library_arch(artifact.library_path) or "another machine"
            raise TargetMismatchError(
                f"{board.describe()} rejected {lib_name} as a binary for another machine: the artifact is built for "
                f"{lib_arch} (target {artifact.target_name}), which the board{' (' + info.arch + ')' if info.arch else ''} "
                "is not; compile for the board's target") from None
        raise RemoteLoadError(f"{board.describe()} could not load {lib_name} of {artifact.path}: {msg}") from None


def _rejected_as_foreign(dlopen_message: str, lib_name: str) -> bool:
    """True when dlopen refused the uploaded file itself (not a dependency) as not loadable on this machine."""
    import re

    own = re.search(r"(\S*/" + re.escape(lib_name) + r"): (cannot open shared object file|wrong ELF class|"
                    r"invalid ELF header|ELF file)", dlopen_message)
    return own is not None


def board_fields(artifact, board: Board, info: BoardInfo) -> dict:
    """The keys a remote result adds to local bench's: where it ran, and what was measured."""
    return {"rpc_key": board.key, "board": board.name, "tracker": str(board.tracker) if board.tracker else None,
            "board_triple": info.triple, "board_cpu": info.cpu, "emulated": is_emulated_key(board.key),
            "model": model_name(artifact), "precision": precision_of(artifact)}


def is_emulated_key(key: str) -> bool:
    """True for a tracker key served by an emulated board (its timings are not performance): the
    boards qcompile builds (qcompile.runtime.boards) register under keys ending in '-qemu'."""
    return bool(key) and key.endswith("-qemu")


def model_name(artifact) -> str:
    src = (artifact.metadata.get("model") or {}).get("source") or artifact.path or "model"
    return os.path.splitext(os.path.basename(str(src)))[0]


def precision_of(artifact) -> str:
    """'fp32' for a float artifact, else the qconfig precision ('int8', 'int16')."""
    q = artifact.metadata.get("quantization")
    if not q:
        return "fp32"
    return str((q.get("qconfig") or {}).get("precision") or "int")


# ----------------------------------------------------------------------------- several boards, retries

@dataclass
class RemoteRun:
    """What a multi-board run produced: results of boards that finished, and one error per slot that did not."""

    results: list[dict] = field(default_factory=list)
    errors: list[RemoteError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self, artifact, key: str, tracker: Endpoint | None) -> dict:
        return {"rpc_key": key, "tracker": str(tracker) if tracker else None, "target": artifact.target_name,
                "model": model_name(artifact), "precision": precision_of(artifact), "boards": self.results,
                "failed": [{"error": str(e), "kind": type(e).__name__} for e in self.errors]}


class _Rendezvous:
    """Boards measured in parallel hold their session until every slot has got a board (or given up).

    Otherwise a fast slot would release its board back to the tracker, and a slower slot could
    be handed the same board again and measure it twice.
    """

    def __init__(self, n: int):
        self._left = n
        self._cond = threading.Condition()

    def arrived(self):
        with self._cond:
            self._left -= 1
            self._cond.notify_all()

    def wait(self, timeout: float):
        with self._cond:
            self._cond.wait_for(lambda: self._left <= 0, timeout)


def bench_remote(artifact, *, tracker: Endpoint | None = None, key: str = "", direct: list[Endpoint] = (),
                 boards: int = 1, retries: int = 0, timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
                 opts: RunOptions | None = None, progress: bool = False, log=None) -> RemoteRun:
    """Measure `artifact` on up to `boards` boards of `key` from `tracker` in parallel, or on `direct` servers.

    A board that drops its connection is replaced by another board of the same key, up to
    `retries` times per slot. Never raises for a board's failure: see RemoteRun.errors.
    """
    opts = opts or RunOptions()
    opts.check()
    log = log or (lambda msg: None)
    if artifact.library_path is None or not os.path.isfile(artifact.library_path):
        raise RemoteError("remote bench needs an artifact folder with its library (qcompile compile ... -o DIR)")
    if boards < 1:
        raise ConfigError(f"--boards must be >= 1, got {boards}")
    if retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {retries}")
    bench_inputs(artifact, opts.inputs)  # input errors are the user's, before any board is touched
    notes: list[str] = []
    if direct:
        slots = [_DirectSlot(direct_board(ep, key)) for ep in direct]
    elif tracker is not None:
        with Tracker(tracker) as t:
            have = t.boards()
        total = have.get(key, {}).get("total", 0)
        n = max(1, min(boards, total))
        if 0 < total < boards:
            notes.append(f"only {total} board(s) with key '{key}' are registered at {tracker}; measuring {total}")
            log(notes[-1])
        slots = [_TrackerSlot(tracker, key, timeout, retries, log) for _ in range(n)]
    else:
        raise ConfigError("give --rpc-tracker HOST:PORT with --rpc-key KEY, or --rpc HOST:PORT")
    run = _run_slots(artifact, slots, opts, progress, budget=(retries + 1) * (timeout + opts.session_timeout) + 30)
    run.notes[:0] = notes
    return run


class _TrackerSlot:
    """One parallel measurement through the tracker, moving to another board when one is lost."""

    def __init__(self, tracker: Endpoint, key: str, timeout: float, retries: int, log):
        self.tracker, self.key, self.timeout, self.retries, self.log = tracker, key, timeout, retries, log
        self.label = key

    def run(self, artifact, opts, rendezvous: _Rendezvous, bar) -> dict:
        lost: list[str] = []
        for attempt in range(self.retries + 1):
            try:
                with Tracker(self.tracker) as t:
                    board = t.request(self.key, self.timeout)
            except NoBoardError as err:
                if lost:
                    raise BoardLostError(f"{lost[-1]}; retry: {err}") from None
                raise
            finally:
                if attempt == 0:
                    rendezvous.arrived()
            if bar is not None:
                bar.set_description(board.name)
                bar.reset()
            try:
                result = measure_on_board(artifact, board, opts, bar,
                                          before_release=lambda: rendezvous.wait(self.timeout + CONNECT_TIMEOUT_S))
            except BoardLostError as err:
                lost.append(str(err))
                if attempt == self.retries:
                    hint = "" if self.retries else f"; use --retries N to move to another board with key '{self.key}'"
                    raise BoardLostError(f"{err}{hint}") from None
                self.log(f"{err}; retrying on another board with key '{self.key}' "
                         f"(retry {attempt + 1} of {self.retries})")
                continue
            result["lost_boards"] = lost
            return result
        raise AssertionError("unreachable")


class _DirectSlot:
    """One server addressed with --rpc: no tracker, so nothing to retry on."""

    def __init__(self, board: Board):
        self.board = board
        self.label = board.name

    def run(self, artifact, opts, rendezvous: _Rendezvous, bar) -> dict:
        rendezvous.arrived()
        result = measure_on_board(artifact, self.board, opts, bar, before_release=lambda: rendezvous.wait(60))
        result["lost_boards"] = []
        return result


def _run_slots(artifact, slots, opts: RunOptions, progress: bool, budget: float) -> RemoteRun:
    """Run every slot in its own thread; a slot silent past its session timeout is reported, not waited for."""
    run = RemoteRun()
    rendezvous = _Rendezvous(len(slots))
    outcomes: list = [None] * len(slots)
    bars = _progress_bars(slots, opts.repeat) if progress else [None] * len(slots)

    def work(i, slot):
        try:
            outcomes[i] = slot.run(artifact, opts, rendezvous, bars[i])
        except RemoteError as err:
            outcomes[i] = err
        except Exception as err:  # noqa: BLE001 - keep other boards' results; report this one
            outcomes[i] = RemoteError(f"{slot.label}: unexpected failure: {_last_line(err)}")

    # daemon threads: a board that never answers must not keep the process alive at exit
    threads = [threading.Thread(target=work, args=(i, s), daemon=True, name=f"rpc-board-{i}")
               for i, s in enumerate(slots)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + budget
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    for bar in bars:
        if bar is not None:
            bar.close()
    for i, (slot, out) in enumerate(zip(slots, outcomes)):
        if isinstance(out, dict):
            run.results.append(out)
        elif isinstance(out, RemoteError):
            run.errors.append(out)
        else:
            run.errors.append(SessionTimeoutError(
                f"{slot.label}: no answer from the board within the {opts.session_timeout:g} s session timeout"))
    return run


def _progress_bars(slots, total: int):
    from tqdm import tqdm

    return [tqdm(total=total, desc=s.label, unit="run", position=i, leave=False, dynamic_ncols=True,
                 disable=None)  # None: no bars when stderr is not a terminal (logs, CI)
            for i, s in enumerate(slots)]


# ----------------------------------------------------------------------------- tuning

def make_rpc_runner(tracker, key: str, *, session_timeout: float = 60.0, number: int = 3, repeat: int = 1,
                    min_repeat_ms: int = 100, enable_cpu_cache_flush: bool = False, max_workers: int | None = None,
                    threads: int | None = None, wait: float = 0.0, measure_timeout: float | None = None):
    """A MetaSchedule runner that measures tuning candidates on the tracker's boards of `key`.

    It measures exactly as MetaSchedule's RPCRunner does (same session, upload, random inputs
    and time_evaluator: ``rpc_runner._worker_func``), with two differences that matter on boards:

    - every measurement has a deadline (`measure_timeout`, default `session_timeout` + 120 s:
      waiting for a free board, connecting, the run). RPCRunner's worker pool has none, and a
      tracker request waits for a board forever, so a dead board would stall tuning for good;
      here the candidate is recorded as a timed-out run and tuning goes on.
    - each measurement's session is released at once: the worker collects garbage after every
      candidate and passes a failure back as a fresh exception. (An exception's traceback holds
      the frames that hold the session; TVM's pool worker keeps the last result until its next
      job, so after a failed candidate the board stayed taken and the next request waited for
      the server's session timeout.)

    Candidates are still built locally (the builder); only the timing runs on the boards, one
    board per worker. Checks up front that the tracker answers and has a board with `key`
    (waiting up to `wait` s for one to register), because MetaSchedule would otherwise record
    every candidate as a failed run and keep going. `max_workers` defaults to the number of
    boards with `key`, so a farm of boards measures in parallel. `threads` pins the board's TVM
    thread pool for each measurement (None: the board's default, all cores), as `qcompile bench
    --threads` does.

    Note: MetaSchedule's default builder exports candidates as a .tar of object files, which the
    board links when it loads them (it needs gcc). ``qcompile tune`` links them here instead for a
    target with a cross compiler (qcompile.tune.tuner.candidate_exporter).
    """
    import functools

    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, RPCConfig

    ep = tracker if isinstance(tracker, Endpoint) else parse_endpoint(tracker)
    deadline = time.monotonic() + wait
    while True:
        with Tracker(ep) as t:
            have = t.boards()
        if have.get(key, {}).get("total", 0) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    total = have.get(key, {}).get("total", 0)
    if not total:
        raise NoBoardError(f"tracker {ep} has no board with key '{key}' to tune on (it has: {describe_keys(have)})")
    if measure_timeout is None:
        measure_timeout = float(session_timeout) + 120.0
    if measure_timeout <= 0:
        raise ConfigError(f"measure_timeout must be > 0, got {measure_timeout:g}")
    return _board_runner_class()(
        rpc_config=RPCConfig(tracker_host=ep.host, tracker_port=ep.port, tracker_key=key,
                             session_priority=1, session_timeout_sec=int(session_timeout)),
        evaluator_config=EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                         enable_cpu_cache_flush=enable_cpu_cache_flush),
        f_create_session=functools.partial(create_session_with_threads, threads=threads) if threads else None,
        max_workers=max_workers or total,
        timeout_s=measure_timeout,
    )


_BOARD_RUNNER = None


def _board_runner_class():
    """Defined lazily: the base class needs tvm."""
    global _BOARD_RUNNER
    if _BOARD_RUNNER is not None:
        return _BOARD_RUNNER
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner.rpc_runner import RPCRunnerFuture
    from tvm.support.popen_pool import PopenPoolExecutor

    @derived_object
    class BoardRunner(PyRunner):
        """MetaSchedule's RPCRunner measurement, with a deadline per candidate and prompt release."""

        def __init__(self, rpc_config, evaluator_config, f_create_session, max_workers: int, timeout_s: float,
                     alloc_repeat: int = 1):
            super().__init__()
            self.rpc_config, self.evaluator_config = rpc_config, evaluator_config
            self.f_create_session, self.alloc_repeat, self.timeout_s = f_create_session, alloc_repeat, timeout_s
            # the pool kills a worker whose job outlives timeout_s; its future then raises TimeoutError,
            # which RPCRunnerFuture reports as "RPCRunner: Timeout" (a failed run, not a hang)
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_s)

        def run(self, runner_inputs):
            return [RPCRunnerFuture(
                future=self.pool.submit(measure_candidate, self.f_create_session, self.rpc_config,
                                        self.evaluator_config, self.alloc_repeat, str(ri.artifact_path),
                                        str(ri.device_type), tuple(a.as_json() for a in ri.args_info)),
                timeout_sec=self.timeout_s) for ri in runner_inputs]

    _BOARD_RUNNER = BoardRunner
    return _BOARD_RUNNER


def measure_candidate(f_create_session, rpc_config, evaluator_config, alloc_repeat: int, artifact_path: str,
                      device_type: str, args_info) -> list[float]:
    """Time one candidate on a board (in a runner worker process), then release the session.

    A failure comes back as a new RuntimeError carrying the message only: the original's
    traceback would keep the session (and so the board) alive in this worker.
    """
    from tvm.s_tir.meta_schedule.runner import rpc_runner

    error = None
    try:
        return rpc_runner._worker_func(f_create_session, None, None, None, None, rpc_config, evaluator_config,
                                       alloc_repeat, artifact_path, device_type, args_info)
    except Exception as err:  # noqa: BLE001 - TVM raises many kinds; the message is what MetaSchedule keeps
        error = f"{type(err).__name__}: {err}"
    finally:
        gc.collect()  # the session closes when its last reference goes, cycles included
    raise RuntimeError(error)


def create_session_with_threads(rpc_config, threads: int):
    """MetaSchedule's default session, with the board's TVM thread pool pinned to `threads`.

    Runs in the runner's worker process (a module-level function, so it pickles).
    """
    session = rpc_config.connect_server()
    session.get_function("runtime.config_threadpool")(1, int(threads))
    return session
