"""The evaluator, ``fm-edge evaluate samples.npz``: FD against MNIST test, label accuracy, class histogram.

All three are read through the project's own MNIST classifier (:mod:`fm_edge.classifier`, weights and
MNIST-test feature statistics shipped in ``fm_edge/assets/evaluator/``):

- **fd**: the Fréchet distance between a Gaussian fitted to the samples' features and one fitted to the 10k
  MNIST test digits. FD is biased upward at small N, so the report puts beside it the **floor**: the FD of
  the same number of real MNIST *train* digits (measured when the assets were made, at the nearest N).
- **label_accuracy**: the share of conditional samples (labels 0-9) the classifier reads as the requested
  digit; unconditional samples (label 10) are left out. None when there are no conditional samples.
- **class_histogram**: how many samples the classifier assigns to each digit 0-9.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from fm_edge.convention import IMAGE_SIZE, NULL_LABEL, NUM_CLASSES, check_labels
from fm_edge.errors import UsageError
from fm_edge.metrics import frechet_distance

_CACHE: dict = {}


def _evaluator():
    if "ev" not in _CACHE:
        from fm_edge.classifier import load

        _CACHE["ev"] = load()
    return _CACHE["ev"]


def nearest_floor(n: int, floors: dict) -> tuple[float | None, int | None]:
    """The shipped real-train FD floor whose N is nearest to n (on a log scale), and that N."""
    ns = sorted(int(k) for k in floors)
    if not ns:
        return None, None
    best = min(ns, key=lambda k: abs(math.log(k) - math.log(max(n, 1))))
    return float(floors[str(best)]), best


def check_images(images) -> np.ndarray:
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise UsageError(f"images are {arr.dtype} {arr.shape}: expected uint8 N x 28 x 28")
    if len(arr) == 0:
        raise UsageError("no images to evaluate: the samples file is empty")
    return arr


def evaluate_images(images, labels, device: str = "cpu") -> dict:
    """Evaluate uint8 [N,28,28] samples generated for ``labels`` (int [N], 0-9 or 10 = unconditional);
    ``device`` is where the classifier runs."""
    images = check_images(images)
    labels = check_labels(labels)
    if labels.shape != (len(images),):
        raise UsageError(f"labels have shape {labels.shape}: expected ({len(images)},), one per image")
    from fm_edge.classifier import feature_stats, run_batches

    model, stats, meta = _evaluator()
    feats, logits = run_batches(model, images, device=device)
    pred = logits.argmax(1)
    n = len(images)
    cond = labels != NULL_LABEL
    fd = frechet_distance(*feature_stats(feats), stats["mu"], stats["sigma"]) if n >= 2 else None
    floor, floor_n = nearest_floor(n, meta["fd_floor"])
    per_class = {}
    for d in range(NUM_CLASSES):
        sel = labels == d
        if sel.any():
            per_class[str(d)] = float((pred[sel] == d).mean())
    return {
        "n": n,
        "n_conditional": int(cond.sum()),
        "fd": fd,
        "fd_floor": floor,
        "fd_floor_n": floor_n,
        "label_accuracy": float((pred[cond] == labels[cond]).mean()) if cond.any() else None,
        "label_accuracy_per_digit": per_class,
        "class_histogram": np.bincount(pred, minlength=NUM_CLASSES).tolist(),
        "evaluator_test_accuracy": float(meta["test_accuracy"]),
        "evaluator": meta["arch"],
    }


def format_report(r: dict) -> str:
    """The compact human-readable report."""
    fd = "n/a (needs >= 2 images)" if r["fd"] is None else f"{r['fd']:.3f}"
    if r["fd_floor"] is None:
        floor = "n/a"
    else:
        floor = f"{r['fd_floor']:.3f} for {r['fd_floor_n']} real train digits"
        if r["fd_floor_n"] != r["n"]:
            floor += f"; not like for like at n={r['n']}, FD grows as n shrinks"
    acc = (
        "n/a (no conditional samples)"
        if r["label_accuracy"] is None
        else f"{r['label_accuracy']:.2%} of {r['n_conditional']} conditional samples read as their digit"
    )
    hist = " ".join(f"{d}:{c}" for d, c in enumerate(r["class_histogram"]))
    return "\n".join(
        [
            f"samples         {r['n']}",
            f"FD vs MNIST test {fd}   (floor: {floor})",
            f"label accuracy  {acc}",
            f"class histogram {hist}",
            f"evaluator       {r['evaluator']}, MNIST test accuracy {r['evaluator_test_accuracy']:.2%}",
        ]
    )


def add_arguments(p) -> None:
    """``fm-edge evaluate``'s flags, those of ``--nfe-curve`` (:mod:`fm_edge.curve`) included."""
    from fm_edge.flags import device_flag, seed_and_threads

    p.add_argument("samples", nargs="?", help="an .npz written by fm-edge sample -o x.npz")
    p.add_argument("--json", default=None, help="also write the report as JSON here")
    p.add_argument("--nfe-curve", action="store_true", help="instead: quality against NFE for a checkpoint")
    p.add_argument("--model", default=None, help="--nfe-curve: checkpoint folder (default: the shipped one)")
    p.add_argument("--solvers", default="euler,heun", help="--nfe-curve: solvers to compare")
    p.add_argument("--steps-list", default="1,2,4,8,16,32", help="--nfe-curve: step counts")
    p.add_argument("--num-samples", type=int, default=2000, help="--nfe-curve: samples per point")
    p.add_argument("--reference-samples", type=int, default=100, help="--nfe-curve: dopri5 subset (0: skip)")
    p.add_argument(
        "--cfg-scale",
        type=float,
        default=None,
        help="--nfe-curve: CFG scale (default: the checkpoint's recommendation)",
    )
    p.add_argument(
        "--shift",
        type=float,
        default=None,
        help="--nfe-curve: time shift (default: the checkpoint's recommendation)",
    )
    p.add_argument("-o", "--output-dir", default="eval", help="--nfe-curve: where nfe_curve.json/.png go")
    device_flag(p, "where the classifier and the --nfe-curve sampler run")
    seed_and_threads(p, "--nfe-curve: seed of the starting noise", "CPU threads for torch")


def main(args):
    """``fm-edge evaluate samples.npz [--json r.json]``: print the report; return the JSON path or None."""
    if not args.samples:
        raise UsageError("give a samples .npz to evaluate (or --nfe-curve)")
    from fm_edge.images import load_samples

    if str(args.samples).lower().endswith(".png"):
        raise UsageError(
            f"{args.samples!r} is a picture: a grid cannot be evaluated (its labels are not in it); "
            "sample to an .npz instead, e.g. fm-edge sample -o samples.npz, then fm-edge evaluate samples.npz"
        )
    images, labels = load_samples(args.samples)
    check_labels(labels)
    if len(images) == 0:
        raise UsageError(f"{args.samples!r} holds no images")
    if args.json and not str(args.json).endswith(".json"):
        raise UsageError(f"--json {args.json!r} must end in .json")
    import torch

    from fm_edge.backends import torch_device

    device = torch_device(args.device)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    print(f"evaluating {len(images)} samples from {args.samples} ({device})", file=sys.stderr)
    report = evaluate_images(images, labels, device=device)
    report["samples"] = str(args.samples)
    print(format_report(report), flush=True)
    if args.json:
        import json

        from fm_edge.atomic import write_bytes

        write_bytes(args.json, (json.dumps(report, indent=2) + "\n").encode())
        return args.json
    return None
