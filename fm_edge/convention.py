"""The flow-matching convention shared by every backend, and the image encoding around it (numpy only).

Time runs from noise at t=1 to data at t=0::

    x_t = (1 - t) * x0 + t * x1,    x0 = data in [-1, 1] (28x28 padded to 32x32 with -1),  x1 ~ N(0, I)
    v(x_t, t) = d x_t / dt = x1 - x0

Sampling integrates dx/dt = v from t=1 down to t=0. The UNet receives the time as a float32 tensor of
shape [B] holding ``t * T_SCALE`` (never a Python float: diffusers would cast it to an integer, which is 0
for every t in [0, 1)). Class labels are 0-9; label ``NULL_LABEL`` (10) is the "no class" label used for
classifier-free guidance.
"""

from __future__ import annotations

import numpy as np

from fm_edge.errors import UsageError

T_SCALE = 1000.0
IMAGE_SIZE = 28
PAD = 2
MODEL_SIZE = IMAGE_SIZE + 2 * PAD
PAD_VALUE = -1.0
NUM_CLASSES = 10
NULL_LABEL = 10
NUM_CLASS_EMBEDS = NUM_CLASSES + 1

#: The ONNX I/O contract: each file's inputs, in order, with ONNX Runtime's names for their types. The
#: exporter, the sampler-graph builder, the calibration and the runtime all read these.
VELOCITY_INPUTS = {"sample": "tensor(float)", "timestep": "tensor(float)", "class_labels": "tensor(int64)"}
VELOCITY_OUTPUT = "velocity"
SAMPLER_INPUTS = {"noise": "tensor(float)", "class_labels": "tensor(int64)", "cfg_scale": "tensor(float)"}
SAMPLER_OUTPUT = "images"

#: The facts an app needs to use a model; stored in the checkpoint config and in ONNX metadata_props.
CONVENTION = {
    "time_convention": "x_t=(1-t)*x0+t*x1; x0=data, x1=noise; t=1 noise -> t=0 data; velocity=x1-x0",
    "t_scale": str(T_SCALE),
    "image_size": str(IMAGE_SIZE),
    "model_size": str(MODEL_SIZE),
    "padding": f"{PAD} px each side with {PAD_VALUE}",
    "normalization": "pixel/127.5-1 (uint8 [0,255] -> [-1,1])",
    "null_label": str(NULL_LABEL),
    "num_classes": str(NUM_CLASSES),
}


def encode_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,1,32,32] in [-1, 1], padded with -1."""
    x = images.astype(np.float32) / 127.5 - 1.0
    x = np.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD)), constant_values=PAD_VALUE)
    return x[:, None]


def decode_uint8(x: np.ndarray) -> np.ndarray:
    """float [N,1,32,32] model space -> uint8 [N,28,28] (crop the padding, clip, round)."""
    x = np.asarray(x, dtype=np.float32)[:, 0, PAD : PAD + IMAGE_SIZE, PAD : PAD + IMAGE_SIZE]
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def check_labels(labels) -> np.ndarray:
    """Return labels as int64, or raise a UsageError naming the first value outside 0-10."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise UsageError(f"labels must be integers 0-{NULL_LABEL}, got dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr > NULL_LABEL)]
    if bad.size:
        raise UsageError(
            f"label {int(bad[0])} is out of range: use 0-9 for a digit or {NULL_LABEL} for unconditional"
        )
    return arr.astype(np.int64)


def check_model_input(x, name: str) -> np.ndarray:
    """A finite float32 [B,1,32,32] array (B >= 1), or a UsageError naming what is wrong."""
    if not isinstance(x, np.ndarray):
        raise UsageError(f"{name} must be a numpy array, got {type(x).__name__}")
    want = f"[B,1,{MODEL_SIZE},{MODEL_SIZE}]"
    if x.ndim != 4 or x.shape[1:] != (1, MODEL_SIZE, MODEL_SIZE) or x.shape[0] < 1:
        raise UsageError(f"{name} has shape {list(x.shape)}: expected float32 {want}")
    if x.dtype != np.float32:
        raise UsageError(f"{name} has dtype {x.dtype}: expected float32 {want} (use .astype(np.float32))")
    if not np.isfinite(x).all():
        raise UsageError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(x)


def default_labels(n: int, label: int | None = None, unconditional: bool = False) -> np.ndarray:
    """Labels for n samples: one digit, all unconditional (10), or cycling 0-9 by default."""
    if unconditional:
        return np.full(n, NULL_LABEL, dtype=np.int64)
    if label is not None:
        return check_labels(np.full(n, label, dtype=np.int64))
    return np.arange(n, dtype=np.int64) % NUM_CLASSES
