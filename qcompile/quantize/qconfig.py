"""QConfig: how to quantize, as data (a dataclass, loadable from YAML with --qconfig).

Fields left as None take the target's preference (e.g. VNNI: uint8 activations x int8 weights).

Example qconfig.yaml::

    precision: int8            # int8 | int16
    activation_dtype: uint8    # int8 | uint8 | int16 (default: target's)
    weight_dtype: int8         # int8 | int16
    per_channel: true
    symmetric_activations: false
    calib_method: auto         # auto | minmax | moving_average | percentile | entropy | mse | dynamic
    calib_params: {percentile: 99.99}
    weight_method: max         # max | mse
    num_samples: 200
    batch_size: null           # default: the model's batch size
    keep_fp32: [softmax, "re:.*head.*"]
    keep_int16: []
    mode: integer              # integer | simulate (fake-quant in float, for debugging)
    budget: {metric: cosine, min: 0.99}   # mixed precision: cosine | agreement (min), top1_drop (max)
    fallback: int16            # where sensitive layers go first: int16, then fp32
    float_dtype: float32       # compute of layers left in float: float32 | float16 | bfloat16
    power_of_two_scales: null  # scales rounded up to 2^k (shift-only requantize); default: the target's
    safety_net: true           # int8: check held-back samples vs fp32; move <= 10% of conv/matmul to int16 if needed
    float_outputs: true        # integer regions end in float: a conv/matmul only float ops read writes
                               # float(acc) * scale, an add/multiply/table only float ops read stays fp32
    smoothing: true            # int8: SmoothQuant for dense layers whose input has outlier channels (alpha measured)
    bias_correction: true      # conv/dense bias minus the weight codes' mean output error on calibration inputs
    dynamic_tokens: true       # int8: dense layers whose static scale fails (per-token error) get run-time scales
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import yaml

from ..errors import ConfigError

CALIB_METHODS = ("auto", "minmax", "moving_average", "percentile", "entropy", "mse", "dynamic")
PRECISIONS = ("int8", "int16", "fp16", "bf16")


@dataclass
class QConfig:
    precision: str = "int8"
    activation_dtype: str | None = None
    weight_dtype: str | None = None
    per_channel: bool | None = None
    symmetric_activations: bool | None = None
    calib_method: str = "auto"
    calib_params: dict = field(default_factory=dict)
    weight_method: str = "max"
    num_samples: int | None = None
    batch_size: int | None = None
    keep_fp32: list = field(default_factory=list)
    keep_int16: list = field(default_factory=list)
    mode: str = "integer"
    budget: dict | None = None
    fallback: str = "int16"
    float_dtype: str = "float32"
    power_of_two_scales: bool | None = None
    safety_net: bool = True    # int8: check on held-back samples, move a few sensitive layers if needed
    float_outputs: bool = True  # integer regions end in float (no requantize + dequantize at their exits)
    smoothing: bool = True     # int8: move dense layers' activation outlier channels into their weights
    bias_correction: bool = True  # subtract the weight codes' mean output error from conv/dense biases
    dynamic_tokens: bool = True   # int8: dense layers whose static activation scale fails get per-token run-time scales
    source: str = ""

    def __post_init__(self):
        self.validate()

    def validate(self):
        where = f"{self.source}: " if self.source else ""
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}'precision' must be one of {PRECISIONS}, got {self.precision!r}")
        if self.activation_dtype not in (None, "int8", "uint8", "int16"):
            raise ConfigError(f"{where}'activation_dtype' must be int8, uint8 or int16, got {self.activation_dtype!r}")
        if self.weight_dtype not in (None, "int8", "int16"):
            raise ConfigError(f"{where}'weight_dtype' must be int8 or int16, got {self.weight_dtype!r}")
        if self.calib_method not in CALIB_METHODS:
            raise ConfigError(f"{where}'calib_method' must be one of {', '.join(CALIB_METHODS)}, got {self.calib_method!r}")
        if self.weight_method not in ("max", "mse"):
            raise ConfigError(f"{where}'weight_method' must be max or mse, got {self.weight_method!r}")
        if self.mode not in ("integer", "simulate"):
            raise ConfigError(f"{where}'mode' must be integer or simulate, got {self.mode!r}")
        if self.float_dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"{where}'float_dtype' must be float32, float16 or bfloat16, got {self.float_dtype!r}")
        if self.fallback not in ("int16", "fp32"):
            raise ConfigError(f"{where}'fallback' must be int16 or fp32, got {self.fallback!r}")
        if self.budget is not None:
            _check_budget(self.budget, where)
        for key in ("safety_net", "smoothing", "float_outputs", "bias_correction", "dynamic_tokens"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{where}'{key}' must be true or false, got {getattr(self, key)!r}")
        for key in ("num_samples", "batch_size"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"{where}'{key}' must be a positive integer, got {v!r}")
        for key in ("keep_fp32", "keep_int16"):
            for pat in getattr(self, key):
                if isinstance(pat, str) and pat.startswith("re:"):
                    try:
                        re.compile(pat[3:])
                    except re.error as err:
                        raise ConfigError(f"{where}'{key}' pattern {pat!r} is not a valid regex: {err}") from None

    # --------------------------------------------------------------- resolution against a target
    @property
    def is_dynamic(self) -> bool:
        """Activation scales computed at run time per batch (matmul layers only, like ORT's quantize_dynamic)."""
        return self.calib_method == "dynamic"

    @property
    def is_float(self) -> bool:
        """fp16 / bf16: no integer layers, only narrower float compute."""
        return self.precision in ("fp16", "bf16")

    def resolved(self, target) -> "QConfig":
        """A copy with every None filled from the target's quant spec and the precision."""
        q = target.quant
        c = dataclasses.replace(self)
        if self.is_float:
            c.float_dtype = {"fp16": "float16", "bf16": "bfloat16"}[self.precision]
        if self.precision == "int16":
            c.activation_dtype = c.activation_dtype or "int16"
            c.weight_dtype = c.weight_dtype or "int16"
        c.activation_dtype = c.activation_dtype or q.activation_dtype
        c.weight_dtype = c.weight_dtype or q.weight_dtype
        c.per_channel = q.per_channel_weights if c.per_channel is None else c.per_channel
        c.symmetric_activations = q.symmetric_activations if c.symmetric_activations is None else c.symmetric_activations
        c.power_of_two_scales = q.power_of_two_scales if c.power_of_two_scales is None else c.power_of_two_scales
        return c

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    # --------------------------------------------------------------- loading
    @staticmethod
    def from_dict(data: dict, source: str = "") -> "QConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a qconfig must be a mapping of keys")
        names = {f.name for f in dataclasses.fields(QConfig)} - {"source"}
        for key in data:
            if key not in names:
                raise ConfigError(f"{source}: unknown key '{key}'; valid keys: {', '.join(sorted(names))}")
        return QConfig(source=source, **data)

    @staticmethod
    def from_yaml(path: str) -> "QConfig":
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except OSError as err:
            raise ConfigError(f"{path}: cannot read qconfig: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        try:
            return QConfig.from_dict(data, source=path)
        except TypeError as err:
            raise ConfigError(f"{path}: {err}") from None

    @staticmethod
    def from_cli(quantize="int8", qconfig_path=None, **overrides) -> "QConfig":
        base = QConfig.from_yaml(qconfig_path).to_json() if qconfig_path else {}
        if quantize:
            base["precision"] = quantize
        for k, v in overrides.items():
            if v is not None and v != []:
                base[k] = list(base.get(k, [])) + list(v) if isinstance(v, list) else v
        return QConfig(source=qconfig_path or "", **base)


BUDGET_METRICS = {"cosine": "min", "agreement": "min", "top1_drop": "max", "score": "min"}


def _check_budget(budget, where: str):
    """budget: {metric: cosine|agreement (with min), top1_drop (with max), score (user eval_fn, with min)}."""
    if not isinstance(budget, dict) or budget.get("metric") not in BUDGET_METRICS:
        raise ConfigError(f"{where}'budget' must look like {{metric: cosine, min: 0.99}}; metrics: "
                          f"{', '.join(f'{m} ({b})' for m, b in BUDGET_METRICS.items())}")
    bound = BUDGET_METRICS[budget["metric"]]
    extra = set(budget) - {"metric", bound, "max_trials"}
    if bound not in budget or extra or not isinstance(budget[bound], (int, float)):
        raise ConfigError(f"{where}'budget' for metric {budget['metric']} takes '{bound}: NUMBER'"
                          + (f"; unknown keys {sorted(extra)}" if extra else ""))


def parse_budget(text: str) -> dict:
    """'cosine:0.99', 'agreement:0.995', 'top1_drop:0.005' -> a budget dict."""
    metric, sep, value = text.partition(":")
    if not sep or metric not in BUDGET_METRICS:
        raise ConfigError(f"--budget '{text}': expected METRIC:VALUE with METRIC one of {', '.join(BUDGET_METRICS)}")
    try:
        return {"metric": metric, BUDGET_METRICS[metric]: float(value)}
    except ValueError:
        raise ConfigError(f"--budget '{text}': '{value}' is not a number") from None


def matches(patterns, op_name: str, node_name: str) -> bool:
    """True if a keep_* pattern names this op type ('softmax', 'relax.nn.softmax'),
    this node ('conv_3'), or matches it by regex ('re:.*head.*')."""
    short = op_name.rsplit(".", 1)[-1]
    for pat in patterns:
        if pat.startswith("re:"):
            rx = re.compile(pat[3:])
            if rx.fullmatch(node_name) or rx.fullmatch(op_name) or rx.fullmatch(short):
                return True
        elif pat in (op_name, short, node_name):
            return True
    return False
