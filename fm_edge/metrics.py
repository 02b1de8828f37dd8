"""Distances between sets and pairs of images (numpy only): Fréchet distance, PSNR, SQNR, pixel diffs."""

from __future__ import annotations

import numpy as np

DB_CAP = 99.0  # identical inputs would be +inf dB


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues -> 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64 without scipy.

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``, where the last trace is computed as
    ``tr((S1^(1/2) S2 S1^(1/2))^(1/2))``: the same eigenvalues, but of a symmetric PSD matrix, so two
    symmetric eigen-decompositions do it stably (no complex parts, no sqrtm iteration).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(w, 0, None)).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(fd, 0.0))


def sqnr_db(ref, test) -> float:
    """10 log10(sum ref^2 / sum (ref - test)^2), capped at 99 dB for identical inputs."""
    ref = np.asarray(ref, np.float64)
    err = ref - np.asarray(test, np.float64)
    noise = float(np.sum(err * err))
    signal = float(np.sum(ref * ref))
    if noise == 0.0:
        return DB_CAP
    if signal == 0.0:
        return -DB_CAP
    return float(min(10.0 * np.log10(signal / noise), DB_CAP))


def _psnr(mse):
    with np.errstate(divide="ignore"):
        return np.minimum(10.0 * np.log10(255.0**2 / np.asarray(mse, np.float64)), DB_CAP)


def psnr_db(a_uint8, b_uint8) -> np.ndarray:
    """Per-image PSNR (peak 255) between two uint8 image stacks [N, H, W]; identical images give 99 dB."""
    a = np.asarray(a_uint8, np.float64)
    b = np.asarray(b_uint8, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image stacks differ in shape: {a.shape} vs {b.shape}")
    return _psnr(((a - b) ** 2).reshape(len(a), -1).mean(axis=1))


def diff_stats(a: np.ndarray, b: np.ndarray) -> dict:
    """PSNR over all pixels (dB, peak 255; None when identical), max and mean |a - b| in grey levels."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    mse = float((d.astype(np.float64) ** 2).mean())
    return {
        "psnr_db": None if mse == 0 else round(float(_psnr(mse)), 2),
        "max_abs_diff": int(d.max()),
        "mean_abs_diff": round(float(d.mean()), 3),
        "identical": mse == 0,
    }


__all__ = ["frechet_distance", "sqnr_db", "psnr_db", "diff_stats", "DB_CAP"]
