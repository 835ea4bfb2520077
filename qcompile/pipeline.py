"""The compile pipeline: a short, explicit list of named stages.

    import -> preprocess -> annotate -> calibrate -> realize -> offload -> lower -> apply_records -> build -> export

Each stage is a plain function of the CompileState. Stages that transform the IR
run ordinary TVM passes, so a user can put their own Relax pass (a
``tvm.transform.Pass``, e.g. made with ``@relax.transform.function_pass``, or any
callable IRModule -> IRModule) before or after any stage::

    pipe = qcompile.Pipeline(target="x86_64")
    pipe.add_pass(MyPass(), after="preprocess")
    artifact = pipe.run("model.onnx", out_dir="out")

The annotate/calibrate/realize stages run only when a quantization config is given;
offload only when the target describes an accelerator (qcompile/accel).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .build import build_passes, lower_passes
from .errors import BuildError, ConfigError
from .model import Model
from .target import TargetSpec, load_target

STAGES = ("import", "preprocess", "annotate", "calibrate", "realize", "offload", "lower", "apply_records", "build",
          "export")


@dataclass
class CompileState:
    """What flows through the stages. ``mod`` is the current IRModule."""

    source: object
    target: TargetSpec
    input_shapes: dict | None = None
    qconfig: object = None
    calib: object = None
    records: list = field(default_factory=list)
    default_schedule: bool = True   # schedule the kernels records left untuned (schedule/default.py)
    out_dir: str | None = None
    model: Model | None = None
    mod: object = None
    executable: object = None
    artifact: object = None
    quant_info: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    progress: bool = True  # progress bars on long stages (calibration, layer report)


# ----------------------------------------------------------------------------- stages

def stage_import(state: CompileState):
    from .frontend import load

    state.model = load(state.source, state.input_shapes)
    state.mod = state.model.mod


def preprocess_passes():
    """Inference simplifications every target wants before quantization: BatchNorm and per-channel
    scale/shift folded into the conv/matmul weights (so weight ranges are taken after folding), ONNX's
    n-ary Sum as binary adds (qcompile/transform)."""
    from tvm import relax

    from .transform import FoldBatchNorm, SumToAdds

    return [
        relax.transform.FoldConstant(),          # a Gemm's transposed weight becomes a constant
        relax.transform.DeadCodeElimination(),   # batch_norm's unused running-statistics items
        FoldBatchNorm(),
        SumToAdds(),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.FoldConstant(),
        relax.transform.DeadCodeElimination(),
    ]


def stage_preprocess(state: CompileState):
    state.mod = _apply(preprocess_passes(), state)


def stage_annotate(state: CompileState):
    """Plan which layers get quantized (the rules registry decides).

    A pre-quantized (QDQ) model is quantized with its own scales even without a qconfig."""
    from .quantize import qdq

    if state.qconfig is None and qdq.has_qdq(state.mod):
        from .quantize.qconfig import QConfig

        state.qconfig = QConfig()
        state.notes.append("pre-quantized (QDQ) model: realized with the model's own scales")
    if state.qconfig is None:
        return
    from .quantize import annotate

    if "fixed_qparams" not in state.quant_info:
        state.mod, state.quant_info["fixed_qparams"] = qdq.fold_qdq(state.mod)
    qconfig = state.qconfig.resolved(state.target)
    state.quant_info["qconfig"] = qconfig
    if qconfig.is_float:
        return
    state.quant_info["source_names"] = _source_names(state.model)
    state.quant_info["plan"] = annotate.annotate(state.mod, qconfig, state.target,
                                                 state.quant_info.get("precision_overrides"),
                                                 state.quant_info["source_names"],
                                                 state.quant_info.get("float_vars", ()))
    from .quantize.calibrate import carry_over

    carry_over(state.quant_info["plan"], state.quant_info)  # a re-annotate keeps what calibration decided


def _source_names(model) -> dict:
    """{relax var name: [ONNX tensor name, ONNX node name]} so keep_* patterns can name source nodes."""
    tensors = model.meta.get("onnx_names", {})
    proto = model.meta.get("onnx_proto")
    producer = {out: node.name for node in proto.graph.node for out in node.output} if proto is not None else {}
    return {var: [t] + ([producer[t]] if producer.get(t) else []) for var, t in tensors.items()}


def stage_calibrate(state: CompileState):
    """Observe the planned tensors on the calibration data (reuses ranges given in quant_info)."""
    if state.qconfig is None or state.quant_info["qconfig"].is_float:
        return
    if state.quant_info["qconfig"].is_dynamic:
        state.quant_info["ranges"] = {}
        return
    if state.quant_info.get("ranges") is None:
        from .quantize import calibrate

        state.quant_info["ranges"] = calibrate.calibrate(state)


def stage_realize(state: CompileState):
    """Rewrite the planned layers into integer arithmetic."""
    if state.qconfig is None:
        return
    from .quantize import realize
    from .quantize.float_precision import LowerFloatCompute

    qconfig = state.quant_info["qconfig"]
    if state.quant_info.get("net_inputs") is not None and "safety_net" not in state.quant_info:
        _safety_net(state)
    if not qconfig.is_float:
        state.mod = realize.realize(state)
    if qconfig.float_dtype != "float32":
        lower_float = LowerFloatCompute(qconfig.float_dtype)
        state.mod = _apply([lower_float], state)
        state.notes.append(f"{lower_float.count} float conv2d/matmul run with {qconfig.float_dtype} operands")
    if qconfig.is_float:
        state.quant_info["summary"] = {"qconfig": qconfig.to_json(), "float_dtype": qconfig.float_dtype,
                                       "float_layers": lower_float.count}
        return
    plan = state.quant_info["plan"]
    realized = state.quant_info["realized"]
    state.quant_info["summary"] = {
        "qconfig": qconfig.to_json(),
        "layers": {layer.name: realize.precision(realized.get(layer.name, "fp32")) for layer in plan.layers},
        "integer_layers": len(realized),
        "kept_fp32_by_rule": state.quant_info.get("kept_float", {}),
        "calibration_samples": state.quant_info.get("num_calib_samples"),
        "safety_net": state.quant_info.get("safety_net"),
        "smoothing": state.quant_info.get("smoothing"),   # per dense input: alpha, errors, per-token choice
    }
    if state.quant_info.get("want_report"):
        from .quantize.report import layer_report

        layer_report(state)
    if state.quant_info.get("want_qdq"):
        from .quantize.export_onnx import export_qdq

        state.quant_info.setdefault("files", {})["model_qdq.onnx"] = lambda path: export_qdq(state, path)


def _safety_net(state: CompileState):
    """Check the int8 plan on held-back samples; re-plan with the layers the net moves (quantize/safety_net.py)."""
    from .quantize import safety_net

    moved, report = safety_net.check(state, state.quant_info["net_inputs"], progress=state.progress)
    state.quant_info["safety_net"] = report
    state.notes.append(safety_net.note(report))
    if moved:
        state.quant_info["precision_overrides"] = {**(state.quant_info.get("precision_overrides") or {}), **moved}
        stage_annotate(state)  # the same tensors, the moved layers at their new precision; ranges are kept


def stage_offload(state: CompileState):
    """Move the integer conv/dense layers the target's accelerator can run into call_dps_packed calls."""
    from .accel import offload_stage

    offload_stage(state)


