"""Remote benchmarking over real TVM RPC: a tracker and servers on 127.0.0.1, started here.

No mocks: the module starts a real tracker, two servers with key 'x86', two with key 'flaky'
(killed on purpose by the retry test) and one standalone server (through the `qcompile rpc
server` wrapper, runtime-only: a board without LLVM) for direct connections. Every process is stopped at the end, on failure too.
The CLI is called in-process (qcompile.cli.main) to save a TVM import per call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from qcompile import zoo
from qcompile.cli import main as qcompile_main
from qcompile.errors import BoardLostError, NoBoardError, RemoteLoadError, SessionTimeoutError
from qcompile.artifact import Artifact
from qcompile.runtime.bench import benchmark
from qcompile.runtime.rpc import (RunOptions, bench_remote, library_arch, make_rpc_runner, parse_endpoint,
                                  triple_arch)

from rpc_fixtures import STARTUP_TIMEOUT_S, RPCFarm, free_port  # tests/ is on sys.path (rootdir conftest)

LOCAL_KEYS = {"median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "repeat", "warmup", "threads", "target"}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """tracker + x86×2 + flaky×2 (tracked) + one direct, runtime-only server; all stopped at teardown."""
    f = RPCFarm(str(tmp_path_factory.mktemp("rpc-logs")))
    try:
        f.start_tracker()
        f.x86 = [f.start_server("x86", name=f"x86-{i}") for i in range(2)]
        f.flaky = [f.start_server("flaky", name=f"flaky-{i}") for i in range(2)]
        f.direct = f.start_server("solo", name="direct", tracked=False, via_qcompile=True, runtime_only=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        f.wait_tracker(deadline)
        f.wait_registered({"x86": 2, "flaky": 2}, deadline)
        f.wait_listening(f.direct, deadline)
        yield f
    finally:
        f.stop()
    assert not any(s.alive() for s in f.services)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """The bundled digits CNN compiled for this CPU (x86-64)."""
    import qcompile

    out = str(tmp_path_factory.mktemp("art") / "digits")
    qcompile.compile(zoo.DIGITS_MODEL, target="auto", out_dir=out)
    return out


def run_main(capsys, *argv):
    """qcompile's CLI in this process: (exit code, stdout, stderr)."""
    code = qcompile_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tracker_boards(farm, key):
    return {s.address for s in (farm.x86 if key == "x86" else farm.flaky)}


# ----------------------------------------------------------------------------- the happy paths

def test_bench_through_tracker(farm, digits_dir, tmp_path, capsys):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    code, out, err = run_main(capsys, "bench", digits_dir, "--rpc-tracker", farm.tracker.address, "--rpc-key", "x86",
                              "--repeat", 50, "--warmup", 5, "--json", out_json, "--csv", out_csv, "--timeout", 60)
    assert code == 0, err
    r = json.loads(out_json.read_text())
    assert LOCAL_KEYS <= set(r), set(r)
    assert r["rpc_key"] == "x86" and r["board"] in tracker_boards(farm, "x86")
    assert r["repeat"] == 50 and r["threads"] == 1 and r["target"] == Artifact.load(digits_dir).target_name
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"]
    assert r["board_triple"].startswith("x86_64") and r["precision"] == "fp32" and r["model"] == "digits_cnn"
    assert f"board {r['board']}" in out
    assert out_csv.read_text().splitlines()[0].startswith("model,precision,board")


def test_bench_direct_server(farm, digits_dir, tmp_path, capsys):
    out_json = tmp_path / "direct.json"
    code, out, err = run_main(capsys, "bench", digits_dir, "--rpc", farm.direct.address, "--rpc-key", "solo",
                              "--repeat", 30, "--json", out_json)
    assert code == 0, err
    r = json.loads(out_json.read_text())
    assert r["board"] == farm.direct.address and r["tracker"] is None and LOCAL_KEYS <= set(r)
    assert r["board_triple"] is None  # a runtime-only board has no LLVM to ask


def test_direct_server_with_wrong_key_says_so(farm, digits_dir, capsys):
    code, _, err = run_main(capsys, "bench", digits_dir, "--rpc", farm.direct.address, "--rpc-key", "other")
    assert code == 2
    assert f"board {farm.direct.address}" in err and "--rpc-key" in err


