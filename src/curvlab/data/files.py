"""The user's own data: an ``.npz`` / ``.pt`` file of arrays, or an image folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import transforms
from torchvision.datasets import ImageFolder

from curvlab.data.arrays import ArrayDataModule

ARRAY_SUFFIXES = (".npz", ".pt", ".pth")


def _load_array_file(path: Path, inputs_key: str, targets_key: str) -> tuple[np.ndarray, ...]:
    if path.suffix == ".npz":
        with np.load(path) as archive:
            contents = {key: archive[key] for key in archive.files}
    else:
        contents = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(contents, (tuple, list)) and len(contents) == 2:
            contents = {inputs_key: contents[0], targets_key: contents[1]}
    if not isinstance(contents, dict):
        raise ValueError(
            f"data.path={path}: expected a dict of arrays (or an (inputs, targets) pair), "
            f"found {type(contents).__name__}."
        )
    missing = [key for key in (inputs_key, targets_key) if key not in contents]
    if missing:
        raise ValueError(
            f"data.path={path} has no array named {missing[0]!r}; it holds "
            f"{sorted(contents)}. Set data.inputs_key / data.targets_key to the right names."
        )
    return np.asarray(contents[inputs_key]), np.asarray(contents[targets_key])


def _as_images(x: np.ndarray, path: Path) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() == 3:  # (n, H, W) -> (n, 1, H, W)
        x = x.unsqueeze(1)
    if x.dim() not in (2, 4):
        raise ValueError(
            f"data.path={path}: inputs shaped {tuple(x.shape)}; expected (n, C, H, W), "
            "(n, H, W) or (n, features)."
        )
    return x


def _load_image_folder(
    path: Path, image_size: int | None, grayscale: bool
) -> tuple[torch.Tensor, ...]:
    steps = [transforms.Grayscale()] if grayscale else []
    if image_size is not None:
        steps.append(transforms.Resize((image_size, image_size)))
    steps.append(transforms.ToTensor())
    folder = ImageFolder(str(path), transform=transforms.Compose(steps))
    images = [folder[i][0] for i in range(len(folder))]
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        raise ValueError(
            f"data.path={path}: images differ in shape ({sorted(shapes)[:3]}...); set "
            "data.image_size to resize them all to one square size."
        )
    return torch.stack(images), torch.tensor(folder.targets, dtype=torch.int64), folder.classes


class FilesDataModule(ArrayDataModule):
    """Data from disk, split and served like the built-in data.

    Args:
        path: an ``.npz`` or ``.pt`` file holding inputs and integer class targets, or a folder
            with one sub-folder of images per class (torchvision ``ImageFolder``).
        inputs_key: name of the inputs array in the file.
        targets_key: name of the targets array in the file.
        image_size: image folders only: resize every image to this square size.
        grayscale: image folders only: convert to one channel.
        **kwargs: batch size, split fractions and seeds, as for :class:`ArrayDataModule`.
    """

    def __init__(
        self,
        path: str,
        inputs_key: str = "x",
        targets_key: str = "y",
        image_size: int | None = None,
        grayscale: bool = False,
        **kwargs: object,
    ) -> None:
        source = Path(path).expanduser()
        if not source.exists():
            raise FileNotFoundError(
                f"data.path={path} does not exist (resolved to {source.resolve()}); give an "
                f".npz/.pt file of arrays or an image folder with one sub-folder per class."
            )
        if source.is_dir():
            x, y, self.class_names = _load_image_folder(source, image_size, grayscale)
        elif source.suffix in ARRAY_SUFFIXES:
            x_np, y_np = _load_array_file(source, inputs_key, targets_key)
            x, y = _as_images(x_np, source), torch.as_tensor(y_np)
            if y.dim() != 1 or y.is_floating_point():
                raise ValueError(
                    f"data.path={path}: targets shaped {tuple(y.shape)} with dtype {y.dtype}; "
                    "classification needs one integer class index per example, shaped (n,)."
                )
            y = y.long()
        else:
            raise ValueError(
                f"data.path={path}: unsupported file type {source.suffix!r}; valid choices "
                f"are {', '.join(ARRAY_SUFFIXES)} files or an image folder."
            )
        super().__init__(x, y, num_classes=int(y.max()) + 1, **kwargs)
