"""qcompile tune: MetaSchedule records are written, survive failed and interrupted runs, and compile applies them.

The runs are real (LocalBuilder workers, LocalRunner measuring on this CPU) but tiny: a handful of
trials of the conftest conv model, with the random search and cost model. One builder/runner pair is
shared by the module so the worker processes start once. The tensorized spaces (x86 and ARM) are
checked by sampling and building candidates (benchmarks/tuning_space.py), runs are seeded, and a run
whose every build failed names the compiler's error.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest

import qcompile
from conftest import REPO, make_conv_model

pytest.importorskip("cloudpickle")  # MetaSchedule's worker processes
ort = pytest.importorskip("onnxruntime")

from qcompile.schedule import records
from qcompile.tune import tuner  # noqa: E402

TASKS = {"fused_conv2d_add_relu", "mean", "reshape", "fused_matmul_add1"}
FAST = dict(strategy="replay-trace", cost_model="random", seed=0, progress=False)


def ort_run(path, feed):
    """ORT on each sample (the tuned models have batch size 1)."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = next(iter(feed))
    return np.concatenate([sess.run(None, {name: x[None]})[0] for x in feed[name]])


def conv_inputs(n=4):
    return {"x": np.random.default_rng(1).standard_normal((n, 3, 8, 8)).astype(np.float32)}


def snapshot(folder):
    return {f: open(os.path.join(folder, f), "rb").read()
            for f in ("database_workload.json", "database_tuning_record.json")}


@pytest.fixture(autouse=True)
def no_committed_schedules(request, monkeypatch, tmp_path):
    """Compile applies schedules/<target>/ by default; these tests look only at their own folders."""
    if "committed" not in request.node.name:
        monkeypatch.setattr(records, "SCHEDULES_DIR", str(tmp_path / "no-schedules"))


@pytest.fixture(scope="module")
def conv_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune_model") / "conv.onnx"
    onnx.save(make_conv_model(batch=1), str(path))
    return str(path)


@pytest.fixture(scope="module")
def measure():
    """One local builder and runner for the module (each starts worker processes that import tvm)."""
    builder = tuner.local_builder(timeout_s=120, max_workers=1)
    runner = tuner.local_runner(timeout_s=60)
    yield builder, runner
    builder.shutdown()


@pytest.fixture(scope="module")
def tuned(conv_path, measure, tmp_path_factory):
    """A first run: one trial per task, every task gets a record."""
    folder = str(tmp_path_factory.mktemp("tuned") / "records")
    builder, runner = measure
    report = tuner.tune(conv_path, "x86_64", records_dir=folder, trials=4, trials_per_task=1,
                        num_trials_per_iter=1, builder=builder, runner=runner, **FAST)
    return folder, report


def copy_records(src, tmp_path):
    dst = str(tmp_path / "records")
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- a good run

def test_tune_writes_records_for_every_task(tuned):
    folder, report = tuned
    assert report.error is None and not report.interrupted
    assert {t.name for t in report.tasks} == TASKS
    assert not report.failed
    for t in report.tasks:
        assert t.trials == 1 and t.valid == 1 and t.saved and t.best_us > 0, t
    assert report.trials == 4 and report.saved == 4
    assert records.is_database(folder)
    best = records.load_records(folder)
    assert len(best) == 4 and all(records.median_seconds(r) > 0 for r in best)
    table = report.table()
    for name in TASKS:
        assert name in table
    assert "best us" in table and "status" in table


def test_compile_applies_the_records_and_still_matches_ort(tuned, conv_path, tmp_path, capsys):
    from qcompile.cli import main

    folder, _ = tuned
    out = tmp_path / "art"
    assert main(["compile", conv_path, "--target", "x86_64", "--records", folder, "-o", str(out)]) == 0
    assert f"tuning records applied from {folder} (4 of 4 kernels)" in capsys.readouterr().out
    x = conv_inputs()
    ours = qcompile.load(str(out)).run(x)["y"]
    assert np.abs(ours - ort_run(conv_path, x)).max() <= 1e-4

    # a second compile (no tuning) reads the same folder again
    art = qcompile.compile(conv_path, target="x86_64", out_dir=str(tmp_path / "again"), records=[folder])
    assert any("(4 of 4 kernels)" in n for n in art.metadata["notes"])
    np.testing.assert_allclose(art.run(x)["y"], ours, rtol=0, atol=1e-5)


