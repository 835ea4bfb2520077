"""Smoke tests of the latency and GEMM benchmarks (benchmarks/latency.py, benchmarks/gemm.py): they run,
check their own results, and write the JSON they document. The timings themselves are not tested."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytest.importorskip("onnxruntime")


def run_script(*args, timeout=900):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=timeout)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the peak loop is compiled with gcc at run time")
def test_gemm_small_is_exact_and_reports_fraction_of_peak(tmp_path):
    out = tmp_path / "gemm.json"
    proc = run_script("benchmarks/gemm.py", "--size", "64x48x80", "--repeat", "5", "--peak-runs", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    g, pk = r["gemm"], r["peak"]
    assert (g["m"], g["n"], g["k"]) == (64, 48, 80) and g["exact_vs_numpy"] and g["max_abs_diff"] == 0
    assert g["gops_best"] >= g["gops_median"] > 0
    assert pk["isa"] in ("avx2", "vnni512") and pk["best_gops"] > 0 and len(pk["before"]["gops"]) == 1
    assert r["fraction_of_peak"]["best"] == pytest.approx(g["gops_best"] / pk["best_gops"])
    assert len(r["machine"]["loadavg_start"]) == 3 and "commit" in r["git"]
    assert "fraction of peak" in proc.stdout and "bit-exact" in proc.stdout


@pytest.mark.slow
def test_latency_digits_one_thread(tmp_path):
    out = tmp_path / "lat.json"
    proc = run_script("benchmarks/latency.py", "--models", "digits", "--threads", "1", "--budget", "0.3",
                      "--rounds", "2", "--json", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    d = r["models"]["digits"]
    assert d["status"] == "ok" and set(d["cells"]["1"]) == {"ort_fp32", "ort_int8", "qc_fp32", "qc_int8"}
    for c in d["cells"]["1"].values():
        assert c["repeat"] >= 3 and 0 < c["median_ms"] <= c["p99_ms"] and c["threads"] == 1
    ratio = d["ratios"]["1"]["qc_int8/ort_int8"]
    assert ratio == pytest.approx(d["cells"]["1"]["qc_int8"]["median_ms"] / d["cells"]["1"]["ort_int8"]["median_ms"])
    # every engine computes the same model: its outputs agree with ORT fp32 on the timed sample
    assert all(m["agree_ort_fp32"] == 1.0 for m in d["agreement_vs_ort_fp32"].values())
    assert os.path.isfile(tmp_path / "lat.png") and "qc8/ORT8" in proc.stdout
