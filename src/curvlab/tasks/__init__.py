"""Tasks: what is predicted, how it is scored, and which losses fit."""

from curvlab.tasks.base import Task
from curvlab.tasks.classification import Classification

__all__ = ["Classification", "Task"]
