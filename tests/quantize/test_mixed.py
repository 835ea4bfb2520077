"""Mixed precision against an accuracy budget, the per-layer error report, and the quantize CLI."""

import json

import numpy as np
import pytest

import qcompile
from qcompile import zoo
from qcompile.errors import ConfigError
from qcompile.quantize.qconfig import QConfig, parse_budget
from conftest import run_cli


def test_budget_moves_fewest_sensitive_layers():
    # entropy calibration clips the digits CNN's activations hard, so all-int8 misses a tight budget
    qc = QConfig(calib_method="entropy", budget={"metric": "cosine", "min": 0.999})
    pipe = qcompile.Pipeline(qconfig=qc)
    art = pipe.run(zoo.DIGITS_MODEL, calib=zoo.digits_calib())
    report = pipe.state.quant_info["mixed"]
    trials = report["trials"]
    assert not trials[0]["ok"] and trials[0]["moved"] == []  # plain int8 misses
    # the ranking is measured: layers ordered by the metric gain of leaving each alone in float, except
    # where a shared tensor's producer and consumers gain more together (they then rank as one unit)
    assert report["ranking_method"].startswith("measured")
    grouped = {name for group in report["sensitivity_together"] for name in group.split("+")}
    gains = [report["sensitivity"][name] for name in report["ranking"] if name not in grouped]
    assert gains == sorted(gains, reverse=True)  # cosine budget: the metric itself orders
    assert max(report["sensitivity"].values()) > 0
    assert report["met"]
    moved = report["moved"]
    assert moved and set(moved.values()) <= {"int16", "fp32"}
    # fewest: every passing trial moved at least as many layers, and one layer fewer (same precision) failed
    passing = [t for t in trials if t["ok"]]
    assert len(moved) == min(len(t["moved"]) for t in passing if t["precision"] == next(iter(moved.values())))
    fewer = [t for t in trials if len(t["moved"]) == len(moved) - 1 and t["precision"] == next(iter(moved.values()))]
    assert all(not t["ok"] for t in fewer)
    layers = art.metadata["quantization"]["layers"]
    for name, prec in moved.items():
        assert layers[name] == prec
    # the budget holds on held-out data as well
    inputs, _ = zoo.digits_test()
    ref = qcompile.compile(zoo.DIGITS_MODEL).run(inputs)["logits"]
    y = art.run(inputs)["logits"]
    cos = (y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.mean() >= 0.995


def test_budget_already_met_keeps_int8():
    qc = QConfig(calib_method="minmax", budget={"metric": "agreement", "min": 0.9})
    pipe = qcompile.Pipeline(qconfig=qc)
    art = pipe.run(zoo.DIGITS_MODEL, calib=zoo.digits_calib())
    assert pipe.state.quant_info["mixed"]["moved"] == {}
    assert set(art.metadata["quantization"]["layers"].values()) == {"int8"}


def test_budget_parsing_and_validation():
    assert parse_budget("cosine:0.99") == {"metric": "cosine", "min": 0.99}
    assert parse_budget("top1_drop:0.005") == {"metric": "top1_drop", "max": 0.005}
    with pytest.raises(ConfigError, match="METRIC:VALUE"):
        parse_budget("accuracy:0.9")
    with pytest.raises(ConfigError, match="takes 'min"):
        QConfig(budget={"metric": "cosine", "max": 0.9})


def test_cli_quantize_with_report_and_budget(tmp_path):
    out = tmp_path / "q"
    proc = run_cli("compile", zoo.DIGITS_MODEL, "--quantize", "int8", "--calib", zoo.DIGITS_CALIB,
                   "--calib-method", "entropy", "--budget", "cosine:0.999", "--report", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "mixed precision: cosine min 0.999" in proc.stderr
    assert "SNR dB" in proc.stdout
    rows = json.loads((out / "quant_report.json").read_text())
    assert {r["layer"] for r in rows} >= {"conv2d_0", "matmul_0"}
    assert all({"snr_db", "cosine", "max_abs_err", "snr_drop_db"} <= set(r) for r in rows)
    assert (out / "quant_report.png").stat().st_size > 1000
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["quantization"]["mixed_precision"]["met"] is True
    y = tmp_path / "y.npz"
    assert run_cli("run", out, "--inputs", zoo.DIGITS_TEST, "--output", y).returncode == 0
    labels = np.load(zoo.DIGITS_TEST_LABELS)["label"]
    assert (np.load(y)["logits"].argmax(1) == labels).mean() >= 0.97


def test_cli_quantize_errors(tmp_path):
    out = tmp_path / "q"
    proc = run_cli("compile", zoo.DIGITS_MODEL, "--quantize", "int8", "-o", out)
    assert proc.returncode == 2 and "needs calibration data" in proc.stderr and not out.exists()
    bad = tmp_path / "nan.npz"
    np.savez(bad, input=np.full((4, 1, 8, 8), np.inf, np.float32))
    proc = run_cli("compile", zoo.DIGITS_MODEL, "--quantize", "int8", "--calib", bad, "-o", out)
    assert proc.returncode == 2 and "NaN/Inf" in proc.stderr and "'input'" in proc.stderr and not out.exists()
    qc = tmp_path / "qc.yaml"
    qc.write_text("precision: int8\ncalib_methd: mse\n")
    proc = run_cli("compile", zoo.DIGITS_MODEL, "--qconfig", qc, "--calib", zoo.DIGITS_CALIB, "-o", out)
    assert proc.returncode == 2 and "calib_methd" in proc.stderr and not out.exists()


def test_cosine_budget_is_the_worst_output():
    """A large exact output must not hide a ruined small one (MiniLM returns its token states,
    the pooled embedding and more; concatenating them scored a broken embedding as 1.0)."""
    from qcompile.quantize.mixed import _metric

    rng = np.random.default_rng(0)
    big, small = rng.standard_normal((4, 1000)) * 100, rng.standard_normal((4, 8))
    ref = {"states": big, "pooled": small}
    got = {"states": big.copy(), "pooled": -small}
    assert _metric("cosine", ref, got, None) == pytest.approx(-1.0)
    assert _metric("cosine", ref, {"states": big, "pooled": small}, None) == pytest.approx(1.0)
    zeros = {"z": np.zeros((2, 3))}
    assert _metric("cosine", zeros, zeros, None) == 1.0
