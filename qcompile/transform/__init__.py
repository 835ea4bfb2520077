"""Relax passes qcompile runs on a model: graph preparation before quantization (pipeline.preprocess_passes:
fold_batch_norm.py, sum_to_adds.py) and lowering for a CPU target (pipeline.stage_lower: split_grouped_conv.py,
channels_last.py)."""

from .channels_last import ChannelsLast
from .fold_batch_norm import FoldBatchNorm
from .split_grouped_conv import SplitGroupedConv
from .sum_to_adds import SumToAdds

__all__ = ["ChannelsLast", "FoldBatchNorm", "SplitGroupedConv", "SumToAdds"]
