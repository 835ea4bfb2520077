"""Tune a model's kernels with MetaSchedule and keep the best schedules as records.

    report = tune("model.onnx", "x86_64", trials=300)      # -> TuneReport; records in schedules/x86_64/

The module tuned is exactly the one ``compile`` builds: the pipeline's stages up to and
including ``lower`` (import, preprocess, and the quantization stages when a qconfig is
given). Each fused TIR function is one MetaSchedule task. Tuning happens in a work folder;
after every measured batch the new best schedules are added to the record folder
(``records.save_records``: copy, append, rename), so an interrupted or failing run keeps what
it found and never leaves the folder half-written. ``compile`` applies the folder in its
``apply_records`` stage.

The builder and runner are parameters: by default a pooled local builder and TVM's
LocalRunner measure on this machine; pass ``runner=`` (any ``meta_schedule.runner.Runner``,
e.g. an RPC runner) to measure on a board instead.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

from ..errors import ConfigError, QCompileError
from ..intrin import use_cpu_tensor_intrinsics
from ..schedule import records as _records

_MS_LOGGER = "tvm.s_tir.meta_schedule"
_TUNE_STAGES_END = "lower"


class TuneError(QCompileError):
    """Tuning could not run, or every task failed (the message names them)."""


# ----------------------------------------------------------------------------- result

@dataclass
class TaskResult:
    """One tuning task (a fused TIR function) and what this run found for it."""

    name: str
    weight: int
    flop: float = 0.0
    trials: int = 0
    valid: int = 0
    build_errors: int = 0
    run_errors: int = 0
    best_us: float | None = None        # best median latency measured in this run
    previous_us: float | None = None    # best in the record folder before this run
    saved: bool = False                 # this run's best was added to the record folder
    timed_out: bool = False             # stopped by --timeout-per-task
    first_error: str | None = None      # the first failed trial's whole message (a worker's traceback)
    first_error_trial: int | None = None  # its trial number in this task, from 1
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """Measured at least once and never successfully (a task with zero valid records)."""
        return self.trials > 0 and self.valid == 0

    @property
    def status(self) -> str:
        if self.trials == 0:
            return "not run" if self.previous_us is None else "not run, earlier record kept"
        if self.failed:
            kind = "build" if self.build_errors >= self.run_errors else "run"
            kept = ", earlier record kept" if self.previous_us is not None else ""
            return f"FAILED ({self.build_errors + self.run_errors} {kind} errors{kept})"
        if self.previous_us is None:
            status = "new"
        elif self.saved:
            status = f"improved (was {self.previous_us:.2f})"
        else:
            status = f"earlier record kept ({self.previous_us:.2f})"
        errors = self.build_errors + self.run_errors
        if errors:
            status += f", {errors} errors"
        if self.timed_out:
            status += ", time limit"
        return status

    @property
    def record_us(self) -> float | None:
        """The latency of the record the folder now holds for this task."""
        known = [t for t in (self.best_us, self.previous_us) if t is not None]
        return min(known) if known else None

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(status=self.status, failed=self.failed)
        return d


@dataclass
class TuneReport:
    """What a tuning run did: per-task results, where the records went, and how it ended."""

    model: str
    target: str
    records_dir: str
    tasks: list[TaskResult] = field(default_factory=list)
    trials: int = 0
    budget: int = 0
    seconds: float = 0.0
    saved: int = 0
    interrupted: bool = False
    error: str | None = None
    work_dir: str | None = None   # kept only when the caller gave one

    @property
    def failed(self) -> list[TaskResult]:
        return [t for t in self.tasks if t.failed]

    @property
    def all_failed(self) -> bool:
        """Every task that was measured failed (and at least one was measured)."""
        ran = [t for t in self.tasks if t.trials]
        return bool(ran) and all(t.failed for t in ran)

    def failure_message(self) -> str:
        """Which tasks failed, and the root error of the first failed trial (not the builder's
        "An exception occurred" heading: the exception the build or run ended with)."""
        names = ", ".join(t.name for t in self.failed)
        msg = f"tuning failed for {len(self.failed)} of {len(self.tasks)} task(s): {names}"
        first = next((t for t in self.failed if t.first_error), None)
        if first is None:
            return msg
        where = f"trial {first.first_error_trial} of {first.name}" if len(self.failed) > 1 else \
            f"trial {first.first_error_trial}"
        return msg + f" (first error, {where}: {root_error(first.first_error)})"

    def table(self) -> str:
        rows = [("task", "weight", "trials", "best us", "status")]
        for t in self.tasks:
            best = f"{t.record_us:.2f}" if t.record_us is not None else "-"
            rows.append((t.name, str(t.weight), str(t.trials), best, t.status))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        align = ["<", ">", ">", ">", "<"]
        lines = ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        total = sum(t.record_us * t.weight for t in self.tasks if t.record_us is not None)
        lines.append(f"{self.trials} trials in {self.seconds:.0f} s; weighted kernel time {total:.2f} us; "
                     f"{self.saved} record(s) added to {self.records_dir}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "tasks"}
        d["tasks"] = [t.to_json() for t in self.tasks]
        return d


# ----------------------------------------------------------------------------- the module to tune

def lowered_module(model, target="auto", *, qconfig=None, calib=None, input_shapes=None, pipeline=None):
    """Run the compile pipeline up to and including 'lower'. Returns the CompileState.

    `pipeline` (a qcompile.Pipeline) brings its own target, qconfig, input shapes and user passes,
    so the module tuned is the one that pipeline compiles.
    """
    from ..pipeline import STAGES, CompileState, Pipeline

    pipe = pipeline or Pipeline(target=target, qconfig=qconfig, input_shapes=input_shapes)
    if pipe.qconfig is not None and getattr(pipe.qconfig, "budget", None):
        raise ConfigError("tune does not run the mixed-precision budget search; compile once with --budget, "
                          "then tune with the precisions it chose (--keep-int16/--keep-fp32)")
    state = CompileState(source=model, target=pipe.target, input_shapes=pipe.input_shapes,
                         qconfig=pipe.qconfig, calib=calib, progress=pipe.progress)
    state.quant_info["want_report"] = False
    pipe.run_stages(state, STAGES[:STAGES.index(_TUNE_STAGES_END) + 1])
    return state


def tuning_target(spec, threads: int | None = None):
    """The tvm Target tasks are tuned for: the spec's, plus 'num-cores' (MetaSchedule needs it)."""
    import tvm

    d = dict(spec.tvm_target)
    if "num-cores" not in d:
        d["num-cores"] = int(threads) if threads else _physical_cores()
    return tvm.target.Target(d)