def test_records_save_load_merge_apply(tuned, conv_path, tmp_path):
    folder, _ = tuned
    best = records.load_records(folder)
    other = str(tmp_path / "other")
    assert records.save_records(other, best[:2]) == 2
    assert records.is_database(other) and len(records.load_records(other)) == 2
    assert records.merge_records(folder, other) == 2   # only the two missing workloads
    assert records.merge_records(folder, other) == 0   # nothing better left to add
    assert len(records.load_records(other)) == 4

    spec = qcompile.load_target("x86_64")
    state = tuner.lowered_module(conv_path, spec)
    _, used = records.apply_records(state.mod, spec, [other])
    assert used == [f"{other} (4 of 4 kernels)"]
    # a folder with one matching workload schedules one kernel, and says so
    one = str(tmp_path / "one")
    records.save_records(one, best[:1])
    _, used = records.apply_records(state.mod, spec, [one])
    assert used == [f"{one} (1 of 4 kernels)"]


def test_a_crash_between_the_two_renames_leaves_a_usable_folder(tuned, tmp_path, monkeypatch):
    """save_records renames the workload file first; dying right after must not corrupt the folder."""
    folder = copy_records(tuned[0], tmp_path)
    before = snapshot(folder)
    real_replace = os.replace

    def replace(src, dst):
        if dst.endswith("database_tuning_record.json"):
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"):
        records.save_records(folder, records.load_records(folder))
    monkeypatch.setattr(os, "replace", real_replace)
    after = snapshot(folder)
    assert after["database_tuning_record.json"] == before["database_tuning_record.json"]
    assert after["database_workload.json"].startswith(before["database_workload.json"])
    assert len(records.load_records(folder)) == 4
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]


# ----------------------------------------------------------------------------- failing and interrupted runs

def failing_runner():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerResult

    @derived_object
    class FailingRunner(PyRunner):
        """A board that never answers."""

        def run(self, runner_inputs):
            return [RunnerFuture(f_done=lambda: True, f_result=lambda: RunnerResult(None, "board unplugged"))
                    for _ in runner_inputs]

    return FailingRunner()


def test_cli_reports_failed_tasks_and_keeps_earlier_records(tuned, conv_path, measure, tmp_path, monkeypatch, capsys):
    from qcompile.cli import main

    folder = copy_records(tuned[0], tmp_path)
    before = snapshot(folder)
    monkeypatch.setattr(measure[0]._inst, "shutdown", lambda: None)  # tune shuts down builders it made
    monkeypatch.setattr(tuner, "local_builder", lambda *a, **k: measure[0])
    monkeypatch.setattr(tuner, "local_runner", lambda *a, **k: failing_runner())
    rc = main(["tune", conv_path, "--target", "x86_64", "--records", folder, "--trials", "2",
               "--trials-per-iter", "1", "--task", "conv2d", "--task", "matmul",
               "--strategy", "replay-trace", "--seed", "0"])
    out, err = capsys.readouterr()
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("qcompile: error:")]
    assert len(lines) == 1
    assert "fused_conv2d_add_relu" in lines[0] and "fused_matmul_add1" in lines[0]
    assert "board unplugged" in lines[0] and "unchanged" in lines[0]
    assert "FAILED" in out and "earlier record kept" in out
    assert snapshot(folder) == before
    assert len(records.load_records(folder)) == 4


