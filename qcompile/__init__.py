"""qcompile: a quantizing compiler flow on Apache TVM Relax.

Public API:
    compile(model, target="auto", out_dir=None, ...) -> Artifact
    load(out_dir) -> Artifact            # artifact.run({name: array}) -> {output: array}
    Pipeline                             # stages + user pass hooks
    load_model(path_or_obj) -> Model     # import only
    load_target(name_or_yaml) -> TargetSpec
"""

from .errors import QCompileError
from .frontend import load as load_model
from .pipeline import STAGES, Pipeline
from .artifact import Artifact
from .target import load_target

__version__ = "0.1.0"


def compile(model, target="auto", out_dir=None, *, input_shapes=None, qconfig=None, calib=None,
            records=(), passes=(), evaluation=None, default_schedule=None):
    """Compile a model (path, onnx.ModelProto, torch ExportedProgram or Model) for a target.

    passes -- [(pass, "after:STAGE" | "before:STAGE"), ...] user passes to hook in.
    evaluation -- mixed precision (qconfig.budget): {"inputs": ..., "labels": ..., "fn": ...}
    default_schedule -- False: kernels without a tuning record stay TVM's naive loop nests
                        (None: the target's tuning.default_schedule, on by default)
    Returns an Artifact (written to out_dir when given).
    """
    pipe = Pipeline(target=target, qconfig=qconfig, records=records, input_shapes=input_shapes,
                    default_schedule=default_schedule)
    for p, where in passes:
        when, _, stage = where.partition(":")
        pipe.add_pass(p, **{when: stage})
    return pipe.run(model, out_dir=out_dir, calib=calib, evaluation=evaluation)


def load(path: str) -> Artifact:
    """Load a compiled artifact folder."""
    return Artifact.load(path)


__all__ = ["compile", "load", "load_model", "load_target", "Pipeline", "STAGES", "Artifact", "QCompileError"]