def extract_tasks(mod, target) -> list:
    """MetaSchedule's tasks of a lowered module: one per distinct unscheduled TIR function."""
    from tvm.s_tir import meta_schedule as ms

    use_cpu_tensor_intrinsics(target)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    return [t for t in tasks if not t.mod.attrs or not t.mod.attrs.get("tirx.is_scheduled", False)]


def serial_space(space):
    """The same search space (rules, postprocessors, mutators) without parallel loops.

    For kernels that run on one thread. A parallel loop there buys nothing and costs a thread-pool
    launch per kernel call, which MetaSchedule's isolated measurement hides or exaggerates: tuned
    with parallel loops allowed, the digits CNN's tiny max_pool2d and mean kernels got schedules
    that cost ~15-20 us per inference at 1 thread, half the model's whole run time.
    """
    from tvm.s_tir import meta_schedule as ms

    rules = []
    for rule in space.sch_rules:
        if type(rule).__name__ == "ParallelizeVectorizeUnroll":
            rule = ms.schedule_rule.ParallelizeVectorizeUnroll(
                max_jobs_per_core=-1, max_vectorize_extent=int(rule.max_vectorize_extent),
                unroll_max_steps=[int(x) for x in rule.unroll_max_steps], unroll_explicit=bool(rule.unroll_explicit))
        rules.append(rule)
    mutators = {m: float(p) for m, p in space.mutator_probs.items() if type(m).__name__ != "MutateParallel"}
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=list(space.postprocs), mutator_probs=mutators)


