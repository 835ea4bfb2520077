"""Tuning records: where they live, and applying them to a lowered module.

Records are MetaSchedule JSON databases (database_workload.json + database_tuning_record.json).
``compile`` applies, in order, the databases given with --records and the committed
ones in schedules/<target name>/. Records match by workload (the TIR structure),
so records tuned on one model serve every model with the same kernels.
"""

from __future__ import annotations

import os

SCHEDULES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "schedules")
_WORKLOAD_FILE = "database_workload.json"
_RECORD_FILE = "database_tuning_record.json"


def is_database(path: str) -> bool:
    return os.path.isfile(os.path.join(path, _WORKLOAD_FILE)) and os.path.isfile(os.path.join(path, _RECORD_FILE))


def default_record_dirs(target) -> list[str]:
    path = os.path.join(SCHEDULES_DIR, target.name)
    return [path] if is_database(path) else []


def record_dirs(target, extra=()) -> list[str]:
    dirs = []
    for d in list(extra) + default_record_dirs(target):
        if not is_database(d):
            from ..errors import ConfigError
            raise ConfigError(f"{d}: not a MetaSchedule record folder (expected {_WORKLOAD_FILE} and {_RECORD_FILE})")
        if os.path.abspath(d) not in map(os.path.abspath, dirs):
            dirs.append(d)
    return dirs


def open_database(dirs: list[str]):
    """One database over several record folders (first folder wins on equal workloads)."""
    from tvm.s_tir import meta_schedule as ms

    dbs = [ms.database.JSONDatabase(work_dir=d, allow_missing=False) for d in dirs]
    if len(dbs) == 1:
        return dbs[0]
    return ms.database.UnionDatabase(*dbs)


def apply_records(mod, target, extra_dirs=()):
    """Apply the best record of each matching workload. Returns (mod, folders used)."""
    dirs = record_dirs(target, extra_dirs)
    if not dirs:
        return mod, []
    import tvm
    from tvm import relax

    with target.tvm(), open_database(dirs), tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    return mod, dirs
