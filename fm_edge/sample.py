"""``fm-edge sample``: pick a backend by name, apply the flags over the model's recommended sampler, sample,
and write an .npz or a PNG grid.
"""

from __future__ import annotations

import sys

from fm_edge.backends import Backend, generate, onnx_backend, torch_backend
from fm_edge.convention import decode_uint8, default_labels
from fm_edge.errors import UsageError
from fm_edge.solvers import check_cfg, check_solver, nfe, time_grid

BACKENDS = ("torch", "onnx", "torchao")


def make_backend(name: str, model=None, num_threads: int | None = None) -> Backend:
    if name == "torch":
        return torch_backend(model, num_threads)
    if name == "onnx":
        return onnx_backend(model, num_threads)
    if name == "torchao":  # int8 PT2E, rebuilt at load from the fp32 safetensors (no pickles)
        from fm_edge.quantize.torchao_backend import sample_backend

        return sample_backend(model, num_threads)
    raise UsageError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


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