def stage_lower(state: CompileState):
    """Split grouped convolutions per group, pack the dense and conv2d weights for the target's
    dot-product intrinsics (none: a no-op), keep the tensors between packed convs channels-last, then
    legalize and fuse."""
    from .intrin.pack import PackDenseWeights
    from .intrin.pack_conv import PackConvWeights
    from .transform import ChannelsLast, SplitGroupedConv

    split = SplitGroupedConv()
    packs = [PackDenseWeights(state.target.intrinsics), PackConvWeights(state.target.intrinsics), ChannelsLast()]
    state.mod = _apply([split] + packs + lower_passes(state.target.tvm()), state)
    if split.last_count:
        state.notes.append(f"{split.last_count} grouped conv2d split into one conv2d per group")


def stage_apply_records(state: CompileState):
    """Tuned schedules from the record folders; then a default schedule for every kernel left without
    one (CPU targets, unless turned off), instead of TVM's naive loop nest."""
    from .schedule import records

    state.mod, used = records.apply_records(state.mod, state.target, state.records)
    if used:
        state.notes.append(f"tuning records applied from {', '.join(used)}")
    if state.default_schedule:
        from .schedule import default as default_schedule

        report = default_schedule.DefaultScheduleReport()
        state.mod = default_schedule.apply_default_schedule(state.mod, state.target.tvm(), report=report)
        if report.kernels:
            state.notes.append(report.summary())


def stage_build(state: CompileState):
    import tvm

    target = state.target.tvm()
    seq = tvm.transform.Sequential(build_passes(target))
    try:
        state.executable = tvm.compile(state.mod, target, relax_pipeline=seq)
    except Exception as err:  # noqa: BLE001 - TVM raises many error types from codegen
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise BuildError(f"TVM failed to build for target '{state.target.name}': {last}") from err


