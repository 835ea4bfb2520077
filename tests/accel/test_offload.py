"""Offload end to end: the partition pass on realized models, the runtime, the bundled digits CNN."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tvm
from tvm import relax

import qcompile
from qcompile import zoo
from qcompile.accel import config_of, offload, runtime
from qcompile.errors import TargetError
from qcompile.model import Model, TensorSpec
from qcompile.quantize.qconfig import QConfig
from qcompile.target import load_target

RNG = np.random.default_rng(0)
# float_outputs off: an accelerator target writes requantized codes at its integer regions' exits, and
# the CPU builds these tests compare with bit for bit must do the same
QC = dict(activation_dtype="int8", symmetric_activations=True, float_outputs=False)


def compile_with(model, target, calib, qconfig=QC, out_dir=None):
    """Compile `model`; on an accelerator target the pipeline's offload stage runs right after realize.

    Returns (artifact, offload report from the artifact's metadata); report["realized"] is the
    module before offloading, report["offloaded"] the one after."""
    spec = load_target(target)
    mods = {}
    pipe = qcompile.Pipeline(target=spec, qconfig=QConfig(**qconfig) if qconfig is not None else None, progress=False)
    pipe.add_pass(lambda mod: mods.setdefault("realized", mod), before="offload")
    pipe.add_pass(lambda mod: mods.setdefault("offloaded", mod), after="offload")
    art = pipe.run(model, out_dir=out_dir, calib=calib)
    report = dict(art.metadata.get("accelerator") or {})
    report.update(mods)
    return art, report


def run_on_cpu(mod, inputs):
    """Build a (realized, not offloaded) module for the host CPU and run it: the CPU integer reference."""
    ex = tvm.compile(mod, load_target("x86_64").tvm())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    calib = zoo.digits_calib()
    out = tmp_path_factory.mktemp("accel") / "digits_vta"
    vta, report = compile_with(zoo.DIGITS_MODEL, "vta_sim", calib, out_dir=str(out))
    cpu, _ = compile_with(zoo.DIGITS_MODEL, "x86_64", calib)
    return vta, cpu, report


def test_digits_on_vta_sim_matches_cpu_int8(digits):
    vta, cpu, report = digits
    inputs, labels = zoo.digits_test()
    runtime.reset_stats()
    y = vta.run(inputs)["logits"]
    y_cpu = cpu.run(inputs)["logits"]
    top1, top1_cpu = (y.argmax(1) == labels).mean(), (y_cpu.argmax(1) == labels).mean()
    assert top1 == top1_cpu and top1 > 0.97
    np.testing.assert_array_equal(y, y_cpu)        # bit-exact, not just the same top-1
    ops = sorted(l["op"] for l in report["layers"])
    assert ops == ["add", "conv2d", "conv2d", "conv2d", "conv2d", "dense"] and report["cpu_layers"] == []
    assert "offloaded 6 layer(s)" in report["note"]
    stats = runtime.stats()
    assert {s["calls"] for s in stats.values()} == {len(labels)}
    assert sum(s["cycles"] for s in stats.values()) == report["totals"]["cycles"]
    summary = runtime.summary()
    assert summary["inferences"] == len(labels)
    assert summary["latency_us_per_inference"] == pytest.approx(report["totals"]["time_us"])


def test_offloaded_graph_calls_the_runtime(digits):
    _, _, report = digits
    for layer in report["layers"]:
        assert layer["cycles"] > 0 and layer["program_bytes"] > 0 and layer["modules"]["compute"]["busy"] > 0
        assert 0 <= layer["gemm_utilization"] <= 1


def relax_model(inputs, build):
    bb = relax.BlockBuilder()
    vars_ = [relax.Var(n, relax.TensorType(s, "float32")) for n, s in inputs]
    with bb.function("main", vars_):
        with bb.dataflow():
            gv = bb.emit_output(build(bb, *vars_))
        bb.emit_func_output(gv)
    mod = bb.get()
    ret = mod["main"].ret_ty
    return Model(mod, [TensorSpec(n, tuple(s), "float32") for n, s in inputs],
                 [TensorSpec("y", tuple(int(d) for d in ret.shape.values), "float32")])


def mixed_model():
    """conv (stride 2, pad) -> relu -> grouped conv -> residual add -> relu -> mean -> dense."""
    w1 = RNG.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = RNG.standard_normal((16, 4, 3, 3)).astype(np.float32) * 0.3
    fc = RNG.standard_normal((16, 10)).astype(np.float32) * 0.3

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w1), strides=2, padding=1))
        y = bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, relax.const(RNG.standard_normal((1, 16, 1, 1)).astype(np.float32))))))
        z = bb.emit(relax.op.nn.conv2d(y, relax.const(w2), padding=1, groups=4))
        s = bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, z))))
        m = bb.emit(relax.op.mean(s, axis=[2, 3]))
        return bb.emit(relax.op.matmul(m, relax.const(fc)))

    return relax_model([("x", (1, 3, 16, 16))], build)


@pytest.fixture(scope="module")
def mixed():
    model = mixed_model()
    calib = {"x": RNG.standard_normal((16, 3, 16, 16)).astype(np.float32)}
    x = RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)
    return model, calib, x


@pytest.fixture(scope="module")
def mixed_vta(mixed):
    model, calib, x = mixed
    vta, report = compile_with(model, "vta_sim", calib, QC)
    return vta, report, x


def test_mixed_model_bit_exact_with_cpu(mixed_vta):
    vta, report, x = mixed_vta
    report["cpu_out"] = run_on_cpu(report["realized"], [x])
    np.testing.assert_array_equal(vta.run({"x": x})["y"], report["cpu_out"])
    assert sorted(l["op"] for l in report["layers"]) == ["add", "conv2d", "conv2d", "dense"]


@pytest.mark.parametrize("target, qconfig", [
    ("vta_sim", dict(QC, symmetric_activations=False)),
    pytest.param("vta_sim_large", QC, marks=pytest.mark.slow)], ids=["asymmetric", "large-core"])
def test_mixed_model_other_configs_bit_exact_with_cpu(mixed, target, qconfig):
    model, calib, x = mixed
    vta, report = compile_with(model, target, calib, qconfig)
    np.testing.assert_array_equal(vta.run({"x": x})["y"], run_on_cpu(report["realized"], [x]))
    assert sorted(l["op"] for l in report["layers"]) == ["add", "conv2d", "conv2d", "dense"]
    if not qconfig["symmetric_activations"]:  # the input zero point pads: nn.pad is folded into the conv
        assert "relax.nn.pad" in op_names(report["realized"]) and "relax.nn.pad" not in op_names(report["offloaded"])


def op_names(mod):
    names = []
    relax.analysis.post_order_visit(mod["main"], lambda e: names.append(e.op.name) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) else None)
    return names


def test_shift_only_edge_core_runs_power_of_two_models(mixed):
    """vta_sim_edge has no multiplier and requires power-of-two scales: every requantize is a shift."""
    model, calib, x = mixed
    edge, report = compile_with(model, "vta_sim_edge", calib)
    assert report["cpu_layers"] == []
    assert {l["requantize"] for l in report["layers"]} == {"shift-only (power-of-two scales)"}
    assert sorted(l["op"] for l in report["layers"]) == ["add", "conv2d", "conv2d", "dense"]
    np.testing.assert_array_equal(edge.run({"x": x})["y"], run_on_cpu(report["realized"], [x]))


def test_nothing_to_offload_still_runs_and_says_so(mixed_vta, tmp_path):
    """An ALU without MUL cannot requantize general scales: every layer stays on the CPU, with the reason."""
    _, report, x = mixed_vta
    realized = report["realized"]
    src = open(load_target("vta_sim").source).read()
    yaml = tmp_path / "no_mul.yaml"
    yaml.write_text(src.replace("alu_ops: [ADD, MAX, MIN, SHR, MUL]", "alu_ops: [ADD, MAX, MIN, SHR]"))
    mod, report = offload(realized, load_target(str(yaml)))
    assert report["layers"] == [] and "nothing to offload" in report["note"] and "whole model runs on the CPU" in report["note"]
    reasons = [l["reason"] for l in report["cpu_layers"]]
    assert len(reasons) == 4 and all("no MUL" in r for r in reasons), reasons
    tvm.ir.assert_structural_equal(mod, realized)          # untouched: it runs exactly as the CPU build


def test_offloading_twice_is_an_error_not_an_empty_report(mixed_vta):
    """A user pass that offloads before the pipeline's offload stage used to leave the stage nothing
    to do: the artifact then said 'nothing to offload' and bench reported 0 cycles."""
    _, report, _ = mixed_vta
    spec = load_target("vta_sim")
    with pytest.raises(ValueError, match="already calls qcompile.accel.run.*remove the offload pass"):
        offload(report["offloaded"], spec)
    mod, again = offload(report["realized"], spec)        # the realized module itself still offloads
    assert len(again["layers"]) == len(report["layers"]) > 0


def test_accelerator_section_is_validated(tmp_path):
    src = open(load_target("vta_sim").source).read()
    bad = tmp_path / "bad.yaml"
    bad.write_text(src.replace("  block_in: 16", "  blok_in: 16"))
    with pytest.raises(TargetError, match="unknown key 'accelerator.blok_in'"):
        config_of(load_target(str(bad)))
    bad.write_text(src.replace("  block_in: 16", "  block_in: 12"))
    with pytest.raises(TargetError, match="'accelerator.block_in' must be a power of two"):
        config_of(load_target(str(bad)))
    bad.write_text(src.replace("alu_ops: [ADD, MAX, MIN, SHR, MUL]", "alu_ops: [ADD, MAX, MIN, SHR, DIV]"))
    with pytest.raises(TargetError, match="unknown op 'DIV'"):
        config_of(load_target(str(bad)))
    assert config_of(load_target("x86_64")) is None


@pytest.mark.slow
def test_exported_artifact_runs_in_a_fresh_process(digits, tmp_path):
    vta, _, _ = digits
    inputs, _ = zoo.digits_test()
    np.savez(tmp_path / "in.npz", input=inputs["input"][:3])
    expected = vta.run({"input": inputs["input"][:3]})["logits"]
    code = ("import sys, numpy as np, qcompile, qcompile.accel.runtime as rt\n"
            "art = qcompile.load(sys.argv[1])\n"
            "y = art.run(dict(np.load(sys.argv[2])))['logits']\n"
            "np.save(sys.argv[3], y)\n"
            "print(rt.summary()['inferences'])\n")
    res = subprocess.run([sys.executable, "-c", code, vta.path, str(tmp_path / "in.npz"), str(tmp_path / "y.npy")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "3"
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_pipeline_stage_helper_and_json_report(digits):
    import json
    from types import SimpleNamespace

    from qcompile.accel import offload_stage

    _, _, report = digits
    state = SimpleNamespace(target=load_target("vta_sim"), mod=report["realized"], qconfig=QConfig(**QC),
                            quant_info={}, notes=[])
    offload_stage(state)
    rep = state.quant_info["accelerator"]
    assert state.notes == [rep["note"]] and len(rep["layers"]) == 6
    assert "qcompile.accel.run" in str(state.mod["main"])
    json.loads(json.dumps(rep, allow_nan=False))            # goes into metadata.json as is
    cpu_state = SimpleNamespace(target=load_target("x86_64"), mod=report["realized"], qconfig=None, quant_info={},
                                notes=[])
    offload_stage(cpu_state)                                  # no accelerator: a no-op
    assert cpu_state.mod is report["realized"] and cpu_state.notes == []


def test_report_table_plot_and_cli(digits, tmp_path, capsys):
    import json
    import shutil

    from qcompile.cli import accel_report

    vta, _, report = digits
    rep = {k: v for k, v in report.items() if k not in ("realized", "offloaded")}
    table = accel_report.format_layers(rep)
    assert "conv1" in table and "util%" in table and "simulated accelerator (vta-1x16x16)" in table
    png = accel_report.plot(rep, str(tmp_path / "acc.png"))
    assert os.path.getsize(png) > 10_000
    fields = accel_report.bench_fields({"accelerator": rep})
    assert fields["simulated_cycles"] == rep["totals"]["cycles"]
    (tmp_path / "bench.json").write_text(json.dumps({"median_ms": 1.0, **fields}))
    assert accel_report.from_path(str(tmp_path / "bench.json"))["totals"] == rep["totals"]
    # an artifact whose metadata carries the report (what the pipeline writes)
    art_dir = tmp_path / "art"
    shutil.copytree(vta.path, art_dir)
    meta = json.loads((art_dir / "metadata.json").read_text())
    meta["accelerator"] = rep
    (art_dir / "metadata.json").write_text(json.dumps(meta))
    assert accel_report.from_path(str(art_dir))["core"] == "vta-1x16x16"
    assert accel_report.main([str(art_dir), "--png", str(tmp_path / "cli.png"), "--run"]) == 0
    out = capsys.readouterr().out
    assert f"one inference: {rep['totals']['cycles']:,} simulated cycles (static report: {rep['totals']['cycles']:,})" in out
