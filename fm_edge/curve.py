"""Quality against NFE: FD and label accuracy per solver and step count, beside the dopri5 distance.

``fm-edge evaluate --nfe-curve`` samples the same noise with each solver at each step count, evaluates
every set with the project evaluator, measures how far the few-step samples land from the adaptive
reference solution (torchdiffeq dopri5) on a subset, and writes a JSON table and a PNG plot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from fm_edge.backends import generate
from fm_edge.convention import decode_uint8, default_labels
from fm_edge.errors import UsageError
from fm_edge.sampler_spec import SamplerSpec
from fm_edge.solvers import nfe


def nfe_curve(
    backend,
    reference_backend=None,
    solvers=("euler", "heun"),
    steps=(1, 2, 4, 8, 16, 32),
    n: int = 2000,
    cfg_scale: float = 2.0,
    shift: float = 1.0,
    seed: int = 0,
    reference_n: int = 100,
) -> dict:
    """Evaluate every (solver, steps) on the same n noises; returns {"rows": [...], "reference": {...}}.

    ``backend`` samples (torch or onnx); ``reference_backend`` (torch, default ``backend``) runs dopri5.
    """
    from fm_edge.backends import make_noise
    from fm_edge.evaluate import evaluate_images
    from fm_edge.reference import reference_solve

    labels = default_labels(n)
    noise = make_noise(n, seed)
    ref = None
    if reference_n:  # dopri5 runs through torchdiffeq, so on a torch backend
        rb = reference_backend or backend
        ref, ref_calls = reference_solve(rb, noise[:reference_n], labels[:reference_n], cfg_scale)
    rows = []
    for solver in solvers:
        for k in steps:
            spec = SamplerSpec(solver, k, cfg_scale, shift)
            x = generate(backend, labels, spec, noise=noise, raw=True, progress=True)
            r = evaluate_images(decode_uint8(x), labels)
            row = {
                "solver": solver,
                "steps": k,
                "nfe": nfe(solver, k),
                "cfg_scale": cfg_scale,
                "shift": shift,
                "fd": r["fd"],
                "fd_floor": r["fd_floor"],
                "label_accuracy": r["label_accuracy"],
            }
            if ref is not None:
                row["ref_rms"] = float(np.sqrt(np.mean((x[:reference_n] - ref) ** 2)))
            rows.append(row)
            print(format_row(row), file=sys.stderr, flush=True)
    out = {"n": n, "seed": seed, "rows": rows}
    if ref is not None:
        real = evaluate_images(decode_uint8(ref), labels[:reference_n])
        out["reference"] = {"n": reference_n, "nfe": ref_calls, "label_accuracy": real["label_accuracy"]}
    return out


def sweep(
    backend, n: int, cfg_scales, shifts, steps: int = 4, solver: str = "euler", seed: int = 1
) -> list[dict]:
    """FD and label accuracy for every (CFG scale, shift) at one solver and step count, same n noises."""
    from fm_edge.evaluate import evaluate_images

    labels = default_labels(n)
    rows = []
    for cfg in cfg_scales:
        for shift in shifts:
            imgs = generate(backend, labels, SamplerSpec(solver, steps, cfg, shift), seed=seed)
            r = evaluate_images(imgs, labels)
            rows.append(dict(solver=solver, steps=steps, cfg_scale=cfg, shift=shift, fd=r["fd"],
                             label_accuracy=r["label_accuracy"]))  # fmt: skip
            print(f"sweep {solver} x {steps}, cfg {cfg:g}, shift {shift:g}: FD {r['fd']:.2f}, "
                  f"accuracy {r['label_accuracy']:.1%}", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def best_setting(rows: list[dict], min_accuracy: float = 0.98) -> dict:
    """The (solver, steps, CFG scale, shift) with the lowest FD among those that keep the labels."""
    ok = [r for r in rows if r["fd"] is not None and r["label_accuracy"] >= min_accuracy] or rows
    best = min(ok, key=lambda r: r["fd"])
    return {k: best[k] for k in ("solver", "steps", "cfg_scale", "shift")}


def format_row(r: dict) -> str:
    ref = f"  ref RMS {r['ref_rms']:.4f}" if "ref_rms" in r else ""
    return (
        f"{r['solver']:8s} steps {r['steps']:3d}  NFE {r['nfe']:3d}  FD {r['fd']:8.3f} (floor {r['fd_floor']:.3f})"
        f"  acc {r['label_accuracy']:.2%}{ref}"
    )


def plot(result: dict, path: Path) -> None:
    """FD and dopri5 distance against NFE, one line per solver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for solver in dict.fromkeys(r["solver"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["solver"] == solver]
        axes[0].plot([r["nfe"] for r in rows], [r["fd"] for r in rows], "o-", label=solver)
        if "ref_rms" in rows[0]:
            axes[1].plot([r["nfe"] for r in rows], [r["ref_rms"] for r in rows], "o-", label=solver)
    floor = result["rows"][0]["fd_floor"]
    axes[0].axhline(floor, color="gray", ls="--", label=f"real digits ({floor:.2f})")
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="NFE",
        ylabel="FD (fm-edge evaluator)",
        title=f"FD vs NFE, {result['n']} samples",
    )
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="NFE",
        ylabel="RMS to dopri5 solution",
        title="distance to the exact ODE solution",
    )
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    from fm_edge.atomic import atomic_file

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(args) -> Path:
    """``fm-edge evaluate --nfe-curve``: JSON and PNG into --output-dir."""
    from fm_edge.backends import torch_backend

    if args.num_samples < 2:
        raise UsageError(f"--num-samples must be >= 2 for an FD, got {args.num_samples}")
    solvers = tuple(s.strip() for s in args.solvers.split(","))
    try:
        steps = tuple(int(s) for s in args.steps_list.split(","))
    except ValueError:
        raise UsageError(f"--steps-list {args.steps_list!r} must be comma-separated integers") from None
    from fm_edge.solvers import check_solver

    for s in solvers:
        for k in steps:
            check_solver(s, k)
    backend = torch_backend(args.model, args.num_threads, args.device)
    rec = backend.sampler.override(cfg_scale=args.cfg_scale, shift=args.shift)
    cfg, shift = rec.cfg_scale, rec.shift
    result = nfe_curve(
        backend,
        solvers=solvers,
        steps=steps,
        n=args.num_samples,
        cfg_scale=cfg,
        shift=shift,
        seed=args.seed,
        reference_n=args.reference_samples,
    )
    out = Path(args.output_dir)
    from fm_edge.atomic import write_bytes

    write_bytes(out / "nfe_curve.json", (json.dumps(result, indent=1) + "\n").encode())
    plot(result, out / "nfe_curve.png")
    return out / "nfe_curve.json"
