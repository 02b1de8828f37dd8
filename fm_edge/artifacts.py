"""Where fm-edge's artifacts live and what they say about themselves (numpy-free, no heavy imports).

- the file names of a checkpoint folder and of an export folder, and the shipped copies;
- sha256 of a file, and of a checkpoint's weights (the id every exported file records);
- an .onnx file's ``metadata_props`` (:mod:`fm_edge.sampler_spec` reads the sampler they record).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fm_edge.errors import FmEdgeError, UsageError

# a checkpoint folder (diffusers save_pretrained + fm-edge's own config)
WEIGHTS = "diffusion_pytorch_model.safetensors"
FM_CONFIG = "fm_edge.json"
# an export folder
VELOCITY_FILE = "velocity.onnx"
SAMPLER_FILE = "sampler.onnx"
VELOCITY_INT8 = "velocity_int8.onnx"
SAMPLER_INT8 = "sampler_int8.onnx"
RECIPE_JSON = "quantization.json"
#: velocity.onnx metadata key of a mean-flow student: the step length baked in at export (1/steps)
MEAN_FLOW_STEP = "mean_flow_step"

#: the default model: the int8-built flow teacher (a OneStepNet with t as an input plane, whose int8 sampler pays
#: on AVX2 CPUs too); the UNet teacher v1.1 it replaced is kept in the repo's stages/compact-mnist-v1.1
SHIPPED = Path(__file__).parent / "checkpoints" / "teacher-mnist-digit-t"
SHIPPED_ONNX = SHIPPED / "onnx"


def shipped_onnx(name: str) -> Path:
    """Path of an .onnx file shipped with fm-edge (``velocity.onnx``, ``sampler.onnx``, ...)."""
    path = SHIPPED_ONNX / name
    if not path.is_file():
        raise UsageError(
            f"no shipped {name} in {str(SHIPPED_ONNX)!r}: pass --model PATH.onnx, or run fm-edge export"
        )
    return path


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_hash(folder: str | os.PathLike) -> str:
    """sha256 of a checkpoint's safetensors file (identifies the weights in exported artifacts)."""
    return sha256(Path(folder) / WEIGHTS)


def steps_of_length(step) -> int | None:
    """K for a mean-flow step length 1/K (a number or its text); None for 0 or none, a net that takes steps of
    any length or none."""
    step = float(step or 0)
    return round(1 / step) if step else None


def mean_flow_steps(meta: dict) -> int | None:
    """The step count a mean-flow student's velocity.onnx was exported for (from its ``mean_flow_step``
    metadata), or None for any other file."""
    return steps_of_length(meta.get(MEAN_FLOW_STEP))


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of an .onnx file, read without building a session (sampler graphs are slow to load)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise UsageError(f"{str(path)!r} does not exist") from None
    except Exception as exc:  # DecodeError and friends
        raise FmEdgeError(f"{str(path)!r} is not a readable ONNX file ({type(exc).__name__})") from None
    return {p.key: p.value for p in model.metadata_props}
