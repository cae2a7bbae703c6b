"""Tasks: what is predicted, how it is scored, and which losses fit."""

from curvlab.tasks.base import Task
from curvlab.tasks.binary import BinaryClassification, MultiLabelClassification
from curvlab.tasks.classification import Classification
from curvlab.tasks.distillation import Distillation
from curvlab.tasks.metric_learning import MetricLearning
from curvlab.tasks.regression import Regression
from curvlab.tasks.restoration import Restoration
from curvlab.tasks.segmentation import Segmentation

__all__ = [
    "BinaryClassification",
    "Classification",
    "Distillation",
    "MetricLearning",
    "MultiLabelClassification",
    "Regression",
    "Restoration",
    "Segmentation",
    "Task",
]
