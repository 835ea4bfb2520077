"""TargetSpec: everything target-specific, loaded from targets/*.yaml and validated.

A target file is data. It says which TVM target to build for, what integer dtypes and
layouts the hardware wants, which tensor intrinsics to tensorize with, how to tune,
and how to export (host or cross compiler). Passes read the spec; they never test
"is this ARM?".

``load_target("x86_vnni")`` looks in the bundled targets/ folder; a path to a .yaml
file loads a user's own definition.

What a CPU needs to run a target's code is not written in the file: it is derived from what LLVM
is told (``tvm_target``'s mcpu + mattr, see cpu_features.py), so the check at load time and the
instructions in the library cannot disagree. ``cpus:`` lists the CPUs (LLVM names) the target
claims to run on; loading the file checks every one of them has every required feature.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field

import yaml

from .. import cpu_features
from ..bundled import bundled_dir
from ..errors import TargetError
from .accelerator import AccelConfig
from .intrinsics import check_names

_INT_DTYPES = ("int8", "uint8", "int16")


@dataclass(frozen=True)
class QuantSpec:
    """The integer formats this hardware prefers."""

    activation_dtype: str = "int8"
    weight_dtype: str = "int8"
    accumulate_dtype: str = "int32"
    symmetric_activations: bool = False
    per_channel_weights: bool = True
    power_of_two_scales: bool = False
    conv_layout: str = "NCHW"


@dataclass(frozen=True)
class TuningSpec:
    """MetaSchedule defaults for this target."""

    max_trials_global: int = 2000
    max_trials_per_task: int = 64
    num_trials_per_iter: int = 32
    builder_timeout_s: float = 120.0
    runner_timeout_s: float = 30.0
    space: str = "post-order-apply"
    default_schedule: bool = True   # kernels without a record get qcompile.schedule.default (else naive loops)


@dataclass(frozen=True)
class ExportSpec:
    """How the shared library is linked: host compiler, or a cross compiler."""

    cross_compiler: str | None = None
    compiler_options: tuple[str, ...] = ()
    toolchain_package: str | None = None   # the package with `cross_compiler` (named when it is missing)
    libc_package: str | None = None        # the target's C library and start files the link needs
    library_name: str = "model.so"


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    tvm_target: dict
    runs_on_host: bool = True
    cpus: tuple[str, ...] = ()             # LLVM CPU names this target's code claims to run on (checked)
    intrinsics: tuple[str, ...] = ()
    quant: QuantSpec = field(default_factory=QuantSpec)
    tuning: TuningSpec = field(default_factory=TuningSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    accelerator: dict | None = None
    source: str = ""

    def tvm(self):
        """The tvm.target.Target this spec builds for."""
        import tvm

        return tvm.target.Target(dict(self.tvm_target))

    @functools.cached_property
    def cpu_features(self) -> tuple[str, ...]:
        """The LLVM features of tvm_target that a CPU must have to run this target's code."""
        return cpu_features.required_features(self.tvm_target)

    @property
    def arch(self) -> str:
        return cpu_features.arch_of(self.tvm_target)

    @property
    def requires_cpu_flags(self) -> tuple[str, ...]:
        """cpu_features as /proc/cpuinfo flags (what an artifact checks when it loads)."""
        return cpu_features.to_cpuinfo(self.cpu_features, self.arch)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        d["cpu_features"] = list(self.cpu_features)
        d["requires_cpu_flags"] = list(self.requires_cpu_flags)
        return d

    def missing_cpu_flags(self) -> list[str]:
        """CPU flags this target needs that the machine running us lacks (empty off Linux)."""
        flags = cpu_features.host_cpu_flags()
        if flags is None:
            return []
        return [f for f in self.requires_cpu_flags if f not in flags]

    def runs_here(self) -> bool:
        """Whether this machine can run the target's code (same architecture, every feature present)."""
        return (self.runs_on_host and self.tvm_target.get("kind") == "llvm"
                and self.arch == cpu_features.host_arch() and not self.missing_cpu_flags())


def config_of(target) -> AccelConfig | None:
    """The AccelConfig of a TargetSpec (or of a target name/path), None if it has no accelerator."""
    spec = target if isinstance(target, TargetSpec) else load_target(target)
    section = getattr(spec, "accelerator", None)
    if section is None:
        return None
    return AccelConfig.from_dict(dict(section), spec.source)


def target_dirs() -> list[str]:
    return [bundled_dir("targets")]


def list_targets() -> list[TargetSpec]:
    seen, out = set(), []
    for d in target_dirs():
        for fname in sorted(os.listdir(d)):
            if fname.endswith((".yaml", ".yml")) and fname not in seen:
                seen.add(fname)
                out.append(load_target(os.path.join(d, fname)))
    return out


def host_target_name() -> str:
    """The most capable bundled CPU target whose every feature this machine has: "auto" resolves to it.

    Capable = LLVM features enabled; accelerator targets (which also run on the host) are not
    candidates. Ties go to the name that sorts first.
    """
    runnable = [t for t in list_targets() if t.accelerator is None and t.runs_here()]
    if not runnable:
        raise TargetError(f"no bundled target runs on this {cpu_features.host_arch()} CPU; pass --target with a "
                          "target file for it (see 'qcompile targets')")
    return min(runnable, key=lambda t: (-len(cpu_features.llvm_features(t.tvm_target)), t.name)).name


