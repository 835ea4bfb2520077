"""Artifacts: the compiled output folder, and running it.

A folder holds the exported shared library and ``metadata.json`` (signature, target,
quantization config, tool versions, model hash). It is written atomically: built in a
temporary sibling folder and renamed into place, so a failed compile never leaves a
half-written folder behind.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import tempfile

import numpy as np

from .errors import ArtifactError, InputError
from .io import flatten_tensors
from .model import TensorSpec

METADATA = "metadata.json"
FORMAT_VERSION = 1


class Artifact:
    """A compiled model: ``run(inputs) -> {output name: array}``."""

    def __init__(self, metadata: dict, path: str | None = None, executable=None):
        self.metadata = metadata
        self.path = path
        self._executable = executable
        self._vm = None
        self.inputs = [TensorSpec.from_json(t) for t in metadata["inputs"]]
        self.outputs = [TensorSpec.from_json(t) for t in metadata["outputs"]]

    # ------------------------------------------------------------------ creation
    @staticmethod
    def in_memory(state) -> "Artifact":
        return Artifact(_metadata(state), executable=state.executable)

    @staticmethod
    def load(path: str) -> "Artifact":
        meta_path = os.path.join(path, METADATA)
        if not os.path.isdir(path):
            raise ArtifactError(f"{path}: no such artifact folder (make one with 'qcompile compile MODEL -o {path}')")
        if not os.path.isfile(meta_path):
            raise ArtifactError(f"{path}: not a qcompile artifact (no {METADATA})")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ArtifactError(f"{meta_path}: unreadable metadata: {err}") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path}: artifact format {meta.get('format_version')} is not {FORMAT_VERSION}; recompile it")
        if not os.path.isfile(os.path.join(path, meta["library"])):
            raise ArtifactError(f"{path}: library {meta['library']} is missing; recompile the model")
        return Artifact(meta, path=path)

    # ------------------------------------------------------------------ properties
    @property
    def target(self) -> dict:
        return self.metadata["target"]

    @property
    def target_name(self) -> str:
        return self.metadata["target"]["name"]

    @property
    def library_path(self) -> str | None:
        return os.path.join(self.path, self.metadata["library"]) if self.path else None

    def check_runs_here(self):
        """Raise ArtifactError if this machine cannot execute the library."""
        t = self.target
        if not t.get("runs_on_host", True):
            raise ArtifactError(f"artifact was built for target '{t['name']}' ({t['tvm_target']}), which does not run "
                                "on this machine; run it on a board with 'qcompile bench OUT --rpc-tracker HOST:PORT --rpc-key KEY'")
        from .cpu_features import host_cpu_flags

        flags = host_cpu_flags()
        missing = [f for f in t.get("requires_cpu_flags", []) if flags is not None and f not in flags]
        if missing:
            raise ArtifactError(f"artifact was built for target '{t['name']}', which needs CPU features {missing} that this "
                                "CPU lacks; compile with --target auto (or x86_64) to run here")

    # ------------------------------------------------------------------ running
    @property
    def vm(self):
        if self._vm is None:
            import tvm
            from tvm import relax

            self.check_runs_here()
            if self.metadata.get("accelerator"):
                import qcompile.accel.runtime  # noqa: F401  registers "qcompile.accel.run" for offloaded layers
            lib = self._executable if self._executable is not None else tvm.runtime.load_module(self.library_path)
            self._vm = relax.VirtualMachine(lib, tvm.cpu())
        return self._vm

    def run(self, inputs) -> dict[str, np.ndarray]:
        """Run on numpy inputs ({name: array} or a list in input order).

        A leading dimension that is a multiple of the model's batch size is run in chunks.
        """
        arrays = self.check_inputs(inputs)
        chunks = _num_chunks(self.inputs, arrays)
        results = [self._run_once([a[i * s.shape[0]:(i + 1) * s.shape[0]] if chunks > 1 and s.shape else a
                                   for a, s in zip(arrays, self.inputs)]) for i in range(chunks)]
        return {o.name: np.concatenate([r[k] for r in results], axis=0) if chunks > 1 else results[0][k]
                for k, o in enumerate(self.outputs)}

    def _run_once(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        import tvm

        # np.require keeps 0-d (scalar) inputs 0-d; ascontiguousarray would make them 1-d
        out = self.vm["main"](*[tvm.runtime.tensor(np.require(a, requirements="C")) for a in arrays])
        return [o.numpy() for o in flatten_tensors(out)]

    def check_inputs(self, inputs) -> list[np.ndarray]:
        """Validate names/dtypes/shapes against the signature; return arrays in input order."""
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != len(self.inputs):
                raise InputError(f"model takes {len(self.inputs)} inputs ({', '.join(self.input_names)}), got {len(inputs)}")
            inputs = dict(zip(self.input_names, inputs))
        if not hasattr(inputs, "keys"):
            raise InputError("inputs must be a dict {input name: array} or a list of arrays")
        names = list(inputs.keys())
        unknown = [n for n in names if n not in self.input_names]
        missing = [n for n in self.input_names if n not in names]
        if unknown or missing:
            raise InputError(f"input names do not match the model: unknown {unknown}, missing {missing}; "
                             f"the model's inputs are {', '.join(str(s) for s in self.inputs)}")
        arrays = []
        for spec in self.inputs:
            a = np.asarray(inputs[spec.name])
            if a.dtype != np.dtype(spec.dtype):
                raise InputError(f"input '{spec.name}' has dtype {a.dtype}, the model expects {spec.dtype} "
                                 f"(convert it, e.g. x.astype('{spec.dtype}'))")
            if a.shape != spec.shape and not _is_batch_multiple(a.shape, spec.shape):
                raise InputError(f"input '{spec.name}' has shape {list(a.shape)}, the model expects {list(spec.shape)} "
                                 f"(or a multiple of the batch size {spec.shape[0] if spec.shape else 1} on axis 0)")
            arrays.append(a)
        return arrays

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]


def _is_batch_multiple(shape, spec_shape) -> bool:
    return (len(shape) == len(spec_shape) > 0 and shape[1:] == tuple(spec_shape[1:])
            and spec_shape[0] > 0 and shape[0] % spec_shape[0] == 0 and shape[0] > 0)


def _num_chunks(specs, arrays) -> int:
    counts = {a.shape[0] // s.shape[0] if a.shape != s.shape else 1 for s, a in zip(specs, arrays) if s.shape}
    if len(counts) > 1:
        raise InputError(f"inputs hold different numbers of batches ({sorted(counts)}); give every input the same count")
    return counts.pop() if counts else 1


# ---------------------------------------------------------------------------- writing

def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("qcompile", "apache-tvm", "apache-tvm-ffi", "onnx", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _metadata(state) -> dict:
    model = state.model
    return {
        "format_version": FORMAT_VERSION,
        "library": state.target.export.library_name,
        "model": {"source": model.source, "format": model.format, "sha256": model.sha256,
                  "meta": {k: v for k, v in model.meta.items() if _jsonable(v)}},
        "inputs": [t.to_json() for t in model.inputs],
        "outputs": [t.to_json() for t in model.outputs],
        "target": state.target.to_json(),
        "quantization": state.quant_info.get("summary") if state.qconfig is not None else None,
        "accelerator": state.quant_info.get("accelerator"),
        "compile_seconds": {k: round(v, 3) for k, v in state.timings.items()},
        "notes": list(state.notes),
        "versions": _versions(),
        "machine": platform.machine(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def cross_fcompile(export_spec):
    """The fcompile that links a library with the target's cross compiler, or None (host compiler).

    Raises ArtifactError naming the package to install when the compiler is not on PATH.
    Used by compile's export and by the tuner's builder (candidates measured on a board).
    """
    if not export_spec.cross_compiler:
        return None
    from tvm.support import cc

    if shutil.which(export_spec.cross_compiler) is None:
        pkg = f" (Debian: apt-get install {export_spec.toolchain_package})" if export_spec.toolchain_package else ""
        raise ArtifactError(f"cross compiler '{export_spec.cross_compiler}' not found on PATH{pkg}")
    return cc.cross_compiler(export_spec.cross_compiler, options=list(export_spec.compiler_options))


def export_library(executable, path: str, export_spec):
    """Link the library, with the target's cross compiler if it has one."""
    fcompile = cross_fcompile(export_spec)
    if fcompile is None:
        executable.export_library(path)
        return
    try:
        executable.export_library(path, fcompile=fcompile)
    except Exception as err:  # noqa: BLE001 - tvm.support.cc raises RuntimeError("Compilation error: ...")
        raise link_error(err, os.path.basename(path), export_spec) from None


