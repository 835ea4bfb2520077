"""The per-target scripts in examples/ are what users copy: run each one as a user would, in a
fresh process, and check what it prints and writes (not only that it exits 0)."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args, cwd, timeout=600):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_compile_x86_matches_onnxruntime(tmp_path):
    out = run_example("compile_x86.py", "--out", "out", cwd=tmp_path)
    diff = float(re.search(r"max \|qcompile - onnxruntime\| = (\S+)", out).group(1))
    top1 = float(re.search(r"top-1: (\S+)", out).group(1))
    assert diff <= 1e-4 and top1 >= 0.98, out
    assert os.path.exists(tmp_path / "out" / "metadata.json")


def test_compile_vta_new_core_shape_and_its_artifact_reports_cycles(tmp_path):
    out = run_example("compile_vta.py", "--core", "1x32x32", "--out", "out", cwd=tmp_path)
    assert "bit-exact with the CPU-only int8 build" in out, out
    run_cycles = int(re.search(r"one inference: ([\d,]+) simulated cycles", out).group(1).replace(",", ""))
    static = int(re.search(r"\(static report: ([\d,]+)\)", out).group(1).replace(",", ""))
    assert run_cycles == static > 0, out
    # the artifact carries the report `qcompile bench` / `qcompile report` read
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    acc = meta["accelerator"]
    assert acc["config"]["block_in"] == 32 and acc["config"]["block_out"] == 32
    assert acc["totals"]["cycles"] == static and acc["totals"]["offloaded"] >= 5
    assert os.path.getsize(tmp_path / "out" / "accelerator.png") > 10_000


def test_bench_rpc_local_farm_writes_report(tmp_path):
    out = run_example("bench_rpc.py", "--local-farm", "--repeat", "50", "--out", "out", cwd=tmp_path)
    with open(tmp_path / "out" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    # fp32 and int8, each on the two local boards
    assert sorted(r["precision"] for r in rows) == ["fp32", "fp32", "int8", "int8"], out
    assert len({r["board"] for r in rows}) == 2
    assert all(float(r["median_ms"]) > 0 for r in rows)
    assert os.path.getsize(tmp_path / "out" / "report.png") > 10_000


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                    reason="needs Debian's gcc-aarch64-linux-gnu (run_tests.sh installs it)")
def test_compile_arm_writes_an_aarch64_library(tmp_path):
    out = run_example("compile_arm.py", "--out", "out", cwd=tmp_path)
    assert "aarch64 library" in out, out
    lib = tmp_path / "out" / json.loads((tmp_path / "out" / "metadata.json").read_text())["library"]
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
