"""Executable walkthroughs of the guide's worked examples.

A worked example is computed twice, by autograd through curvlab's MLP and by the explicit
formulas the guide prints, and tabulated step by step the way the guide's tables are.
"""

from curvlab.guide.network import NetworkSpec, autograd_trace, build_mlp
from curvlab.guide.delta_rule import delta_rule_trace
from curvlab.guide.render import format_walkthrough, run_example
from curvlab.guide.rows import Row, Walkthrough
from curvlab.guide.scalar_examples import chain_rule_accumulation, quadratic_hvp
from curvlab.guide.walkthrough import walk

__all__ = [
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
