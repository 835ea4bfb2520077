"""`qcompile demo`, the quickstart's main job, runs end to end: fp32 and int8 digits against ONNX Runtime.

The CLI's module split once broke it without any test noticing (an import that pointed at the wrong
`quantize`), so the README's first command is run here as quickstart.sh runs it.
"""

import json

import pytest

from conftest import run_cli

pytest.importorskip("onnxruntime")


def test_demo_prints_and_writes_the_table(tmp_path):
    proc = run_cli("demo", "--repeat", "5", "--out-dir", tmp_path / "demo", "--json", tmp_path / "demo.json")
    assert proc.returncode == 0, proc.stderr
    for engine in ("qcompile fp32", "qcompile int8", "onnxruntime fp32", "onnxruntime int8"):
        assert engine in proc.stdout, proc.stdout
    rows = json.loads((tmp_path / "demo.json").read_text())
    int8 = [r for r in rows if r.get("engine") == "qcompile int8"]
    assert int8 and int8[0]["top1"] >= 0.97, rows
