"""WGAN-GP losses: analytic penalties, float32 penalty pass under autocast, precision tolerances."""

import pytest
import torch
from torch import nn

from b2b.model.critic import Critic
from b2b.model.generator import Generator
from b2b.training.losses import critic_loss, generator_loss, gradient_penalty

SHAPE = (2, 16, 12)


class LinearCritic(nn.Module):
    """D(x) = <w, x> + b: its input gradient is w everywhere, so the penalty is (‖w‖ - 1)²."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, full_precision=False):
        return (x * self.w).flatten(1).sum(1) + self.b


class HalfSquareCritic(nn.Module):
    """D(x) = ½‖x‖²: its input gradient is x itself, so the penalty reveals where x̂ was taken."""

    def forward(self, x, full_precision=False):
        return 0.5 * x.flatten(1).pow(2).sum(1)


def test_penalty_of_a_linear_critic_is_analytic():
    torch.manual_seed(0)
    w = torch.randn(SHAPE) * 0.1
    critic = LinearCritic(w.clone())
    real, fake = torch.rand(5, *SHAPE), torch.rand(5, *SHAPE)
    penalty, grad_norm = gradient_penalty(critic, real, fake)
    norm = float(w.norm())
    assert float(grad_norm) == pytest.approx(norm, rel=1e-6)
    assert penalty.item() == pytest.approx((norm - 1) ** 2, rel=1e-6)
    # create_graph: the penalty is differentiable in the weights, d/dw (‖w‖-1)² = 2(‖w‖-1) w/‖w‖.
    penalty.backward()
    torch.testing.assert_close(critic.w.grad, 2 * (norm - 1) * w / norm, rtol=1e-5, atol=1e-7)
    assert critic.b.grad is None  # the bias does not reach the input gradient


def test_interpolates_are_taken_per_sample_between_real_and_fake():
    real, fake = torch.rand(4, *SHAPE), torch.rand(4, *SHAPE)
    eps = torch.tensor([0.0, 0.25, 0.5, 1.0])
    penalty, grad_norm = gradient_penalty(HalfSquareCritic(), real, fake, eps=eps)
    x_hat = eps.view(4, 1, 1, 1) * real + (1 - eps.view(4, 1, 1, 1)) * fake
    norms = x_hat.flatten(1).norm(dim=1)
    assert penalty.item() == pytest.approx(float(((norms - 1) ** 2).mean()), rel=1e-6)
    assert float(grad_norm) == pytest.approx(float(norms.mean()), rel=1e-6)


def test_loss_scale_gives_the_same_penalty():
    # Scaling by a power of two and unscaling is exact in float32 (no underflow at these magnitudes).
    critic = Critic(SHAPE, 4, dropout=0.0)
    real, fake, eps = torch.rand(3, *SHAPE), torch.rand(3, *SHAPE), torch.rand(3)
    plain = gradient_penalty(critic, real, fake, eps=eps)
    scaled = gradient_penalty(critic, real, fake, eps=eps, loss_scale=2.0**16)
    torch.testing.assert_close(scaled, plain, rtol=1e-6, atol=0)


def test_critic_loss_terms_and_lazy_weight():
    torch.manual_seed(0)
    critic = Critic(SHAPE, 4, dropout=0.0)
    real, fake, eps = torch.rand(4, *SHAPE), torch.rand(4, *SHAPE), torch.rand(4)
    d_real, d_fake = critic(real).mean(), critic(fake).mean()
    penalty, _ = gradient_penalty(critic, real, fake, eps=eps)
    full = critic_loss(critic, real, fake, gp_lambda=10.0, eps=eps)
    lazy = critic_loss(critic, real, fake, gp_lambda=10.0, gp_weight=4.0, eps=eps)
    off = critic_loss(critic, real, fake, gp_lambda=10.0, gp_weight=0.0)
    assert float(full.wasserstein) == pytest.approx((d_real - d_fake).item(), rel=1e-6)
    assert full.total.item() == pytest.approx((d_fake - d_real + 10 * penalty).item(), rel=1e-6)
    assert lazy.total.item() == pytest.approx((d_fake - d_real + 40 * penalty).item(), rel=1e-6)
    assert off.total.item() == pytest.approx((d_fake - d_real).item(), rel=1e-6)
    assert off.penalty is None  # not computed on updates without the penalty
    for field in ("wasserstein", "penalty"):
        value = getattr(full, field)
        assert value.dim() == 0 and not value.requires_grad, field
    assert full.total.requires_grad


def test_losses_report_their_statistics_averaged_over_the_updates_that_made_them():
    from b2b.training.stats import Collector

    torch.manual_seed(0)
    critic = Critic(SHAPE, 4, dropout=0.0)
    real, fake, eps = torch.rand(4, *SHAPE), torch.rand(4, *SHAPE), torch.rand(4)
    penalty, grad_norm = gradient_penalty(critic, real, fake, eps=eps)
    with Collector(torch.device("cpu")) as collector:
        with_penalty = critic_loss(critic, real, fake, gp_lambda=10.0, eps=eps)
        without = critic_loss(critic, real, fake, gp_lambda=10.0, gp_weight=0.0)
        g_loss = generator_loss(critic, fake)
    values = collector.collect(extra={"stop": 0})
    assert values["d_loss"] == pytest.approx((with_penalty.total.item() + without.total.item()) / 2, rel=1e-6)
    assert values["wasserstein"] == pytest.approx(with_penalty.wasserstein.item(), rel=1e-6)
    # The penalty was computed on one of the two updates: its mean is that one value, not half of it.
    assert values["penalty"] == pytest.approx(penalty.item(), rel=1e-6)
    assert values["grad_norm_x"] == pytest.approx(grad_norm.item(), rel=1e-6)
    assert values["g_loss"] == pytest.approx(g_loss.item(), rel=1e-6) and values["stop"] == 0
    assert collector.collect() == {}  # collect resets
    critic_loss(critic, real, fake, gp_lambda=10.0)  # outside a collector: nothing is recorded


def test_generator_loss_is_minus_mean_score_and_reaches_the_generator():
    torch.manual_seed(0)
    g, d = Generator(SHAPE, 8, 2), Critic(SHAPE, 4, dropout=0.0)
    z = torch.randn(3, 8)
    loss = generator_loss(d, g(z))
    assert loss.item() == pytest.approx(-d(g(z)).mean().item(), rel=1e-6)
    loss.backward()
    # Every generator weight gets a gradient, except attention's query/key/value, whose effect is
    # gamma × attention = 0 at initialization (gamma itself does get one).
    for name, p in g.named_parameters():
        in_attention = any(part in name for part in (".query.", ".key.", ".value."))
        assert p.grad is not None and bool(p.grad.abs().sum() > 0) != in_attention, name


# The penalty pass and the precision tolerances, on the CPU here and on a CUDA GPU where there is one
# (marked ``gpu``: bench/gpu_check.sh runs them with ``pytest -m gpu``).
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(
                not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
            ),
        ],
    ),
]


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "autocast-in-forward"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("device", DEVICES)
def test_penalty_pass_runs_in_float32_under_autocast(device, dtype, wrapped):
    critic = Critic(SHAPE, 4, dropout=0.0).to(device)
    if wrapped:  # as accelerate's prepare() does: autocast entered inside forward
        critic.forward = torch.autocast(device, dtype=dtype)(critic.forward)
    seen: list[tuple[str, torch.dtype]] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o, name=name: seen.append((name, o.dtype)))
        for name, m in critic.named_modules()
        if name  # every submodule, not the critic itself
    ]
    real, fake = torch.rand(2, *SHAPE, device=device), torch.rand(2, *SHAPE, device=device)
    try:
        with torch.autocast(device, dtype=dtype):
            critic(real)  # an ordinary pass: convolutions run in low precision (proves autocast is on)
            ordinary = list(seen)
            seen.clear()
            penalty, _ = gradient_penalty(critic, real, fake)
    finally:
        for h in hooks:
            h.remove()
    assert ("body.0.0", dtype) in ordinary
    assert len(seen) == len(ordinary)
    assert all(dt == torch.float32 for _, dt in seen), seen
    assert penalty.dtype == torch.float32


# Tolerances. The reference is true float32 (``true_fp32``: no TF32 on a GPU, or the reference itself
# would round each convolution's inputs to TF32's 10-bit mantissa). The penalty pass is float32 whatever
# the outer autocast, so the penalty and its parameter gradients must agree with an fp32 step to float32
# rounding (1e-5; a GPU may sum a weight gradient in another order on each call). The Wasserstein term's
# gradients go through bf16 (8 significant bits, ~2-3 decimal digits) or fp16 (11 bits) convolutions, so
# the total gradient is compared by relative norm error: 3e-2 for bf16, 5e-3 for fp16.
@pytest.mark.parametrize(
    "dtype,total_tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)], ids=["bf16", "fp16"]
)
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_matches_fp32(device, dtype, total_tol, true_fp32):
    torch.manual_seed(0)
    critic = Critic(SHAPE, 4, dropout=0.0).to(device)  # no dropout: both runs must see the same network
    draws = torch.Generator().manual_seed(1)
    real = (torch.rand(6, *SHAPE, generator=draws) > 0.8).float().to(device)
    fake, eps = torch.rand(6, *SHAPE, generator=draws).to(device), torch.rand(6, generator=draws).to(device)
    scale = 2.0**12 if dtype == torch.float16 else None  # fp16: GradScaler-style loss scaling

    def grads(loss):
        critic.zero_grad()
        (loss * (scale or 1.0)).backward()
        # The head's bias has no gradient from the penalty (it does not change ∇D(x̂)): count it as 0.
        return torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in critic.parameters()]
        ) / (scale or 1.0)

    ref_penalty, _ = gradient_penalty(critic, real, fake, eps=eps)
    ref_penalty_grads = grads(ref_penalty)
    ref_total_grads = grads(critic_loss(critic, real, fake, gp_lambda=10.0, eps=eps).total)
    with torch.autocast(device, dtype=dtype):
        penalty, _ = gradient_penalty(critic, real, fake, eps=eps, loss_scale=scale)
        loss = critic_loss(critic, real, fake, gp_lambda=10.0, eps=eps, loss_scale=scale)
    torch.testing.assert_close(penalty, ref_penalty, rtol=1e-5, atol=0)
    torch.testing.assert_close(grads(penalty), ref_penalty_grads, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss.penalty, ref_penalty.detach(), rtol=1e-5, atol=0)
    error = (grads(loss.total) - ref_total_grads).norm() / ref_total_grads.norm()
    assert float(error) < total_tol
    assert float(error) > 0  # the Wasserstein term really ran in low precision
