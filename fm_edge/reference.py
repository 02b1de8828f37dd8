"""The adaptive reference solve (torchdiffeq dopri5) that measures how far few-step samples land from the ODE."""

from __future__ import annotations

import sys

import numpy as np

from fm_edge.backends import Backend, make_noise
from fm_edge.solvers import guided


def reference_solve(
    backend: Backend,
    noise: np.ndarray,
    labels: np.ndarray,
    cfg_scale: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[np.ndarray, int]:
    """Integrate from t=1 to t=0 with dopri5; returns (x0 in model space, number of velocity calls)."""
    import torch
    from torchdiffeq import odeint
    from tqdm.auto import tqdm

    v = guided(backend.velocity, cfg_scale)
    y = backend.to_native(np.asarray(labels, dtype=np.int64))
    calls = [0]
    # adaptive: the number of calls is not known ahead, so the bar counts them and shows how far t has come
    bar = tqdm(desc=f"dopri5 reference ({len(noise)} digits)", unit=" calls", file=sys.stderr, leave=False)

    def f(t, x):
        calls[0] += 1
        bar.update(1)
        bar.set_postfix_str(f"t={float(t):.3f}", refresh=False)
        return v(x, t, y)

    x1 = backend.to_native(noise)
    ts = torch.tensor([1.0, 0.0], dtype=torch.float32)
    try:
        with torch.no_grad():
            xs = odeint(f, x1, ts, method="dopri5", rtol=rtol, atol=atol)
    finally:
        bar.close()
    return backend.to_numpy(xs[-1]), calls[0]


def distance_to_reference(
    backend: Backend, x: np.ndarray, labels: np.ndarray, cfg_scale: float, seed: int
) -> dict:
    """RMS and max distance (model space, [-1, 1]) between few-step samples ``x`` and the dopri5 solution."""
    ref, calls = reference_solve(backend, make_noise(len(x), seed), labels, cfg_scale)
    diff = np.asarray(x, np.float32) - ref
    return {"rms": float(np.sqrt(np.mean(diff**2))), "max": float(np.abs(diff).max()), "reference_nfe": calls}
