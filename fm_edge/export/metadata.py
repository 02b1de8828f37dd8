"""The facts an app needs, stored in every exported .onnx file's ``metadata_props`` (all values are strings).

Both files carry the convention (time direction, t scale, image size and padding, normalisation, null label),
the preset, the fm-edge version and the sha256 of the checkpoint weights. ``velocity.onnx`` adds the
checkpoint's recommended sampler as a JSON string; ``sampler.onnx`` adds the solver, step count, time shift
and CFG scale baked into (or recommended for) its graph, and how guidance works in it:

- ``guidance``: ``cfg`` (each velocity call runs the conditional and the unconditional row, the ``cfg_scale``
  input is used) or ``distilled`` (a student from :mod:`fm_edge.distill`: one row per call, ``cfg_scale``
  ignored, the scale baked into the weights in ``distilled_cfg_scale``);
- ``nfe``: velocity calls per solve, as everywhere in fm-edge (:func:`fm_edge.solvers.nfe`);
- ``network_evals_per_image``: UNet rows per digit, the edge cost: ``nfe`` x 2 with ``cfg``, ``nfe`` when
  ``distilled`` (so 1 for a one-step student, 8 for Euler 4 with CFG).

A mean-flow student's ``velocity.onnx`` also records ``mean_flow_step``, the step length baked into its graph
(1/steps of the export), so a runtime can refuse another step count.
"""

from __future__ import annotations

import json
from pathlib import Path

from fm_edge import __version__, artifacts
from fm_edge.artifacts import MEAN_FLOW_STEP
from fm_edge.convention import CONVENTION
from fm_edge.errors import FmEdgeError
from fm_edge.sampler_spec import checkpoint_spec


def check_convention(checkpoint: Path, fm: dict) -> None:
    """Refuse a checkpoint whose fm_edge.json states a different convention than this fm-edge uses."""
    for key, value in CONVENTION.items():
        if key in fm and str(fm[key]) != value:
            raise FmEdgeError(
                f"checkpoint {str(checkpoint)!r} has {key}={fm[key]!r} but this fm-edge uses {value!r}: "
                "it cannot be exported with this version"
            )


def common_metadata(checkpoint: Path, fm: dict) -> dict[str, str]:
    """Convention, preset, version and weights hash: the part shared by velocity.onnx and sampler.onnx."""
    return {
        **CONVENTION,
        "preset": str(fm.get("preset", "unknown")),
        "fm_edge_version": __version__,
        "checkpoint_sha256": artifacts.weights_hash(checkpoint),
    }


def velocity_metadata(checkpoint: Path, fm: dict, model=None) -> dict[str, str]:
    """What a velocity.onnx records; a mean-flow student (``model``) also its baked-in step length."""
    meta = {
        **common_metadata(checkpoint, fm),
        "model": "velocity",
        "inputs": "sample float32 [B,1,32,32]; timestep float32 [B] = t * t_scale; class_labels int64 [B]",
        "outputs": "velocity float32 [B,1,32,32] = d x_t / dt",
        "recommended_sampler": json.dumps(checkpoint_spec(fm).to_dict(), sort_keys=True),
    }
    step = getattr(model, "step_length", 0) if model is not None and model.config.get("step_input") else 0
    if step:
        meta[MEAN_FLOW_STEP] = repr(float(step))
        meta["outputs"] = (
            f"average velocity float32 [B,1,32,32] over a step of length {step:g} ending at t - {step:g}"
        )
    return meta


def sampler_metadata(checkpoint: Path, fm: dict, spec) -> dict[str, str]:
    """What a sampler.onnx running ``spec`` (a :class:`~fm_edge.sampler_spec.SamplerSpec`) records."""
    if spec.distilled:
        scale = (
            f"cfg_scale float32 scalar (ignored: guidance {spec.distilled_cfg_scale:g} is distilled into the "
            "weights)"
        )
    else:
        scale = "cfg_scale float32 scalar (1 = no guidance)"
    return {
        **common_metadata(checkpoint, fm),
        "model": "sampler",
        "inputs": f"noise float32 [B,1,32,32] ~ N(0,I); class_labels int64 [B] (0-9, 10 = unconditional); {scale}",
        "outputs": "images uint8 [B,28,28]",
        **spec.sampler_metadata(),
    }


def set_metadata(model, metadata: dict[str, str]) -> None:
    """Replace an onnx ModelProto's metadata_props with ``metadata`` (sorted, every value a string)."""
    del model.metadata_props[:]
    for key in sorted(metadata):
        value = metadata[key]
        if not isinstance(value, str):
            raise FmEdgeError(f"metadata {key!r} must be a string, got {type(value).__name__}")
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
