"""``velocity.onnx`` -> ``velocity_int8.onnx`` with ONNX Runtime static QDQ, calibrated on trajectories.

1. refuse what cannot be quantized: an already-quantized graph, an unsupported opset, wrong inputs, a
   calibration set too small or missing labels;
2. ``quant_pre_process`` (ONNX shape inference and ORT's basic fusions; ``skip_symbolic_shape=True``, which
   this UNet's reshapes need);
3. resolve the recipe's excluded *roles* (first/last conv, conditioning, norm chains, attention) to node
   names from the graph structure, so the same recipe holds for any exporter's node names;
4. ``quantize_static`` with the recipe's format, types, per-channel and calibration method;
5. the recipe's post passes (:mod:`.passes`), metadata, and a load-and-run check;
6. only then write the file, atomically: a failed quantization leaves no file behind.
"""

from __future__ import annotations

import collections
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from fm_edge.errors import FmEdgeError, UsageError, first_line
from fm_edge.quantize import graph as G
from fm_edge.quantize.calibrate import INPUT_NAMES, MIN_NOISES, Trajectories, reader
from fm_edge.quantize.recipe import Recipe, get

# QDQ per-axis needs opset 13; 21+ brings GroupNormalization-21, which ORT's CPU provider may lack
OPSETS = range(13, 21)
#: calibration rows (velocity-net inputs) below which ranges are not meaningful
MIN_ROWS = 2 * MIN_NOISES
#: ORT's calibrator holds every intermediate tensor of every row until it computes the ranges (~3 MB a row
#: for the compact UNet); larger sets are thinned evenly (every k-th row keeps every step and label).
MAX_ROWS = 1024


def check_fp32(model, path: str = "model") -> None:
    """UsageError unless ``model`` is a float fm-edge velocity graph this module can quantize."""
    found = G.quantized_ops(model)
    if found:
        raise UsageError(
            f"{path} is already quantized (it has {', '.join(found)} nodes): quantize the fp32 velocity.onnx"
        )
    op = G.opset(model)
    if op not in OPSETS:
        raise UsageError(
            f"{path} has opset {op}: int8 quantization supports opset {OPSETS.start}-{OPSETS.stop - 1}"
        )
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = tuple(i.name for i in g.input if i.name not in inits)
    if inputs != INPUT_NAMES:
        raise UsageError(f"{path} has inputs {list(inputs)}: a velocity model needs {list(INPUT_NAMES)}")


def check_calibration(calib: Trajectories) -> None:
    """UsageError for a calibration set too small, or one that misses a label 0-10."""
    if len(calib) < MIN_ROWS:
        raise UsageError(
            f"calibration set too small: {len(calib)} velocity inputs; int8 needs at least {MIN_ROWS} "
            f"(>= {MIN_NOISES} noises through the sampler)"
        )
    missing = sorted(set(range(MIN_NOISES)) - set(np.unique(calib.class_labels).tolist()))
    if missing:
        raise UsageError(
            f"calibration set has no inputs for labels {missing}: it must cover 0-{MIN_NOISES - 1}"
        )


def excluded_nodes(model, recipe: Recipe) -> dict[str, list[str]]:
    """Role -> node names the recipe keeps in float (plus 'named' for explicitly listed nodes)."""
    roles = G.roles(model)
    out = {role: roles[role] for role in recipe.exclude_roles}
    names = {n.name for n in model.graph.node}
    unknown = [n for n in recipe.exclude_nodes if n not in names]
    if unknown:
        raise UsageError(f"recipe excludes nodes not in the graph: {unknown[:3]}")
    if recipe.exclude_nodes:
        out["named"] = list(recipe.exclude_nodes)
    return out


