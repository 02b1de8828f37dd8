"""Sample artifacts: the npz (images uint8 N x 28 x 28, labels int64 N) and PNG grids, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fm_edge.atomic import write_bytes
from fm_edge.errors import UsageError


def grid(images: np.ndarray, nrow: int | None = None, scale: int = 1, pad: int = 2) -> np.ndarray:
    """Tile uint8 [N,H,W] images into one uint8 image (nearest-neighbour upscaling by ``scale``)."""
    n, h, w = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    out = np.zeros((ncol * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def save_samples(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write ``out.npz`` (images, labels) or ``out.png`` (a grid, 10 per row) atomically."""
    path = Path(path)
    if path.suffix == ".npz":
        buf = io.BytesIO()
        np.savez_compressed(buf, images=images.astype(np.uint8), labels=labels.astype(np.int64))
        write_bytes(path, buf.getvalue())
    elif path.suffix == ".png":
        write_bytes(path, png_bytes(grid(images, nrow=10)))
    else:
        raise UsageError(f"output {str(path)!r} must end in .npz or .png")
    return path


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an npz written by save_samples, checking keys, dtypes and shapes (no pickle)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except FileNotFoundError:
        raise UsageError(f"{str(path)!r} does not exist") from None
    except KeyError as exc:
        raise UsageError(f"{str(path)!r} lacks array {exc}: expected images and labels") from None
    except Exception as exc:
        raise UsageError(f"{str(path)!r} is not a readable .npz ({type(exc).__name__})") from None
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise UsageError(
            f"{str(path)!r} images are {images.dtype} {images.shape}: expected uint8 N x 28 x 28"
        )
    if labels.shape != (len(images),):
        raise UsageError(f"{str(path)!r} labels have shape {labels.shape}: expected ({len(images)},)")
    return images, labels
