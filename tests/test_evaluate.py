"""The evaluator: Fréchet distance truths, the shipped classifier on real digits, and bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fm_edge.errors import UsageError
from fm_edge.evaluate import evaluate_images
from fm_edge.metrics import frechet_distance

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).resolve().parent / "data" / "mnist_tiny" / "mnist"


def _random_cov(rng, d):
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d) + 0.1 * np.eye(d)


@pytest.fixture(scope="module")
def tiny_test():
    """The 100 real MNIST test digits of the tiny slice (read straight from parquet: fast, no cache)."""
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(TINY / "test-00000-of-00001.parquet").to_pydict()
    images = np.stack([np.asarray(Image.open(io.BytesIO(r["bytes"]))) for r in table["image"]])
    return images.astype(np.uint8), np.asarray(table["label"], dtype=np.int64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fd_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(32), _random_cov(rng, 32)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-6)


def test_fd_is_symmetric_and_mean_shift_adds_its_squared_norm():
    rng = np.random.default_rng(1)
    d = 16
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    # equal covariances: FD is exactly |d|^2, and grows with the shift
    shift = rng.standard_normal(d)
    for k in (0.5, 1.0, 3.0):
        assert frechet_distance(mu1, s1, mu1 + k * shift, s1) == pytest.approx(k**2 * shift @ shift, rel=1e-6)


def test_fd_matches_closed_form_for_commuting_covariances():
    # diagonal covariances: FD = sum (sqrt(a) - sqrt(b))^2, plus a singular (rank-deficient) case
    a, b = np.array([1.0, 4.0, 0.0, 2.0]), np.array([9.0, 1.0, 0.0, 2.0])
    want = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(np.zeros(4), np.diag(a), np.zeros(4), np.diag(b)) == pytest.approx(want, rel=1e-9)


def test_shipped_classifier_reads_real_digits(tiny_test):
    from fm_edge.classifier import FEATURE_DIM, load, run_batches

    model, stats, meta = load()
    assert meta["test_accuracy"] >= 0.99
    assert stats["mu"].shape == (FEATURE_DIM,)
    images, labels = tiny_test
    feats, logits = run_batches(model, images)
    assert feats.shape == (len(images), FEATURE_DIM)
    assert (logits.argmax(1) == labels).mean() >= 0.95


def test_real_digits_score_well_and_noise_scores_badly(tiny_test):
    images, labels = tiny_test
    real = evaluate_images(images, labels)
    assert real["n"] == 100 and real["label_accuracy"] >= 0.95
    assert sum(real["class_histogram"]) == 100 and len(real["class_histogram"]) == 10
    assert real["fd_floor_n"] == 500 and real["fd_floor"] > 0
    assert 0.99 <= real["evaluator_test_accuracy"] <= 1.0

    noise = np.random.default_rng(0).integers(0, 256, size=images.shape, dtype=np.uint8)
    bad = evaluate_images(noise, labels)
    assert bad["label_accuracy"] <= 0.3
    assert bad["fd"] > 10 * real["fd"]


def test_unconditional_samples_are_left_out_of_label_accuracy(tiny_test):
    images, labels = tiny_test
    r = evaluate_images(images, np.full(len(images), 10))
    assert r["label_accuracy"] is None and r["n_conditional"] == 0
    mixed = labels.copy()
    mixed[::2] = 10
    r = evaluate_images(images, mixed)
    assert r["n_conditional"] == 50 and r["label_accuracy"] >= 0.95


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 11, 2]), "label 11"),
        (np.zeros((4, 28, 28), np.uint8), np.array([0, 1, -1, 2]), "label -1"),
        (np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.int64), "N x 28 x 28"),
        (np.zeros((4, 28, 28), np.float32), np.zeros(4, np.int64), "uint8"),
        (np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.int64), "one per image"),
    ],
)
def test_bad_input_is_a_usage_error(images, labels, match):
    with pytest.raises(UsageError, match=match):
        evaluate_images(images, labels)


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), FM_EDGE_DEBUG="0")
    cmd = [sys.executable, "-m", "fm_edge.cli", "evaluate", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)


def test_cli_rejects_a_corrupt_or_missing_npz_in_one_line(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip file at all")
    for name in ("x.npz", "missing.npz"):
        r = _cli(name, cwd=tmp_path)
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert name in r.stderr and r.stdout == ""


def test_cli_rejects_labels_outside_0_10(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((3, 28, 28), np.uint8), labels=np.array([0, 12, 3]))
    r = _cli("x.npz", cwd=tmp_path)
    assert r.returncode == 2 and "label 12" in r.stderr and r.stderr.count("\n") == 1


def test_cli_reports_and_writes_json(tmp_path, tiny_test, monkeypatch, capsys):
    from fm_edge.cli import main

    images, labels = tiny_test
    np.savez(tmp_path / "s.npz", images=images[:20], labels=labels[:20])
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "s.npz", "--json", "r.json"]) == 0
    out = capsys.readouterr().out
    assert "label accuracy" in out and "test accuracy" in out
    assert out.strip().splitlines()[-1] == "r.json"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 20 and report["label_accuracy"] >= 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "s.npz"]
