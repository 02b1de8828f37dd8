"""The flow-matching objective: the probability path, the time-sampling density and the velocity loss."""

from __future__ import annotations

import torch

from fm_edge.convention import NULL_LABEL, T_SCALE
from fm_edge.errors import UsageError

TIME_SAMPLING = ("uniform", "logit-normal")


def sample_t(n: int, how: str, generator: torch.Generator) -> torch.Tensor:
    """Training times in (0, 1): uniform, or logit-normal(0, 1) (more weight mid-path, as in SD3)."""
    if how == "uniform":
        return torch.rand(n, generator=generator)
    if how == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=generator))
    raise UsageError(f"unknown time sampling {how!r}: choose one of {', '.join(TIME_SAMPLING)}")


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t x1 (x0 data, x1 noise), t broadcast over [B,1,1,1]."""
    t = t.view(-1, 1, 1, 1)
    return (1 - t) * x0 + t * x1


def loss_fn(
    model,
    x0: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    time_sampling: str = "uniform",
    label_dropout: float = 0.1,
) -> torch.Tensor:
    """Mean squared error between the UNet output and the target velocity x1 - x0.

    Labels are replaced by the null label with probability ``label_dropout`` (classifier-free guidance).
    All randomness comes from ``generator`` (on the CPU) so a resumed run repeats it exactly.
    """
    b = x0.shape[0]
    x1 = torch.randn(x0.shape, generator=generator).to(x0.device)
    t = sample_t(b, time_sampling, generator).to(x0.device)
    drop = (torch.rand(b, generator=generator) < label_dropout).to(x0.device)
    labels = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
    xt = interpolate(x0, x1, t)
    pred = model(xt, t * T_SCALE, class_labels=labels).sample
    return torch.nn.functional.mse_loss(pred.float(), (x1 - x0).float())
