"""The pipeline's named stages and user pass hooks (Python API and CLI)."""

import os
import sys

import numpy as np
import pytest
from onnx import helper

import qcompile
from qcompile.errors import ConfigError
from conftest import REPO, make_conv_model, run_cli

sys.path.insert(0, os.path.join(REPO, "examples"))
import custom_pass  # noqa: E402


def double_relu_model():
    m = make_conv_model()
    for n in m.graph.node:
        if n.op_type == "Relu":
            n.output[0] = "r0"
    m.graph.node.insert(2, helper.make_node("Relu", ["r0"], ["r"], name="relu_again"))
    return m


def test_user_pass_runs_at_named_stage_and_changes_ir():
    counter = custom_pass.CountOps()
    seen = {}
    pipe = qcompile.Pipeline(target="auto")
    pipe.add_pass(custom_pass.RemoveDoubleRelu(), after="preprocess")
    pipe.add_pass(counter, before="lower")

    def spy(mod):  # a plain callable works too
        seen["funcs"] = [gv.name_hint for gv in mod.get_global_vars()]
        return mod

    pipe.add_pass(spy, after="lower")
    art = pipe.run(double_relu_model())
    assert counter.counts["relax.nn.relu"] == 1  # the double relu was folded before lower
    assert any(name != "main" for name in seen["funcs"])  # after lower there are TIR functions
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = qcompile.compile(make_conv_model()).run({"x": x})["y"]
    np.testing.assert_allclose(art.run({"x": x})["y"], ref, rtol=1e-5, atol=1e-5)


def test_bad_hooks_are_refused():
    pipe = qcompile.Pipeline()
    with pytest.raises(ConfigError, match="unknown stage 'optimize'"):
        pipe.add_pass(custom_pass.CountOps(), after="optimize")
    with pytest.raises(ConfigError, match="exactly one"):
        pipe.add_pass(custom_pass.CountOps())
    with pytest.raises(ConfigError, match="not a pass"):
        pipe.add_pass(42, after="preprocess")


def test_failing_user_pass_leaves_no_output(tmp_path):
    def broken(mod):
        raise RuntimeError("boom")

    pipe = qcompile.Pipeline().add_pass(broken, before="build")
    with pytest.raises(RuntimeError, match="boom"):
        pipe.run(make_conv_model(), out_dir=str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_cli_pass_hook(tmp_path):
    import onnx

    path = tmp_path / "m.onnx"
    onnx.save(double_relu_model(), str(path))
    example = os.path.join(REPO, "examples", "custom_pass.py")
    proc = run_cli("compile", path, "-o", tmp_path / "out",
                   "--pass", f"{example}:RemoveDoubleRelu", "--at", "after:preprocess",
                   "--pass", f"{example}:CountOps", "--at", "before:lower")
    assert proc.returncode == 0, proc.stderr
    assert "removed 1 redundant relu" in proc.stdout
    assert "relax.nn.relu=1" in proc.stdout
    proc = run_cli("compile", path, "-o", tmp_path / "out2", "--pass", f"{example}:Nope", "--at", "after:preprocess")
    assert proc.returncode == 2 and "has no attribute 'Nope'" in proc.stderr
    assert not (tmp_path / "out2").exists()


def test_stages_are_listed_in_order():
    assert qcompile.STAGES == ("import", "preprocess", "annotate", "calibrate", "realize", "offload", "lower",
                               "apply_records", "build", "export")


@pytest.mark.parametrize("progress", [True, False])
def test_progress_flag_controls_the_calibration_bar(progress, capfd):
    from qcompile.quantize.qconfig import QConfig

    model = make_conv_model()
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    calib = {model.graph.input[0].name: np.random.default_rng(0).standard_normal((8,) + shape[1:]).astype(np.float32)}
    qcompile.Pipeline(target="auto", qconfig=QConfig(calib_method="minmax"), progress=progress).run(model, calib=calib)
    assert ("calibrate (minmax)" in capfd.readouterr().err) == progress