def test_two_boards_in_parallel(farm, digits_dir, tmp_path, capsys):
    out_json = tmp_path / "two.json"
    code, out, err = run_main(capsys, "bench", digits_dir, "--rpc-tracker", farm.tracker.address, "--rpc-key", "x86",
                              "--boards", 2, "--repeat", 40, "--json", out_json)
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    boards = [b["board"] for b in doc["boards"]]
    assert sorted(boards) == sorted(tracker_boards(farm, "x86")), boards  # two different boards
    assert doc["failed"] == [] and all(LOCAL_KEYS <= set(b) for b in doc["boards"])


def test_more_boards_than_registered_measures_those_there_are(farm, digits_dir):
    run = bench_remote(Artifact.load(digits_dir), tracker=farm.tracker.endpoint, key="x86", boards=5, timeout=30,
                       opts=RunOptions(repeat=10, warmup=1))
    assert len(run.results) == 2 and not run.errors
    assert "only 2 board(s)" in run.notes[0]


# ----------------------------------------------------------------------------- failures

def test_wrong_key_names_the_keys_the_tracker_has(farm, digits_dir, capsys):
    t0 = time.monotonic()
    code, _, err = run_main(capsys, "bench", digits_dir, "--rpc-tracker", farm.tracker.address, "--rpc-key", "rpi9",
                            "--timeout", 2)
    assert code == 2
    assert time.monotonic() - t0 < 30
    line = err.strip().splitlines()[-1]
    assert "no board with key 'rpi9'" in line and "within 2 s" in line
    assert "x86 (2 boards" in line and "flaky" in line


