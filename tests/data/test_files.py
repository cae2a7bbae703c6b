"""The user's own data: array files and image folders, and clear errors when they are wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curvlab.data import FilesDataModule


def test_npz_images_keep_their_shape(tmp_path: Path) -> None:
    x = np.arange(40 * 2 * 3 * 3, dtype=np.float32).reshape(40, 2, 3, 3)
    y = np.arange(40) % 4
    np.savez(tmp_path / "d.npz", images=x, labels=y)

    dm = FilesDataModule(str(tmp_path / "d.npz"), inputs_key="images", targets_key="labels")

    assert dm.input_shape == (2, 3, 3) and dm.num_classes == 4
    assert torch.equal(dm.x, torch.from_numpy(x)) and torch.equal(dm.y, torch.from_numpy(y))


def test_pt_pair_and_greyscale_arrays_become_one_channel(tmp_path: Path) -> None:
    torch.save((torch.ones(30, 5, 5), torch.zeros(30, dtype=torch.long)), tmp_path / "d.pt")

    dm = FilesDataModule(str(tmp_path / "d.pt"))

    assert dm.input_shape == (1, 5, 5) and dm.num_classes == 1


def test_image_folder_is_read_per_class(tmp_path: Path) -> None:
    for label, value in (("cat", 0), ("dog", 255)):
        (tmp_path / label).mkdir()
        for i in range(10):
            Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(
                tmp_path / label / f"{i}.png"
            )

    dm = FilesDataModule(str(tmp_path), image_size=4, grayscale=True)

    assert dm.input_shape == (1, 4, 4) and dm.class_names == ["cat", "dog"]
    assert sorted(dm.y.tolist()) == [0] * 10 + [1] * 10
    assert float(dm.x[dm.y == 1].min()) == 1.0 and float(dm.x[dm.y == 0].max()) == 0.0


def test_missing_path_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data.path=.*nothing.npz does not exist"):
        FilesDataModule(str(tmp_path / "nothing.npz"))


def test_mismatched_lengths_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 4)), y=np.zeros(9, dtype=np.int64))
    with pytest.raises(ValueError, match=r"10 inputs, 9 targets"):
        FilesDataModule(str(tmp_path / "d.npz"))


def test_wrong_array_name_lists_what_is_there(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", inputs=np.zeros((10, 4)), y=np.zeros(10, dtype=np.int64))
    with pytest.raises(ValueError, match=r"no array named 'x'; it holds \['inputs', 'y'\]"):
        FilesDataModule(str(tmp_path / "d.npz"))


def test_float_targets_are_refused_for_classification(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 4)), y=np.zeros(10))
    with pytest.raises(ValueError, match=r"one integer class index per example"):
        FilesDataModule(str(tmp_path / "d.npz"))