def with_dot_intrinsics(space, intrinsics):
    """The same search space, tensorizing qcompile's packed kernels with the target's intrinsics.

    For each dot-product intrinsic in `intrinsics` (a target's ``intrinsics:``: qcompile's x86 ones
    and TVM's ARM ones alike), ``MultiLevelTilingWithIntrin(name, "SSRSRS")`` is tried before the
    generic MultiLevelTiling, only on the reduction blocks ``qcompile.intrin.pack`` / ``pack_conv``
    annotated with that intrinsic: their weights are packed in its block layout. (On a row-major
    weight, tensorize builds but reads the wrong bytes.) TVM's own intrinsic rules are dropped: they
    try any int8 reduction block, packed or not, and on AVX-512 VNNI targets MetaSchedule adds
    ``dot_16x4_vnni``, which the LLVM in the wheel cannot build.
    ``RewriteTensorize(vectorize_init_loop=True)`` puts the intrinsic in place after sampling and
    vectorizes the accumulator's zeroing, and no sampled vectorize is applied around it
    (``_no_vectorize_around_intrinsics``). TVM's default ARM space had neither, and a quarter to a
    half of the packed dense and conv candidates sampled from it failed to build (issue 14;
    ``benchmarks/tuning_space.py --space tvm``). A target without dot intrinsics keeps its space.
    """
    from tvm.s_tir import meta_schedule as ms

    from ..intrin import dot_intrins, ensure_registered

    dots = dot_intrins(intrinsics)
    if not dots:
        return space
    rules = [r for r in space.sch_rules if type(r).__name__ != "MultiLevelTilingWithIntrin"]
    ours = []
    for intrin in dots:
        ensure_registered(intrin)
        ours.append(_packed_dot_tiling(intrin.name))
    first_mlt = next((i for i, r in enumerate(rules) if type(r).__name__ == "MultiLevelTiling"), len(rules))
    rules[first_mlt:first_mlt] = ours
    postprocs = [p for p in space.postprocs if type(p).__name__ != "RewriteTensorize"]
    vec = next((i for i, p in enumerate(postprocs) if type(p).__name__ == "RewriteParallelVectorizeUnroll"), 0)
    postprocs.insert(vec, _no_vectorize_around_intrinsics())
    postprocs.append(ms.postproc.RewriteTensorize(vectorize_init_loop=True))
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs,
                                             mutator_probs={m: float(p) for m, p in space.mutator_probs.items()})


def tuning_space(spec, tvm_target, mod, threads: int | None = 1):
    """The search space tune() samples for `spec`'s kernels, as MetaSchedule's space generator.

    The target file's ``tuning.space``; for "post-order-apply", TVM's default space for `tvm_target`,
    without parallel loops when kernels run on one thread (``serial_space``) and tensorizing the
    packed kernels with the target's intrinsics (``with_dot_intrinsics``). `mod` is any task's
    module: TVM picks its default rules from the target only.
    """
    from tvm.s_tir import meta_schedule as ms

    from ..intrin import dot_intrins

    space = spec.tuning.space
    if space != "post-order-apply" or not (threads == 1 or dot_intrins(spec.intrinsics)):
        return space
    use_cpu_tensor_intrinsics(tvm_target)
    template = ms.TuneContext(mod=mod, target=tvm_target, space_generator=space,
                              search_strategy="replay-trace", task_name="template")
    space = template.space_generator
    if threads == 1:
        space = serial_space(space)
    return with_dot_intrinsics(space, spec.intrinsics)  # the kernels the lower stage packed


def search_threads(seed: int | None):
    """Threads MetaSchedule samples candidates with: one when a seed is given.

    Its search strategies give each thread a random state forked from the seed, but hand the
    candidates to the threads as they come free, so with two threads the same seed could sample
    different candidates from run to run. Sampling is a small part of a trial (building and
    measuring are the rest), so a reproducible run pays little for it.
    """
    return 1 if seed is not None else "physical"


def _seeded(cost_model, seed: int | None):
    """MetaSchedule makes its "random" cost model unseeded; with a seed, seed it too."""
    if cost_model == "random" and seed is not None:
        from tvm.s_tir import meta_schedule as ms

        return ms.cost_model.RandomModel(seed=seed)
    return cost_model


