"""Data modules: built-in digits and the user's own files."""

from curvlab.data.arrays import ArrayDataModule
from curvlab.data.digits import DigitsDataModule
from curvlab.data.files import FilesDataModule

__all__ = ["ArrayDataModule", "DigitsDataModule", "FilesDataModule"]
