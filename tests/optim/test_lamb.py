"""curvlab's LAMB against a float64 transcription of You et al. (ICLR 2020), Algorithm 2."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor

from curvlab.optim import Lamb, lamb_cpu

LR = 0.01

# foreach=None takes the compiled CPU kernel (lamb_cpu.c) for groups with layer adaptation;
# True and False force PyTorch's multi-tensor ops and the per-tensor transcription.
PATHS = pytest.mark.parametrize(
    "foreach", [None, True, False], ids=["cpu-kernel", "multi-tensor", "per-tensor"]
)


@pytest.fixture(autouse=True)
def kernel_calls(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[int]]:
    """Counts kernel calls; a cpu-kernel case fails unless the kernel really ran."""
    calls: list[int] = []
    real_step = lamb_cpu.step

    def counted(*args: object, **kwargs: object) -> None:
        calls.append(1)
        real_step(*args, **kwargs)

    monkeypatch.setattr(lamb_cpu, "step", counted)
    yield calls
    if "cpu-kernel" in request.node.name:
        assert lamb_cpu.load() is not None, (
            "the CPU kernel did not build (is a C compiler on PATH?)"
        )
        assert calls, "the cpu-kernel case never reached the kernel"


# Four tensors of a tiny two-layer net: weights decay and adapt, biases do neither; b1 starts at
# zero, so its ||x|| is 0 on the first step.
SHAPES = {"W1": (6, 4), "b1": (6,), "W2": (3, 6), "b2": (3,)}
GROUPS = [
    {"names": ["W1", "W2"], "weight_decay": 0.01, "layer_adaptation": True},
    {"names": ["b1", "b2"], "weight_decay": 0.0, "layer_adaptation": False},
]


def initial_params() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = {
        name: torch.randn(shape, generator=gen, dtype=torch.float64)
        for name, shape in SHAPES.items()
    }
    x["b1"].zero_()
    return x


def loss_fn(x: dict[str, Tensor]) -> Tensor:
    """Cross entropy of the tiny net on a fixed batch; gradients depend on the iterate."""
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(16, 4, generator=gen, dtype=torch.float64).to(x["W1"].dtype)
    targets = torch.randint(0, 3, (16,), generator=gen)
    hidden = torch.tanh(inputs @ x["W1"].T + x["b1"])
    return torch.nn.functional.cross_entropy(hidden @ x["W2"].T + x["b2"], targets)


@functools.cache
def paper_lamb(
    steps: int,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    phi: Callable[[float], float] = lambda z: z,
    trust_cap: float = math.inf,
    max_grad_norm: float | None = None,
) -> dict[str, Tensor]:
    """Algorithm 2, line by line, in float64 with Python scalars for every per-layer quantity."""
    x = {n: t.clone().requires_grad_() for n, t in initial_params().items()}
    m = {n: torch.zeros_like(t) for n, t in x.items()}
    v = {n: torch.zeros_like(t) for n, t in x.items()}
    beta1, beta2 = betas
    for t in range(1, steps + 1):
        grads = dict(zip(x, torch.autograd.grad(loss_fn(x), list(x.values())), strict=True))
        if max_grad_norm is not None:
            total = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
            grads = {n: g * min(1.0, max_grad_norm / (total + 1e-6)) for n, g in grads.items()}
        new_x = {}
        for group in GROUPS:
            lam = group["weight_decay"]
            for n in group["names"]:
                g = grads[n]
                m[n] = beta1 * m[n] + (1 - beta1) * g
                v[n] = beta2 * v[n] + (1 - beta2) * g * g
                m_hat = m[n] / (1 - beta1**t)
                v_hat = v[n] / (1 - beta2**t)
                r = m_hat / (v_hat.sqrt() + eps)
                u = r + lam * x[n].detach()
                x_norm, u_norm = float(x[n].detach().norm()), float(u.norm())
                trust_ratio = 1.0
                if group["layer_adaptation"] and x_norm > 0 and u_norm > 0:
                    trust_ratio = min(phi(x_norm) / u_norm, trust_cap)
                new_x[n] = (x[n].detach() - LR * trust_ratio * u).requires_grad_()
        x = new_x
    return {n: t.detach() for n, t in x.items()}


def curvlab_lamb(
    steps: int, dtype: torch.dtype, foreach: bool | None, **kwargs: object
) -> dict[str, Tensor]:
    x = {n: torch.nn.Parameter(t.to(dtype)) for n, t in initial_params().items()}
    groups = [
        {
            "params": [x[n] for n in g["names"]],
            "weight_decay": g["weight_decay"],
            "layer_adaptation": g["layer_adaptation"],
        }
        for g in GROUPS
    ]
    opt = Lamb(groups, lr=LR, foreach=foreach, **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(x).backward()
        opt.step()
    return {n: t.detach() for n, t in x.items()}


def max_rel_err(ours: dict[str, Tensor], ref: dict[str, Tensor]) -> float:
    return max(float((ours[n].double() - ref[n]).norm() / ref[n].norm()) for n in ref)


VARIANTS = {
    "paper defaults": ({}, {}),
    "phi clipped to [0.5, 1.5]": (
        {"phi_min": 0.5, "phi_max": 1.5},
        {"phi": lambda z: min(max(z, 0.5), 1.5)},
    ),
    "LAMBC": ({"trust_clip": True}, {"trust_cap": 1.0}),
    "global grad clipping": ({"max_grad_norm": 0.05}, {"max_grad_norm": 0.05}),
}


@PATHS
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_100_steps_match_the_paper_in_float64(variant: str, foreach: bool | None) -> None:
    ours_kwargs, ref_kwargs = VARIANTS[variant]
    ref = paper_lamb(100, **ref_kwargs)
    ours = curvlab_lamb(100, torch.float64, foreach, **ours_kwargs)

    assert max_rel_err(ours, ref) < 1e-6
    # The run moved well away from the start, so agreement is not trivial.
    start = initial_params()
    assert min(float((ref[n] - start[n]).norm()) for n in ref) > 0.01


@PATHS
def test_float32_parameters_track_the_float64_algorithm(foreach: bool | None) -> None:
    ours = curvlab_lamb(100, torch.float32, foreach)

    assert max_rel_err(ours, paper_lamb(100)) < 2e-5


@pytest.mark.parametrize(
    ("foreach", "adamw_kwargs", "rtol"),
    [(True, {"fused": True}, 0.0), (False, {"foreach": False}, 5e-6)],
    ids=["multi-tensor vs fused AdamW, bit for bit", "per-tensor vs AdamW"],
)
def test_without_layer_adaptation_it_is_adamw(
    foreach: bool, adamw_kwargs: dict[str, bool], rtol: float
) -> None:
    gen = torch.Generator().manual_seed(2)
    init = [torch.randn(s, generator=gen) for s in [(8, 5), (5,), (3, 8)]]
    grads = [[torch.randn(x.shape, generator=gen) for x in init] for _ in range(100)]
    ours = [torch.nn.Parameter(x.clone()) for x in init]
    theirs = [torch.nn.Parameter(x.clone()) for x in init]
    lamb = Lamb(ours, lr=LR, eps=1e-6, weight_decay=0.1, layer_adaptation=False, foreach=foreach)
    adamw = torch.optim.AdamW(theirs, lr=LR, eps=1e-6, weight_decay=0.1, **adamw_kwargs)

    for step_grads in grads:
        for p, q, g in zip(ours, theirs, step_grads, strict=True):
            p.grad, q.grad = g, g
        lamb.step()
        adamw.step()

    for p, q, x0 in zip(ours, theirs, init, strict=True):
        assert float((p.detach() - x0).norm()) > 0.1  # they moved, so agreement is not trivial
        torch.testing.assert_close(p, q, rtol=rtol, atol=rtol * 0.1)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(lamb.state[p][key], adamw.state[q][key], rtol=rtol, atol=0)


def one_step(x0: list[float], g: list[float], **kwargs: object) -> Tensor:
    """x_1 after one step from x0 with gradient g, returned in float64."""
    p = torch.nn.Parameter(torch.tensor(x0, dtype=torch.float64))
    p.grad = torch.tensor(g, dtype=torch.float64)
    Lamb([p], lr=LR, **kwargs).step()
    return p.detach()


@PATHS
def test_zero_norm_tensors_take_a_trust_ratio_of_one(foreach: bool | None) -> None:
    g = [0.3, -2.0, 0.0]
    r = torch.tensor([x / (abs(x) + 1e-6) for x in g], dtype=torch.float64)  # m_hat/(|g|+eps)

    # ||x|| = 0: the step is eta * r_t, unscaled.
    x1 = one_step([0.0, 0.0, 0.0], g, foreach=foreach)
    torch.testing.assert_close(x1, -LR * r, rtol=1e-12, atol=0)

    # ||u|| = 0 (no gradient, no decay): the parameter stays, with no NaN.
    x1 = one_step([1.0, 2.0, 2.0], [0.0, 0.0, 0.0], weight_decay=0.0, foreach=foreach)
    assert x1.tolist() == [1.0, 2.0, 2.0]

    # Both zero: still zero.
    assert one_step([0.0, 0.0], [0.0, 0.0], foreach=foreach).tolist() == [0.0, 0.0]

    # No gradient but decay: u = lambda * x, trust_ratio = 1 / lambda, so x_1 = (1 - eta) * x.
    x1 = one_step([1.0, 2.0, 2.0], [0.0, 0.0, 0.0], weight_decay=0.1, foreach=foreach)
    torch.testing.assert_close(x1, (1 - LR) * torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64))


@PATHS
@pytest.mark.parametrize(
    ("bounds", "phi"),
    [
        ({}, 5.0),
        ({"phi_max": 2.0}, 2.0),
        ({"phi_min": 10.0}, 10.0),
        ({"phi_min": 1.0, "phi_max": 9.0}, 5.0),
    ],
)
def test_step_length_is_eta_times_clipped_weight_norm(
    bounds: dict[str, float], phi: float, foreach: bool | None
) -> None:
    # ||x|| = 5; the step eta * phi(||x||) / ||u|| * u has length eta * phi(||x||).
    x1 = one_step([3.0, 4.0], [0.5, -1.0], weight_decay=0.01, foreach=foreach, **bounds)

    step = float((x1 - torch.tensor([3.0, 4.0], dtype=torch.float64)).norm())
    assert step == pytest.approx(LR * phi, rel=1e-12)


@PATHS
def test_lambc_caps_the_trust_ratio_at_one(foreach: bool | None) -> None:
    g = [0.5, -1.0]
    u_norm = math.hypot(*(x / (abs(x) + 1e-6) for x in g))  # r_t = g / (|g| + eps) at t = 1

    # ||x|| = 50 > ||u||: LAMB steps by eta * 50, LAMBC by eta * ||u|| (trust_ratio = 1).
    big = [30.0, 40.0]
    lamb = one_step(big, g, weight_decay=0.0, foreach=foreach)
    lambc = one_step(big, g, weight_decay=0.0, trust_clip=True, foreach=foreach)
    assert float((lamb - torch.tensor(big, dtype=torch.float64)).norm()) == pytest.approx(LR * 50)
    assert float((lambc - torch.tensor(big, dtype=torch.float64)).norm()) == pytest.approx(
        LR * u_norm, rel=1e-6
    )

    # ||x|| = 0.5 < ||u||: the cap does not bind and both step by eta * 0.5.
    small = [0.3, 0.4]
    assert torch.equal(
        one_step(small, g, weight_decay=0.0, foreach=foreach),
        one_step(small, g, weight_decay=0.0, trust_clip=True, foreach=foreach),
    )


@PATHS
def test_global_clipping_scales_what_the_moments_see_and_leaves_grads(
    foreach: bool | None,
) -> None:
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    grads = [10 * torch.randn(x.shape, generator=gen) for x in init]
    total = float(torch.cat([g.flatten() for g in grads]).norm())

    def run(max_grad_norm: float | None, grad_factor: float) -> tuple[list[Tensor], list[Tensor]]:
        params = [torch.nn.Parameter(x.clone()) for x in init]
        for p, g in zip(params, grads, strict=True):
            p.grad = g * grad_factor
        seen = [p.grad.clone() for p in params]
        opt = Lamb(params, lr=LR, max_grad_norm=max_grad_norm, foreach=foreach)
        for _ in range(3):
            opt.step()
        assert all(torch.equal(p.grad, s) for p, s in zip(params, seen, strict=True))
        return params, [opt.state[p]["exp_avg"] for p in params]

    clipped, m_clipped = run(1.0, 1.0)
    prescaled, m_prescaled = run(None, 1.0 / (total + 1e-6))
    for a, b in zip(clipped + m_clipped, prescaled + m_prescaled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

    # Below the threshold nothing changes, bit for bit.
    loose, _ = run(2 * total, 1.0)
    plain, _ = run(None, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(loose, plain, strict=True))


# bf16 is not the kernel's: foreach=None takes the multi-tensor path for it.
@pytest.mark.parametrize("foreach", [None, False], ids=["multi-tensor", "per-tensor"])
def test_state_is_float32_with_adams_keys_for_bf16_parameters(foreach: bool | None) -> None:
    p = torch.nn.Parameter(torch.randn(4, 4).bfloat16())
    q = torch.nn.Parameter(torch.randn(4, 4))
    p.grad, q.grad = torch.randn(4, 4).bfloat16(), torch.randn(4, 4)
    lamb = Lamb([p], foreach=foreach)
    adam = torch.optim.Adam([q])
    for _ in range(2):
        lamb.step()
        adam.step()

    state = lamb.state[p]
    assert set(state) == set(adam.state[q]) == {"step", "exp_avg", "exp_avg_sq"}
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    assert state["step"].dtype == torch.float32 and float(state["step"]) == 2.0
    assert p.dtype == torch.bfloat16

    # A round trip through a state dict keeps the float32 moments bit for bit.
    fresh = Lamb([p], foreach=foreach)
    fresh.load_state_dict(lamb.state_dict())
    for key in ("exp_avg", "exp_avg_sq"):
        assert fresh.state[p][key].dtype == torch.float32
        assert torch.equal(fresh.state[p][key], state[key])


def train(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, steps: range) -> None:
    for t in steps:
        gen = torch.Generator().manual_seed(100 + t)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


@PATHS
def test_resume_from_a_state_dict_is_bit_exact(foreach: bool | None) -> None:
    gen = torch.Generator().manual_seed(4)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(6, 3), (3,)]]
    opt = Lamb(params, lr=LR, foreach=foreach)
    train(params, opt, range(10))

    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buffer)
    train(params, opt, range(10, 20))

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = [torch.nn.Parameter(x) for x in saved["params"]]
    opt2 = Lamb(resumed, lr=LR, foreach=foreach)
    opt2.load_state_dict(saved["opt"])
    train(resumed, opt2, range(10, 20))

    assert all(torch.equal(a, b) for a, b in zip(params, resumed, strict=True))
    assert float(opt2.state[resumed[0]]["step"]) == 20.0


def test_adam_state_loads_and_continues_from_its_moments() -> None:
    p = torch.nn.Parameter(torch.randn(5, 2))
    adam = torch.optim.Adam([p], lr=LR)
    train([p], adam, range(5))
    m5 = adam.state[p]["exp_avg"].clone()

    lamb = Lamb([p], lr=LR)
    lamb.load_state_dict(adam.state_dict())
    train([p], lamb, range(5, 6))

    gen = torch.Generator().manual_seed(105)
    g6 = torch.randn(p.shape, generator=gen)
    torch.testing.assert_close(lamb.state[p]["exp_avg"], 0.9 * m5 + 0.1 * g6)
    assert float(lamb.state[p]["step"]) == 6.0


def test_the_step_reads_no_tensor_on_the_host(
    monkeypatch: pytest.MonkeyPatch, kernel_calls: list[int]
) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("host read of a tensor inside Lamb.step")

    ours = {}
    for foreach in (None, True, False):
        x = {n: torch.nn.Parameter(t.float()) for n, t in initial_params().items()}
        opt = Lamb(
            list(x.values()),
            lr=LR,
            phi_min=0.1,
            trust_clip=True,
            max_grad_norm=1.0,
            foreach=foreach,
        )
        loss_fn(x).backward()
        with monkeypatch.context() as patch:
            for name in (
                "item",
                "tolist",
                "numpy",
                "__bool__",
                "__float__",
                "__int__",
                "__index__",
            ):
                patch.setattr(torch.Tensor, name, refuse)
            opt.step()
        ours[foreach] = [p.detach().clone() for p in x.values()]

    # The guarded steps did the work: both paths moved every tensor, and agree.
    start = [t.float() for t in initial_params().values()]
    assert all(not torch.equal(a, b) for a, b in zip(ours[True], start, strict=True))
    for kernel, a, b in zip(ours[None], ours[True], ours[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(kernel, b, rtol=1e-6, atol=1e-7)
    assert kernel_calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_has_no_synchronisation() -> None:
    def run(device: str, guard: bool) -> list[Tensor]:
        x = [torch.nn.Parameter(t.float().to(device)) for t in initial_params().values()]
        opt = Lamb(x, lr=LR, phi_max=10.0, trust_clip=True, max_grad_norm=1.0)
        for t in range(3):
            gen = torch.Generator().manual_seed(t)
            for p in x:
                p.grad = torch.randn(p.shape, generator=gen).to(device)
            if guard and t > 0:  # the first step allocates the state
                torch.cuda.set_sync_debug_mode("error")
            try:
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return [p.detach().cpu() for p in x]

    for a, b in zip(run("cuda", guard=True), run("cpu", guard=False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
