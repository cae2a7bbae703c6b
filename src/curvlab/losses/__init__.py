"""curvlab's loss catalogue (guide section 1.2 and its loss table).

Losses that PyTorch already has (MSE, MAE, Huber, smooth-L1, BCE, BCE with logits, cross
entropy) are used from ``torch.nn`` directly by their ``conf/loss`` entries; this package holds
the rest. Every loss is an ``nn.Module`` called ``loss(prediction, target)``.
"""

from curvlab.losses.classification import FocalLoss, SigmoidFocalLoss
from curvlab.losses.distillation import DistillationLoss
from curvlab.losses.metric_learning import (
    BatchCosineEmbeddingLoss,
    BatchTripletLoss,
    ContrastiveLoss,
)
from curvlab.losses.perceptual import PerceptualLoss, load_feature_network
from curvlab.losses.restoration import TotalVariationLoss, total_variation
from curvlab.losses.segmentation import DiceBCELoss, DiceLoss, IoULoss

__all__ = [
    "BatchCosineEmbeddingLoss",
    "BatchTripletLoss",
    "ContrastiveLoss",
    "DiceBCELoss",
    "DiceLoss",
    "DistillationLoss",
    "FocalLoss",
    "IoULoss",
    "PerceptualLoss",
    "SigmoidFocalLoss",
    "TotalVariationLoss",
    "load_feature_network",
    "total_variation",
]
