"""What each task does with outputs and targets: loss inputs, metric values, heads."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from curvlab.data import DigitsDataModule
from curvlab.losses import DistillationLoss, load_feature_network
from curvlab.models import MLP, ViT
from curvlab.models.heads import Unflatten, ViTSegmenter
from curvlab.tasks import (
    BinaryClassification,
    Distillation,
    MetricLearning,
    MultiLabelClassification,
    Regression,
    Restoration,
    Segmentation,
)
from curvlab.tasks.metrics import MeanDice, MeanIoU, RecallAtK


def _data(y: torch.Tensor, x: torch.Tensor | None = None, **extra: object) -> SimpleNamespace:
    return SimpleNamespace(y=y, x=x if x is not None else torch.zeros(len(y), 3), **extra)


def test_binary_cross_entropy_on_probabilities_equals_it_on_logits() -> None:
    task = BinaryClassification()
    task.setup(_data(torch.zeros(6, 1)))
    z = torch.tensor([[-3.0], [-0.5], [0.0], [0.2], [2.0], [7.0]])
    y = torch.tensor([[0.0], [1.0], [0.0], [1.0], [1.0], [0.0]])

    on_probabilities = task.compute_loss(nn.BCELoss(), z, y)
    on_logits = task.compute_loss(nn.BCEWithLogitsLoss(), z, y)

    # float32 sigmoid rounds 1 - p for z = 7; the two agree to about 1e-5.
    assert on_probabilities.item() == pytest.approx(on_logits.item(), rel=1e-5)


def test_binary_metrics_read_logits_as_logits() -> None:
    # Logits that all lie in [0, 1] still go through the sigmoid, so every p > 0.5: three true
    # positives and one false one (F1 6/7). Read as probabilities, only 0.9 would count (F1 1/2).
    task = BinaryClassification()
    task.setup(_data(torch.zeros(4, 1)))
    metrics = task.metrics()

    task.update_metrics(
        metrics,
        torch.tensor([[0.2], [0.9], [0.1], [0.3]]),
        torch.tensor([[1.0], [1.0], [0.0], [1.0]]),
    )
    scores = metrics.compute()

    assert scores["f1"].item() == pytest.approx(6 / 7)
    assert scores["auroc"].item() == 1.0


def test_binary_and_multilabel_refuse_each_others_targets() -> None:
    with pytest.raises(ValueError, match="task=multilabel for several labels"):
        BinaryClassification().setup(_data(torch.zeros(5, 4)))
    with pytest.raises(ValueError, match="task=binary for one"):
        MultiLabelClassification().setup(_data(torch.zeros(5, 1)))
    with pytest.raises(ValueError, match="0/1 float targets"):
        MultiLabelClassification().setup(_data(torch.zeros(5, dtype=torch.long)))


def test_multilabel_scores_every_label() -> None:
    task = MultiLabelClassification()
    assert task.setup(_data(torch.zeros(4, 3))) == 3
    metrics = task.metrics()
    y = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])

    # Perfect on labels 0 and 1, everything predicted positive on label 2: F1 there is 2/3.
    z = torch.where(y.bool(), 4.0, -4.0)
    z[:, 2] = 4.0
    task.update_metrics(metrics, z, y)
    scores = metrics.compute()

    assert scores["f1"].item() == pytest.approx((1 + 1 + 2 / 3) / 3)


def test_regression_reports_errors_in_the_targets_units() -> None:
    task = Regression()
    assert task.setup(_data(torch.zeros(4, 1), target_mean=150.0, target_std=50.0)) == 1
    metrics = task.metrics()
    y = torch.tensor([[-1.0], [0.0], [0.5], [1.5]])  # standardised

    task.update_metrics(metrics, y + 0.1, y)  # 0.1 standard deviations = 5 units off
    scores = metrics.compute()

    assert scores["mae"].item() == pytest.approx(5.0, rel=1e-5)
    assert scores["rmse"].item() == pytest.approx(5.0, rel=1e-5)
    sst = ((y - y.mean()) ** 2).sum().item()
    assert scores["r2"].item() == pytest.approx(1 - 4 * 0.1**2 / sst, rel=1e-5)


def test_mask_overlap_metrics_count_pixels_over_the_split() -> None:
    truth = torch.zeros(2, 2, 4, 4)
    truth[0, 0, 0, :4] = 1  # channel 0: 4 pixels in image 0
    predicted = torch.zeros(2, 2, 4, 4)
    predicted[0, 0, 0, 2:4] = 1  # 2 of them found ...
    predicted[1, 0, 3, 0:2] = 1  # ... and 2 false pixels in image 1
    # Channel 1 is empty in both: perfect agreement.
    iou, dice = MeanIoU(2), MeanDice(2)

    for half in (slice(0, 1), slice(1, 2)):  # batching must not matter
        iou.update(predicted[half], truth[half])
        dice.update(predicted[half], truth[half])

    assert iou.compute().item() == pytest.approx((2 / 6 + 1) / 2)
    assert dice.compute().item() == pytest.approx((4 / 8 + 1) / 2)


def test_segmentation_heads_fit_the_backbone() -> None:
    task = Segmentation()
    assert task.setup(_data(torch.zeros(3, 2, 16, 16))) == 2 * 16 * 16

    vit = task.wrap_model(ViT((1, 16, 16), 2 * 16 * 16, patch_size=4, embed_dim=16, depth=1))
    mlp = task.wrap_model(MLP((1, 16, 16), 2 * 16 * 16, hidden=[8]))

    assert isinstance(vit, ViTSegmenter) and isinstance(mlp, Unflatten)
    x = torch.randn(5, 1, 16, 16)
    assert vit(x).shape == mlp(x).shape == (5, 2, 16, 16)


def test_recall_at_k_asks_the_nearest_other_example() -> None:
    embeddings = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.2], [0.0, 0.3]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    recall_1, recall_2 = RecallAtK(1), RecallAtK(2)

    recall_1.update(embeddings, labels)
    recall_2.update(embeddings, labels)

    # Example 4 (class 1) has examples 0 and 1 (class 0) nearest; the other four find their pair.
    assert recall_1.compute().item() == pytest.approx(4 / 5)
    assert recall_2.compute().item() == pytest.approx(4 / 5)


def test_metric_learning_puts_embeddings_on_the_unit_sphere() -> None:
    task = MetricLearning(embedding_dim=3)
    assert task.setup(_data(torch.tensor([0, 1, 0]))) == 3
    seen = {}

    def loss_fn(e: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seen["norms"] = e.norm(dim=1)
        return e.sum()

    task.compute_loss(
        loss_fn,
        torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [1, 1, 1.0]]),
        torch.tensor([0, 1, 0]),
    )

    assert torch.allclose(seen["norms"], torch.ones(3))


def test_restoration_reshapes_and_adds_the_pixel_term() -> None:
    images = torch.rand(4, 1, 8, 8)
    task = Restoration(pixel_weight=0.5)
    assert task.setup(_data(images, x=images + 0.1)) == 64
    outputs = torch.rand(4, 64)

    loss = task.compute_loss(nn.L1Loss(), outputs, images)

    x_hat = outputs.reshape(4, 1, 8, 8)
    expected = F.l1_loss(x_hat, images) + 0.5 * F.mse_loss(x_hat, images)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    metrics = task.metrics()
    task.update_metrics(metrics, outputs, images)
    psnr = 10 * math.log10(1 / F.mse_loss(x_hat, images).item())
    assert metrics.compute()["psnr"].item() == pytest.approx(psnr, rel=1e-4)


def test_distillation_carries_the_teachers_logits_with_the_labels(random_checkpoint) -> None:
    data = DigitsDataModule(batch_size=32)
    labels, x = data.y.clone(), data.x
    task = Distillation(teacher=random_checkpoint)

    assert task.setup(data) == 10

    teacher = load_feature_network(random_checkpoint)
    z_t = teacher(x)
    assert data.y.shape == (len(x), 11)
    assert torch.equal(data.y[:, 0].long(), labels)
    assert torch.allclose(data.y[:, 1:], z_t)
    xb, yb = next(iter(data.val_dataloader()))
    assert torch.allclose(yb[:, 1:], teacher(xb), atol=1e-6)

    z_s = torch.randn(5, 10)
    kd = DistillationLoss(temperature=2.0, alpha=0.5)
    assert task.compute_loss(kd, z_s, data.y[:5]).item() == pytest.approx(
        kd(z_s, (z_t[:5], labels[:5])).item(), rel=1e-6
    )
    assert task.compute_loss(nn.CrossEntropyLoss(), z_s, data.y[:5]).item() == pytest.approx(
        F.cross_entropy(z_s, labels[:5]).item(), rel=1e-6
    )

    metrics = task.metrics()
    task.update_metrics(metrics, z_t[:100], data.y[:100])
    scores = metrics.compute()
    teacher_acc = (z_t[:100].argmax(1) == labels[:100]).float().mean().item()
    assert scores["teacher_acc"].item() == pytest.approx(teacher_acc)
    assert scores["acc"].item() == pytest.approx(teacher_acc)
    assert scores["agreement"].item() == 1.0


def test_distillation_refuses_a_missing_or_unfit_teacher(tmp_path, random_checkpoint) -> None:
    with pytest.raises(ValueError, match=r"task\.teacher=.*nowhere\.ckpt"):
        Distillation(teacher=str(tmp_path / "nowhere.ckpt")).setup(DigitsDataModule())

    # The random teacher has 10 outputs; a 3-class data set cannot use it.
    three_classes = DigitsDataModule()
    three_classes.num_classes = 3
    with pytest.raises(ValueError, match="gives 10 outputs per example; the data has 3"):
        Distillation(teacher=random_checkpoint).setup(three_classes)