def test_interrupted_run_keeps_earlier_records_and_what_it_measured(tuned, conv_path, measure, tmp_path):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner

    folder = copy_records(tuned[0], tmp_path)
    before = snapshot(folder)
    builder, inner = measure

    @derived_object
    class CtrlCRunner(PyRunner):
        """Measures one batch, then the user presses Ctrl-C."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def run(self, runner_inputs):
            self.calls += 1
            if self.calls > 1:
                os.kill(os.getpid(), signal.SIGINT)
            return inner.run(runner_inputs)

    report = tuner.tune(conv_path, "x86_64", records_dir=folder, trials=8, num_trials_per_iter=2,
                        tasks=["conv2d", "matmul"], builder=builder, runner=CtrlCRunner(), **FAST)
    assert report.interrupted and report.error is None
    assert report.trials == 2  # the batch measured before Ctrl-C was collected
    after = snapshot(folder)
    for name, data in before.items():
        assert after[name].startswith(data)  # append-only: every earlier record is still there
    assert len(records.load_records(folder)) == 4


def test_timeout_per_task_stops_each_task_after_its_first_batch(conv_path, measure, tmp_path):
    builder, runner = measure
    report = tuner.tune(conv_path, "x86_64", records_dir=str(tmp_path / "r"), trials=12, num_trials_per_iter=2,
                        tasks=["conv2d", "matmul"], timeout_per_task=1e-3, builder=builder, runner=runner, **FAST)
    assert report.trials == 4 and not report.failed
    for t in report.tasks:
        assert t.trials == 2 and t.timed_out and t.seconds > 0, t
        assert "time limit" in t.status


# ----------------------------------------------------------------------------- input errors

def test_tune_rejects_targets_it_cannot_measure_and_bad_flags(conv_path, tmp_path, capsys):
    from qcompile.cli import main

    remote = tmp_path / "board.yaml"
    remote.write_text(open(os.path.join(REPO, "targets", "x86_64.yaml")).read()
                      .replace("name: x86_64", "name: some_board").replace("runs_on_host: true", "runs_on_host: false"))
    assert main(["tune", conv_path, "--target", str(remote), "--records", str(tmp_path / "r")]) == 2
    assert "cannot measure target 'some_board' here" in capsys.readouterr().err
    assert main(["tune", conv_path, "--target", "x86_64", "--records", "a", "--records", "b"]) == 2
    assert "give --records DIR once" in capsys.readouterr().err
    assert main(["tune", conv_path, "--target", "x86_64", "--task", "softmax", "--records", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no task name contains 'softmax'" in err and "fused_conv2d_add_relu" in err
    assert not os.path.exists(tmp_path / "r")


def test_committed_x86_64_schedules_apply_to_the_digits_model(tmp_path):
    """schedules/x86_64/ holds records tuned on the bundled digits CNN; compile picks them up by default."""
    from qcompile import zoo

    if not records.is_database(os.path.join(records.SCHEDULES_DIR, "x86_64")):
        pytest.skip("no committed x86_64 records")
    art = qcompile.compile(zoo.DIGITS_MODEL, target="x86_64", out_dir=str(tmp_path / "digits"))
    note = next(n for n in art.metadata["notes"] if n.startswith("tuning records applied from"))
    assert note.endswith("(8 of 8 kernels)"), note
    inputs, labels = zoo.digits_test()
    ours = art.run(inputs)["logits"]
    assert np.abs(ours - ort_run(zoo.DIGITS_MODEL, inputs)).max() <= 1e-4


def test_cli_builder_timeout_fails_every_task_in_a_real_subprocess(tuned, conv_path, tmp_path):
    """The whole command, with a target whose builder timeout no build can meet."""
    folder = copy_records(tuned[0], tmp_path)
    before = snapshot(folder)
    bad = tmp_path / "impatient.yaml"
    bad.write_text(open(os.path.join(REPO, "targets", "x86_64.yaml")).read()
                   .replace("builder_timeout_s: 120", "builder_timeout_s: 0.001"))
    proc = subprocess.run([sys.executable, "-m", "qcompile.cli", "tune", conv_path, "--target", str(bad),
                           "--records", folder, "--trials", "2", "--trials-per-iter", "2", "--task", "conv2d",
                           "--strategy", "replay-trace"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "tuning failed for 1 of 1 task(s): fused_conv2d_add_relu" in proc.stderr
    assert "Timeout" in proc.stderr
    assert snapshot(folder) == before


def test_cpu_intrinsics_for_a_second_target_family_in_one_process():
    """use_cpu_tensor_intrinsics registers one CPU family's intrinsics; a process that tuned for ARM
    first used to keep only arm_cpu's, and MetaSchedule's x86 rules then failed on an unregistered
    dot_16x4_vnni. A fresh interpreter, so no other test has imported anything before."""
    code = (
        "import qcompile\n"
        "from tvm.s_tir import TensorIntrin\n"
        "from qcompile.intrin import use_cpu_tensor_intrinsics\nfrom qcompile.tune.tuner import tuning_target\n"
        "use_cpu_tensor_intrinsics(tuning_target(qcompile.load_target('arm_neon_dotprod'), 1))\n"
        "assert TensorIntrin.get('dot_4x4_i8i8s32_sdot', allow_missing=True) is not None\n"
        "use_cpu_tensor_intrinsics(tuning_target(qcompile.load_target('x86_vnni'), 1))\n"
        "assert TensorIntrin.get('dot_16x4_vnni', allow_missing=True) is not None\n"
        "assert TensorIntrin.get('qcompile_dot_16x4_vnni', allow_missing=True) is not None\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ----------------------------------------------------------------------------- the tensorized spaces

CROSS_CC = "aarch64-linux-gnu-gcc"


@pytest.mark.parametrize("target", ["x86_64", "x86_vnni", "arm_neon", "arm_neon_dotprod"])
def test_sampled_candidates_of_every_tensorized_space_build(target, tmp_path):
    """benchmarks/tuning_space.py on a few dozen candidates per space: every candidate tune() would
    sample (seed 0) from the packed dense and the packed conv spaces of the digits CNN builds, as the
    builder builds it (for ARM: cross-linked), and the spaces tensorize with the target's intrinsic.
    TVM's default ARM space, which tune used before, vectorized around the intrinsic: here 6 of the 24
    dense candidates failed to build, and a 2-trial board run failed when it drew only such ones
    (issue 14)."""
    spec = qcompile.load_target(target)
    if not spec.runs_on_host and shutil.which(CROSS_CC) is None:
        pytest.skip(f"{CROSS_CC} not on PATH: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross "
                    f"to build {target} candidates")
    out = tmp_path / "space.json"
    proc = subprocess.run([sys.executable, "benchmarks/tuning_space.py", "--targets", target, "--samples", "24",
                           "--seed", "0", "--json", str(out)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert out.exists(), proc.stdout + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["space"] for r in rows] == ["dense", "conv"], rows
    for r in rows:
        assert r["sampled"] == 24, r
        assert r["built"] == 24, (r["space"], r["errors"])
        assert r["tensorized"] > 0, r  # x86's AddRFactor designs are the others (matrix-vector dense)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


@pytest.mark.parametrize("target", ["arm_neon", "arm_neon_dotprod", "x86_64"])
def test_tensorized_space_tiles_only_packed_blocks_and_vectorizes_none_around_them(target):
    """ARM targets get the same space as x86 ones: TVM's own MultiLevelTilingWithIntrin rules (any int8
    reduction block, packed or not) give way to one rule per target intrinsic on the blocks the lower
    stage packed for it, and a postprocessor drops the sampled vectorize around them before
    RewriteParallelVectorizeUnroll would apply it (TVM's ARM space kept both: issue 14)."""
    import tvm
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def copy(A: T.Buffer((4,), "float32"), B: T.Buffer((4,), "float32")):
        for i in range(4):
            with T.sblock("b"):
                vi = T.axis.remap("S", [i])
                B[vi] = A[vi]

    spec = qcompile.load_target(target)
    target_ = tuner.tuning_target(spec, 1)
    space = tuner.tuning_space(spec, target_, tvm.IRModule({"main": copy}), threads=1)
    # read back from TVM, qcompile's Python rules and postprocessors are _PyScheduleRule / _PyPostproc
    rules = [type(r).__name__ for r in space.sch_rules]
    assert "MultiLevelTilingWithIntrin" not in rules
    ours = [i for i, name in enumerate(rules) if name == "_PyScheduleRule"]  # PackedDotTiling, one per intrinsic
    assert len(ours) == len(spec.intrinsics) and max(ours) < rules.index("MultiLevelTiling"), rules
    posts = [type(p).__name__ for p in space.postprocs]
    assert posts.index("_PyPostproc") + 1 == posts.index("RewriteParallelVectorizeUnroll"), posts
    assert posts.count("RewriteTensorize") == 1 and posts[-1] == "RewriteTensorize", posts


# ----------------------------------------------------------------------------- seeded runs

def _sample_traces(spec, seed, threads, n=24):
    """The traces of `n` candidates tune() samples (replay-trace) from the packed dense of `spec`."""
    from tvm.s_tir import meta_schedule as ms

    from qcompile import zoo
    from qcompile.quantize.qconfig import QConfig

    pipe = qcompile.Pipeline(target=spec, qconfig=QConfig(), input_shapes={"input": (1, 1, 8, 8)}, progress=False)
    state = tuner.lowered_module(zoo.DIGITS_MODEL, calib=zoo.digits_calib(), pipeline=pipe)
    target = tuner.tuning_target(spec, 1)
    (task,) = [t for t in tuner.extract_tasks(state.mod, target) if "packed_dense" in t.task_name]
    space = tuner.tuning_space(spec, target, task.dispatched[0], 1)
    ctx = ms.TuneContext(mod=task.dispatched[0], target=target, space_generator=space, search_strategy="replay-trace",
                         rand_state=seed, num_threads=threads)
    ctx.pre_tuning(max_trials=n, num_trials_per_iter=n, design_spaces=ctx.generate_design_space(),
                   database=ms.database.MemoryDatabase(), cost_model=None)
    return [str(c.sch.trace) for c in ctx.generate_measure_candidates()]


def test_a_seed_fixes_the_sampled_candidates():
    """tune(seed=N) samples on one search thread (tuner.search_threads): MetaSchedule hands candidates
    to its threads as they come free, each thread with its own random state, so on two threads one
    seed gave different candidates from run to run. On one thread, the same seed gives the same ones."""
    spec = qcompile.load_target("x86_64")
    assert tuner.search_threads(0) == 1 and tuner.search_threads(None) == "physical"
    first = _sample_traces(spec, 3, tuner.search_threads(3))
    assert len(set(first)) > 1
    assert _sample_traces(spec, 3, tuner.search_threads(3)) == first
    assert _sample_traces(spec, 4, tuner.search_threads(4)) != first


def test_tune_passes_the_seed_to_metaschedule(conv_path, measure, tmp_path, monkeypatch):
    from tvm.s_tir import meta_schedule as ms

    seen = {}
    real = ms.relax_integration.extracted_tasks_to_tune_contexts

    def spy(*args, **kwargs):
        seen.update(seed=kwargs.get("seed"), num_threads=kwargs.get("num_threads"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ms.relax_integration, "extracted_tasks_to_tune_contexts", spy)
    builder, runner = measure
    report = tuner.tune(conv_path, "x86_64", records_dir=str(tmp_path / "r"), trials=1, num_trials_per_iter=1,
                        tasks=["conv2d"], builder=builder, runner=runner, **FAST)
    assert not report.failed and seen == {"seed": 0, "num_threads": 1}


# ----------------------------------------------------------------------------- the first real error

TRACEBACK = """LocalBuilder: An exception occurred
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/tvm/exec/popen_worker.py", line 106, in main
    result = fn(*args, **kwargs)
  File "<unknown>", line 0, in tvm::tirx::StmtExprMutator::Mutate_(tvm::tirx::ForNode const*)
  File "/project/src/tirx/transform/vectorize_loop.cc", line 127, in tvm::tirx::BroadcastTo(PrimExpr, int, bool)
tvm.error.InternalError: Check failed: (e.ty().IsScalar()) is false: Cannot broadcast lanes=4 is_scalable=0 to 12"""


def test_root_error_is_the_exception_a_traceback_ends_with():
    root = "InternalError: Check failed: (e.ty().IsScalar()) is false: Cannot broadcast lanes=4 is_scalable=0 to 12"
    assert tuner.root_error(TRACEBACK) == root
    llvm = ("LocalBuilder: An exception occurred\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
            "tvm.error.InternalError: LLVM module verification failed with the following errors:\n"
            "Call parameter type does not match function signature!\n  %5 = call <16 x i32> ...\n")
    assert tuner.root_error(llvm) == ("InternalError: LLVM module verification failed with the following errors: "
                                      "Call parameter type does not match function signature!")
    link = ("LocalBuilder: An exception occurred\nTraceback (most recent call last):\n  File \"t.py\"\n"
            "qcompile.errors.ArtifactError: linking a tuning candidate with 'aarch64-linux-gnu-gcc' failed: ld: x")
    assert tuner.root_error(link).startswith("ArtifactError: linking a tuning candidate")
    # no traceback: the message itself
    assert tuner.root_error("LocalBuilder: Timeout, killed after 0.001 seconds") == \
        "LocalBuilder: Timeout, killed after 0.001 seconds"
    assert tuner.root_error("board unplugged\nsecond line") == "board unplugged"
    # a build worker that died sent no traceback: the builder names the exception it got instead
    died = "LocalBuilder: An exception occurred\n" + tuner._exception_text(ChildProcessError("Subprocess terminated"))
    assert tuner.root_error(died) == "ChildProcessError: Subprocess terminated"
    assert tuner._exception_text(RuntimeError(TRACEBACK)) == TRACEBACK


def failing_builder(message):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    @derived_object
    class FailingBuilder(PyBuilder):
        """Every candidate fails to build, with a worker's traceback."""

        def build(self, build_inputs):
            return [BuilderResult(None, message) for _ in build_inputs]

        def shutdown(self):
            pass

    return FailingBuilder()


def test_cli_names_the_compiler_error_when_every_build_failed(conv_path, measure, tmp_path, monkeypatch, capsys):
    """Not "LocalBuilder: An exception occurred": the exception the build ended with, which trial it
    was, and where the logs with every traceback are."""
    from qcompile.cli import main

    monkeypatch.setattr(tuner, "local_builder", lambda *a, **k: failing_builder(TRACEBACK))
    monkeypatch.setattr(tuner, "local_runner", lambda *a, **k: measure[1])
    work = tmp_path / "work"
    rc = main(["tune", conv_path, "--target", "x86_64", "--records", str(tmp_path / "r"), "--trials", "2",
               "--trials-per-iter", "2", "--task", "conv2d", "--strategy", "replay-trace", "--seed", "0",
               "--work-dir", str(work)])
    out, err = capsys.readouterr()
    assert rc == 2
    (line,) = [line for line in err.splitlines() if line.startswith("qcompile: error:")]
    assert "tuning failed for 1 of 1 task(s): fused_conv2d_add_relu (first error, trial 1: InternalError: " \
           "Check failed: (e.ty().IsScalar()) is false: Cannot broadcast lanes=4 is_scalable=0 to 12)" in line, line
    assert "An exception occurred" not in line and "FAILED (2 build errors)" in out
    assert str(work / "logs") in line
    logs = "".join(p.read_text() for p in (work / "logs").glob("*task*.log"))
    assert logs.count("Error in building") == 2 and logs.count("vectorize_loop.cc") == 2
