"""An emulated aarch64 board: arm64 Debian + TVM's aarch64 wheels under qemu-user.

Why: the ARM targets cross-compile on x86, and the only honest check that such a library
works is to run it on an aarch64 CPU through the same RPC path a real board uses. This
builds that CPU on any x86 Linux machine, with no binfmt_misc, no VM image and no root
filesystem mounts:

    DIR/rootfs/     arm64 Debian (minbase + python3), from debootstrap's first stage;
                    the .debs are unpacked with ``dpkg -x`` because the second stage would
                    have to execute arm64 binaries, which needs binfmt_misc
    DIR/site/       aarch64 wheels (apache-tvm, apache-tvm-ffi, numpy, cloudpickle, psutil),
                    installed with ``pip install --target --platform manylinux_2_28_aarch64``,
                    plus a sitecustomize.py (see below)
    DIR/bin/python  a shell script: ``qemu-aarch64-static -L DIR/rootfs DIR/rootfs/usr/bin/python3.11``
    DIR/board.json  what was built, and how long it took
    DIR/logs/       setup and server logs

Pitfall handled here: TVM's RPC server starts its workers with ``sys.executable``. Under
qemu-user that is the arm64 python binary, which the host kernel cannot exec ("Exec format
error"). The board's sitecustomize.py points ``sys.executable`` at DIR/bin/python, so every
child python goes through qemu again.

Every step is idempotent: a finished step is recorded in board.json and skipped next time,
a half-finished one is redone from scratch (steps build in a temporary sibling and rename).

Host needs (Debian): qemu-user-static, debootstrap (with wget and debian-archive-keyring; and
root, for debootstrap), dpkg, pip, network access to a Debian mirror and to PyPI. No binfmt_misc:
qemu is always invoked explicitly (the launcher), never through the kernel's binfmt handlers.
Every step that downloads has a deadline (SETUP_TIMEOUT_S), so a stalled mirror fails the build
instead of hanging it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import time

from ...errors import QCompileError, RemoteError
from ..rpc import Endpoint, Tracker

DEFAULT_KEY = "aarch64-qemu"
DEFAULT_SUITE = "bookworm"          # Debian 12: python3.11, the version TVM 0.27's wheels are built for
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PYTHON = "/usr/bin/python3.11"
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")
# Debian packages beyond minbase. python3 pulls in the interpreter and stdlib; libstdc++6 and
# libgcc-s1 are what libtvm_runtime.so links against (minbase has them via apt; named for clarity).
ROOTFS_PACKAGES = ("python3", "libstdc++6", "libgcc-s1")
# Python packages on the board: the runtime side of TVM's RPC server, nothing else.
# cloudpickle: tvm.exec.popen_worker; psutil: the server cleans up timed-out sessions with it.
EXTRA_WHEELS = ("cloudpickle", "psutil")
STATE_FILE = "board.json"
# The RPC server only needs TVM's runtime (load a .so, run the Relax VM, time it). Loading the
# 240 MB compiler library too costs ~20-30 s per emulated python start, and the server starts two.
RUNTIME_ONLY_ENV = {"TVM_USE_RUNTIME_LIB": "1"}
# Deadlines of the setup steps (s). Measured here: debootstrap ~80-130 s, wheels ~30-80 s (~380 MB).
SETUP_TIMEOUT_S = {"debootstrap": 1800, "dpkg": 300, "pip": 1800}


class BoardError(QCompileError):
    """Building or starting a board failed; the message says which step and how to fix it."""


def board_requirements() -> list[str]:
    """The pip requirements of the board: the host's own TVM versions (the RPC protocol must match)."""
    def pinned(dist, fallback):
        try:
            return f"{dist}=={md.version(dist)}"
        except md.PackageNotFoundError:
            return f"{dist}=={fallback}"

    return [pinned("apache-tvm", "0.27.0.post1"), pinned("apache-tvm-ffi", "0.1.14.post1"),
            pinned("numpy", "2.4.6"), *EXTRA_WHEELS]


