"""The export's self-check, as Optimum does it: run ONNX Runtime against the reference on fixed inputs.

- velocity.onnx against PyTorch at batch sizes other than the traced one (1 and 37): max |diff| <= atol;
- sampler.onnx against :func:`fm_edge.solvers.sample` driven by the ORT velocity model on the same noise
  (labels cycling 0-10, the CFG scale as exported): at most 1 uint8 level apart for nearly all pixels;
- sampler.onnx at most 1.2x the size of velocity.onnx (the weights are stored once).

Each check prints one line, ``✓``/``✗`` with the number and its tolerance. :func:`require` raises when any
check failed; the caller writes under temporary names, so a failed export leaves no model file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fm_edge.convention import MODEL_SIZE, NULL_LABEL, T_SCALE, decode_uint8
from fm_edge.errors import FmEdgeError

BATCH_SIZES = (1, 37)  # the export traces batch 2; these prove the batch axis is really dynamic
VELOCITY_ATOL = 1e-4
SAMPLER_LEVELS = 1  # uint8 levels a pixel may differ by (float noise flips a rounding now and then)
SAMPLER_MAX_FRACTION = 1e-3  # fraction of pixels allowed beyond SAMPLER_LEVELS
MAX_SIZE_RATIO = 1.2


@dataclass
class Check:
    """One validated output: what was compared, the measured value and the allowed one."""

    name: str
    ok: bool
    value: float
    limit: float
    detail: str = ""

    def line(self) -> str:
        return f"  {'✓' if self.ok else '✗'} {self.name}: {self.detail}"


def fixed_inputs(batch: int, seed: int = 0):
    """Deterministic (x, timestep already scaled, labels incl. the null label) for one batch size."""
    rng = np.random.default_rng([seed, batch])
    x = rng.standard_normal((batch, 1, MODEL_SIZE, MODEL_SIZE), dtype=np.float32)
    t = rng.uniform(0.0, 1.0, batch).astype(np.float32) * np.float32(T_SCALE)
    labels = np.arange(batch, dtype=np.int64) % (NULL_LABEL + 1)
    return x, t, labels


def validate_velocity(
    onnx_path: str | Path,
    model,
    batch_sizes=BATCH_SIZES,
    atol: float = VELOCITY_ATOL,
    seed: int = 0,
    num_threads: int | None = None,
) -> list[Check]:
    """ORT velocity.onnx against the torch UNet on fixed inputs, one check per batch size."""
    import torch

    from fm_edge.runtime import OnnxVelocity

    sess = OnnxVelocity(onnx_path, num_threads=num_threads).session
    checks = []
    for b in batch_sizes:
        x, t, y = fixed_inputs(b, seed)
        with torch.no_grad():
            ref = model(
                torch.from_numpy(x), torch.from_numpy(t), class_labels=torch.from_numpy(y)
            ).sample.numpy()
        out = sess.run(None, {"sample": x, "timestep": t, "class_labels": y})[0]
        if out.shape != ref.shape:
            checks.append(
                Check(f"velocity (batch {b})", False, np.inf, atol, f"shape {out.shape} != {ref.shape}")
            )
            continue
        diff = float(np.abs(out.astype(np.float64) - ref).max())
        ok = bool(np.isfinite(diff) and diff <= atol)
        checks.append(
            Check(f"velocity (batch {b})", ok, diff, atol, f"max |diff| {diff:.2e} (atol {atol:.0e})")
        )
    return checks


def validate_sampler(
    sampler_path: str | Path,
    velocity_path: str | Path,
    spec,
    batch_sizes=BATCH_SIZES,
    seed: int = 0,
    num_threads: int | None = None,
) -> list[Check]:
    """sampler.onnx against the Python solver loop over the ORT velocity model, on the same noise, both
    running the sampler ``spec`` (a :class:`~fm_edge.sampler_spec.SamplerSpec`)."""
    from fm_edge.runtime import OnnxSampler, OnnxVelocity
    from fm_edge.solvers import sample

    graph = OnnxSampler(sampler_path, num_threads=num_threads)
    velocity = OnnxVelocity(velocity_path, num_threads=num_threads)
    checks = []
    for b in batch_sizes:
        noise, _, labels = fixed_inputs(b, seed)
        ref = decode_uint8(
            sample(velocity, noise, labels, spec.steps, spec.solver, spec.cfg_scale, spec.shift)
        )
        out = graph(noise, labels, spec.cfg_scale)
        name = f"images (batch {b}, {spec.solver} x {spec.steps}, {spec.guidance_text()})"
        if out.shape != ref.shape or out.dtype != np.uint8:
            checks.append(
                Check(name, False, np.inf, SAMPLER_LEVELS, f"got {out.dtype} {out.shape}, want {ref.shape}")
            )
            continue
        diff = np.abs(out.astype(np.int16) - ref.astype(np.int16))
        frac = float((diff > SAMPLER_LEVELS).mean())
        ok = frac <= SAMPLER_MAX_FRACTION
        detail = (
            f"max |diff| {int(diff.max())} levels, {frac:.3%} of pixels > {SAMPLER_LEVELS} "
            f"(allowed {SAMPLER_MAX_FRACTION:.1%})"
        )
        checks.append(Check(name, ok, frac, SAMPLER_MAX_FRACTION, detail))
    return checks


def check_size(
    sampler_path: str | Path, velocity_path: str | Path, max_ratio: float = MAX_SIZE_RATIO
) -> Check:
    """sampler.onnx stores the weights once: its size is at most ``max_ratio`` x velocity.onnx."""
    s, v = Path(sampler_path).stat().st_size, Path(velocity_path).stat().st_size
    ratio = s / v
    detail = f"{s / 1e6:.3f} MB = {ratio:.3f} x velocity.onnx ({v / 1e6:.3f} MB; allowed {max_ratio}x)"
    return Check("sampler.onnx size", ratio <= max_ratio, ratio, max_ratio, detail)


def report(title: str, checks: list[Check], file=None) -> None:
    """Print the title and one ✓/✗ line per check (stderr by default: stdout carries the artifact path)."""
    file = file or sys.stderr
    print(title, file=file)
    for c in checks:
        print(c.line(), file=file)


def require(what: str, checks: list[Check]) -> None:
    """Raise an FmEdgeError naming the first failed check, if any."""
    failed = [c for c in checks if not c.ok]
    if failed:
        c = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise FmEdgeError(f"{what} failed validation: {c.name}: {c.detail}{more}; no file written")
