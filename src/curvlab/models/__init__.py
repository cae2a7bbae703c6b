"""Networks curvlab trains: the guide's MLP and a timm Vision Transformer."""

from curvlab.models.mlp import MLP
from curvlab.models.vit import ViT

__all__ = ["MLP", "ViT"]
