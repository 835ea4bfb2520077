"""Relax passes qcompile runs on a model: graph preparation before quantization (pipeline.preprocess_passes:
fold_batch_norm.py, sum_to_adds.py) and lowering for a CPU target (pipeline.stage_lower)."""

from .fold_batch_norm import FoldBatchNorm
from .split_grouped_conv import SplitGroupedConv
from .sum_to_adds import SumToAdds

__all__ = ["FoldBatchNorm", "SplitGroupedConv", "SumToAdds"]
