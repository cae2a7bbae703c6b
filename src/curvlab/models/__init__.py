"""Networks curvlab trains: the guide's MLP and a timm Vision Transformer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from curvlab.models.mlp import MLP

if TYPE_CHECKING:
    from curvlab.models.vit import ViT

__all__ = ["MLP", "ViT"]


def __getattr__(name: str) -> Any:
    # timm takes seconds to import; only code that builds a ViT should pay for it.
    if name == "ViT":
        from curvlab.models.vit import ViT

        return ViT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
