"""Build: the lower and build pass lists a compile runs, and the host VM for helper modules.

The pipeline's lower and build stages run these lists; calibration, the per-layer error report
and the sensitivity model run small helper modules on this CPU through ``host_vm``, built the
same way (for target 'auto', with the default schedule, without tuning records).
"""

from __future__ import annotations

from .target import load_target
from .schedule import default as default_schedule


def lower_passes(target):
    """Legalize Relax ops to TIR and fuse them (TVM's CPU legalize passes)."""
    from tvm.relax.backend.cpu_generic.pipeline import legalize_passes, library_dispatch_passes

    return library_dispatch_passes(target) + legalize_passes(target)


def build_passes(target):
    """Relax dataflow lowering and finalization before codegen (TVM's CPU pipeline)."""
    from tvm.relax.backend.cpu_generic.pipeline import dataflow_lower_passes, finalize_passes

    return dataflow_lower_passes(target) + finalize_passes(target)


# LLVM optimization level of helper modules. They run a few dozen samples once; at LLVM's default (3)
# their machine code took most of a default int8 compile (PP-OCR cls: 3 helper builds, 65 s of JIT
# codegen in VM setup alone, of 165 s).
HELPER_OPT_LEVEL = 1


def host_vm(mod):
    """A VirtualMachine on this CPU for a helper module (calibration, the error report, the
    sensitivity model), built like a compile for target 'auto': lowering, default schedules for
    every kernel (no records: helper modules are one-offs), build passes."""
    import tvm
    from tvm import relax

    host = load_target("auto")
    target = tvm.target.Target({**dict(host.tvm_target), "opt-level": HELPER_OPT_LEVEL})
    with target, tvm.transform.PassContext(opt_level=3):
        for p in lower_passes(target):
            mod = p(mod)
        if getattr(host.tuning, "default_schedule", True):
            mod = default_schedule.apply_default_schedule(mod, target)
    ex = tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(build_passes(target)))
    return relax.VirtualMachine(ex, tvm.cpu())