def _no_vectorize_around_intrinsics():
    """A postprocessor run before RewriteParallelVectorizeUnroll: in a kernel with a block to be
    tensorized, drop the root's sampled ``meta_schedule.vectorize``. That postprocessor vectorizes
    the innermost spatial loops of every block, including the tile loops around the tensorized block,
    whose body is already vector code: the build then fails ("Cannot broadcast lanes=16 ... to 128";
    3 of 4 candidates of a 256^3 GEMM). The intrinsic is the vector code there, RewriteTensorize
    vectorizes the accumulator's zeroing, and LLVM vectorizes the epilogue's plain loops."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class NoVectorizeAroundIntrinsics(ms.postproc.PyPostproc):
        def _initialize_with_tune_context(self, context):
            pass

        def apply(self, sch):
            for gv, _ in sch.mod.functions_items():
                root = sch.get_sblock("root", func_name=gv.name_hint)
                if "meta_schedule.vectorize" not in sch.get(root).annotations:
                    continue
                if any("meta_schedule.auto_tensorize" in sch.get(b).annotations for b in sch.get_child_blocks(root)):
                    sch.unannotate(root, "meta_schedule.vectorize")
            return True

        def clone(self):
            return NoVectorizeAroundIntrinsics()

    return NoVectorizeAroundIntrinsics()


def _packed_dot_tiling(intrin_name: str):
    """MultiLevelTilingWithIntrin(intrin_name, "SSRSRS"), applied only to blocks annotated with it."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    from ..intrin.pack import ANNOTATION

    @derived_object
    class PackedDotTiling(ms.schedule_rule.PyScheduleRule):
        def __init__(self, name):
            super().__init__()
            self.name = name
            self.inner = ms.schedule_rule.MultiLevelTilingWithIntrin(
                name, structure="SSRSRS", tile_binds=None, max_innermost_factor=64, vector_load_lens=None,
                reuse_read=None, reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global"))

        def _initialize_with_tune_context(self, context):
            self.inner._initialize_with_tune_context(context)

        def apply(self, sch, block):
            if str(sch.get(block).annotations.get(ANNOTATION, "")) != self.name:
                return [sch]
            return list(self.inner.apply(sch, block))

        def clone(self):
            return PackedDotTiling(self.name)

    return PackedDotTiling(intrin_name)


# ----------------------------------------------------------------------------- builder / runner

def build_candidate(mod, target, _params=None):
    """MetaSchedule's default_build, minus the import of every GPU tensor intrinsic."""
    use_cpu_tensor_intrinsics(target)
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _set_worker_threads(threads: int):
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def local_builder(timeout_s: float, max_workers: int | None = None, export_spec=None):
    """A LocalBuilder whose worker processes live for the whole run (see PooledBuilder).

    export_spec -- the target's TargetSpec.export: with a cross compiler, candidates are linked
                   into a shared library for the board (see export_candidate); otherwise they are
                   exported as MetaSchedule does by default (a .tar the runner's host links).
    """
    f_export = candidate_exporter(export_spec) if export_spec is not None else None
    return _pooled_builder_class()(timeout_s=timeout_s, max_workers=max_workers or _physical_cores(),
                                   f_export=f_export)


def candidate_exporter(export_spec):
    """MetaSchedule's f_export for a target with a cross compiler, or None for the default export.

    MetaSchedule exports a candidate as a .tar of object files, which the RPC server links when
    it loads it: a board would need its own gcc (the emulated board has none, and a real board
    should not need one). A cross-compiled target links each candidate here instead, with the
    same compiler and options as ``compile`` (TargetSpec.export). Raises ArtifactError naming the
    package to install when that compiler is missing, before any tuning starts.
    """
    import functools

    from ..artifact import cross_fcompile

    if cross_fcompile(export_spec) is None:
        return None
    return functools.partial(export_candidate, export_spec=export_spec)


def export_candidate(rt_mod, export_spec) -> str:
    """Link one built candidate into a .so with the target's cross compiler (in a builder worker).

    Returns the path; MetaSchedule's RemoveBuildArtifact callback deletes its folder after the run.
    """
    from ..artifact import cross_fcompile, link_error

    path = os.path.join(tempfile.mkdtemp(prefix="qcompile-candidate-"), "tvm_tmp_mod.so")
    try:
        rt_mod.export_library(path, fcompile=cross_fcompile(export_spec))
    except Exception as err:  # noqa: BLE001 - tvm.support.cc raises RuntimeError("Compilation error: ...")
        raise link_error(err, "a tuning candidate", export_spec) from None
    return path


def local_runner(timeout_s: float, threads: int | None = 1):
    """TVM's LocalRunner: one worker process, pinned to `threads` TVM threads (None = TVM's default)."""
    import functools

    from tvm.s_tir import meta_schedule as ms

    config = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=50, enable_cpu_cache_flush=False)
    init = functools.partial(_set_worker_threads, threads) if threads else None
    return ms.runner.LocalRunner(timeout_sec=timeout_s, evaluator_config=config, initializer=init)


_POOLED = None


