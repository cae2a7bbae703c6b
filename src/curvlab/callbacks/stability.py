"""The step-size stability of the optimizer in use: its sharpness threshold and preconditioner.

Gradient descent on a quadratic of curvature lambda is stable while eta * lambda < 2, so the
sharpness lambda_max of the loss is compared with 2 / eta; full-batch gradient descent drives
lambda_max up to that line and then hovers there (Cohen et al., ICLR 2021, "Gradient descent on
neural networks typically occurs at the edge of stability"). Momentum moves the line, and an
adaptive method sees the preconditioned Hessian P^{-1/2} H P^{-1/2} instead of H (Cohen et al.,
2022, "Adaptive gradient methods at the edge of stability"). Each threshold below is the
curvature at which the linear recurrence that the optimizer runs on a quadratic gains the
eigenvalue -1:

    SGD                    2 / eta
    heavy ball (mu)        (2 + 2 mu) / eta
    Nesterov (mu)          (2 + 2 mu) / (eta (1 + 2 mu))
    averaged momentum      the two above with eta (1 - beta) for eta (guide 1.3.2)
    Adam, AdamW, LAMB      (2 + 2 beta_1) / ((1 - beta_1) eta), on P = sqrt(v_hat) + eps
    RMSProp (mu)           (2 + 2 mu) / eta, on P = sqrt(v) + eps
    Adagrad                2 / eta_t, on P = sqrt(sum of g^2) + eps
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from curvlab.curvature import adam_preconditioner
from curvlab.optim import Lamb, Momentum

# Private helpers of the LAMB step, reused so that the replayed trust ratio is the step's own.
from curvlab.optim.lamb import _clip_factor, _trust_ratio


@dataclass
class StabilityRule:
    """How the stability of the optimizer's next step is judged.

    Attributes:
        optimizer: short name of the optimizer family (``sgd``, ``adam``, ...).
        threshold: the sharpness at which the step diverges on a quadratic; 2 / lr for SGD.
        preconditioner: per-parameter positive diagonals P, in ``params`` order: the figure to
            compare with ``threshold`` is lambda_max(P^{-1/2} H P^{-1/2}). None means H itself.
    """

    optimizer: str
    threshold: float
    preconditioner: list[Tensor] | None


def stability_rule(
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor],
    trust_ratios: dict[str, float] | None = None,
) -> StabilityRule | None:
    """The stability threshold and preconditioner of ``optimizer`` at its current state.

    Learning rates are read from the groups now, so schedules are followed; a group whose rate
    differs from the first group's scales its parameters' curvature by the ratio (it enters
    the preconditioner). Weight decay is not folded in (it adds its coefficient to the
    curvature of the parameters it decays).

    Args:
        optimizer: the training optimizer, owning every one of ``params``.
        params: the parameters the curvature is taken over (trainable, in model order).
        trust_ratios: LAMB's per-tensor trust ratios (the latest replayed by
            :func:`lamb_trust_ratios`), keyed by parameter name; they divide P, as they scale
            that tensor's step. Without them LAMB is judged as Adam.

    Returns:
        The rule, or None for an optimizer without a rule here (e.g. Newton-CG), for
        parameters the optimizer does not own, or before an adaptive optimizer's first step.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    if not params or any(id(p) not in group_of for p in params):
        return None
    group = optimizer.param_groups[0]
    eta = float(group["lr"])

    # Per-parameter step scale relative to eta (learning rates that differ between groups).
    scale = [float(group_of[id(p)]["lr"]) / eta for p in params]

    if isinstance(optimizer, Momentum):
        eta_avg = eta * (1 - group["beta"])
        threshold = _momentum_threshold(eta_avg, group["beta"], group)
        name = "nesterov_average" if group["nesterov"] else "momentum_average"
        return _plain(name, threshold, params, scale)
    if isinstance(optimizer, torch.optim.SGD):
        mu = group["momentum"]
        eta_eff = eta * (1 - group["dampening"]) if mu > 0 else eta
        name = "sgd" if mu == 0 else "nesterov" if group["nesterov"] else "heavy_ball"
        return _plain(name, _momentum_threshold(eta_eff, mu, group), params, scale)

    diagonal = _adaptive_diagonal(optimizer, params, group_of)
    if diagonal is None:
        return None
    name, threshold, p_diag = diagonal
    if trust_ratios and isinstance(optimizer, Lamb):
        names = _param_names(optimizer)
        ratios = [trust_ratios.get(names.get(id(p), ""), 1.0) for p in params]
        scale = [s * r for s, r in zip(scale, ratios, strict=True)]
    p_diag = [d / s for d, s in zip(p_diag, scale, strict=True)]
    return StabilityRule(name, threshold, p_diag)


def _momentum_threshold(eta: float, mu: float, group: dict) -> float:
    if group.get("nesterov", False):
        return (2 + 2 * mu) / (eta * (1 + 2 * mu))
    return (2 + 2 * mu) / eta


