"""Latency measurement of an artifact on this machine.

Each repeat is one timed call of ``main`` (TVM's time_evaluator with number=1), after
`warmup` untimed calls. The TVM thread pool is pinned to `threads` first.
The result keys are stable; scripts read them.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

RESULT_KEYS = ("median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "repeat", "warmup", "threads", "target")


def set_threads(threads: int):
    """Pin TVM's CPU thread pool to `threads` workers (0 = TVM's default)."""
    import tvm

    if threads < 0:
        raise InputError(f"--threads must be >= 0, got {threads}")
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))


def stats_ms(seconds) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "std_ms": float(ms.std()), "min_ms": float(ms.min())}


def bench_vm(vm, dev, args, warmup: int, repeat: int, progress: bool = False) -> list[float]:
    """Time `repeat` calls of vm["main"](*args) (seconds each), after `warmup` calls."""
    if repeat < 1:
        raise InputError(f"--repeat must be >= 1, got {repeat}")
    for _ in range(max(0, warmup)):
        vm["main"](*args)
    timer = vm.time_evaluator("main", dev, number=1, repeat=1)
    it = range(repeat)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="bench", unit="run", leave=False)
    return [timer(*args).results[0] for _ in it]


def benchmark(artifact, inputs=None, threads: int = 1, warmup: int = 10, repeat: int = 100,
              progress: bool = False) -> dict:
    """Benchmark `artifact` locally. `inputs` defaults to seeded random data of the right shapes."""
    import tvm

    set_threads(threads)
    dev = tvm.cpu()
    args = _bench_args(artifact, inputs, dev)
    times = bench_vm(artifact.vm, dev, args, warmup, repeat, progress)
    result = stats_ms(times)
    result.update({"repeat": repeat, "warmup": warmup, "threads": threads, "target": artifact.target_name})
    return result


def _bench_args(artifact, inputs, dev) -> list:
    import tvm

    if inputs is None:
        from ..model import Model

        inputs = Model(None, artifact.inputs, artifact.outputs).random_inputs()
    arrays = artifact.check_inputs(inputs)
    if any(a.shape != s.shape for a, s in zip(arrays, artifact.inputs)):
        raise InputError("bench inputs must have exactly the model's input shapes (one batch)")
    return [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]


def profile(artifact, inputs=None, threads: int = 1, warmup: int = 3, repeat: int = 20,
            total_ms: float | None = None, progress: bool = False) -> dict:
    """Per-kernel profile of one inference (see runtime/profile.py). `total_ms`: the plain median
    latency the shares are taken of (e.g. benchmark()'s median_ms; default: measured here)."""
    import tvm

    from .profile import profile_vm

    if repeat < 1:
        raise InputError(f"--repeat must be >= 1, got {repeat}")
    set_threads(threads)
    dev = tvm.cpu()
    args = _bench_args(artifact, inputs, dev)
    lib = library_module(artifact)
    result = profile_vm(lib, dev, args, repeat=repeat, warmup=warmup, total_ms=total_ms, progress=progress)
    result.update({"threads": threads, "target": artifact.target_name})
    return result


def library_module(artifact):
    """The artifact's runtime module (VM executable + its TIR kernels as imports): a fresh load of
    the folder's library, or an in-memory executable's module. Profiling makes its own VM from it."""
    import tvm

    artifact.check_runs_here()
    if artifact.metadata.get("accelerator"):
        import qcompile.accel.runtime  # noqa: F401  registers "qcompile.accel.run" for offloaded layers
    if artifact._executable is not None:
        ex = artifact._executable
        return ex.mod if isinstance(ex, tvm.runtime.Executable) else ex
    return tvm.runtime.load_module(artifact.library_path)


def format_bench(r: dict) -> str:
    return (f"target {r['target']}  threads {r['threads']}  repeat {r['repeat']}\n"
            f"median {r['median_ms']:.3f} ms  p90 {r['p90_ms']:.3f}  p99 {r['p99_ms']:.3f}  "
            f"mean {r['mean_ms']:.3f} ± {r['std_ms']:.3f}  min {r['min_ms']:.3f}")
