"""Few-step ODE solvers (euler, midpoint, heun, rk4) over one ``velocity(x, t, labels)`` callable.

The loop is written out on purpose: it runs unchanged on numpy arrays (ONNX Runtime backend, no torch)
and on torch tensors. ``t`` passed to the callable is a float in [0, 1] (1 = noise); the backend scales
it and broadcasts it to shape [B]. See :mod:`fm_edge.convention` for the time direction.

No solver evaluates the velocity at t=0. There the net has only seen clean data, and off the data the
marginal velocity blows up like 1/t. So heun's final step, the one that ends at t=0, is an Euler step, and
rk4's is a midpoint step: their first stages, without the ones at t=0. This follows EDM's Heun sampler
(Karras et al. 2022). Evaluating at t=0 made heun useless at few steps: FD 1260 against 48.5 with the
Euler final step at 2 steps, and 287 against 16.4 at 4 steps (shipped checkpoint, 500 digits).

The same steps and guidance are written out twice more, where a Python loop cannot run: unrolled into the
ONNX graph by :func:`fm_edge.export.sampler_graph.build_sampler`, and (Euler only) through diffusers'
scheduler in :mod:`fm_edge.diffusers_pipeline`. A change here must be made there too; the tests hold them
together (test_solvers: loop and graph on a known velocity field; test_diffusers_pipeline: pipeline and loop).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np

from fm_edge.errors import UsageError

SOLVERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}  # velocity evaluations per step
FINAL_STEP = {"euler": 1, "midpoint": 2, "heun": 1, "rk4": 2}  # ... in the step that ends at t=0
MAX_STEPS = 1024
MAX_CFG = 20.0


def check_solver(solver: str, steps: int) -> None:
    """Raise a UsageError for an unknown solver or a step count outside 1..MAX_STEPS."""
    if solver not in SOLVERS:
        raise UsageError(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise UsageError(f"steps must be an integer, got {steps!r}")
    if not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"steps={steps} is out of range: use 1 to {MAX_STEPS}")


def nfe(solver: str, steps: int) -> int:
    """Number of velocity-function evaluations of one solve (CFG batches cond+uncond into one call)."""
    return SOLVERS[solver] * (steps - 1) + FINAL_STEP[solver]


def network_evals(solver: str, steps: int, doubled: bool) -> int:
    """UNet evaluations per digit: the solve's velocity calls, twice over when CFG doubles each call's batch."""
    return nfe(solver, steps) * (2 if doubled else 1)


def time_grid(steps: int, shift: float = 1.0) -> list[float]:
    """steps+1 times from 1 (noise) to 0 (data). shift > 1 spends more steps near the noise end."""
    if not (math.isfinite(shift) and shift > 0):
        raise UsageError(f"time shift must be a finite number > 0, got {shift}")
    ts = [1.0 - i / steps for i in range(steps + 1)]
    return [shift * t / (1.0 + (shift - 1.0) * t) for t in ts]


def _cat(a, b):
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    import torch

    return torch.cat([a, b])


def check_cfg(cfg_scale: float) -> None:
    """Raise a UsageError unless the CFG scale is a real number (not a bool or a string) in 0..MAX_CFG."""
    if isinstance(cfg_scale, (bool, np.bool_)) or not isinstance(cfg_scale, numbers.Real):
        raise UsageError(f"cfg scale must be a number from 0 to {MAX_CFG:g}, got {cfg_scale!r}")
    if not math.isfinite(cfg_scale) or not 0 <= cfg_scale <= MAX_CFG:
        raise UsageError(f"cfg scale {cfg_scale} is out of range: use a finite value from 0 to {MAX_CFG:g}")


def guided(velocity: Callable, cfg_scale: float, null_label: int = 10) -> Callable:
    """Wrap ``velocity`` with classifier-free guidance: v_u + s * (v_c - v_u), in one batched call."""
    check_cfg(cfg_scale)
    if cfg_scale == 1.0:
        return velocity

    def v(x, t, labels):
        null = labels * 0 + null_label
        tt = t if getattr(t, "ndim", 0) == 0 else _cat(t, t)  # one time per row (training) is doubled too
        both = velocity(_cat(x, x), tt, _cat(labels, null))
        vc, vu = both[: len(x)], both[len(x) :]
        out = vu + cfg_scale * (vc - vu)
        # An unconditional request (label 10) has nothing to guide: its v_c equals v_u already.
        return out

    return v


def sample(
    velocity: Callable,
    x: np.ndarray,
    labels,
    steps: int,
    solver: str = "euler",
    cfg_scale: float = 1.0,
    shift: float = 1.0,
    callback: Callable[[int, int], None] | None = None,
):
    """Integrate dx/dt = velocity from t=1 (x = noise) to t=0 and return the final x.

    ``callback(step, steps)`` is called after each step (progress bars).
    """
    check_solver(solver, steps)
    v = guided(velocity, cfg_scale)
    ts = time_grid(steps, shift)
    for i in range(steps):
        # 1. step from t to s = t - h (h > 0: time runs backwards towards the data)
        t, s = ts[i], ts[i + 1]
        h = t - s
        # 2. one step of the chosen explicit Runge-Kutta method
        k1 = v(x, t, labels)
        if solver == "euler":
            x = x - h * k1
        elif solver == "midpoint":
            k2 = v(x - 0.5 * h * k1, t - 0.5 * h, labels)
            x = x - h * k2
        elif solver == "heun":
            if i < steps - 1:
                k2 = v(x - h * k1, s, labels)
                x = x - 0.5 * h * (k1 + k2)
            else:  # the final step ends at t=0: Euler
                x = x - h * k1
        else:  # rk4
            k2 = v(x - 0.5 * h * k1, t - 0.5 * h, labels)
            if i < steps - 1:
                k3 = v(x - 0.5 * h * k2, t - 0.5 * h, labels)
                k4 = v(x - h * k3, s, labels)
                x = x - h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
            else:  # the final step ends at t=0: midpoint
                x = x - h * k2
        # 3. report progress
        if callback is not None:
            callback(i + 1, steps)
    return x
