"""Data modules: built-in digits, the task data derived from them or drawn, and files."""

from curvlab.data.arrays import ArrayDataModule
from curvlab.data.attributes import DigitAttributesDataModule
from curvlab.data.diabetes import DiabetesDataModule
from curvlab.data.digits import DigitsDataModule
from curvlab.data.files import FilesDataModule
from curvlab.data.noisy_digits import NoisyDigitsDataModule
from curvlab.data.shapes import ShapesDataModule

__all__ = [
    "ArrayDataModule",
    "DiabetesDataModule",
    "DigitAttributesDataModule",
    "DigitsDataModule",
    "FilesDataModule",
    "NoisyDigitsDataModule",
    "ShapesDataModule",
]
