"""Learning curve of a ``fm-edge train`` run: FD / real-data floor against images seen, at a few Euler steps.

    python scripts/train_curve.py runs/t1 --curve runs/t1_curve --name teacher_digit_t --steps 4 8 -n 1000

A train run keeps only its last checkpoints, so a watcher copies each ``checkpoint-<step>/ema.safetensors`` to
``--curve`` as ``ema-<step>.safetensors`` while it trains. Every copy becomes a checkpoint folder with the
config and recommended sampler (CFG scale, shift) of the run's finished ``model/`` folder, is sampled at each
``--steps`` through ``fm-edge sample`` and scored with ``fm-edge evaluate``. Writes
docs/results/<name>_curve.json and docs/<name>_curve.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv=None) -> int:
    from student_curve import ema_copies, plot, score, weights_folder

    from fm_edge.checkpoint import named_ema_weights
    from fm_edge.errors import FmEdgeError
    from fm_edge.model import load, read_fm_config, resolve

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the train run's folder (its model/ gives config and sampler)")
    ap.add_argument("--curve", type=Path, required=True, help="the folder of ema-<step> copies")
    ap.add_argument("--name", required=True, help="docs/results/<name>_curve.json, docs/<name>_curve.png")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.n < 1 or min(args.steps) < 1 or args.threads < 1:
        ap.error("-n, --steps and --threads must be at least 1")
    try:
        base = resolve(str(args.run / "model"))
        fm = read_fm_config(base)
        if "images_seen" not in fm.get("training", {}) or "sampler" not in fm:
            raise FmEdgeError(f"{base / 'fm_edge.json'} has no training record or sampler")
    except FmEdgeError as exc:
        ap.error(f"{args.run} is not a finished train run: {exc}")
    copies = ema_copies(args.curve)  # before anything is written
    per_step = fm["training"]["images_seen"] / fm["training"]["steps"]  # batch x processes
    model = load(base, device="cpu")[0]
    rows = []
    for step, path in copies:
        with tempfile.TemporaryDirectory() as tmp:
            folder = weights_folder(named_ema_weights(path, model), base, Path(tmp))
            shutil.copy2(base / "fm_edge.json", folder / "fm_edge.json")
            for k in args.steps:
                rep = score(folder, k, args.n, args.threads)
                sampler = fm["sampler"]
                row = {"label": f"{fm['preset']}, {sampler['solver']} {k} + CFG {sampler['cfg_scale']:g}",
                       "step": step, "sampled_steps": k, "images_seen": round(step * per_step), "fd": rep["fd"],
                       "floor": rep["fd_floor"], "ratio": rep["fd"] / rep["fd_floor"],
                       "label_accuracy": rep["label_accuracy"]}  # fmt: skip
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    out = {
        "run": str(args.run),
        "sampler": fm["sampler"],
        "training": fm["training"],
        "n": args.n,
        "rows": rows,
    }
    (ROOT / "docs" / "results" / f"{args.name}_curve.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(rows, args.n, ROOT / "docs" / f"{args.name}_curve.png", xlabel="images seen (thousands)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