def load_target(name_or_path="auto") -> TargetSpec:
    """Load a target by bundled name ("x86_vnni"), "auto" (the best one for this CPU), or a YAML path."""
    if isinstance(name_or_path, TargetSpec):
        return name_or_path
    if name_or_path in (None, "auto", "host"):
        name_or_path = host_target_name()
    path = _resolve(str(name_or_path))
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise TargetError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise TargetError(f"{path}: a target file must be a mapping of keys (name, tvm_target, ...)")
    spec = _from_dict(data, path)
    _check_tvm_target(spec, path)
    _check_cpus(spec, path)
    return spec


def _resolve(name: str) -> str:
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        if not os.path.isfile(name):
            raise TargetError(f"{name}: no such target file")
        return name
    for d in target_dirs():
        path = os.path.join(d, name + ".yaml")
        if os.path.isfile(path):
            return path
    known = sorted({os.path.splitext(f)[0] for d in target_dirs() for f in os.listdir(d) if f.endswith(".yaml")})
    raise TargetError(f"unknown target '{name}'; known targets: {', '.join(known)} (or pass a path to a .yaml file)")


def _from_dict(data: dict, path: str) -> TargetSpec:
    sections = {"quant": QuantSpec, "tuning": TuningSpec, "export": ExportSpec}
    if "requires_cpu_flags" in data:
        raise TargetError(f"{path}: 'requires_cpu_flags' is no longer written by hand: the CPU features a target "
                          "needs are derived from tvm_target (mcpu, mattr); remove the key, and list the CPUs the "
                          "target must run on under 'cpus:' to have them checked")
    kwargs = _fields_from(TargetSpec, data, path, "", skip={"source"})
    for key, cls in sections.items():
        if key in data:
            if not isinstance(data[key], dict):
                raise TargetError(f"{path}: '{key}' must be a mapping")
            kwargs[key] = cls(**_fields_from(cls, data[key], path, key + "."))
    for req in ("name", "tvm_target"):
        if req not in data:
            raise TargetError(f"{path}: missing required key '{req}'")
    kwargs.setdefault("description", "")
    if not isinstance(kwargs["tvm_target"], dict) or "kind" not in kwargs["tvm_target"]:
        raise TargetError(f"{path}: 'tvm_target' must be a mapping with a 'kind', e.g. {{kind: llvm, mcpu: sapphirerapids}}")
    spec = TargetSpec(source=path, **kwargs)
    _check_values(spec, path)
    return spec


def _check_cpus(spec: TargetSpec, path: str):
    """Every CPU the file claims must have every feature the code may use."""
    need = set(spec.cpu_features)
    import tvm

    triple = spec.tvm_target.get("mtriple") or str(tvm.target.codegen.llvm_get_system_triple())
    for cpu in spec.cpus:
        if not tvm.target.codegen.llvm_is_valid_cpu(cpu, triple):
            raise TargetError(f"{path}: 'cpus' names '{cpu}', which LLVM does not know for {triple}")
        claimed = dict(spec.tvm_target, mcpu=cpu)
        claimed.pop("mattr", None)
        has = cpu_features.llvm_features(claimed)
        missing = sorted(need - has)
        if missing:
            raise TargetError(f"{path}: 'cpus' claims '{cpu}', but the code for tvm_target {spec.tvm_target} may use "
                              f"features {missing} that {cpu} lacks; pick an older mcpu or drop '{cpu}'")


def _fields_from(cls, data: dict, path: str, prefix: str, skip=()) -> dict:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    nested = {"quant", "tuning", "export"} if cls is TargetSpec else set()
    out = {}
    for key, value in data.items():
        if key not in fields:
            raise TargetError(f"{path}: unknown key '{prefix}{key}'; valid keys here: {', '.join(sorted(fields))}")
        if key in nested:
            continue
        out[key] = _coerce(fields[key], value, path, prefix + key)
    return out


def _coerce(f, value, path, key):
    kind = str(f.type)
    if value is None and "None" in kind:
        return None
    if kind.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise TargetError(f"{path}: '{key}' must be a list")
        return tuple(str(v) for v in value)
    checks = {"bool": bool, "int": int, "float": (int, float), "str": str, "dict": dict}
    base = kind.split(" ")[0]
    if base in checks and not isinstance(value, checks[base]) or (base == "int" and isinstance(value, bool)):
        raise TargetError(f"{path}: '{key}' must be of type {base}, got {type(value).__name__} {value!r}")
    return float(value) if base == "float" else value


def _check_values(spec: TargetSpec, path: str):
    q = spec.quant
    if q.activation_dtype not in _INT_DTYPES:
        raise TargetError(f"{path}: 'quant.activation_dtype' must be one of {_INT_DTYPES}, got {q.activation_dtype!r}")
    if q.weight_dtype not in ("int8", "int16"):
        raise TargetError(f"{path}: 'quant.weight_dtype' must be int8 or int16, got {q.weight_dtype!r}")
    if q.accumulate_dtype not in ("int32", "int64"):
        raise TargetError(f"{path}: 'quant.accumulate_dtype' must be int32 or int64, got {q.accumulate_dtype!r}")
    if q.conv_layout not in ("NCHW", "NHWC"):
        raise TargetError(f"{path}: 'quant.conv_layout' must be NCHW or NHWC, got {q.conv_layout!r}")
    try:
        check_names(spec.intrinsics)
    except TargetError as err:
        raise TargetError(f"{path}: {err}") from None
    if spec.accelerator is not None:
        AccelConfig.from_dict(spec.accelerator, path)


def _check_tvm_target(spec: TargetSpec, path: str):
    try:
        spec.tvm()
    except Exception as err:  # noqa: BLE001 - TVM raises several kinds; all mean a bad dict
        raise TargetError(f"{path}: 'tvm_target' is not a valid TVM target: {str(err).strip().splitlines()[-1]}") from None
