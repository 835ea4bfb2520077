"""Tuning records: where they live, and applying them to a lowered module.

Records are MetaSchedule JSON databases (database_workload.json + database_tuning_record.json).
``compile`` applies, in order, the databases given with --records and the committed
ones in schedules/<target name>/. Records match by workload (the TIR structure),
so records tuned on one model serve every model with the same kernels.
"""

from __future__ import annotations

import os

from ..bundled import bundled_dir
from ..intrin import use_cpu_tensor_intrinsics

SCHEDULES_DIR = bundled_dir("schedules")
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
    """Apply the best record of each matching workload. Returns (mod, folders used).

    The last folder named carries how many kernels got a tuned schedule, e.g.
    ``["runs/db", "schedules/x86_64 (8 of 8 kernels)"]``.
    """
    dirs = record_dirs(target, extra_dirs)
    if not dirs:
        return mod, []
    import tvm
    from tvm import relax

    # records replay their traces, and a tensorized one names its intrinsic (dot_4x4_i8i8s32_neon,
    # qcompile_dot_16x4_vnni...): register the target's before the database is read
    use_cpu_tensor_intrinsics(target.tvm())
    total = _count_kernels(mod)
    before = _count_kernels(mod, scheduled=True)
    with target.tvm(), open_database(dirs), tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    tuned = _count_kernels(mod, scheduled=True) - before
    return mod, dirs[:-1] + [f"{dirs[-1]} ({tuned} of {total} kernels)"]


def _count_kernels(mod, scheduled: bool = False) -> int:
    """PrimFuncs in `mod` (with scheduled=True: only those carrying tirx.is_scheduled)."""
    n = 0
    for _, func in mod.functions.items():
        if "PrimFunc" not in type(func).__name__:
            continue
        if not scheduled or (func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))):
            n += 1
    return n


# ----------------------------------------------------------------------------- saving and loading

def median_seconds(record) -> float | None:
    """The median measured run time of a TuningRecord in seconds (None when it has none)."""
    secs = sorted(float(getattr(s, "value", s)) for s in (record.run_secs or []))
    if not secs:
        return None
    mid = len(secs) // 2
    return secs[mid] if len(secs) % 2 else 0.5 * (secs[mid - 1] + secs[mid])


def load_records(path: str) -> list:
    """The best TuningRecord of every workload in the record folder `path` (empty if there is none)."""
    if not is_database(path):
        return []
    try:
        from tvm_ffi import structural_hash  # TVM 0.27 (tvm.ir.structural_hash is gone)
    except ImportError:
        from tvm.ir import structural_hash

    db = open_database([path])
    best = {}
    for rec in db.get_all_tuning_records():
        key = structural_hash(rec.workload.mod)
        t = median_seconds(rec)
        if t is not None and (key not in best or t < best[key][0]):
            best[key] = (t, rec)
    return [rec for _, rec in best.values()]


def best_seconds(path: str, mods) -> list[float | None]:
    """For each workload IRModule in `mods`: the best median run time recorded in `path`, or None."""
    if not is_database(path):
        return [None] * len(mods)
    db = open_database([path])
    out = []
    for mod in mods:
        top = db.get_top_k(db.commit_workload(mod), 1) if db.has_workload(mod) else []
        out.append(median_seconds(top[0]) if top else None)
    return out


def save_records(path: str, records) -> int:
    """Add TuningRecords to the record folder `path` (created if needed). Returns how many were added.

    The folder is never left half-written: the two JSON files are copied, appended to, and renamed
    into place, workloads first. Records index workloads by line, and the new workload file keeps
    every old line in place, so a crash between the two renames still leaves a consistent database.
    A lock file serializes concurrent writers.
    """
    records = list(records)
    if not records:
        return 0
    import shutil
    import tempfile

    from tvm.s_tir import meta_schedule as ms

    os.makedirs(path, exist_ok=True)
    with _locked(path):
        tmp = tempfile.mkdtemp(prefix=".tmp-records-", dir=path)
        try:
            for name in (_WORKLOAD_FILE, _RECORD_FILE):
                if os.path.isfile(os.path.join(path, name)):
                    shutil.copyfile(os.path.join(path, name), os.path.join(tmp, name))
            db = ms.database.JSONDatabase(work_dir=tmp, allow_missing=True)
            for rec in records:
                workload = db.commit_workload(rec.workload.mod)
                db.commit_tuning_record(ms.database.TuningRecord(rec.trace, workload, rec.run_secs,
                                                                 rec.target, rec.args_info))
            del db
            for name in (_WORKLOAD_FILE, _RECORD_FILE):
                _fsync(os.path.join(tmp, name))
                os.replace(os.path.join(tmp, name), os.path.join(path, name))
            _fsync(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return len(records)


def merge_records(src: str, dst: str) -> int:
    """Copy into `dst` the best record of each workload of `src` that beats what `dst` has."""
    best = load_records(src)
    if not best:
        return 0
    before = best_seconds(dst, [rec.workload.mod for rec in best])
    return save_records(dst, [rec for rec, old in zip(best, before) if old is None or median_seconds(rec) < old])


class _locked:
    """An exclusive advisory lock on the folder itself (a no-op where fcntl does not exist)."""

    def __init__(self, folder: str):
        self.path = folder
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def _fsync(path: str):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