def _plain(
    name: str, threshold: float, params: Sequence[Tensor], scale: list[float]
) -> StabilityRule:
    if all(s == 1.0 for s in scale):
        return StabilityRule(name, threshold, None)
    # A rate eta * s on a tensor is eta on that tensor with P = 1 / s.
    p_diag = [torch.full_like(p, 1.0 / s) for p, s in zip(params, scale, strict=True)]
    return StabilityRule(name, threshold, p_diag)


def _adaptive_diagonal(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor], group_of: dict[int, dict]
) -> tuple[str, float, list[Tensor]] | None:
    """(name, threshold, P) of an adaptive optimizer, or None before its first step."""
    group = optimizer.param_groups[0]
    eta = float(group["lr"])
    states = [optimizer.state.get(p, {}) for p in params]

    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW, Lamb)):
        if not all("exp_avg_sq" in s for s in states):
            return None
        beta_1 = group["betas"][0]
        threshold = (2 + 2 * beta_1) / ((1 - beta_1) * eta)
        # TODO(curvature): amsgrad steps with max_exp_avg_sq; P here uses exp_avg_sq.
        name = "lamb" if isinstance(optimizer, Lamb) else "adam"
        return name, threshold, adam_preconditioner(optimizer, params)

    if isinstance(optimizer, torch.optim.RMSprop):
        if not all("square_avg" in s for s in states):
            return None
        p_diag = []
        for p, s in zip(params, states, strict=True):
            g = group_of[id(p)]
            v = s["square_avg"] - s["grad_avg"] ** 2 if g["centered"] else s["square_avg"]
            p_diag.append(v.sqrt() + g["eps"])
        return "rmsprop", (2 + 2 * group["momentum"]) / eta, p_diag

    if isinstance(optimizer, torch.optim.Adagrad):
        if not all("sum" in s for s in states):
            return None
        p_diag = []
        for p, s in zip(params, states, strict=True):
            g = group_of[id(p)]
            # The next step's rate is eta / (1 + t * lr_decay) after t steps.
            decay = 1 + float(s["step"]) * g["lr_decay"]
            p_diag.append((s["sum"].sqrt() + g["eps"]) * decay)
        return "adagrad", 2 / eta, p_diag

    return None


def _param_names(optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """Parameter names from groups built with names (``param_names``), else ``param<i>``."""
    names, index = {}, 0
    for group in optimizer.param_groups:
        group_names = group.get("param_names")
        for j, p in enumerate(group["params"]):
            names[id(p)] = group_names[j] if group_names else f"param{index}"
            index += 1
    return names


@torch.no_grad()
def lamb_trust_ratios(optimizer: Lamb) -> dict[str, float]:
    """The trust ratios phi(||x_t||) / ||u_t|| that LAMB's coming step applies, per tensor.

    LAMB (You et al., ICLR 2020, Algorithm 2) keeps no trust ratio in its state, so this
    replays the moment update of the step on copies: call it after backward and before
    ``optimizer.step()`` (Lightning's ``on_before_optimizer_step``); the optimizer, its state
    and the gradients are left untouched. Tensors without a gradient are left out, and those
    in groups without layer adaptation have ratio 1.

    Returns:
        Trust ratio per parameter name (``param_names`` of the groups, else ``param<i>``).
    """
    names = _param_names(optimizer)
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return {}
    grad_scale = None
    if optimizer.max_grad_norm is not None:
        grad_scale = float(_clip_factor(grads, optimizer.max_grad_norm))

    ratios = {}
    for group in optimizer.param_groups:
        beta_1, beta_2 = group["betas"]
        for x in group["params"]:
            if x.grad is None:
                continue
            if not group["layer_adaptation"]:
                ratios[names[id(x)]] = 1.0
                continue
            state = optimizer.state.get(x, {})
            dtype = torch.promote_types(x.dtype, torch.float32)
            g = x.grad.to(dtype) * (grad_scale if grad_scale is not None else 1.0)

            # m_t, v_t and t as the step will compute them (m_0 = v_0 = 0 before the first).
            m = state["exp_avg"] * beta_1 + (1 - beta_1) * g if state else (1 - beta_1) * g
            v = (
                state["exp_avg_sq"] * beta_2 + (1 - beta_2) * g * g
                if state
                else (1 - beta_2) * g * g
            )
            t = float(state["step"]) + 1 if state else 1.0

            # r_t = m_hat / (sqrt(v_hat) + eps), u_t = r_t + lambda * x_t
            r = (m / (1 - beta_1**t)) / ((v / (1 - beta_2**t)).sqrt() + group["eps"])
            u = r + group["weight_decay"] * x.to(dtype)
            norms = torch.linalg.vector_norm(x.to(dtype)), torch.linalg.vector_norm(u)
            ratios[names[id(x)]] = float(_trust_ratio(*norms, group))
    return ratios
