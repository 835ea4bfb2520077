"""Real TVM RPC services for tests: a tracker and servers on 127.0.0.1, as subprocesses on free ports.

Every process is started in its own session (process group), because a TVM RPC server is
three processes deep (the `python -m tvm.exec.rpc_server` main, its PopenWorker that listens,
and one forked child per session); killing the group is the only way to stop all of them,
which is also how the tests simulate a board dying.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from qcompile.runtime.rpc import Endpoint, Tracker

STARTUP_TIMEOUT_S = 240  # importing TVM takes 5-30 s per process on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """One subprocess (and its process group), its log, and how to stop it."""

    def __init__(self, name: str, argv: list[str], log_dir: str, port: int, env: dict | None = None):
        self.name, self.port = name, port
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=log_dir, env={**os.environ, **(env or {})})

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port)

    @property
    def address(self) -> str:
        return str(self.endpoint)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def kill(self, sig=signal.SIGKILL):
        """Kill the whole process group (main, listener, session children)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self):
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL)  # the listener and session children outlive the main process otherwise
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


class RPCFarm:
    """A tracker and servers started for a test module; `stop()` ends every process it started."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.services: list[Service] = []
        self.tracker: Service | None = None

    def start_tracker(self) -> Service:
        port = free_port()
        self.tracker = self._start("tracker", ["-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                               "--port", str(port), "--port-end", str(port + 1)], port)
        return self.tracker

    def start_server(self, key: str, name: str | None = None, tracked: bool = True,
                     via_qcompile: bool = False, runtime_only: bool = False) -> Service:
        """A server registered with the tracker under `key`, or (tracked=False) one clients connect to directly.

        runtime_only: load only libtvm_runtime (TVM_USE_RUNTIME_LIB=1), like a minimal board: no LLVM,
        so the board cannot report its triple.
        """
        port = free_port()
        if via_qcompile:  # the `qcompile rpc server` wrapper, which execs the same TVM module
            argv = ["-m", "qcompile.cli", "rpc", "server", "--port", str(port), "--port-end", str(port + 1)]
        else:
            argv = ["-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                    "--port-end", str(port + 1)]
        if tracked:
            argv += ["--tracker", self.tracker.address]
        argv += ["--key", key]
        return self._start(name or f"server-{key}-{port}", argv, port,
                           {"TVM_USE_RUNTIME_LIB": "1"} if runtime_only else None)

    def _start(self, name, argv, port, env=None) -> Service:
        svc = Service(name, [sys.executable, *argv], self.log_dir, port, env)
        self.services.append(svc)
        return svc

    # ------------------------------------------------------------------ readiness
    def wait_tracker(self, deadline: float):
        while True:
            self._check_alive()
            try:
                Tracker(self.tracker.endpoint, connect_timeout=1).close()
                return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            self._check_deadline(deadline, "the tracker to answer")
            time.sleep(0.3)

    def wait_registered(self, counts: dict[str, int], deadline: float):
        """Until the tracker lists at least counts[key] free servers for every key."""
        while True:
            self._check_alive()
            try:
                with Tracker(self.tracker.endpoint, connect_timeout=1) as t:
                    boards = t.boards()
                if all(boards.get(k, {}).get("free", 0) >= n for k, n in counts.items()):
                    return boards
            except Exception:  # noqa: BLE001 - tracker still starting
                boards = None
            self._check_deadline(deadline, f"servers to register {counts} (tracker has {boards})")
            time.sleep(0.3)

    def wait_listening(self, svc: Service, deadline: float):
        while True:
            self._check_alive()
            try:
                with socket.create_connection(("127.0.0.1", svc.port), timeout=1):
                    return
            except OSError:
                pass
            self._check_deadline(deadline, f"{svc.name} to listen on {svc.port}")
            time.sleep(0.3)

    def _check_alive(self):
        dead = [s for s in self.services if not s.alive() and not getattr(s, "killed_on_purpose", False)]
        if dead:
            raise RuntimeError("RPC service(s) exited during startup:\n" +
                               "\n".join(f"--- {s.name}:\n{s.log()[-3000:]}" for s in dead))

    def _check_deadline(self, deadline: float, what: str):
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {s.name}:\n{s.log()[-1500:]}" for s in self.services)
            raise TimeoutError(f"timed out waiting for {what}\n{logs}")

    def stop(self):
        for svc in self.services:
            svc.stop()


def wait_for_log(svc: Service, text: str, timeout: float = 120) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in svc.log():
            return True
        time.sleep(0.05)
    return False