# What GNU ld says when the target's C library (crt*.o, libc.so, libgcc_s) is not installed.
_MISSING_LIBC = ("cannot find crt", "cannot find -lc", "cannot find libc", "cannot find libgcc_s",
                 "cannot find -lgcc_s", "cannot find -lm", "crti.o", "Scrt1.o")


def link_error(err: BaseException, name: str, export_spec) -> ArtifactError:
    """A failed cross link as one ArtifactError line: the linker's own complaint, and what to install.

    The usual cause is a cross compiler without its C library (Debian's gcc-aarch64-linux-gnu
    only *recommends* libc6-dev-arm64-cross, so --no-install-recommends leaves it out); the
    link then stops at ``ld: cannot find crti.o``.
    """
    text = str(err)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((ln for ln in lines if "cannot find" in ln or ("error" in ln.lower() and "Compilation error" not in ln)),
                 lines[-1] if lines else type(err).__name__)
    if "/ld: " in first:  # '/usr/lib/gcc-cross/.../bin/ld: cannot find crti.o: ...' -> 'ld: cannot find crti.o: ...'
        first = "ld: " + first.split("/ld: ", 1)[1]
    cc_name = export_spec.cross_compiler
    packages = [p for p in (export_spec.libc_package,) if p]
    if any(s in text for s in _MISSING_LIBC) and packages:
        hint = f"the target's C library is missing (Debian: apt-get install {' '.join(packages)})"
    else:
        packages = [p for p in (export_spec.toolchain_package, export_spec.libc_package) if p]
        hint = (f"is the cross toolchain complete? (Debian: apt-get install {' '.join(packages)})" if packages
                else "check the target's export settings")
    return ArtifactError(f"linking {name} with '{cc_name}' failed: {first}; {hint}")


def write_artifact(state, out_dir: str) -> Artifact:
    """Write library + metadata to a temp sibling folder, then rename it to `out_dir`."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(out_dir) and not os.path.isfile(os.path.join(out_dir, METADATA)) and os.listdir(out_dir):
        raise ArtifactError(f"{out_dir} exists and is not a qcompile artifact; refusing to overwrite it")
    meta = _metadata(state)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=parent)
    try:
        export_library(state.executable, os.path.join(tmp, meta["library"]), state.target.export)
        for name, writer in state.quant_info.get("files", {}).items():
            writer(os.path.join(tmp, name))
        with open(os.path.join(tmp, METADATA), "w") as f:
            json.dump(meta, f, indent=2)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(meta, path=out_dir, executable=None)


def _replace_dir(src: str, dst: str):
    """Rename src to dst; an existing dst is swapped out and removed only after success."""
    if not os.path.exists(dst):
        os.rename(src, dst)
        return
    old = dst + ".old-" + os.path.basename(src)
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)
