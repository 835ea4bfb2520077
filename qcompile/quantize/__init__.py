"""Quantization on Relax: annotate -> calibrate -> realize.

qconfig.py      QConfig (how to quantize), from YAML or CLI flags
observers.py    range observers (min-max, moving average, histogram: percentile / entropy / MSE)
fixed_point.py  multiplier/shift and the requantize rounding rule: the one integer semantics
reference.py    numpy integer reference of the quantized ops (the test oracle)
"""
