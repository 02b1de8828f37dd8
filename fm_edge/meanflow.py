"""The mean-flow objective: a net that learns the average velocity over a step, so one network evaluation
covers a step of any length (Geng et al. 2025, "Mean Flows for One-step Generative Modeling").

The average velocity u(z, r, t) over [r, t] of a flow with velocity v obeys u = v - (t - r) du/dt, where
du/dt = v . grad_z u + d_t u is the total derivative along the flow with r held fixed. The student takes
(z, t, h = t - r) (``OneStepNet`` with ``step_input``), so along the flow the tangent of its inputs is
(v, 1, 1), and one forward-mode pass (``torch.func.jvp``) gives u and du/dt together. The loss regresses u
onto the stop-gradient target v - h du/dt.

The flow learned here is a teacher's guided velocity field, v = v_null + w (v_label - v_null) from a frozen
flow net at the points z_t = (1 - t) x0 + t x1 of real digits x0 and noise x1, so the student folds the
guidance in, as the other distilled students do. A share ``1 - mean_share`` of the rows has h = 0, where the
target is the teacher's velocity itself.

With ``weight_power`` p > 0 each row's squared error e is weighted by 1 / (e + c)^p (no gradient through the
weight), the paper's adaptive loss weighting: p = 0.5 gives every row a gradient of the same size (a robust L2
norm, as the pseudo-Huber loss of consistency training), so rows far off stop dominating the batch; p = 1 (the
paper's choice) is about a loss on the log of each row's error.

With a critic (``--mean-critic``) the student's own K-step digits from fresh noise (:func:`rollout_digits`)
are also scored against real MNIST by the one-step net's critic (:mod:`fm_edge.critic`): the regression keeps
every step on the teacher's flow, the critic judges the digits the sampler really draws.
"""

from __future__ import annotations

from fm_edge.convention import T_SCALE
from fm_edge.flow import floor_weighted, interpolate

ADAPTIVE_C = 1e-4  # keeps the adaptive weight finite for rows the student already gets right


def mean_velocity_target(student, z, t, h, v, labels):
    """The student's average velocity u at (z, t, h) and its target v - h du/dt (no gradient)."""
    import torch

    def u_of(z_, t_, h_):
        return student(z_, t_ * T_SCALE, class_labels=labels, step_size=h_).sample

    u, dudt = torch.func.jvp(u_of, (z, t, h), (v, torch.ones_like(t), torch.ones_like(h)))
    return u, (v - h.view(-1, 1, 1, 1) * dudt).detach()


def rollout_digits(student, noise, labels, steps: int):
    """The digits the student's own ``steps``-step Euler sampler draws from ``noise`` (t on the grid 1, 1 - 1/K,
    ..., 1/K, each step of length 1/K): the first K - 1 steps without gradient, the last one with it."""
    import torch

    z, h = noise, 1.0 / steps
    step = torch.full((len(noise),), h, device=noise.device)

    def u(z_, t):
        return student(z_, torch.full_like(step, t * T_SCALE), class_labels=labels, step_size=step).sample

    with torch.no_grad():
        for i in range(steps - 1):
            z = z - h * u(z, 1.0 - i * h).float()
    return z - h * u(z, h).float()


def meanflow_loss(
    student,
    teacher_v,
    x0,
    labels,
    generator,
    mean_share: float,
    t_floor: float | None,
    grid: tuple[int, ...] = (),
    weight_power: float = 0.0,
):
    """Mean squared error of the student's average velocity against its mean-flow target, on a batch of real
    digits ``x0`` [B, 1, 32, 32] with their ``labels``; ``teacher_v(x, t, labels)`` is the guided teacher.

    t is uniform on (0, 1); a share ``mean_share`` of rows gets a step, the rest r = t. A step is r uniform on
    (0, t), or, with ``grid`` step counts, one step of a K-step sampler (K drawn from ``grid``, t one of its
    grid times 1, 1 - 1/K, ..., 1/K, h = 1/K): the steps the shipped samplers take. All randomness comes from
    ``generator`` (on the CPU), so a resumed run repeats it. ``t_floor`` (a digit-drawing student,
    :data:`fm_edge.flow.DIGIT_T_FLOOR`) scales the error below it by t / t_floor, as the flow loss does.
    ``weight_power`` > 0 weights rows adaptively (module docstring), normalised so the loss stays a mean
    squared error in the same units.
    """
    import torch

    b = x0.shape[0]
    x1 = torch.randn(x0.shape, generator=generator).to(x0.device)
    t = torch.rand(b, generator=generator)
    h = t * (1 - torch.rand(b, generator=generator))  # r = t - h uniform on [0, t)
    mean = torch.rand(b, generator=generator) < mean_share
    if grid:
        k = torch.tensor(grid, dtype=torch.float32)[torch.randint(len(grid), (b,), generator=generator)]
        i = torch.floor(torch.rand(b, generator=generator) * k)  # which step of the K: 0 .. K-1
        on_grid = mean  # every step row takes a grid step
        t = torch.where(on_grid, 1 - i / k, t)
        h = torch.where(on_grid, 1 / k, h)
    h = torch.where(mean, h, torch.zeros_like(h))
    t, h = t.to(x0.device), h.to(x0.device)
    z = interpolate(x0, x1, t)
    with torch.no_grad():
        v = teacher_v(z, t, labels)
    u, target = mean_velocity_target(student, z, t, h, v, labels)
    per_row = floor_weighted(u.float() - target.float(), t, t_floor).square().flatten(1).mean(1)
    if weight_power:
        w = (per_row.detach() + ADAPTIVE_C) ** -weight_power
        per_row = per_row * (w / w.mean())
    return per_row.mean()