def test_tracker_not_running(digits_dir, capsys):
    port = free_port()  # nothing listens here
    t0 = time.monotonic()
    code, _, err = run_main(capsys, "bench", digits_dir, "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "x86")
    assert code == 2 and time.monotonic() - t0 < 15
    assert f"cannot reach the RPC tracker at 127.0.0.1:{port}" in err
    code, _, err = run_main(capsys, "rpc", "status", "--tracker", f"127.0.0.1:{port}")
    assert code == 2 and "cannot reach the RPC tracker" in err


def test_bad_addresses_and_missing_key(digits_dir, capsys):
    code, _, err = run_main(capsys, "bench", digits_dir, "--rpc-tracker", "localhost", "--rpc-key", "x86")
    assert code == 2 and "expected HOST:PORT" in err
    code, _, err = run_main(capsys, "bench", digits_dir, "--rpc-tracker", "127.0.0.1:9190")
    assert code == 2 and "--rpc-key" in err
    with pytest.raises(Exception, match="expected HOST:PORT"):
        parse_endpoint("127.0.0.1:99999")


def test_board_killed_mid_run_moves_to_another_then_fails_when_none_left(farm, digits_dir):
    """Kill the board serving us once its library is loaded: --retries moves on; with none left, a clear error."""
    art = Artifact.load(digits_dir)
    # The timed runs must last several seconds, to kill the board mid-run. The digits kernels take
    # 0.02 ms tuned and 0.3 ms untuned, so size the run from this machine's measured latency.
    per_run_s = benchmark(art, warmup=5, repeat=200)["median_ms"] / 1e3
    repeat = int(min(2_000_000, max(2000, 6.0 / max(per_run_s, 1e-6))))
    opts = RunOptions(repeat=repeat, warmup=0, session_timeout=120)

    def kill_the_busy_board(boards):
        def watch():
            for svc in boards:
                svc.mark = len(svc.log())
            end = time.monotonic() + 120
            while time.monotonic() < end:
                for svc in boards:
                    if svc.alive() and "load_module" in svc.log()[svc.mark:]:
                        time.sleep(1.0)  # past the first run, into the timed runs
                        svc.killed_on_purpose = True
                        svc.kill()
                        killed.append(svc)
                        return
                time.sleep(0.05)
        killed = []
        th = threading.Thread(target=watch, daemon=True)
        th.start()
        return th, killed

    watcher, killed = kill_the_busy_board(farm.flaky)
    run = bench_remote(art, tracker=farm.tracker.endpoint, key="flaky", retries=1, timeout=10, opts=opts)
    watcher.join(5)
    assert len(killed) == 1
    assert not run.errors, run.errors
    (result,) = run.results
    survivor = next(s for s in farm.flaky if s is not killed[0])
    assert result["board"] == survivor.address
    assert len(result["lost_boards"]) == 1 and killed[0].address in result["lost_boards"][0]

    watcher, killed2 = kill_the_busy_board([survivor])
    run = bench_remote(art, tracker=farm.tracker.endpoint, key="flaky", retries=1, timeout=3, opts=opts)
    watcher.join(5)
    assert killed2 == [survivor] and not run.results
    (err,) = run.errors
    assert isinstance(err, BoardLostError)
    msg = str(err)
    assert f"board {survivor.address} (key flaky) dropped the connection" in msg
    assert "no board with key 'flaky' became free" in msg and "x86 (2 boards" in msg


def test_mismatched_target_artifact(farm, tmp_path, capsys):
    """An aarch64 library sent to an x86 board is refused before upload, naming both sides."""
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs the aarch64 cross compiler: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
    import qcompile

    target = tmp_path / "aarch64_test.yaml"
    target.write_text("name: aarch64_test\n"
                      "description: generic aarch64, for tests\n"
                      "tvm_target: {kind: llvm, mtriple: aarch64-linux-gnu}\n"
                      "runs_on_host: false\n"
                      "export: {cross_compiler: aarch64-linux-gnu-gcc, toolchain_package: gcc-aarch64-linux-gnu}\n")
    out = str(tmp_path / "digits_arm")
    qcompile.compile(zoo.DIGITS_MODEL, target=str(target), out_dir=out)
    assert library_arch(os.path.join(out, "model.so")) == "aarch64"
    code, _, err = run_main(capsys, "bench", out, "--rpc-tracker", farm.tracker.address, "--rpc-key", "x86")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "artifact built for aarch64 (target aarch64_test) but board 127.0.0.1:" in line
    assert "(key x86) is x86_64" in line
    # a board without LLVM cannot say what it is; its dlopen refusal is explained instead
    code, _, err = run_main(capsys, "bench", out, "--rpc", farm.direct.address, "--rpc-key", "solo")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert f"board {farm.direct.address} (key solo) rejected model.so as a binary for another machine" in line
    assert "built for aarch64 (target aarch64_test)" in line


def test_artifact_needing_cpu_features_the_board_lacks(farm, tmp_path, capsys):
    """An AVX-512 VNNI build is refused by an AVX2 board before it can crash it with an illegal instruction."""
    from qcompile.cpu_features import host_cpu_flags

    if {"avx512f", "avx512_vnni"} <= (host_cpu_flags() or set()):
        pytest.skip("the boards here run on a CPU with AVX-512 VNNI: nothing to refuse")
    import qcompile

    out = str(tmp_path / "digits_vnni")
    qcompile.compile(zoo.DIGITS_MODEL, target="x86_vnni", out_dir=out)
    code, _, err = run_main(capsys, "bench", out, "--rpc-tracker", farm.tracker.address, "--rpc-key", "x86")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "artifact built for target x86_vnni needs CPU features [" in line and "], which board" in line
    assert "'avx512_vnni'" in line and "'avx512f'" in line
    assert "(key x86, CPU " in line


def test_library_that_fails_to_load_remotely(farm, digits_dir, tmp_path):
    """A real x86-64 library whose dependency is missing on the board: dlopen fails there, we say so."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    build = tmp_path / "build"
    build.mkdir()
    (build / "dep.c").write_text("int qc_dep(void) { return 1; }\n")
    (build / "lib.c").write_text("int qc_dep(void);\nint qc_probe(void) { return qc_dep(); }\n")
    art_dir = tmp_path / "needs_dep"
    shutil.copytree(digits_dir, art_dir)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(build / "libqcdep.so"), str(build / "dep.c")], check=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(art_dir / "model.so"), str(build / "lib.c"),
                    f"-L{build}", "-lqcdep"], check=True)
    run = bench_remote(Artifact.load(str(art_dir)), tracker=farm.tracker.endpoint, key="x86", retries=1, timeout=30,
                       opts=RunOptions(repeat=5))
    (err,) = run.errors
    assert isinstance(err, RemoteLoadError)
    assert "could not load model.so" in str(err) and "libqcdep.so" in str(err)


def test_session_timeout(farm, digits_dir):
    run = bench_remote(Artifact.load(digits_dir), tracker=farm.tracker.endpoint, key="x86", timeout=30,
                       opts=RunOptions(repeat=200000, warmup=0, session_timeout=2))
    (err,) = run.errors
    assert isinstance(err, SessionTimeoutError) and "2 s RPC session expired" in str(err)


def test_rpc_status(farm, capsys):
    code, out, _ = run_main(capsys, "rpc", "status", "--tracker", farm.tracker.address)
    assert code == 0
    assert out.startswith(f"tracker {farm.tracker.address}: ")
    assert any(line.split()[:2] == ["x86", "2"] for line in out.splitlines())
    code, out, _ = run_main(capsys, "rpc", "status", "--tracker", farm.tracker.address, "--json")
    assert json.loads(out)["boards"]["x86"]["total"] == 2


def test_elf_and_triple_parsing(digits_dir):
    assert library_arch(os.path.join(digits_dir, "model.so")) == "x86_64"
    assert library_arch(os.path.join(digits_dir, "metadata.json")) is None
    assert triple_arch("x86_64-conda-linux-gnu") == "x86_64"
    assert triple_arch("arm64-apple-darwin") == "aarch64"
    assert triple_arch("armv7l-unknown-linux-gnueabihf") == "arm"


# ----------------------------------------------------------------------------- tuning through RPC

def _tiny_kernel_library(tmp_path):
    """A 32x32 matmul PrimFunc built for this CPU and exported, as MetaSchedule's builder would."""
    import tvm
    from tvm import te

    a = te.placeholder((32, 32), name="A")
    b = te.placeholder((32, 32), name="B")
    k = te.reduce_axis((0, 32), name="k")
    c = te.compute((32, 32), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "llvm"}))
    path = str(tmp_path / "tiny_matmul.so")
    lib.export_library(path)
    return func, path


