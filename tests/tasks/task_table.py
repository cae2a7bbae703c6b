"""What the task tests expect: each task's losses, data and metrics."""

from __future__ import annotations

# The table: which conf/loss entries each task accepts.
TASK_LOSSES = {
    "classification": {"ce", "focal", "mse"},
    "binary": {"bce_logits", "bce", "focal_binary"},
    "multilabel": {"bce_logits", "bce", "focal_binary"},
    "regression": {"mse", "mae", "huber", "smooth_l1"},
    "segmentation": {"dice_bce", "dice", "iou", "bce_logits", "focal_binary"},
    "metric_learning": {"triplet", "contrastive", "cosine_embedding"},
    "restoration": {"mse", "mae", "total_variation", "perceptual"},
    "distillation": {"kl_div", "ce"},
}

# The data each task config brings, and the metrics its runs log per split.
TASK_DATA = {
    "classification": "DigitsDataModule",
    "binary": "DigitAttributesDataModule",
    "multilabel": "DigitAttributesDataModule",
    "regression": "DiabetesDataModule",
    "segmentation": "ShapesDataModule",
    "metric_learning": "DigitsDataModule",
    "restoration": "NoisyDigitsDataModule",
    "distillation": "DigitsDataModule",
}
TASK_METRICS = {
    "classification": {"acc", "f1"},
    "binary": {"auroc", "f1"},
    "multilabel": {"auroc", "f1"},
    "regression": {"mae", "rmse", "r2"},
    "segmentation": {"miou", "dice"},
    "metric_learning": {"recall_at_1"},
    "restoration": {"psnr"},
    "distillation": {"acc", "teacher_acc", "agreement"},
}

# Overrides that keep a one-batch run of each task to about a second.
SMALL_VIT = ["model=vit", "model.patch_size=4", "model.embed_dim=32", "model.depth=1"]
SMALL = {"segmentation": ["data.num_images=64", "data.batch_size=16"]}