def _pooled_builder_class():
    """Defined lazily: the base class needs tvm."""
    global _POOLED
    if _POOLED is not None:
        return _POOLED
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder import local_builder as lb
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(PyBuilder):
        """LocalBuilder with one pool of workers for the whole run.

        TVM's LocalBuilder starts fresh worker processes for every batch; each one imports tvm
        (seconds) before building anything. Here workers are reused (recycled every
        `max_uses` builds) and build with `build_candidate`. A build that exceeds `timeout_s`
        is killed and reported as a failed candidate.
        """

        def __init__(self, timeout_s: float, max_workers: int, max_uses: int = 64, f_export=None):
            super().__init__()
            self.timeout_s = timeout_s
            self.f_export = f_export  # None: MetaSchedule's default export (.tar)
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_s,
                                          maximum_process_uses=max_uses)

        def build(self, build_inputs):
            jobs = [(build_candidate, self.f_export, b.mod, b.target, lb._serialize_params(b.params))
                    for b in build_inputs]
            results = []
            for res in self.pool.map_with_error_catching(lambda x: lb._worker_func(*x), jobs):
                if res.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"LocalBuilder: Timeout, killed after {self.timeout_s} seconds"))
                else:
                    text = _exception_text(res.value)
                    results.append(BuilderResult(None, f"LocalBuilder: An exception occurred\n{text}"))
            return results

        def shutdown(self):
            self.pool.shutdown(wait=False)

    _POOLED = PooledBuilder
    return _POOLED


# ----------------------------------------------------------------------------- the run

