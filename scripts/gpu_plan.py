"""Size the GPU teacher run from a short probe run: steady images/s -> steps that fit the time budget.

Reads the probe folder's last two checkpoints (their cumulative ``train_seconds``), so start-up, data
loading and the first slow steps (cudnn autotuning) are left out. Prints one JSON line: steps,
checkpoint_every, images_per_s, epochs.

    python scripts/gpu_plan.py PROBE_DIR --batch-size 512 --seconds 300 --train-images 60000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def plan(
    probe: Path, batch_size: int, seconds: float, train_images: int, checkpoint_s: float, min_steps: int
) -> dict:
    from fm_edge.checkpoint import checkpoints

    done = [(s, json.loads((p / "state.json").read_text())) for s, p in checkpoints(probe)]
    done = [(s, st) for s, st in done if st]
    if len(done) < 2:
        sys.exit(f"gpu_plan: {probe} has {len(done)} complete checkpoint(s); the probe needs 2")
    (s0, a), (s1, b) = done[-2], done[-1]
    rate = (s1 - s0) * batch_size / max(1e-6, b["train_seconds"] - a["train_seconds"])
    steps = max(min_steps, int(seconds * rate / batch_size))
    every = max(1, int(checkpoint_s * rate / batch_size))
    return {
        "steps": steps,
        "checkpoint_every": min(every, steps),
        "images_per_s": round(rate, 1),
        "epochs": round(steps * batch_size / train_images, 2),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probe", type=Path, help="the probe run folder (checkpoint-<step>/ inside)")
    ap.add_argument("--batch-size", type=int, required=True, help="the probe's (and the run's) batch size")
    ap.add_argument("--seconds", type=float, required=True, help="training time to fill")
    ap.add_argument("--train-images", type=int, default=60000, help="images in one epoch")
    ap.add_argument("--checkpoint-seconds", type=float, default=60, help="time between checkpoints")
    ap.add_argument("--min-steps", type=int, default=200, help="never plan fewer steps than this")
    a = ap.parse_args()
    print(
        json.dumps(plan(a.probe, a.batch_size, a.seconds, a.train_images, a.checkpoint_seconds, a.min_steps))
    )
