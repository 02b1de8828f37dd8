"""The evaluator's classifier: a small MNIST CNN whose penultimate layer is the feature space for FD.

The network takes uint8 [N,28,28] digits (it normalises them itself, so every caller feeds the same
pixels) and gives 10 logits; ``features(x)`` is the 128-d pre-activation of the penultimate layer, the
space in which ``fm_edge.evaluate`` measures the Fréchet distance.

The shipped assets in ``fm_edge/assets/evaluator/`` are made, reproducibly, by::

    python scripts/make_evaluator_assets.py --data ../shared/datasets/mnist -o fm_edge/assets/evaluator

which trains on the MNIST train split, measures the test accuracy, and writes (atomically, as one folder):

- ``classifier.safetensors``: the weights (loaded with safetensors only, never pickle);
- ``mnist_test_stats.npz``: feature mean ``mu`` and covariance ``sigma`` over the 10k MNIST test digits;
- ``evaluator.json``: architecture version, test accuracy, feature dim and the FD "floor": the FD of the
  first N digits of a seeded permutation of MNIST *train* against the test statistics, for several N.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fm_edge.errors import FmEdgeError

ARCH_VERSION = "fm-edge-mnist-cnn-v1"
FEATURE_DIM = 128
FLOOR_NS = (500, 1000, 2000, 5000)
FLOOR_SEED = 0
ASSETS = Path(__file__).resolve().parent / "assets" / "evaluator"
WEIGHTS_FILE = "classifier.safetensors"
STATS_FILE = "mnist_test_stats.npz"
META_FILE = "evaluator.json"
# MNIST train pixel mean and std (of x/255), the usual normalisation constants
PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081


def build():
    """The CNN (torch imported here, so that importing this module stays cheap)."""
    import torch
    from torch import nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    class MnistCNN(nn.Module):
        """uint8 [N,28,28] (or float pixels 0-255, any of [N,28,28] / [N,1,28,28]) -> logits [N,10]."""

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                *block(1, 16),
                nn.MaxPool2d(2),  # 28 -> 14
                *block(16, 32),
                nn.MaxPool2d(2),  # 14 -> 7
                *block(32, 64),
                nn.MaxPool2d(2),  # 7 -> 3
                nn.Flatten(),
            )
            self.fc1 = nn.Linear(64 * 3 * 3, FEATURE_DIM)
            self.drop = nn.Dropout(0.3)
            self.fc2 = nn.Linear(FEATURE_DIM, 10)

        @staticmethod
        def normalise(x):
            x = x.float()
            if x.ndim == 3:
                x = x[:, None]
            return (x / 255.0 - PIXEL_MEAN) / PIXEL_STD

        def features(self, x):
            """The FD feature space: the penultimate layer before its ReLU, float [N, FEATURE_DIM]."""
            return self.fc1(self.body(self.normalise(x)))

        def forward(self, x):
            return self.fc2(self.drop(torch.relu(self.features(x))))

    return MnistCNN()


def run_batches(
    model, images: np.ndarray, batch_size: int = 1000, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(features float64 [N,D], logits float32 [N,10]) for uint8 images, in eval mode without gradients."""
    import torch

    feats, logits = [], []
    model.to(device).eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size], dtype=np.uint8)).to(device)
            f = model.features(xb)
            feats.append(f.double().cpu().numpy())
            logits.append(model.fc2(torch.relu(f)).float().cpu().numpy())
    if not feats:
        return np.zeros((0, FEATURE_DIM)), np.zeros((0, 10), np.float32)
    return np.concatenate(feats), np.concatenate(logits)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N,D] features, float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def load(folder: str | Path | None = None):
    """Load (model in eval mode, test stats dict with mu/sigma, metadata dict) from the evaluator folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder) if folder else ASSETS
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except FileNotFoundError:
        raise FmEdgeError(
            f"evaluator assets missing in {str(folder)!r}: regenerate with "
            "python -m fm_edge.classifier --data DIR -o fm_edge/assets/evaluator"
        ) from None
    except (OSError, ValueError) as exc:
        raise FmEdgeError(f"{str(folder / META_FILE)!r} is unreadable ({type(exc).__name__})") from None
    if meta.get("arch") != ARCH_VERSION:
        raise FmEdgeError(
            f"evaluator in {str(folder)!r} has architecture {meta.get('arch')!r}, "
            f"this code needs {ARCH_VERSION!r}"
        )
    model = build()
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise FmEdgeError(
            f"{str(folder / WEIGHTS_FILE)!r} is missing or corrupt ({type(exc).__name__})"
        ) from None
    try:
        with np.load(folder / STATS_FILE, allow_pickle=False) as z:
            stats = {"mu": z["mu"].astype(np.float64), "sigma": z["sigma"].astype(np.float64)}
    except Exception as exc:
        raise FmEdgeError(
            f"{str(folder / STATS_FILE)!r} is missing or corrupt ({type(exc).__name__})"
        ) from None
    if stats["mu"].shape != (FEATURE_DIM,) or stats["sigma"].shape != (FEATURE_DIM, FEATURE_DIM):
        raise FmEdgeError(f"{str(folder / STATS_FILE)!r} has stats of the wrong shape")
    return model.eval(), stats, meta
