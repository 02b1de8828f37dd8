"""The flow-matching objective: the probability path, the time-sampling density, minibatch OT pairing and the loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fm_edge.convention import NULL_LABEL, T_SCALE
from fm_edge.errors import UsageError

if TYPE_CHECKING:  # torch is imported where it is used, so the CLI can read TIME_SAMPLING without it
    import torch

TIME_SAMPLING = ("uniform", "logit-normal")
# Minibatch OT pairs within groups of at most this many images: the assignment runs on the CPU and its
# cost grows about cubically (scipy, one core: ~1 ms for 128, ~16 ms for 256, ~45 ms for 512 here).
OT_GROUP = 128
# A net that draws the digit (velocity = (x_t - digit) / t) has its velocity error = digit error / t, so the
# velocity loss weighs the digit error by 1/t^2 and has no bound as t -> 0. Below this t the weight stays at
# 1/DIGIT_T_FLOOR^2; no Euler grid of up to 10 steps with time shift >= 1 evaluates the net below it.
DIGIT_T_FLOOR = 0.1


def t_floor_for(model) -> float | None:
    """:data:`DIGIT_T_FLOOR` for a net that draws the digit (config ``prediction="digit"``), else None."""
    return DIGIT_T_FLOOR if getattr(model.config, "prediction", "velocity") == "digit" else None


def floor_weighted(err: torch.Tensor, t: torch.Tensor, t_floor: float | None) -> torch.Tensor:
    """``err`` [B, ...] scaled by t / t_floor where t < t_floor (None: unchanged), so a digit-drawing net's
    digit error weighs no more there than at t_floor."""
    if t_floor is None:
        return err
    return err * (t / t.clamp(min=t_floor)).view(-1, *([1] * (err.dim() - 1)))


def sample_t(n: int, how: str, generator: torch.Generator) -> torch.Tensor:
    """Training times in (0, 1) on the generator's device: uniform, or logit-normal(0, 1) (mid-path, as SD3)."""
    import torch

    if how == "uniform":
        return torch.rand(n, generator=generator, device=generator.device)
    if how == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=generator, device=generator.device))
    raise UsageError(f"unknown time sampling {how!r}: choose one of {', '.join(TIME_SAMPLING)}")


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t x1 (x0 data, x1 noise), t broadcast over [B,1,1,1]."""
    t = t.view(-1, 1, 1, 1)
    return (1 - t) * x0 + t * x1


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor, group: int = OT_GROUP) -> torch.Tensor:
    """Indices ``j`` such that noise ``x1[j]`` pairs with data ``x0`` at minimal total squared distance.

    Exact assignment (``scipy.optimize.linear_sum_assignment``) within consecutive groups of ``group``
    rows; deterministic for given inputs. It reads the cost matrix on the CPU: one host sync per call.
    """
    import torch
    from scipy.optimize import linear_sum_assignment

    b = x0.shape[0]
    a, n = x0.reshape(b, -1).float(), x1.reshape(b, -1).float()
    cols = []
    for i in range(0, b, group):
        cost = torch.cdist(a[i : i + group], n[i : i + group]).pow(2).double().cpu().numpy()
        _, col = linear_sum_assignment(cost)
        cols.append(torch.as_tensor(col, dtype=torch.long) + i)
    return torch.cat(cols).to(x0.device)


def loss_fn(
    model,
    x0: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    time_sampling: str = "uniform",
    label_dropout: float = 0.1,
    ot_coupling: bool = False,
    t_floor: float | None = None,
) -> torch.Tensor:
    """Mean squared error between the model's velocity and the target velocity x1 - x0.

    Labels are replaced by the null label with probability ``label_dropout`` (classifier-free guidance).
    All randomness comes from ``generator``, drawn on its own device (the training device: no host copy)
    in a fixed order, so a resumed run repeats it exactly. With ``ot_coupling`` the noise is re-paired
    with the data by :func:`ot_pairing` (no extra randomness). With ``t_floor`` (for a digit-drawing net, see
    :data:`DIGIT_T_FLOOR`) the error at t < t_floor is scaled by t / t_floor, so its digit error weighs no
    more than at t_floor.
    """
    import torch

    b, dev = x0.shape[0], generator.device
    x1 = torch.randn(x0.shape, generator=generator, device=dev).to(x0.device)
    t = sample_t(b, time_sampling, generator).to(x0.device)
    drop = (torch.rand(b, generator=generator, device=dev) < label_dropout).to(x0.device)
    if ot_coupling:
        x1 = x1[ot_pairing(x0, x1)]
    labels = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
    xt = interpolate(x0, x1, t)
    pred = model(xt, t * T_SCALE, class_labels=labels).sample
    err = floor_weighted(pred.float() - (x1 - x0).float(), t, t_floor)
    return err.square().mean()