def stage_export(state: CompileState):
    from .artifact import Artifact, write_artifact

    if state.out_dir is None:
        state.artifact = Artifact.in_memory(state)
    else:
        state.artifact = write_artifact(state, state.out_dir)


_STAGE_FUNCS = {
    "import": stage_import, "preprocess": stage_preprocess, "annotate": stage_annotate,
    "calibrate": stage_calibrate, "realize": stage_realize, "offload": stage_offload, "lower": stage_lower,
    "apply_records": stage_apply_records, "build": stage_build, "export": stage_export,
}


def _apply(passes, state: CompileState):
    """Run TVM passes (or callables) on state.mod under the target."""
    import tvm

    mod = state.mod
    with state.target.tvm(), tvm.transform.PassContext(opt_level=3):
        for p in passes:
            mod = p(mod)
    return mod


# ----------------------------------------------------------------------------- pipeline

class Pipeline:
    """The stages plus the user's passes hooked before/after them."""

    def __init__(self, target="auto", qconfig=None, records=(), input_shapes=None, progress: bool = True,
                 quant_report: bool = False, export_qdq: bool = False, default_schedule: bool | None = None):
        """default_schedule -- schedule kernels without a tuning record (None: the target's
        ``tuning.default_schedule``, on in every bundled target; False: TVM's naive loop nests)."""
        self.target = load_target(target)
        self.default_schedule = (bool(getattr(self.target.tuning, "default_schedule", True))
                                 if default_schedule is None else bool(default_schedule))
        self.quant_report = quant_report
        self.export_qdq = export_qdq
        self.qconfig = qconfig
        self.records = list(records)
        self.input_shapes = input_shapes
        self.progress = progress
        self._hooks: dict[tuple[str, str], list[Callable]] = {}

    def add_pass(self, pass_, *, before: str | None = None, after: str | None = None) -> "Pipeline":
        """Run `pass_` (tvm.transform.Pass or IRModule -> IRModule) before or after a named stage."""
        if (before is None) == (after is None):
            raise ConfigError("add_pass needs exactly one of before=STAGE or after=STAGE")
        stage = before or after
        if stage not in STAGES:
            raise ConfigError(f"unknown stage '{stage}'; stages are: {', '.join(STAGES)}")
        if stage in ("import",) and before:
            raise ConfigError("there is no IR before 'import'; hook after='import' instead")
        if stage in ("build", "export") and after:
            raise ConfigError(f"after '{stage}' the IR is compiled; hook before='build' at the latest")
        if not callable(pass_):
            raise ConfigError(f"{pass_!r} is not a pass: give a tvm.transform.Pass or a function IRModule -> IRModule")
        self._hooks.setdefault(("before" if before else "after", stage), []).append(pass_)
        return self

    def hooks(self) -> dict:
        return {f"{k[0]}:{k[1]}": [getattr(p, "__name__", None) or type(p).__name__ for p in v] for k, v in self._hooks.items()}

    def run(self, source, out_dir: str | None = None, calib=None, evaluation: dict | None = None) -> "object":
        """Compile `source` (path, ModelProto, ExportedProgram or Model). Returns an Artifact.

        evaluation -- for mixed precision: {"inputs": {name: array}, "labels": array, "fn": artifact -> float}
        """
        state = CompileState(source=source, target=self.target, input_shapes=self.input_shapes,
                             qconfig=self.qconfig, calib=calib, records=self.records, out_dir=out_dir,
                             progress=self.progress, default_schedule=self.default_schedule)
        if evaluation:
            state.quant_info["evaluation"] = evaluation
        state.quant_info["want_report"] = self.quant_report
        state.quant_info["want_qdq"] = self.export_qdq
        self.state = state  # kept for inspection: plan, ranges, timings
        if self.qconfig is not None and getattr(self.qconfig, "budget", None):
            from .quantize import mixed

            self.run_stages(state, STAGES[:STAGES.index("annotate")])
            state = self.state = mixed.search(self, state)
            self.run_stages(state, ("export",))
        else:
            self.run_stages(state, STAGES)
        return state.artifact

    def run_stages(self, state: CompileState, names):
        """Run the named stages (with their hooks) on `state`, in pipeline order."""
        for name in names:
            self._run_hooks("before", name, state)
            start = time.perf_counter()
            _STAGE_FUNCS[name](state)
            state.timings[name] = state.timings.get(name, 0.0) + time.perf_counter() - start
            self._run_hooks("after", name, state)

    def _run_hooks(self, when: str, stage: str, state: CompileState):
        passes = self._hooks.get((when, stage))
        if passes:
            start = time.perf_counter()
            state.mod = _apply(passes, state)
            state.timings[f"{when}:{stage}"] = time.perf_counter() - start