def tune(model, target="auto", records_dir: str | None = None, trials: int | None = None, *,
         trials_per_task: int | None = None, qconfig=None, calib=None, input_shapes=None, pipeline=None,
         progress: bool = True, work_dir: str | None = None, runner=None, builder=None, threads: int | None = 1,
         timeout_per_task: float | None = None, num_trials_per_iter: int | None = None,
         strategy="evolutionary", cost_model="xgb", seed: int | None = None, tasks=None,
         verbose: bool = False) -> TuneReport:
    """Tune every task of the module `compile` would build for `target`; add the best schedules to `records_dir`.

    model            -- what compile takes: a path, onnx.ModelProto, ExportedProgram or Model
    target           -- target name, .yaml path, or TargetSpec; its `tuning:` section gives the defaults
    records_dir      -- MetaSchedule record folder to add to (default: schedules/<target name>/)
    trials           -- global trial budget (default: target.tuning.max_trials_global)
    trials_per_task  -- per-task cap (default: target.tuning.max_trials_per_task)
    runner, builder  -- MetaSchedule Runner/Builder (default: measure here; pass an RPC runner for a board)
    threads          -- TVM threads the local runner measures with (and the tuning target's num-cores);
                        1 (`qcompile bench`'s default) also leaves parallel loops out of the search
                        space. None: all physical cores.
    timeout_per_task -- seconds of wall time (search, build and run of its batches) after which a task
                        is not scheduled again
    tasks            -- tune only the tasks whose name contains one of these strings (e.g. ["conv2d"])
    strategy, cost_model, seed -- passed to MetaSchedule ("evolutionary" / "replay-trace", "xgb" / "random").
                        With a seed, candidates are sampled on one thread (``search_threads``) and the
                        "random" cost model is seeded too, so a rerun samples the same candidates
                        (replay-trace: all of them; evolutionary: until measured times steer it)

    Returns a TuneReport; tasks with measurements but no valid one are in report.failed. Ctrl-C stops
    the run: the report comes back with interrupted=True and the records found so far are kept.
    """
    from ..target import load_target

    start = time.perf_counter()
    spec = pipeline.target if pipeline is not None else load_target(target)
    tuning = spec.tuning
    trials = int(trials if trials is not None else tuning.max_trials_global)
    per_task = int(trials_per_task if trials_per_task is not None else tuning.max_trials_per_task)
    per_iter = int(num_trials_per_iter if num_trials_per_iter is not None else tuning.num_trials_per_iter)
    for name, value in (("trials", trials), ("trials per task", per_task), ("trials per iteration", per_iter)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    for name, value in (("tuning.builder_timeout_s", tuning.builder_timeout_s),
                        ("tuning.runner_timeout_s", tuning.runner_timeout_s)):
        if not value > 0:
            raise ConfigError(f"{spec.source or spec.name}: '{name}' must be > 0, got {value}")
    if runner is None and (not spec.runs_on_host or spec.missing_cpu_flags()):
        why = (f"it needs CPU features {spec.missing_cpu_flags()} this CPU lacks" if spec.runs_on_host
               else "it does not run on this machine")
        raise TuneError(f"cannot measure target '{spec.name}' here: {why}; tune it on a board "
                        "(pass an RPC runner) or pick a target this CPU runs (see 'qcompile targets')")
    if builder is None:
        candidate_exporter(spec.export)  # a missing cross compiler: say which package, before lowering
    records_dir = records_dir or os.path.join(_records.SCHEDULES_DIR, spec.name)
    if os.path.exists(records_dir) and not os.path.isdir(records_dir):
        raise ConfigError(f"{records_dir}: not a folder")
    if os.path.isdir(records_dir) and any(os.path.exists(os.path.join(records_dir, f))
                                          for f in (_records._WORKLOAD_FILE, _records._RECORD_FILE)):
        if not _records.is_database(records_dir):
            raise ConfigError(f"{records_dir}: incomplete MetaSchedule record folder (needs both "
                              f"{_records._WORKLOAD_FILE} and {_records._RECORD_FILE})")

    tvm_target = tuning_target(spec, threads)
    use_cpu_tensor_intrinsics(tvm_target)
    state = lowered_module(model, spec, qconfig=qconfig, calib=calib, input_shapes=input_shapes, pipeline=pipeline)
    source = state.model.source if state.model is not None else str(model)
    all_tasks = extract_tasks(state.mod, tvm_target)
    patterns = [tasks] if isinstance(tasks, str) else list(tasks or [])
    tasks = [t for t in all_tasks if not patterns or any(p in t.task_name for p in patterns)]
    if patterns and not tasks:
        raise ConfigError(f"no task name contains {' or '.join(map(repr, patterns))}; the tasks are: "
                          + ", ".join(t.task_name for t in all_tasks))
    report = TuneReport(model=str(source), target=spec.name, records_dir=records_dir,
                        budget=min(trials, per_task * len(tasks)))
    if not tasks:
        raise TuneError(f"{source}: the lowered module has no TIR function to tune")
    try:
        previous = _records.best_seconds(records_dir, [t.dispatched[0] for t in tasks])
    except Exception as err:  # noqa: BLE001 - TVM's JSON reader raises several kinds
        raise TuneError(f"{records_dir}: cannot read the existing records: {_last_line(err)}") from None
    report.tasks = [TaskResult(name=t.task_name, weight=int(t.weight),
                               previous_us=None if p is None else p * 1e6) for t, p in zip(tasks, previous)]

    keep_work_dir = work_dir is not None
    work_dir = os.path.abspath(work_dir) if keep_work_dir else tempfile.mkdtemp(prefix="qcompile-tune-")
    os.makedirs(work_dir, exist_ok=True)
    if keep_work_dir:
        report.work_dir = work_dir
    own_builder = builder is None
    made_builder = bar = None
    try:
        _seed_work_dir(records_dir, work_dir)
        from tvm.s_tir import meta_schedule as ms

        _quiet_meta_schedule(verbose)
        space = tuning_space(spec, tvm_target, tasks[0].dispatched[0], threads)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, work_dir, space=space, strategy=strategy, seed=seed, num_threads=search_threads(seed))
        if own_builder:
            builder = made_builder = local_builder(tuning.builder_timeout_s, export_spec=spec.export)
        if runner is None:
            runner = local_runner(tuning.runner_timeout_s, threads)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=report.budget, desc=f"tune {spec.name}", unit="trial", file=sys.stderr,
                       dynamic_ncols=True)
        builder, runner = _clocked(builder, runner, report, contexts, bar)
        monitor = _make_monitor(report, contexts, records_dir, bar, timeout_per_task)
        callbacks = ms.measure_callback.MeasureCallback.create("default") + [monitor]
        scheduler = ms.task_scheduler.TaskScheduler.create("gradient")
        sigint = _SigintFlag()
        try:
            with sigint:
                ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work_dir,
                                   max_trials_global=trials, max_trials_per_task=per_task,
                                   num_trials_per_iter=per_iter, builder=builder, runner=runner,
                                   database="json", cost_model=_seeded(cost_model, seed),
                                   measure_callbacks=callbacks, task_scheduler=scheduler)
        except KeyboardInterrupt:
            report.interrupted = True
        except Exception as err:  # noqa: BLE001 - MetaSchedule raises TVM errors of many kinds
            # A KeyboardInterrupt raised inside a Python callback that C++ called comes back from
            # tvm_ffi as a bare RuntimeError(''), so the SIGINT handler's flag is what tells.
            if sigint.hit:
                report.interrupted = True
            elif report.error is None:
                report.error = f"MetaSchedule stopped: {_last_line(err)}"
        # The monitor already saved each batch's improvements; this catches anything it missed.
        if report.interrupted:
            _flush_measured(scheduler)
        if not (report.error or "").startswith("could not write records"):
            try:
                report.saved += _final_merge(work_dir, records_dir, report, contexts)
            except Exception as err:  # noqa: BLE001
                report.error = report.error or f"could not write records to {records_dir}: {_last_line(err)}"
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        if bar is not None:
            bar.close()
        if made_builder is not None and hasattr(made_builder, "shutdown"):
            made_builder.shutdown()
        _release_logs(work_dir)
        if not keep_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
        report.seconds = time.perf_counter() - start
    return report


