"""Executable walkthroughs of the guide's worked examples.

A worked example is computed twice, by autograd through curvlab's MLP and by the explicit
formulas the guide prints, and tabulated step by step the way the guide's tables are.
"""

from pathlib import Path

from curvlab.guide.delta_rule import delta_rule_trace
from curvlab.guide.network import NetworkSpec, autograd_trace, build_mlp
from curvlab.guide.render import format_walkthrough, run_example
from curvlab.guide.rows import Row, Walkthrough
from curvlab.guide.scalar_examples import chain_rule_accumulation, quadratic_hvp
from curvlab.guide.walkthrough import walk

# The worked examples' own Hydra configs (explain.yaml and the example/ group), kept apart from
# the training configs so that curvlab-train's groups list only what trains.
GUIDE_CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

__all__ = [
    "GUIDE_CONFIG_DIR",
    "NetworkSpec",
    "Row",
    "Walkthrough",
    "autograd_trace",
    "build_mlp",
    "chain_rule_accumulation",
    "delta_rule_trace",
    "format_walkthrough",
    "quadratic_hvp",
    "run_example",
    "walk",
]
