"""Relax passes qcompile runs while lowering a model for a CPU target (see pipeline.stage_lower)."""

from .split_grouped_conv import SplitGroupedConv

__all__ = ["SplitGroupedConv"]