def _quantize_static(
    pre: Path, raw: Path, calib: Trajectories, recipe: Recipe, exclude: list[str], batch: int
):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # Not CalibMaxIntermediateOutputs: in ORT 1.32 MinMax drops each full chunk without merging its ranges.
    extra = dict(recipe.extra_options)
    quantize_static(
        str(pre),
        str(raw),
        reader(calib, batch_size=batch),
        quant_format=getattr(QuantFormat, recipe.quant_format),
        op_types_to_quantize=list(recipe.op_types),
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        activation_type=getattr(QuantType, recipe.activation_type),
        weight_type=getattr(QuantType, recipe.weight_type),
        nodes_to_exclude=exclude,
        calibrate_method=getattr(CalibrationMethod, recipe.calibrate_method),
        extra_options=extra,
    )


def _apply_passes(model, recipe: Recipe) -> dict[str, int]:
    from fm_edge.quantize import passes

    return {name: getattr(passes, name)(model) for name in recipe.passes}


def _smoke_run(model_bytes: bytes, calib: Trajectories) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    out = sess.run(None, calib.feeds(slice(0, 3)))[0]
    if out.shape != calib.sample[:3].shape or not np.isfinite(out).all():
        raise FmEdgeError(f"the int8 model gives {out.shape} with non-finite values: quantization failed")


def quantize_velocity(
    fp32_path,
    out_path,
    calib: Trajectories,
    recipe: Recipe | str | dict = "default",
    calib_batch: int = 64,
    log=None,
) -> dict:
    """Quantize ``fp32_path`` into ``out_path`` (atomically); returns the facts for quantization.json."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import quant_pre_process

    from fm_edge.atomic import atomic_file

    log = log if log is not None else sys.stderr
    recipe = get(recipe)
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    fp32 = G.load(fp32_path)
    check_fp32(fp32, str(fp32_path))
    check_calibration(calib)
    used = calib if len(calib) <= MAX_ROWS else calib.subset(-(-len(calib) // MAX_ROWS))
    with tempfile.TemporaryDirectory(prefix="fm_edge_int8_") as tmp:
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "raw.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception as exc:
            raise FmEdgeError(
                f"quant_pre_process failed on {fp32_path}: {str(exc).splitlines()[0]}"
            ) from None
        pre_model = onnx.load(str(pre))
        excluded = excluded_nodes(pre_model, recipe)
        exclude = sorted({n for names in excluded.values() for n in names})
        print(
            f"quantizing {fp32_path.name}: {len(used)} calibration inputs, recipe {recipe.name}, "
            f"{len(exclude)} nodes kept in float",
            file=log,
        )
        try:
            _quantize_static(pre, raw, used, recipe, exclude, calib_batch)
        except UsageError:
            raise
        except Exception as exc:
            raise FmEdgeError(f"ORT static quantization failed: {first_line(exc)}") from None
        q = onnx.load(str(raw))
    pass_counts = _apply_passes(q, recipe)
    meta = {p.key: p.value for p in fp32.metadata_props}
    meta.update(
        precision="int8",
        int8_recipe=json.dumps(recipe.to_dict(), separators=(",", ":")),
        int8_disabled_optimizers=",".join(recipe.disabled_optimizers),
        onnxruntime_quantization=ort.__version__,
    )
    del q.metadata_props[:]
    for k, v in meta.items():
        q.metadata_props.add(key=k, value=v)
    q.doc_string = f"fm-edge int8 velocity net ({recipe.name}; see metadata_props and quantization.json)"
    data = q.SerializeToString()
    _smoke_run(data, calib)
    with atomic_file(out_path) as tmp_out:
        tmp_out.write_bytes(data)
        with contextlib.suppress(OSError):
            tmp_out.chmod(0o644)
    macs = G.node_macs(pre_model)
    fractions = G.weight_fractions(pre_model, q, macs)
    counts = collections.Counter(n.op_type for n in q.graph.node)
    return {
        "recipe": recipe.to_dict(),
        "calibration_rows_used": len(used),
        "excluded_nodes": excluded,
        "excluded_count": len(exclude),
        "passes": pass_counts,
        "op_counts": {k: counts[k] for k in ("QuantizeLinear", "DequantizeLinear") if counts[k]},
        "size_bytes": {"fp32": fp32_path.stat().st_size, "int8": out_path.stat().st_size},
        "size_ratio": round(out_path.stat().st_size / fp32_path.stat().st_size, 4),
        **fractions,
    }
