"""Lightning callbacks: curvature tracking during training (``callbacks=curvature``)."""

from curvlab.callbacks.curvature import CurvatureCallback
from curvlab.callbacks.measure import FIGURES, CurvatureProbe
from curvlab.callbacks.stability import StabilityRule, lamb_trust_ratios, stability_rule

__all__ = [
    "FIGURES",
    "CurvatureCallback",
    "CurvatureProbe",
    "StabilityRule",
    "lamb_trust_ratios",
    "stability_rule",
]
