"""Where fm-edge's artifacts live and what they say about themselves (numpy-free, no heavy imports).

- the file names of a checkpoint folder and of an export folder, and the shipped copies;
- sha256 of a file, and of a checkpoint's weights (the id every exported file records);
- an .onnx file's ``metadata_props`` and the few-step sampler settings they record.
"""

from __future__ import annotations

import hashlib
import json
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

SHIPPED = Path(__file__).parent / "checkpoints" / "compact-mnist"
SHIPPED_ONNX = SHIPPED / "onnx"

#: Few-step sampler used when a checkpoint or a file recommends none.
DEFAULT_SAMPLER = {"solver": "euler", "steps": 4, "cfg_scale": 2.0, "shift": 1.0}


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


def recommended_sampler(recorded: dict | None) -> dict:
    """A recorded sampler recommendation filled in with :data:`DEFAULT_SAMPLER`."""
    return dict(DEFAULT_SAMPLER, **(recorded or {}))


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


def sampler_from_metadata(meta: dict[str, str], where: str = "the file") -> dict:
    """solver/steps/shift/cfg_scale from ONNX metadata: the keys baked into a sampler graph win over the
    ``recommended_sampler`` JSON a velocity file carries; the package default fills the rest."""
    try:
        raw = json.loads(meta.get("recommended_sampler", "{}"))
        if not isinstance(raw, dict):
            raise ValueError("recommended_sampler is not a JSON object")
        rec = recommended_sampler(raw)
        out = {
            "solver": meta.get("solver", rec["solver"]),
            "steps": int(meta.get("steps", rec["steps"])),
            "shift": float(meta.get("shift", rec.get("shift", 1.0))),
            "cfg_scale": float(meta.get("cfg_scale", rec["cfg_scale"])),
        }
    except (ValueError, TypeError) as exc:
        raise FmEdgeError(f"unreadable sampler metadata in {where}: {exc}") from None
    return dict(rec, **out)


def sampler_settings(out_dir: str | os.PathLike) -> dict:
    """The sampler an export folder runs: sampler.onnx's baked-in settings, else velocity.onnx's advice."""
    out = Path(out_dir)
    path = out / SAMPLER_FILE if (out / SAMPLER_FILE).is_file() else out / VELOCITY_FILE
    return sampler_from_metadata(onnx_metadata(path), str(path))