def _flush_measured(scheduler):
    """After Ctrl-C: pass batches that were measured but not yet collected through the callbacks."""
    try:
        records = list(scheduler.tasks_)
    except Exception:  # noqa: BLE001 - the scheduler never started
        return
    for task_id, rec in enumerate(records):
        if rec.is_terminated or getattr(rec, "runner_futures", True) is None:
            continue
        try:
            scheduler.join_running_task(task_id)
        except BaseException:  # noqa: BLE001 - nothing pending, or a second Ctrl-C: keep what we have
            pass


def _seed_work_dir(records_dir: str, work_dir: str):
    """Start from the existing records: the search's initial population includes the best of them."""
    if not _records.is_database(records_dir):
        return
    for name in (_records._WORKLOAD_FILE, _records._RECORD_FILE):
        dst = os.path.join(work_dir, name)
        if not os.path.exists(dst):
            shutil.copyfile(os.path.join(records_dir, name), dst)


def _final_merge(work_dir, records_dir, report, contexts) -> int:
    if not _records.is_database(work_dir):
        return 0
    from tvm.s_tir import meta_schedule as ms

    db = ms.database.JSONDatabase(work_dir=work_dir, allow_missing=False)
    new = []
    for task, ctx in zip(report.tasks, contexts):
        if task.best_us is None or task.saved or not db.has_workload(ctx.mod):
            continue
        top = db.get_top_k(db.commit_workload(ctx.mod), 1)
        t = _records.median_seconds(top[0]) if top else None
        if t is not None and (task.previous_us is None or t * 1e6 < task.previous_us):
            new.append(top[0])
            task.saved = True
    return _records.save_records(records_dir, new)


def _make_monitor(report: TuneReport, contexts, records_dir: str, bar, timeout_per_task):
    """A measure callback: counts trials and errors, saves each task's new best, drives the progress bar."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class Monitor(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            task, ctx = report.tasks[task_id], contexts[task_id]
            task.flop = float(task_scheduler.tasks_[task_id].flop)
            best = None
            for cand, built, ran in zip(measure_candidates, builder_results, runner_results):
                task.trials += 1
                report.trials += 1
                error = built.error_msg or ran.error_msg
                if built.error_msg:
                    task.build_errors += 1
                elif ran.error_msg:
                    task.run_errors += 1
                secs = None if error else _median([float(getattr(s, "value", s)) for s in (ran.run_secs or [])])
                if secs is None:
                    if task.first_error is None:
                        task.first_error = str(error or "no run time measured")
                        task.first_error_trial = task.trials
                    continue
                task.valid += 1
                if best is None or secs < best[0]:
                    best = (secs, cand, ran)
            if best is not None and (task.best_us is None or best[0] * 1e6 < task.best_us):
                task.best_us = best[0] * 1e6
                if task.previous_us is None or task.best_us < task.previous_us:
                    _, cand, ran = best
                    rec = ms.database.TuningRecord(cand.sch.trace, ms.database.Workload(ctx.mod), ran.run_secs,
                                                   ctx.target, cand.args_info)
                    try:
                        report.saved += _records.save_records(records_dir, [rec])
                    except Exception as err:  # noqa: BLE001 - disk full, permissions, ...
                        report.error = f"could not write records to {records_dir}: {_last_line(err)}"
                        raise
                    task.saved = True
            if timeout_per_task and task.seconds >= timeout_per_task:
                record = task_scheduler.tasks_[task_id]
                if not record.is_terminated:
                    task.timed_out = True
                    task_scheduler.terminate_task(task_id)
            if bar is not None:
                failed = len(report.failed)
                bar.set_postfix_str(f"{task.name[:28]} best {_us(task.record_us)}" + (f", {failed} failed" if failed else ""))

    return Monitor()


class _SigintFlag:
    """Remember whether Ctrl-C arrived (then raise KeyboardInterrupt as Python does)."""

    def __init__(self):
        self.hit = False
        self._previous = None

    def _handler(self, signum, frame):
        self.hit = True
        raise KeyboardInterrupt

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _signature(mod):
    """(dtype, shape) of each parameter of the module's PrimFunc: which task a candidate belongs to."""
    func = next(f for _, f in mod.functions.items() if "PrimFunc" in type(f).__name__)
    buffer_map = getattr(func, "buffer_map", None)  # TVM < 0.27; in 0.27 the params are the buffers
    out = []
    for param in func.params:
        buf = buffer_map.get(param, param) if buffer_map is not None else param
        out.append((str(buf.dtype), tuple(str(d) for d in getattr(buf, "shape", None) or ())))
    return tuple(out)


