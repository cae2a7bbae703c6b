"""LAMB: layer-wise adaptive moments (You et al., ICLR 2020, Algorithm 2; guide section 1.3.7).

For every parameter tensor x (a "layer" in the paper) at step t, with gradient g_t:

    m_t = beta_1 * m_{t-1} + (1 - beta_1) * g_t
    v_t = beta_2 * v_{t-1} + (1 - beta_2) * g_t^2
    m_hat = m_t / (1 - beta_1^t),   v_hat = v_t / (1 - beta_2^t)
    r_t = m_hat / (sqrt(v_hat) + eps)
    u_t = r_t + lambda * x_t                        (weight decay before the trust ratio)
    trust_ratio = phi(||x_t||) / ||u_t||            (1 where ||x_t|| or ||u_t|| is 0)
    x_{t+1} = x_t - eta * trust_ratio * u_t

phi is the identity, optionally clipped to [phi_min, phi_max]; LAMBC caps trust_ratio at 1.
The guide prints eps inside the square root; this module follows the paper and adds it outside.

Layer adaptation (the trust ratio) and weight decay are independent per-group switches, so a
group may decay without adapting or adapt without decaying. The step never reads a tensor on
the host: step counts, bias corrections and trust ratios stay on the parameters' device.

Three implementations, chosen by ``foreach``. On the CPU the default is a small C kernel
(``lamb_cpu.c``, built on first use) that does a group's whole step in one call, two passes
over each tensor. The multi-tensor path, the default on CUDA, gets m_t, v_t and
r_t + lambda * x_t from PyTorch's fused Adam kernel in one pass, then needs two norms per
tensor and one more pass to write x: about 40 bytes moved per float32 parameter against fused
AdamW's 28. The per-tensor path spells the algorithm out.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from curvlab.optim import lamb_cpu

# On CPU the multi-tensor path updates a few tensors at a time, so that x and u are still in
# cache when the norms and the final write read them again (a third faster single-threaded on a
# 5M-parameter model); this many elements per chunk.
CPU_CHUNK_NUMEL = 1 << 18

_MOMENT_KEYS = ("exp_avg", "exp_avg_sq")


class Lamb(torch.optim.Optimizer):
    """LAMB with paper defaults, decoupled switches and an optional LAMBC cap.

    State per parameter uses Adam's keys: ``step`` (float32 scalar on the parameter's device),
    ``exp_avg`` (m_t) and ``exp_avg_sq`` (v_t), held in at least float32 whatever the
    parameter dtype.

    Args:
        params: parameters or parameter groups; groups may override any keyword below.
        lr: eta.
        betas: (beta_1, beta_2) for m_t and v_t.
        eps: added to sqrt(v_hat), outside the square root as in the paper.
        weight_decay: lambda, added to r_t before the trust ratio.
        layer_adaptation: scale each tensor's update by its trust ratio; off, the step is
            AdamW's.
        phi_min: lower clipping bound of phi(||x||); None for none.
        phi_max: upper clipping bound of phi(||x||); None for none.
        trust_clip: cap the trust ratio at 1 (LAMBC).
        max_grad_norm: rescale all gradients so that their global norm is at most this before
            the moments see them (``p.grad`` is left untouched); None turns it off.
        foreach: True takes the multi-tensor path (fused Adam kernel and ``torch._foreach_*``
            ops), False runs tensor by tensor; None (the default) takes the compiled CPU kernel
            for float32 and float64 CPU groups with layer adaptation where a C compiler is
            found (``curvlab.optim.lamb_cpu``), and the multi-tensor path otherwise.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        layer_adaptation: bool = True,
        phi_min: float | None = None,
        phi_max: float | None = None,
        trust_clip: bool = False,
        max_grad_norm: float | None = None,
        foreach: bool | None = None,
    ) -> None:
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        if phi_min is not None and phi_max is not None and phi_min > phi_max:
            raise ValueError(f"phi_min ({phi_min}) exceeds phi_max ({phi_max})")
        if max_grad_norm is not None and max_grad_norm <= 0.0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            layer_adaptation=layer_adaptation,
            phi_min=phi_min,
            phi_max=phi_max,
            trust_clip=trust_clip,
            foreach=foreach,
        )
        super().__init__(params, defaults)
        self.max_grad_norm = max_grad_norm
        # The CPU kernel's per-thread buffers for u (the largest tensor's size), kept between
        # steps so that no step allocates; not part of the state dict.
        self._scratch: dict[torch.dtype, list[Tensor]] = {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a LAMB or Adam state dict, keeping the moments in float32 or wider.

        ``torch.optim.Optimizer`` casts floating state to the parameter dtype on load, which
        would round bf16 models' moments; they are set aside and restored at full width.
        """
        moments = {
            pid: {key: s[key] for key in _MOMENT_KEYS if key in s}
            for pid, s in state_dict["state"].items()
        }
        stripped = {
            **state_dict,
            "state": {
                pid: {k: val for k, val in s.items() if k not in _MOMENT_KEYS}
                for pid, s in state_dict["state"].items()
            },
        }
        super().load_state_dict(stripped)
        for group in self.param_groups:  # an Adam state dict lacks LAMB's group keys
            for key, default in self.defaults.items():
                group.setdefault(key, default)

        # Saved ids follow the saved groups' order, which matches this optimizer's groups.
        saved_ids = [pid for group in state_dict["param_groups"] for pid in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for pid, p in zip(saved_ids, params, strict=True):
            state = self.state[p]
            for key, val in moments.get(pid, {}).items():
                state[key] = val.to(device=p.device, dtype=_state_dtype(p), copy=True)
            if "step" in state:
                state["step"] = torch.as_tensor(
                    state["step"], dtype=torch.float32, device=p.device
                ).clone()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One LAMB step for every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        groups = [self._init_group(group) for group in self.param_groups]

        # One factor for all groups: the global norm spans every gradient of the optimizer.
        grad_scale = None
        if self.max_grad_norm is not None:
            all_grads = [g for _, grads, *_ in groups for g in grads]
            grad_scale = _clip_factor(all_grads, self.max_grad_norm) if all_grads else None

        for group, (params, grads, exp_avgs, exp_avg_sqs, steps) in zip(
            self.param_groups, groups, strict=True
        ):
            if not params:
                continue
            tensors = (params, grads, exp_avgs, exp_avg_sqs, steps)
            kernel = self._cpu_kernel(group, tensors)
            if kernel is not None:
                lamb_cpu.step(kernel, tensors, group, grad_scale, self._scratch)
                continue
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.device.type in ("cpu", "cuda") for p in params)
            if not foreach:
                for x, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
                    scale = None if grad_scale is None else grad_scale.to(x.device)
                    _single_tensor_lamb(x, g, m, v, s, group, scale)
                continue
            for idx in _buckets(params):
                scale = None if grad_scale is None else grad_scale.to(params[idx[0]].device)
                _multi_tensor_lamb(
                    [params[i] for i in idx],
                    [grads[i] for i in idx],
                    [exp_avgs[i] for i in idx],
                    [exp_avg_sqs[i] for i in idx],
                    [steps[i] for i in idx],
                    group,
                    scale,
                )

        return loss

    @staticmethod
    def _cpu_kernel(
        group: dict[str, Any], tensors: tuple[list[Tensor], ...]
    ) -> ctypes.CDLL | None:
        """The compiled CPU kernel where it applies to this group, else None."""
        params, grads, exp_avgs, exp_avg_sqs, _ = tensors
        # Without layer adaptation the fused AdamW kernel is the step already; a tensor
        # learning rate (a schedule on the device) would need a host read here.
        if group["foreach"] is not None or not group["layer_adaptation"]:
            return None
        if isinstance(group["lr"], Tensor) or not lamb_cpu.supports(
            params, grads, [exp_avgs, exp_avg_sqs]
        ):
            return None
        return lamb_cpu.load()

    def _init_group(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse or torch.is_complex(p):
                raise RuntimeError("Lamb supports dense real gradients only")
            state = self.state[p]
            if not state:
                # m_0 = v_0 = 0 (Algorithm 2); the step count lives on the device, no syncs.
                dtype = _state_dtype(p)
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(
                    p, dtype=dtype, memory_format=torch.preserve_format
                )
                state["exp_avg_sq"] = torch.zeros_like(
                    p, dtype=dtype, memory_format=torch.preserve_format
                )
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, steps


def _state_dtype(p: Tensor) -> torch.dtype:
    return torch.promote_types(p.dtype, torch.float32)


def _buckets(params: list[Tensor]) -> list[list[int]]:
    """Indices grouped per (device, dtype); CPU buckets are cut into cache-sized chunks."""
    by_key: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        by_key.setdefault((p.device, p.dtype), []).append(i)

    buckets = []
    for (device, _), idx in by_key.items():
        if device.type != "cpu":
            buckets.append(idx)
            continue
        chunk, numel = [], 0
        for i in idx:
            if chunk and numel + params[i].numel() > CPU_CHUNK_NUMEL:
                buckets.append(chunk)
                chunk, numel = [], 0
            chunk.append(i)
            numel += params[i].numel()
        buckets.append(chunk)
    return buckets


def _clip_factor(grads: list[Tensor], max_norm: float) -> Tensor:
    """min(1, max_norm / ||g||) over all gradients, as a tensor on the first gradient's device."""
    device = grads[0].device
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    by_key: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        by_key.setdefault((g.device, g.dtype), []).append(g)
    norms = [
        torch.stack(torch._foreach_norm(gs, 2, dtype=_state_dtype(gs[0]))).to(device, dtype)
        for gs in by_key.values()
    ]
    total = torch.linalg.vector_norm(torch.cat(norms))
    return (max_norm / (total + 1e-6)).clamp(max=1.0)


def _trust_ratio(x_norm: Tensor, u_norm: Tensor, group: dict[str, Any]) -> Tensor:
    """phi(||x||) / ||u||, capped at 1 for LAMBC, and 1 where either norm is 0."""
    phi_min, phi_max = group["phi_min"], group["phi_max"]
    phi = x_norm if phi_min is None and phi_max is None else x_norm.clamp(phi_min, phi_max)
    trust_ratio = phi / u_norm
    if group["trust_clip"]:
        trust_ratio = trust_ratio.clamp(max=1.0)
    return torch.where((x_norm > 0) & (u_norm > 0), trust_ratio, 1.0)


def _multi_tensor_lamb(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    group: dict[str, Any],
    grad_scale: Tensor | None,
) -> None:
    beta1, beta2 = group["betas"]

    # Low-precision parameters are read at the moments' width; wider ones are not copied.
    state_dtype = exp_avgs[0].dtype
    x = [p if p.dtype == state_dtype else p.to(state_dtype) for p in params]
    g = [t if t.dtype == state_dtype else t.to(state_dtype) for t in grads]
    if grad_scale is not None:
        g = torch._foreach_mul(g, grad_scale)
    torch._foreach_add_(steps, 1.0)
    fused_kwargs = dict(beta1=beta1, beta2=beta2, eps=group["eps"], amsgrad=False, maximize=False)

    # Without layer adaptation x_{t+1} = x_t - eta * (r_t + lambda * x_t) is AdamW's step:
    # PyTorch's fused AdamW kernel does it in one pass, bit for bit as AdamW(fused=True).
    if not group["layer_adaptation"] and params[0].dtype == state_dtype:
        torch._fused_adamw_(
            params,
            g,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            **fused_kwargs,
        )
        return

    # u starts as lambda * x_t: weight decay enters before the trust ratio.
    if group["weight_decay"] != 0.0:
        u = torch._foreach_mul(x, group["weight_decay"])
    else:
        u = [torch.zeros_like(t) for t in x]

    # m_t, v_t, m_hat, v_hat and u += r_t = m_hat / (sqrt(v_hat) + eps) in one pass: PyTorch's
    # fused Adam kernel applied to u with learning rate -1 (it reads t from the bumped steps).
    torch._fused_adam_(
        u, g, exp_avgs, exp_avg_sqs, [], steps, lr=-1.0, weight_decay=0.0, **fused_kwargs
    )

    # x_{t+1} = x_t - eta * trust_ratio * u_t, one trust ratio per tensor, kept on the device.
    if group["layer_adaptation"]:
        x_norm = torch.stack(torch._foreach_norm(x))
        u_norm = torch.stack(torch._foreach_norm(u))
        trust_ratio = _trust_ratio(x_norm, u_norm, group)
    else:
        trust_ratio = torch.ones(len(x), dtype=state_dtype, device=x[0].device)
    torch._foreach_addcmul_(params, u, (trust_ratio * -group["lr"]).unbind(0))


def _single_tensor_lamb(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    group: dict[str, Any],
    grad_scale: Tensor | None,
) -> None:
    beta1, beta2 = group["betas"]
    x = param.to(exp_avg.dtype)
    g = grad.to(exp_avg.dtype)
    if grad_scale is not None:
        g = g * grad_scale

    # m_t, v_t
    step.add_(1.0)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)

    # m_hat, v_hat, with t kept on the device
    # In float64 where the device has it: 1 - 0.999 ** t in float32 is 1.3e-5 off at t = 1.
    t = step.to(torch.float64 if step.device.type in ("cpu", "cuda") else exp_avg.dtype)
    m_hat = exp_avg / (1 - beta1**t)
    v_hat = exp_avg_sq / (1 - beta2**t)

    # r_t = m_hat / (sqrt(v_hat) + eps), then u_t = r_t + lambda * x_t, in place on m_hat
    r = m_hat.div_(v_hat.sqrt_().add_(group["eps"]))
    u = r.add_(x, alpha=group["weight_decay"])

    # x_{t+1} = x_t - eta * trust_ratio * u_t
    if group["layer_adaptation"]:
        trust_ratio = _trust_ratio(torch.linalg.vector_norm(x), torch.linalg.vector_norm(u), group)
        u.mul_(trust_ratio)
    param.sub_(u.mul_(group["lr"]))
