"""Sampling front end: backends behind the ``velocity`` seam, seeded noise, batching, and ``fm-edge sample``.

Imports neither torch nor onnxruntime at module level: the torch backend imports torch, the onnx backend
imports only :mod:`fm_edge.runtime` (numpy + onnxruntime), so a torch-free install can sample.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fm_edge.convention import MODEL_SIZE, check_labels, check_model_input, decode_uint8, default_labels
from fm_edge.errors import UsageError
from fm_edge.solvers import check_cfg, check_solver, nfe, sample, time_grid

BACKENDS = ("torch", "onnx", "torchao")


@dataclass
class Backend:
    """A velocity callable plus how to move numpy arrays in and out of its array type."""

    name: str
    velocity: Callable
    sampler: dict  # the model's recommended solver/steps/cfg_scale/shift
    to_native: Callable = lambda a: a
    to_numpy: Callable = lambda a: a
    info: dict | None = None


def make_noise(n: int, seed: int) -> np.ndarray:
    """The shared starting noise: float32 [n,1,32,32] from numpy's PCG64 (identical for every backend)."""
    return np.random.default_rng(seed).standard_normal((n, 1, MODEL_SIZE, MODEL_SIZE), dtype=np.float32)


def torch_backend(model_dir=None, num_threads: int | None = None, device: str = "cpu") -> Backend:
    import torch

    from fm_edge.model import DEFAULT_SAMPLER, load, resolve, velocity_fn

    if num_threads:
        torch.set_num_threads(num_threads)
    model, fm = load(model_dir, device=device)
    return Backend(
        name="torch",
        velocity=velocity_fn(model),
        sampler=dict(DEFAULT_SAMPLER, **fm.get("sampler", {})),
        to_native=lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device),
        to_numpy=lambda a: a.detach().float().cpu().numpy(),
        info={"model": str(resolve(model_dir)), "preset": fm.get("preset"), "module": model},
    )


def onnx_backend(model_path=None, num_threads: int | None = None) -> Backend:
    from fm_edge.model import DEFAULT_SAMPLER
    from fm_edge.runtime import OnnxVelocity, shipped_onnx

    v = OnnxVelocity(model_path or shipped_onnx("velocity.onnx"), num_threads=num_threads)
    return Backend(
        name="onnx",
        velocity=v,
        sampler=dict(DEFAULT_SAMPLER, **v.recommended_sampler()),
        info={"model": str(v.path)},
    )


def make_backend(name: str, model=None, num_threads: int | None = None) -> Backend:
    if name == "torch":
        return torch_backend(model, num_threads)
    if name == "onnx":
        return onnx_backend(model, num_threads)
    if name == "torchao":  # int8 PT2E, rebuilt at load from the fp32 safetensors (no pickles)
        from fm_edge.quantize.torchao_backend import sample_backend

        return sample_backend(model, num_threads)
    raise UsageError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


def generate(
    backend: Backend,
    labels: np.ndarray,
    steps: int,
    solver: str,
    cfg_scale: float,
    shift: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    noise: np.ndarray | None = None,
    progress: bool = False,
    raw: bool = False,
) -> np.ndarray:
    """Sample len(labels) digits; uint8 [N,28,28] (or the float model-space x when ``raw``)."""
    check_solver(solver, steps)
    check_cfg(cfg_scale)
    labels = check_labels(labels)
    if labels.ndim != 1:
        raise UsageError(f"labels have shape {list(labels.shape)}: expected one label per sample, [N]")
    n = len(labels)
    x1 = make_noise(n, seed) if noise is None else check_model_input(noise, "noise")
    if len(x1) != n:
        raise UsageError(f"noise has {len(x1)} rows but there are {n} labels: give one noise per label")
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=n * steps, desc=f"sample ({solver}, {steps} steps)", unit="img-step", file=sys.stderr
        )
    outs = []
    try:
        for i in range(0, n, batch_size):
            xb = backend.to_native(x1[i : i + batch_size])
            yb = backend.to_native(np.asarray(labels[i : i + batch_size], dtype=np.int64))
            nb = len(labels[i : i + batch_size])
            cb = (lambda s, total, nb=nb: bar.update(nb)) if bar else None
            x0 = sample(backend.velocity, xb, yb, steps, solver, cfg_scale, shift, callback=cb)
            outs.append(backend.to_numpy(x0))
    finally:
        if bar:
            bar.close()
    x = np.concatenate(outs) if outs else np.zeros((0, 1, MODEL_SIZE, MODEL_SIZE), np.float32)
    return x if raw else decode_uint8(x)


def resolve_sampler(args, recommended: dict) -> dict:
    """CLI flags override the model's recommended solver, steps, CFG scale and shift."""
    s = dict(recommended)
    for key, flag in (
        ("steps", "steps"),
        ("solver", "solver"),
        ("cfg_scale", "cfg_scale"),
        ("shift", "shift"),
    ):
        val = getattr(args, flag, None)
        if val is not None:
            s[key] = val
    check_solver(s["solver"], s["steps"])
    check_cfg(s["cfg_scale"])
    time_grid(1, s["shift"])  # validates the shift
    return s


def main(args):
    """``fm-edge sample``."""
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if not str(args.output).endswith((".npz", ".png")):
        raise UsageError(f"-o {args.output!r} must end in .npz or .png")
    if args.backend not in BACKENDS:
        raise UsageError(f"unknown backend {args.backend!r}: choose one of {', '.join(BACKENDS)}")
    labels = default_labels(args.num_samples, args.label, args.unconditional)
    backend = make_backend(args.backend, args.model, args.num_threads)
    s = resolve_sampler(args, backend.sampler)
    x = generate(
        backend,
        labels,
        s["steps"],
        s["solver"],
        s["cfg_scale"],
        s["shift"],
        args.seed,
        args.batch_size,
        progress=True,
        raw=True,
    )
    print(
        f"{args.num_samples} samples, {s['solver']} x {s['steps']} steps = NFE {nfe(s['solver'], s['steps'])}, "
        f"cfg {s['cfg_scale']}, backend {backend.name}",
        file=sys.stderr,
    )
    if args.reference:
        if backend.name != "torch":
            raise UsageError("--reference needs --backend torch (dopri5 runs through torchdiffeq)")
        from fm_edge.reference import distance_to_reference

        d = distance_to_reference(backend, x, labels, s["cfg_scale"], args.seed)
        print(
            f"distance to the dopri5 solution: RMS {d['rms']:.4f}, max {d['max']:.4f} (model space)",
            file=sys.stderr,
        )
    from fm_edge.images import save_samples

    return save_samples(args.output, decode_uint8(x), labels)