def _clocked(builder, runner, report: TuneReport, contexts, bar):
    """Wrap the builder and runner to time each task and move the progress bar as batches build.

    MetaSchedule's loop is: pick a task, search (generate candidates), build, run. The time from the
    end of one run to the end of the next belongs to the task being built; the task is recognized by
    its kernel's signature. (Measure callbacks cannot time tasks: the gradient scheduler collects the
    first round of every task only once all tasks had a batch.)
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import PyBuilder
    from tvm.s_tir.meta_schedule.runner import PyRunner

    by_signature: dict = {}
    for i, ctx in enumerate(contexts):
        by_signature.setdefault(_signature(ctx.mod), []).append(i)
    clock = {"last": time.perf_counter(), "task": None}

    def charge():
        now = time.perf_counter()
        if clock["task"] is not None:
            report.tasks[clock["task"]].seconds += now - clock["last"]
        clock["last"] = now

    @derived_object
    class ClockedBuilder(PyBuilder):
        def build(self, build_inputs):
            ids = by_signature.get(_signature(build_inputs[0].mod), []) if build_inputs else []
            clock["task"] = ids[0] if len(ids) == 1 else None
            results = builder.build(build_inputs)
            charge()
            if bar is not None:
                bar.update(len(build_inputs))
            return results

    @derived_object
    class ClockedRunner(PyRunner):
        def run(self, runner_inputs):
            futures = runner.run(runner_inputs)
            charge()
            return futures

    return ClockedBuilder(), ClockedRunner()


def _median(xs):
    if not xs:
        return None
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def _us(v) -> str:
    return "-" if v is None else f"{v:.2f} us"


_EXCEPTION_LINE = re.compile(r"(?:[A-Za-z_][\w]*\.)*(?P<name>[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit))"
                             r"(?::[ \t]*(?P<text>.*))?")


def root_error(message: str) -> str:
    """The line of a builder's or runner's error message that says what went wrong.

    MetaSchedule's builders and runners report a failed candidate as "LocalBuilder: An exception
    occurred" followed by the worker's whole traceback, so the first line says nothing. The cause is
    the exception the traceback ends with: its last unindented ``SomeError: text`` line, e.g. TVM's
    ``InternalError: Check failed: ... Cannot broadcast lanes=4 ... to 12``, an LLVM verifier message
    or the cross linker's ``ArtifactError``. When that text only introduces the next line ("... with
    the following errors:"), the next line is added. A message without a traceback (a timeout, a
    runner's own words) comes back as its first line.
    """
    lines = [line.rstrip() for line in str(message or "").strip().splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        m = _EXCEPTION_LINE.fullmatch(lines[i])
        if m is None or lines[i][:1].isspace():
            continue
        text = (m["text"] or "").strip()
        rest = next((line.strip() for line in lines[i + 1:] if line.strip()), "")
        if rest and (not text or text.endswith(":")):
            text = f"{text} {rest}".strip()
        return f"{m['name']}: {text}" if text else m["name"]
    return lines[0] if lines else ""


def _exception_text(err) -> str:
    """A build worker's exception as text: the traceback the worker sent, or "Type: message" when it
    sent none (a worker that died answers ChildProcessError("Subprocess terminated"), which alone
    names no error for root_error to find; its reason is on the tuning process's stderr)."""
    text = str(err)
    return text if "Traceback (most recent call last)" in text else f"{type(err).__name__}: {text}"


def _last_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def _quiet_meta_schedule(verbose: bool):
    """MetaSchedule prints its task table at INFO on stdout; keep that for the log files only.

    Its create_loggers() re-attaches the logger's existing handlers by name and crashes on a
    nameless one (pytest's LogCaptureHandler ends up there), so those are detached first.
    """
    logger = logging.getLogger(_MS_LOGGER)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    for h in list(logger.handlers):
        if h.get_name() is None:
            logger.removeHandler(h)


def _release_logs(work_dir: str):
    """Close the log files MetaSchedule opened in `work_dir` (its loggers outlive the run)."""
    prefix = os.path.abspath(work_dir) + os.sep
    manager = logging.Logger.manager
    for name in [_MS_LOGGER] + [n for n in list(manager.loggerDict) if n.startswith(_MS_LOGGER + ".")]:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.FileHandler) and os.path.abspath(h.baseFilename).startswith(prefix):
                logger.removeHandler(h)
                h.close()
