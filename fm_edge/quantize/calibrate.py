"""Trajectory calibration: the exact inputs the velocity net sees while the fp32 sampler runs.

Diffusion activations change with t, so int8 ranges calibrated on random noise miss most of what the net
sees. Here the fp32 sampler runs with the solver, step count, time shift and CFG scale that will be exported,
and every call of the velocity net is recorded: with CFG the net sees the doubled batch ``[x, x]`` with labels
``[y, 10]``, and that doubled batch is what gets recorded. Requests cycle through the labels 0-10, so every
digit and the null label appear even when CFG is off.

numpy only (the velocity callable may be any backend: ORT, torch, ...); the ORT reader imports
``onnxruntime.quantization`` lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fm_edge.backends import make_noise
from fm_edge.convention import NULL_LABEL, T_SCALE, VELOCITY_INPUTS
from fm_edge.errors import UsageError
from fm_edge.solvers import check_solver, nfe, sample

#: One noise per label 0-10 at least; fewer cannot cover every class, and ranges from so few are noise.
MIN_NOISES = NULL_LABEL + 1
INPUT_NAMES = tuple(VELOCITY_INPUTS)


@dataclass
class Trajectories:
    """Recorded velocity-net inputs, one row per (call, batch row), plus the fp32 end points."""

    sample: np.ndarray  # float32 [N, 1, 32, 32]: x_t as the net saw it
    timestep: np.ndarray  # float32 [N]: t * T_SCALE
    class_labels: np.ndarray  # int64 [N]: 0-9 or 10 (null, CFG's unconditional half)
    call: np.ndarray  # int32 [N]: index of the velocity call within the solve (0 .. nfe-1)
    final: np.ndarray  # float32 [num_noises, 1, 32, 32]: the fp32 sampler's output (reference images)
    noise: np.ndarray  # float32 [num_noises, 1, 32, 32]: the starting noise
    labels: np.ndarray  # int64 [num_noises]: the requested labels
    meta: dict = field(default_factory=dict)  # solver, steps, cfg_scale, shift, seed, num_noises, nfe

    def __len__(self) -> int:
        return len(self.sample)

    def feeds(self, rows=slice(None)) -> dict:
        """ORT feeds for the given rows."""
        return {
            "sample": np.ascontiguousarray(self.sample[rows]),
            "timestep": np.ascontiguousarray(self.timestep[rows]),
            "class_labels": np.ascontiguousarray(self.class_labels[rows]),
        }

    def subset(self, every: int) -> Trajectories:
        """Every ``every``-th row (keeps all calls and labels when rows are interleaved)."""
        sl = slice(None, None, every)
        return Trajectories(
            self.sample[sl], self.timestep[sl], self.class_labels[sl], self.call[sl],
            self.final, self.noise, self.labels, dict(self.meta, subset_every=every),
        )  # fmt: skip


def calibration_labels(n: int) -> np.ndarray:
    """Requested labels for n calibration noises: 0, 1, ..., 9, 10, 0, 1, ... (10 = unconditional)."""
    return (np.arange(n) % (NULL_LABEL + 1)).astype(np.int64)


def collect(velocity: Callable, num_noises: int, solver: str, steps: int, cfg_scale: float, shift: float = 1.0,
            seed: int = 0, batch_size: int = 64) -> Trajectories:  # fmt: skip
    """Run the fp32 sampler over ``num_noises`` seeded noises and record every velocity-net input.

    ``velocity(x, t, labels)`` takes and returns numpy arrays (an ORT velocity, or a torch one wrapped by
    :func:`numpy_velocity`). The noise is :func:`fm_edge.backends.make_noise`'s, so the recorded run is
    reproducible from ``seed`` alone.
    """
    check_solver(solver, steps)
    if (
        isinstance(num_noises, bool)
        or not isinstance(num_noises, (int, np.integer))
        or num_noises < MIN_NOISES
    ):
        raise UsageError(
            f"calibration set too small: {num_noises} noises; int8 calibration needs at least {MIN_NOISES} "
            f"(one per label 0-{NULL_LABEL}); 64 or more is recommended"
        )
    if batch_size < 1:
        raise UsageError(f"calibration batch size must be >= 1, got {batch_size}")
    noise = make_noise(num_noises, seed)
    labels = calibration_labels(num_noises)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []
    counter = [0]

    def recording(x, t, y):
        x = np.asarray(x, dtype=np.float32)
        tt = np.broadcast_to(np.asarray(t, dtype=np.float32).reshape(-1), (len(x),)) * np.float32(T_SCALE)
        rows.append((x.copy(), tt.astype(np.float32), np.asarray(y, dtype=np.int64).copy(), counter[0]))
        counter[0] += 1
        return velocity(x, t, y)

    finals = []
    for i in range(0, num_noises, batch_size):
        counter[0] = 0
        finals.append(
            sample(
                recording,
                noise[i : i + batch_size],
                labels[i : i + batch_size],
                steps,
                solver,
                cfg_scale,
                shift,
            )
        )
    n_calls = nfe(solver, steps)
    return Trajectories(
        sample=np.concatenate([r[0] for r in rows]),
        timestep=np.concatenate([r[1] for r in rows]),
        class_labels=np.concatenate([r[2] for r in rows]),
        call=np.concatenate([np.full(len(r[0]), r[3], np.int32) for r in rows]),
        final=np.concatenate(finals).astype(np.float32),
        noise=noise,
        labels=labels,
        meta={
            "solver": solver,
            "steps": int(steps),
            "cfg_scale": float(cfg_scale),
            "shift": float(shift),
            "seed": int(seed),
            "num_noises": int(num_noises),
            "nfe": n_calls,
            "rows": int(sum(len(r[0]) for r in rows)),
            "label_source": "requests cycle 0-10; CFG adds the null label 10 to every call",
        },
    )


def numpy_velocity(torch_velocity: Callable) -> Callable:
    """Wrap a torch ``velocity(x, t, labels)`` (e.g. fm_edge.model.velocity_fn) to take and give numpy."""
    import torch

    def v(x, t, labels):
        out = torch_velocity(
            torch.from_numpy(np.ascontiguousarray(x)), t, torch.from_numpy(np.asarray(labels))
        )
        return out.detach().float().cpu().numpy()

    return v


def reader(traj: Trajectories, batch_size: int = 64):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over the recorded rows (rewindable)."""
    from onnxruntime.quantization import CalibrationDataReader

    class TrajectoryReader(CalibrationDataReader):
        def __init__(self):
            self.traj, self.batch_size, self.pos = traj, batch_size, 0

        def get_next(self):
            if self.pos >= len(self.traj):
                return None
            rows = slice(self.pos, self.pos + self.batch_size)
            self.pos += self.batch_size
            return self.traj.feeds(rows)

        def rewind(self):
            self.pos = 0

        def __len__(self):
            return -(-len(self.traj) // self.batch_size)

    return TrajectoryReader()
