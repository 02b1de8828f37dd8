"""Train the evaluator's MNIST classifier and write its assets (weights, MNIST-test feature statistics, FD
floors) into ``fm_edge/assets/evaluator/`` as one atomic folder swap. A maintainer's tool: fm-edge itself only
loads the assets (:mod:`fm_edge.classifier`).

    python scripts/make_evaluator_assets.py --data ../shared/datasets/mnist -o fm_edge/assets/evaluator
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from fm_edge.classifier import (
    ARCH_VERSION,
    ASSETS,
    FEATURE_DIM,
    FLOOR_NS,
    FLOOR_SEED,
    META_FILE,
    STATS_FILE,
    WEIGHTS_FILE,
    build,
    feature_stats,
    run_batches,
)
from fm_edge.errors import FmEdgeError, UsageError


def _shift(xb, max_shift: int, gen):
    """Random translations by up to ``max_shift`` px (zero fill), one per image: the light augmentation."""
    import torch

    n = xb.shape[0]
    p = max_shift
    padded = torch.nn.functional.pad(xb, (p, p, p, p))
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(28)[None]).clamp(max=27 + 2 * p)  # [n, 28]
    cols = (dx[:, None] + torch.arange(28)[None]).clamp(max=27 + 2 * p)
    idx = torch.arange(n)[:, None, None]
    return padded[idx, rows[:, :, None], cols[:, None, :]]


def train_classifier(
    data: tuple[np.ndarray, np.ndarray],
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 3e-3,
    max_shift: int = 2,
    seed: int = 0,
    progress: bool = True,
):
    """Train the CNN on (images uint8 [N,28,28], labels int [N]) with Adam, one-cycle LR and random shifts.

    Returns the model in eval mode.
    """
    import torch

    images, labels = data
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build()
    x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n = len(x_all)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, desc="classifier", file=sys.stderr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            xb = x_all[idx]
            if max_shift:
                xb = _shift(xb, max_shift, gen)
            loss = torch.nn.functional.cross_entropy(model(xb), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    if bar:
        bar.close()
    return model.eval()


def make_assets(
    data: str, output_dir: str | Path, epochs: int = 4, seed: int = 0, progress: bool = True
) -> Path:
    """Train, measure and write the three evaluator assets into ``output_dir`` (one atomic folder swap)."""
    import safetensors.torch
    import torch

    from fm_edge.atomic import atomic_dir
    from fm_edge.data import load_split
    from fm_edge.metrics import frechet_distance

    t0 = time.time()
    train_x, train_y = load_split(data, "train")
    test_x, test_y = load_split(data, "test")
    print(
        f"loaded MNIST: {len(train_x)} train, {len(test_x)} test ({time.time() - t0:.0f} s)", file=sys.stderr
    )

    t1 = time.time()
    model = train_classifier((train_x, train_y), epochs=epochs, seed=seed, progress=progress)
    train_s = time.time() - t1

    test_f, test_logits = run_batches(model, test_x)
    acc = float((test_logits.argmax(1) == test_y).mean())
    mu, sigma = feature_stats(test_f)
    print(f"test accuracy {acc:.4%} (trained in {train_s:.0f} s)", file=sys.stderr)

    perm = np.random.default_rng(FLOOR_SEED).permutation(len(train_x))
    train_f, _ = run_batches(model, train_x[perm[: max(FLOOR_NS)]])
    floor = {}
    for n in (n for n in FLOOR_NS if n <= len(train_x)):
        floor[str(n)] = float(frechet_distance(*feature_stats(train_f[:n]), mu, sigma))
        print(f"FD floor, {n} real train digits vs test: {floor[str(n)]:.3f}", file=sys.stderr)

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights = safetensors.torch.save(state, metadata={"arch": ARCH_VERSION})
    meta = {
        "arch": ARCH_VERSION,
        "feature_dim": FEATURE_DIM,
        "feature_layer": "fc1 (penultimate, pre-ReLU)",
        "test_accuracy": acc,
        "test_images": len(test_x),
        "fd_floor": floor,
        "fd_floor_note": (
            "FD of the first N digits of a seeded permutation of MNIST train against the MNIST test stats"
        ),
        "fd_floor_seed": FLOOR_SEED,
        "training": {
            "epochs": epochs,
            "seed": seed,
            "optimizer": "Adam, one-cycle LR 3e-3, batch 128",
            "augmentation": "random shifts up to 2 px",
            "train_images": len(train_x),
            "seconds": round(train_s, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "regenerate": "python scripts/make_evaluator_assets.py --data DIR -o fm_edge/assets/evaluator",
    }
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma)
    output_dir = Path(output_dir)
    with atomic_dir(output_dir) as tmp:
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        (tmp / STATS_FILE).write_bytes(buf.getvalue())
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it 0700
    return output_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python scripts/make_evaluator_assets.py",
        description="train the evaluator's classifier and write its assets",
    )
    p.add_argument("--data", default=None, help="local MNIST folder (hub layout); default: hub ylecun/mnist")
    p.add_argument("-o", "--output-dir", default=str(ASSETS))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=1)
    args = p.parse_args(argv)
    try:
        if args.epochs < 1:
            raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
        import torch

        torch.set_num_threads(args.num_threads)
        print(make_assets(args.data, args.output_dir, args.epochs, args.seed))
    except FmEdgeError as exc:
        print(f"make_evaluator_assets: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
