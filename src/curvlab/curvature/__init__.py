"""Curvature of the loss surface through Hessian-vector products (guide 2.11, 3.7).

Every function takes ``(model, loss_fn, batch)``, where ``batch`` is an ``(inputs, targets)``
pair or a list of them and the loss is ``loss_fn(model(inputs), targets)``; vectors are lists
of tensors shaped like the model's trainable parameters, in ``model.parameters()`` order.
The functions leave the model as they found it (parameters, ``.grad``, train/eval flags,
buffers) and the global RNG untouched; they measure in eval mode (dropout off) and refuse
models whose attention has no second derivative (set ``model.attention=math``). Under DDP,
pass the unwrapped module and ``reduce=ddp_mean_reduce()``.
"""

from curvlab.curvature._support import (
    Batch,
    BatchLike,
    Reduce,
    check_second_order,
    ddp_mean_reduce,
    measurement_mode,
)
from curvlab.curvature.eigen import EigenResult, adam_preconditioner, top_eigenvalues
from curvlab.curvature.lanczos import Tridiagonal, lanczos
from curvlab.curvature.operators import CurvatureOperator, GGNOperator, HessianOperator
from curvlab.curvature.products import (
    GradientCurvature,
    ggn_vector_product,
    gradient_curvature,
    hvp,
)
from curvlab.curvature.stochastic import (
    SpectralDensity,
    TraceResult,
    hessian_trace,
    spectral_density,
)

__all__ = [
    "Batch",
    "BatchLike",
    "CurvatureOperator",
    "EigenResult",
    "GGNOperator",
    "GradientCurvature",
    "HessianOperator",
    "Reduce",
    "SpectralDensity",
    "TraceResult",
    "Tridiagonal",
    "adam_preconditioner",
    "check_second_order",
    "ddp_mean_reduce",
    "ggn_vector_product",
    "gradient_curvature",
    "hessian_trace",
    "hvp",
    "lanczos",
    "measurement_mode",
    "spectral_density",
    "top_eigenvalues",
]