def default_dir() -> str:
    """$QCOMPILE_BOARD_DIR/qemu-aarch64, else $XDG_CACHE_HOME (default ~/.cache)/qcompile/boards/qemu-aarch64."""
    base = os.environ.get("QCOMPILE_BOARD_DIR")
    if not base:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(cache, "qcompile", "boards")
    return os.path.join(base, "qemu-aarch64")


class QemuAarch64Board:
    """Build (``setup``) and run (``start_server``, ``python``) an emulated aarch64 board in `dir`."""

    name = "qemu-aarch64"

    def __init__(self, dir: str | None = None, *, suite: str = DEFAULT_SUITE, mirror: str = DEFAULT_MIRROR,
                 cpu: str = "max", qemu: str = "qemu-aarch64-static", log=None):
        self.dir = os.path.abspath(dir or default_dir())
        self.suite, self.mirror, self.cpu = suite, mirror, cpu
        self.qemu_name = qemu
        self.log = log or (lambda msg: print(f"[board] {msg}", file=sys.stderr, flush=True))
        self.rootfs = os.path.join(self.dir, "rootfs")
        self.site = os.path.join(self.dir, "site")
        self.launcher = os.path.join(self.dir, "bin", "python")
        self.logs = os.path.join(self.dir, "logs")

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> str:
        return os.path.join(self.dir, STATE_FILE)

    def state(self) -> dict:
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return {}

    def _save_state(self, **updates):
        state = self.state()
        state.update(updates)
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, self.state_path)

    def is_ready(self) -> bool:
        """True when rootfs, wheels and launcher are built for the current requirements."""
        s = self.state()
        return (s.get("rootfs", {}).get("suite") == self.suite and os.path.isfile(self.rootfs + PYTHON)
                and s.get("site", {}).get("requirements") == board_requirements()
                and os.path.isdir(os.path.join(self.site, "tvm")) and os.path.isfile(self.launcher))

    # ------------------------------------------------------------------ setup
    def setup(self, check: bool | None = None) -> dict:
        """Build whatever is missing (rootfs, wheels, launcher) and check `import tvm` works.

        check -- run the `import tvm` check: None (default) only when not yet recorded.

        Returns board.json's contents: versions, step durations (s), sizes (MB).
        """
        os.makedirs(self.logs, exist_ok=True)
        qemu = self.qemu_path()
        with _locked(os.path.join(self.dir, ".setup.lock")):  # two setups of one DIR: the second waits
            self._build_rootfs()
            self._install_wheels()
            self._write_launcher(qemu)
            self._compile_bytecode()
            if check or (check is None and not self.state().get("check")):
                self._check_python()
            sizes = {"rootfs_mb": _du_mb(self.rootfs), "site_mb": _du_mb(self.site)}
            sizes["total_mb"] = round(sizes["rootfs_mb"] + sizes["site_mb"], 1)
            self._save_state(sizes=sizes)
        return self.state()

    def qemu_path(self) -> str:
        path = shutil.which(self.qemu_name)
        if path is None and self.qemu_name == "qemu-aarch64-static":
            # newer Debian/Ubuntu qemu-user packages ship the static binary as plain qemu-aarch64;
            # it is run explicitly, so a dynamically linked one would do as well
            path = shutil.which("qemu-aarch64")
        if path is None:
            raise BoardError(f"'{self.qemu_name}' not found on PATH; install it (Debian: apt-get install qemu-user-static)")
        return path

    def _build_rootfs(self):
        if self.state().get("rootfs", {}).get("suite") == self.suite and os.path.isfile(self.rootfs + PYTHON):
            return
        debootstrap = shutil.which("debootstrap") or next(
            (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.path.isfile(p)), None)
        if debootstrap is None:
            raise BoardError("'debootstrap' not found; install it (Debian: apt-get install debootstrap)")
        if os.geteuid() != 0:
            raise BoardError("building the board's arm64 root filesystem runs debootstrap, which needs root "
                             "(run 'qcompile board qemu-aarch64' once as root, or under fakeroot)")
        if shutil.which("dpkg") is None:
            raise BoardError("'dpkg' not found; the board's root filesystem is unpacked with 'dpkg -x' (Debian/Ubuntu hosts)")
        start = time.perf_counter()
        tmp = self.rootfs + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.log(f"debootstrap (first stage) arm64 {self.suite} from {self.mirror} into {tmp} ...")
        self._run([debootstrap, "--foreign", "--arch=arm64", "--variant=minbase",
                   "--include=" + ",".join(ROOTFS_PACKAGES), self.suite, tmp, self.mirror],
                  "debootstrap", hint="check that the mirror is reachable (--mirror) and the suite exists",
                  timeout=SETUP_TIMEOUT_S["debootstrap"])
        archives = os.path.join(tmp, "var", "cache", "apt", "archives")
        debs = sorted(f for f in os.listdir(archives) if f.endswith(".deb"))
        if not any(f.startswith("python3.11-minimal_") for f in debs):
            raise BoardError(f"debootstrap did not fetch python3.11 into {archives}; is '{self.suite}' a Debian 12 suite?")
        self.log(f"unpacking {len(debs)} .debs with dpkg -x (the second stage needs binfmt_misc) ...")
        for deb in debs:
            self._run(["dpkg", "-x", os.path.join(archives, deb), tmp], f"dpkg -x {deb}", timeout=SETUP_TIMEOUT_S["dpkg"])
        for leftover in (archives, os.path.join(tmp, "debootstrap")):
            shutil.rmtree(leftover, ignore_errors=True)
        os.makedirs(archives, exist_ok=True)
        if not os.path.isfile(tmp + PYTHON):
            raise BoardError(f"{tmp + PYTHON} missing after unpacking; see {self.logs}")
        shutil.rmtree(self.rootfs, ignore_errors=True)
        os.rename(tmp, self.rootfs)
        seconds = round(time.perf_counter() - start, 1)
        self._save_state(rootfs={"suite": self.suite, "mirror": self.mirror, "packages": list(ROOTFS_PACKAGES),
                                 "num_debs": len(debs), "seconds": seconds}, bytecode={}, check={})
        self.log(f"rootfs ready in {seconds} s")

    def _install_wheels(self):
        reqs = board_requirements()
        if self.state().get("site", {}).get("requirements") == reqs and os.path.isdir(os.path.join(self.site, "tvm")):
            self._write_sitecustomize()
            return
        start = time.perf_counter()
        tmp = self.site + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        platforms = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
        self.log(f"pip: aarch64 wheels {' '.join(reqs)} ...")
        # --no-cache-dir: these wheels are needed once, here; pip's cache would keep a second ~380 MB copy
        self._run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-cache-dir",
                   "--timeout", "60", "--target", tmp, *platforms, "--python-version", "3.11",
                   "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:", *reqs],
                  "pip install (aarch64 wheels)", hint="PyPI must be reachable; the wheels are ~380 MB",
                  timeout=SETUP_TIMEOUT_S["pip"])
        shutil.rmtree(self.site, ignore_errors=True)
        os.rename(tmp, self.site)
        self._write_sitecustomize()
        seconds = round(time.perf_counter() - start, 1)
        self._save_state(site={"requirements": reqs, "platforms": list(WHEEL_PLATFORMS), "seconds": seconds}, check={})
        self.log(f"wheels ready in {seconds} s")

    def _write_sitecustomize(self):
        """Make sys.executable the qemu launcher, so children the RPC server spawns can start."""
        text = (
            '"""Written by qcompile (qcompile/runtime/boards/qemu_aarch64.py).\n\n'
            "Under qemu-user, sys.executable is the arm64 python binary; exec'ing it from inside\n"
            "the emulated process fails with 'Exec format error' (no binfmt_misc). TVM's RPC server\n"
            "starts its workers with sys.executable, so point it at the launcher script, which\n"
            'runs python under qemu again."""\n'
            "import os as _os\nimport sys as _sys\n\n"
            "_launcher = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), 'bin', 'python')\n"
            "if _os.path.isfile(_launcher):\n"
            "    _sys.executable = _launcher\n"
            "    _sys._base_executable = _launcher\n")
        _write_if_changed(os.path.join(self.site, "sitecustomize.py"), text)

    def _write_launcher(self, qemu: str):
        text = (
            "#!/bin/sh\n"
            "# Written by qcompile: the emulated board's python (arm64 python3.11 under qemu-user).\n"
            "# Children started via sys.executable come back here (see site/sitecustomize.py).\n"
            f"export PYTHONPATH='{self.site}'\n"
            "export PYTHONNOUSERSITE=1\n"
            "export QEMU_CPU=\"${QEMU_CPU:-max}\"\n"
            f"exec '{qemu}' -L '{self.rootfs}' '{self.rootfs}{PYTHON}' \"$@\"\n")
        os.makedirs(os.path.dirname(self.launcher), exist_ok=True)
        _write_if_changed(self.launcher, text)
        os.chmod(self.launcher, 0o755)

    def _compile_bytecode(self):
        """Byte-compile the board's stdlib once, on the board.

        dpkg -x runs no maintainer scripts, so Debian's py3compile never made the .pyc files;
        without them every emulated python start recompiles what it imports (or, with
        PYTHONDONTWRITEBYTECODE set, does so every time). The wheels were byte-compiled by pip.
        """
        if self.state().get("bytecode", {}).get("done"):
            return
        start = time.perf_counter()
        self.log("byte-compiling the board's python stdlib (on the board, once) ...")
        self._run([self.launcher, "-m", "compileall", "-q", "-j", "0",
                   "-x", "/(test|tests|idlelib|lib2to3|tkinter|turtledemo|ensurepip)/",
                   self.rootfs + "/usr/lib/python3.11", self.rootfs + "/usr/lib/python3/dist-packages"],
                  "compileall on the board", timeout=1800)
        self._save_state(bytecode={"done": True, "seconds": round(time.perf_counter() - start, 1)})

    def _check_python(self):
        """`import tvm` on the board, as a user script does (compiler + runtime) and as the RPC
        server does (TVM_USE_RUNTIME_LIB=1: runtime only, a few times faster emulated).
        Both times are recorded; they are emulated seconds, not real-board seconds."""
        code = ("import platform, time; t = time.perf_counter(); import tvm, numpy; "
                "print(platform.machine(), tvm.__version__, numpy.__version__, round(time.perf_counter() - t, 2))")
        out = self._run([self.launcher, "-c", code], "python on the board (import tvm)", timeout=900).split()
        if not out or out[0] != "aarch64":
            raise BoardError(f"the board's python reports machine {out[:1]}, expected aarch64")
        rt = self._run([self.launcher, "-c", code], "python on the board (import tvm, runtime only)",
                       timeout=900, env=RUNTIME_ONLY_ENV).split()
        self._save_state(check={"machine": out[0], "tvm": out[1], "numpy": out[2],
                                "import_tvm_seconds": float(out[3]), "import_tvm_runtime_only_seconds": float(rt[3])})
        self.log(f"board python: {out[0]}, tvm {out[1]}, numpy {out[2]}; import tvm {out[3]} s, "
                 f"runtime only {rt[3]} s (emulated)")

    # ------------------------------------------------------------------ running
    def python(self, args: list[str], timeout: float | None = 600) -> str:
        """Run the board's python with `args`; returns stdout (raises BoardError on failure)."""
        if not self.is_ready():
            raise BoardError(f"board in {self.dir} is not built; run 'qcompile board qemu-aarch64 --dir {self.dir} --setup-only'")
        return self._run([self.launcher, *args], "python on the board", timeout=timeout)

    def start_server(self, tracker: tuple[str, int], key: str = DEFAULT_KEY, host: str = "127.0.0.1",
                     port: int = 9090, port_end: int | None = None) -> "BoardServer":
        """Start tvm.exec.rpc_server on the board, registered with `tracker` under `key`.

        Returns at once; call ``wait_registered()`` to block until the tracker lists it
        (the server imports TVM's runtime twice, ~10 s each emulated). It takes the first free
        port in [port, port_end) (default: port + 100).
        """
        port_end = port + 100 if port_end is None else port_end
        if not self.is_ready():
            raise BoardError(f"board in {self.dir} is not built; run 'qcompile board qemu-aarch64 --dir {self.dir} --setup-only'")
        self._write_launcher(self.qemu_path())
        os.makedirs(self.logs, exist_ok=True)
        log_path = os.path.join(self.logs, f"rpc_server-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
        cmd = [self.launcher, "-m", "tvm.exec.rpc_server", "--tracker", f"{tracker[0]}:{tracker[1]}", "--key", key,
               "--host", host, "--port", str(port), "--port-end", str(port_end)]
        extra = os.path.join(self.site, "tvm", "lib", "libtvm_runtime_extra.so")
        if os.path.isfile(extra):
            # Runtime-only TVM skips this library, but MetaSchedule's RPC runner needs what it
            # registers (tvm.contrib.random.random_fill_for_measure fills the measured inputs).
            cmd += ["--load-library", extra]
        log = open(log_path, "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **RUNTIME_ONLY_ENV, "QEMU_CPU": self.cpu}, start_new_session=True)  # its own process group: stop() ends its workers too
        log.close()
        self.log(f"rpc server starting under qemu -cpu {self.cpu} (pid {proc.pid}, key {key}, tracker {tracker[0]}:{tracker[1]}); log {log_path}")
        return BoardServer(proc, tracker, key, log_path)

    # ------------------------------------------------------------------ helpers
    def _run(self, cmd: list[str], what: str, hint: str = "", timeout: float | None = None, env=None) -> str:
        os.makedirs(self.logs, exist_ok=True)
        log_path = os.path.join(self.logs, "setup.log")
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                 env={**os.environ, **env} if env else None)
        except FileNotFoundError as err:
            raise BoardError(f"{what}: cannot run {cmd[0]}: {err}") from None
        except subprocess.TimeoutExpired:
            raise BoardError(f"{what} did not finish in {timeout} s: {' '.join(cmd)}") from None
        with open(log_path, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n[exit {res.returncode}]\n{res.stdout[-20000:]}{res.stderr[-20000:]}\n")
        if res.returncode != 0:
            tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
            raise BoardError(f"{what} failed (exit {res.returncode}): {tail}" + (f"; {hint}" if hint else "")
                             + f" (full output in {log_path})")
        return res.stdout


class BoardServer:
    """A running board RPC server (a child process group of ours)."""

    def __init__(self, proc: subprocess.Popen, tracker: tuple[str, int], key: str, log_path: str):
        self.proc, self.tracker, self.key, self.log_path = proc, tracker, key, log_path

    def wait_registered(self, timeout: float = 300.0) -> float:
        """Block until the tracker has a free `key` server; returns the seconds it took."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise BoardError(f"the board's rpc server exited with code {self.proc.returncode}; "
                                 f"last lines: {_tail(self.log_path)} (log: {self.log_path})")
            try:
                with Tracker(Endpoint(*self.tracker)) as t:
                    free = t.boards().get(self.key, {}).get("free", 0)
            except RemoteError:
                free = 0  # the tracker may still be starting
            if free:
                return time.perf_counter() - start
            time.sleep(0.5)
        raise BoardError(f"the board's rpc server did not register key '{self.key}' with the tracker at "
                         f"{self.tracker[0]}:{self.tracker[1]} within {timeout:.0f} s (log: {self.log_path})")

    def stop(self):
        """End the server and the workers it spawned (its own process group)."""
        if self.proc.poll() is None:
            import signal

            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def _locked(path: str):
    import fcntl

    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_if_changed(path: str, text: str):
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)


def _du_mb(path: str) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                try:
                    total += os.lstat(p).st_blocks * 512
                except OSError:
                    pass
    return round(total / 2**20, 1)


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path) as f:
            return " | ".join(f.read().strip().splitlines()[-n:])
    except OSError:
        return ""