def test_rpc_runner_measures_a_tir_kernel_on_a_board(farm, tmp_path):
    """make_rpc_runner returns MetaSchedule's RPCRunner; it times a kernel on a tracker board."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    import argparse

    from qcompile.cli.rpc import add_tune_rpc_options, runner_from_args

    func, path = _tiny_kernel_library(tmp_path)
    parser = argparse.ArgumentParser()
    add_tune_rpc_options(parser)  # what `qcompile tune` adds
    args = parser.parse_args(["--rpc-tracker", farm.tracker.address, "--rpc-key", "x86"])
    args.threads = 1
    assert runner_from_args(parser.parse_args([])) is None  # no --rpc-tracker: tune measures locally
    runner = runner_from_args(args)
    (future,) = runner.run([RunnerInput(path, "cpu", ArgInfo.from_prim_func(func))])
    res = future.result()
    assert res.error_msg is None, res.error_msg
    secs = [float(s) for s in res.run_secs]
    assert secs and all(0 < s < 1 for s in secs)
    with pytest.raises(NoBoardError, match="no board with key 'rpi9'.*x86"):
        make_rpc_runner(farm.tracker.endpoint, "rpi9")


def test_rpc_runner_frees_the_board_after_a_failure_and_never_waits_forever(farm, tmp_path):
    """On a key with one board: a candidate that fails on the board leaves it free for the next one
    (no waiting for the server's session timeout), and a candidate whose board never becomes free
    comes back as a timed-out run after measure_timeout instead of blocking tuning for good
    (TVM's tracker request itself waits forever)."""
    import gc

    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from qcompile.runtime.rpc import Tracker

    farm.start_server("one", name="one-0")
    farm.wait_registered({"one": 1}, time.monotonic() + STARTUP_TIMEOUT_S)
    func, path = _tiny_kernel_library(tmp_path)
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not a shared library")
    args_info = ArgInfo.from_prim_func(func)
    runner = make_rpc_runner(farm.tracker.endpoint, "one", session_timeout=120, measure_timeout=45,
                             min_repeat_ms=0, threads=1)
    (bad,) = runner.run([RunnerInput(str(broken), "cpu", args_info)])
    assert bad.result().error_msg, "a file that is not a library measured fine"
    start = time.monotonic()
    (good,) = runner.run([RunnerInput(path, "cpu", args_info)])
    res = good.result()
    assert res.error_msg is None, res.error_msg
    assert time.monotonic() - start < 40, "the failed candidate's session kept the board"
    # the only board of 'one' is taken: the next candidate times out instead of waiting forever
    with Tracker(farm.tracker.endpoint) as t:
        held = t.request("one", timeout=60).connect(session_timeout=300)
    try:
        runner = make_rpc_runner(farm.tracker.endpoint, "one", session_timeout=120, measure_timeout=8,
                                 min_repeat_ms=0, threads=1)
        start = time.monotonic()
        (waiting,) = runner.run([RunnerInput(path, "cpu", args_info)])
        res = waiting.result()
        assert res.error_msg and "Timeout" in res.error_msg, res.error_msg
        assert time.monotonic() - start < 60
    finally:
        held = None  # noqa: F841
        gc.collect()


def test_tune_over_rpc(farm, tmp_path):
    """qcompile's tuner with the RPC runner: candidates built here, measured on the tracker's x86 boards."""
    import onnx
    from conftest import make_conv_model

    from qcompile.schedule import records
    from qcompile.tune import tuner

    model = tmp_path / "conv.onnx"
    onnx.save(make_conv_model(batch=1), str(model))
    served_before = sum(s.log().count("load_module") for s in farm.x86)
    runner = make_rpc_runner(farm.tracker.endpoint, "x86", session_timeout=120, min_repeat_ms=0, threads=1)
    builder = tuner.local_builder(timeout_s=300, max_workers=1)
    try:
        report = tuner.tune(str(model), "x86_64", records_dir=str(tmp_path / "records"), trials=2,
                            trials_per_task=1, num_trials_per_iter=1, tasks=["conv2d", "matmul"],
                            builder=builder, runner=runner, strategy="replay-trace", cost_model="random", seed=0,
                            progress=False)
    finally:
        builder.shutdown()
    assert report.error is None and not report.failed, report.table()
    assert report.trials == 2 and report.saved >= 1, report.table()
    assert len(records.load_records(str(tmp_path / "records"))) >= 1
    served = sum(s.log().count("load_module") for s in farm.x86) - served_before
    assert served >= 2, "the candidates were not measured on the boards"


# ----------------------------------------------------------------------------- report

def test_report_table_png_and_csv(farm, digits_dir, tmp_path, capsys):
    local_json, remote_json = tmp_path / "local.json", tmp_path / "boards.json"
    code, _, err = run_main(capsys, "bench", digits_dir, "--repeat", 20, "--json", local_json)
    assert code == 0, err
    code, _, err = run_main(capsys, "bench", digits_dir, "--rpc-tracker", farm.tracker.address, "--rpc-key", "x86",
                            "--boards", 2, "--repeat", 20, "--json", remote_json)
    assert code == 0, err
    png, csv_path = tmp_path / "chart.png", tmp_path / "rows.csv"
    code, out, err = run_main(capsys, "report", local_json, remote_json, "--png", png, "--csv", csv_path)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["model", "precision", "board"]
    boards_in_table = {ln.split()[2] for ln in lines[1:] if ln.startswith(("local", "digits_cnn"))}
    assert {"local", *tracker_boards(farm, "x86")} <= boards_in_table, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(csv_path.read_text().strip().splitlines()) == 4  # header + local + 2 boards
    code, out, _ = run_main(capsys, "report", remote_json, "--csv")
    assert out.startswith("model,precision,board") and len(out.strip().splitlines()) == 3
    code, _, err = run_main(capsys, "report", str(tmp_path / "missing.json"))
    assert code == 2 and "no such result file" in err
