"""``fm-edge export --int8``: velocity_int8.onnx, sampler_int8.onnx and quantization.json beside the fp32 files.

1. read the solver, steps, shift and CFG scale baked into ``sampler.onnx`` (or recommended by
   ``velocity.onnx``): calibration must see exactly what the exported sampler will feed the net;
2. run the fp32 sampler over seeded noises and record every velocity input (:mod:`.calibrate`);
3. quantize (:mod:`.ort_int8`) and wrap the int8 velocity graph into ``sampler_int8.onnx`` with the export's
   sampler-graph builder, then check that graph against the Python loop over the int8 velocity model;
4. measure quality on other noises: PSNR int8 vs fp32 final images from the same noise, end-to-end and
   per-layer SQNR, and (with ``fd=True``) FD and label accuracy through the project evaluator;
5. write the three files atomically, or none: quality outside the tolerance raises FmEdgeError.

(Quality is measured before the sampler graph is built, so a failing quantization fails fast.)
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fm_edge.artifacts import (
    RECIPE_JSON,
    SAMPLER_FILE,
    SAMPLER_INT8,
    VELOCITY_FILE,
    VELOCITY_INT8,
    onnx_metadata,
    sha256,
)
from fm_edge.errors import FmEdgeError, UsageError
from fm_edge.sampler_spec import SamplerSpec, export_spec


@dataclass
class Tolerance:
    """What int8 must keep: mean PSNR against fp32 from the same noise, the relative FD increase and the
    label-accuracy drop."""

    min_psnr_db: float = 25.0
    max_fd_increase: float = 0.10
    max_accuracy_drop: float = 0.01


def int8_images(velocity, noise, labels, s: SamplerSpec) -> np.ndarray:
    """uint8 digits from the shared sampling loop over a numpy velocity callable (an ORT model)."""
    from fm_edge.backends import Backend, generate

    return generate(Backend("onnx", velocity, s), labels, s, noise=noise)


def paired_latency(fp32_session, int8_session, batch: int, rounds: int | None = None) -> dict:
    """Median ms per velocity call of both sessions, run alternately (a busy machine slows both alike),
    and the median of the per-round fp32/int8 ratios."""
    from fm_edge.export.validate import fixed_inputs
    from fm_edge.timing import median, paired_speedup, time_alternating

    x, t, y = fixed_inputs(batch)
    feeds = {"sample": x, "timestep": t, "class_labels": y}
    rounds = rounds or (30 if batch <= 8 else 5)
    times = time_alternating(
        {"fp32": lambda: fp32_session.run(None, feeds), "int8": lambda: int8_session.run(None, feeds)}, rounds
    )
    return {
        "fp32": round(median(times["fp32"]) * 1e3, 3),
        "int8": round(median(times["int8"]) * 1e3, 3),
        "speedup": round(paired_speedup(times["fp32"], times["int8"]), 3),
    }


def quality_report(
    fp32_path, int8_path, s: SamplerSpec, n: int, seed: int, fd: bool, num_threads=None
) -> dict:
    """PSNR of final images (same noise), output/per-layer SQNR, and optionally FD / label accuracy."""
    from fm_edge.backends import make_noise
    from fm_edge.metrics import psnr_db
    from fm_edge.quantize import calibrate, sqnr
    from fm_edge.runtime import OnnxVelocity

    v32 = OnnxVelocity(fp32_path, num_threads=num_threads)
    v8 = OnnxVelocity(int8_path, num_threads=num_threads)
    noise = make_noise(n, seed)
    labels = (np.arange(n) % 10).astype(np.int64)
    img32 = int8_images(v32, noise, labels, s)
    img8 = int8_images(v8, noise, labels, s)
    ps = psnr_db(img32, img8)
    held = calibrate.collect(v32, calibrate.MIN_NOISES, s.solver, s.steps, s.cfg_scale, s.shift, seed)
    layers = sqnr.layer_sqnr(fp32_path, int8_path, held.feeds())
    rep = {
        "noise_seed": seed,
        "n_images": n,
        "psnr_db_mean": round(float(ps.mean()), 2),
        "psnr_db_median": round(float(np.median(ps)), 2),
        "psnr_db_min": round(float(ps.min()), 2),
        "identical_images_fraction": round(float((img32 == img8).all(axis=(1, 2)).mean()), 4),
        "velocity_sqnr_db": round(sqnr.output_sqnr(fp32_path, int8_path, held.feeds()), 2),
        "layer_sqnr_db": layers,
        "worst_layers": sorted(layers, key=lambda r: r["sqnr_db"])[:3],
    }
    if fd:
        from fm_edge.evaluate import evaluate_images

        e32, e8 = evaluate_images(img32, labels), evaluate_images(img8, labels)
        rep.update(
            fd_fp32=e32["fd"], fd_int8=e8["fd"],
            label_accuracy_fp32=e32["label_accuracy"], label_accuracy_int8=e8["label_accuracy"],
        )  # fmt: skip
    return rep


def check_quality(q: dict, tol: Tolerance) -> list[str]:
    """The failed bars, as one-line messages (empty when int8 keeps the digits)."""
    bad = []
    if q["psnr_db_mean"] < tol.min_psnr_db:
        bad.append(f"mean PSNR int8 vs fp32 {q['psnr_db_mean']:.1f} dB < {tol.min_psnr_db:g} dB")
    if q.get("fd_fp32") is not None and q.get("fd_int8") is not None:
        limit = q["fd_fp32"] * (1 + tol.max_fd_increase)
        if q["fd_int8"] > limit:
            bad.append(
                f"FD int8 {q['fd_int8']:.3f} > {limit:.3f} (fp32 {q['fd_fp32']:.3f} + {tol.max_fd_increase:.0%})"
            )
    if q.get("label_accuracy_fp32") is not None and q.get("label_accuracy_int8") is not None:
        drop = q["label_accuracy_fp32"] - q["label_accuracy_int8"]
        if drop > tol.max_accuracy_drop:
            bad.append(f"label accuracy drops {drop:.1%} (> {tol.max_accuracy_drop:.0%})")
    return bad


@dataclass
class Int8Config:
    """What ``fm-edge export --int8`` (and :func:`quantize_export`) does: calibration noises and seed, the
    recipe, the quality bars and how they are measured, threads and timing. The CLI and the API share these
    defaults; :meth:`check` refuses a bad value before any work."""

    calib_samples: int = 64
    seed: int = 0
    recipe: object = "default"  # a recipe name or a fm_edge.quantize.recipe.Recipe
    tolerance: Tolerance = field(default_factory=Tolerance)
    quality_samples: int = 200
    fd: bool = (
        True  # FD and label accuracy through the project evaluator (slower, and what --tolerance bounds)
    )
    num_threads: int | None = None
    measure_latency: bool = True

    def check(self) -> Int8Config:
        from fm_edge.quantize.calibrate import MIN_NOISES
        from fm_edge.quantize.recipe import get

        fd_bar = self.tolerance.max_fd_increase
        if not (math.isfinite(fd_bar) and fd_bar >= 0):
            raise UsageError(
                f"--tolerance {fd_bar} is not allowed: give the relative FD increase int8 may add, "
                "a finite number >= 0 (0.10 = 10%)"
            )
        if self.calib_samples < MIN_NOISES:
            raise UsageError(
                f"--calib-samples {self.calib_samples} is too small: int8 calibration needs at least "
                f"{MIN_NOISES} noises (one per label 0-10)"
            )
        if self.quality_samples < 10:
            raise UsageError(f"quality samples must be >= 10, got {self.quality_samples}")
        get(self.recipe)  # an unknown name fails here
        return self


def quantize_export(out_dir, config: Int8Config | None = None, log=None, **settings) -> dict:
    """Write velocity_int8.onnx, sampler_int8.onnx and quantization.json into ``out_dir`` (which holds the
    fp32 export) as ``config`` (with ``settings`` replacing its fields) says; returns the summary (also the
    content of quantization.json). Raises FmEdgeError, writing nothing, when int8 quality falls outside the
    tolerance."""
    from fm_edge.quantize.ort_int8 import quantize_velocity
    from fm_edge.quantize.recipe import get

    log = log if log is not None else sys.stderr
    cfg = replace(config or Int8Config(), **settings).check()
    out = Path(out_dir)
    fp32 = out / VELOCITY_FILE
    if not fp32.is_file():
        raise UsageError(
            f"{str(fp32)!r} does not exist: run fm-edge export -o {out} first (it writes the fp32 files)"
        )
    s = export_spec(out)
    with tempfile.TemporaryDirectory(prefix="fm_edge_int8_") as tmpd:
        vq, sq = Path(tmpd) / VELOCITY_INT8, Path(tmpd) / SAMPLER_INT8
        # 1. calibration on the exported sampler's own trajectories
        traj = calibrate_on_sampler(fp32, s, cfg, log)
        # 2. quantize
        facts = quantize_velocity(fp32, vq, traj, get(cfg.recipe), log=log)
        # 3. quality on noises the calibration never saw (before the sampler graph: fail fast)
        q = quality_report(fp32, vq, s, cfg.quality_samples, cfg.seed + 1, cfg.fd, cfg.num_threads)
        failed = check_quality(q, cfg.tolerance)
        if not failed:
            int8_sampler(out, vq, sq, s, cfg, log)
        summary = int8_summary(fp32, vq, sq, s, cfg, traj, facts, q, failed)
        print(format_summary(summary), file=log)
        if failed:
            raise FmEdgeError(
                f"int8 quality is outside the tolerance: {'; '.join(failed)}; no int8 file written"
            )
        # 4. all three files land, each atomically
        write_int8(out, vq, sq, summary)
    return summary


def calibrate_on_sampler(fp32: Path, s: SamplerSpec, cfg: Int8Config, log):
    """The velocity inputs the fp32 sampler visits from ``cfg.calib_samples`` seeded noises, every step."""
    from fm_edge.quantize import calibrate
    from fm_edge.runtime import OnnxVelocity

    t0 = time.perf_counter()
    v32 = OnnxVelocity(fp32, num_threads=cfg.num_threads)
    traj = calibrate.collect(v32, cfg.calib_samples, s.solver, s.steps, s.cfg_scale, s.shift, cfg.seed)
    print(
        f"calibration: {cfg.calib_samples} noises x {s.describe()} -> {len(traj)} velocity inputs "
        f"({time.perf_counter() - t0:.1f} s)",
        file=log,
    )
    return traj


def int8_sampler(out: Path, vq: Path, sq: Path, s: SamplerSpec, cfg: Int8Config, log) -> None:
    """sampler_int8.onnx at ``sq``: the int8 velocity graph wrapped like sampler.onnx, checked against the
    Python loop over the int8 velocity model."""
    import onnx

    from fm_edge.export.sampler_graph import build_sampler
    from fm_edge.export.validate import report, require, validate_sampler

    smeta = onnx_metadata(out / SAMPLER_FILE) if (out / SAMPLER_FILE).is_file() else {}
    qv = onnx.load(str(vq))
    smeta.update({p.key: p.value for p in qv.metadata_props if p.key.startswith(("int8_", "precision"))})
    baked = s.sampler_metadata()
    smeta.update(model="sampler", **{k: baked[k] for k in ("solver", "steps", "shift", "nfe", "cfg_scale")})
    onnx.save(build_sampler(qv, s.solver, s.steps, s.shift, smeta), str(sq))
    checks = validate_sampler(sq, vq, s, seed=cfg.seed, num_threads=cfg.num_threads)
    report(f"validating {SAMPLER_INT8} against the Python sampler over {VELOCITY_INT8}:", checks, log)
    require(SAMPLER_INT8, checks)


def write_int8(out: Path, vq: Path, sq: Path, summary: dict) -> None:
    """The two int8 files and quantization.json, each atomically."""
    from fm_edge.atomic import atomic_file

    for name, src in ((VELOCITY_INT8, vq), (SAMPLER_INT8, sq)):
        with atomic_file(out / name) as dst:
            dst.write_bytes(src.read_bytes())
            dst.chmod(0o644)
    with atomic_file(out / RECIPE_JSON) as dst:
        dst.write_text(json.dumps(summary, indent=2) + "\n")
        dst.chmod(0o644)


def int8_summary(
    fp32, vq, sq, s: SamplerSpec, cfg: Int8Config, traj, facts: dict, q: dict, failed: list
) -> dict:
    """quantization.json: the recipe, the calibration, the quality and (when it passed) the timing."""
    import onnx
    import onnxruntime as ort

    from fm_edge import __version__
    from fm_edge.quantize.cpu import isa_seen
    from fm_edge.quantize.recipe import get
    from fm_edge.runtime import OnnxVelocity

    summary = {
        "format": "fm-edge int8 recipe v1",
        "method": "onnxruntime static QDQ (quantize_static after quant_pre_process), trajectory calibration",
        "recipe": facts["recipe"],
        "calibration": {
            "method": get(cfg.recipe).calibrate_method,
            "source": "velocity inputs recorded from the fp32 sampler (CFG doubled batch), every step",
            **traj.meta,
            "seeds": [cfg.seed],
            "rows_used": facts["calibration_rows_used"],
            "labels": sorted(int(v) for v in np.unique(traj.class_labels)),
        },
        "sampler": s.to_dict(),
        "excluded_nodes": facts["excluded_nodes"],
        "excluded_count": facts["excluded_count"],
        "int8_fraction": {"weights": facts["weights_int8_fraction"], "macs": facts["macs_int8_fraction"]},
        "macs_per_image": facts["macs_per_image"],
        "passes": facts["passes"],
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "fm_edge": __version__},
        "isa": isa_seen(),
        "files": {
            VELOCITY_FILE: {"bytes": fp32.stat().st_size, "sha256": sha256(fp32)},
            VELOCITY_INT8: {"bytes": vq.stat().st_size, "sha256": sha256(vq)},
        },
        "size_ratio": facts["size_ratio"],
        "quality": q,
        "tolerance": {**cfg.tolerance.__dict__, "passed": not failed, "failed": failed},
    }
    if sq.is_file():
        summary["files"][SAMPLER_INT8] = {"bytes": sq.stat().st_size, "sha256": sha256(sq)}
    if cfg.measure_latency and not failed:
        s32 = OnnxVelocity(fp32, num_threads=cfg.num_threads).session
        s8 = OnnxVelocity(vq, num_threads=cfg.num_threads).session
        summary["latency_ms_per_call"] = {f"batch {b}": paired_latency(s32, s8, b) for b in (2, 128)}
        summary["latency_note"] = (
            "indicative: velocity calls at batch 2 and 128 (= sampler batch 1 and 64 with CFG), run "
            "alternately, median; fm-edge bench is the benchmark"
        )
    return summary


def format_summary(s: dict) -> str:
    q = s["quality"]
    f = s["files"]
    lines = [
        f"int8 ({s['recipe']['name']}): {s['int8_fraction']['macs']:.1%} of MACs and "
        f"{s['int8_fraction']['weights']:.1%} of weights in int8, {s['excluded_count']} nodes kept in float",
        f"  size   velocity_int8.onnx {f[VELOCITY_INT8]['bytes'] / 1e6:.3f} MB = {s['size_ratio']:.3f} x velocity.onnx",
        f"  quality PSNR vs fp32 (same noise, {q['n_images']} digits) mean {q['psnr_db_mean']:.1f} dB, "
        f"min {q['psnr_db_min']:.1f} dB; velocity SQNR {q['velocity_sqnr_db']:.1f} dB; worst layer "
        f"{q['worst_layers'][0]['node']} {q['worst_layers'][0]['sqnr_db']:.1f} dB"
        if q["worst_layers"]
        else "",
    ]
    if q.get("fd_int8") is not None:
        lines.append(
            f"  FD fp32 {q['fd_fp32']:.3f} -> int8 {q['fd_int8']:.3f}; label accuracy "
            f"{q['label_accuracy_fp32']:.1%} -> {q['label_accuracy_int8']:.1%}"
        )
    for b, d in s.get("latency_ms_per_call", {}).items():
        lines.append(
            f"  latency {b}: fp32 {d['fp32']:.2f} ms, int8 {d['int8']:.2f} ms (x{d['speedup']:.2f} paired)"
        )
    verdict = int8_verdict(s)
    if verdict:
        lines.append(f"  {verdict}")
    lines.append(
        f"  ISA: {s['isa']['int8_path']}; {'✓ within tolerance' if s['tolerance']['passed'] else '✗ ' + '; '.join(s['tolerance']['failed'])}"
    )
    return "\n".join(lines)


#: below this paired speed-up (at either batch), export --int8 says that int8 does not pay on this CPU
def int8_verdict(summary: dict) -> str:
    """One line that says what the timing measured ("" when nothing was timed): a ✓ when int8 was faster
    than fp32 at every batch, else a warning naming the batches where it was not."""
    lat = summary.get("latency_ms_per_call", {})
    if not lat:
        return ""
    cpu = summary.get("isa", {}).get("int8_path", "this CPU")
    speeds = " / ".join(f"{d['speedup']:.2f}x" for d in lat.values())
    where = f"velocity calls at {' / '.join(lat)}, {cpu}"
    slow = [name for name, d in lat.items() if d["speedup"] <= 1.0]
    if not slow:
        return f"✓ int8 is {speeds} faster than fp32 here ({where})"
    return (
        f"warning: int8 is not faster than fp32 here at {' and '.join(slow)} ({speeds} the fp32 speed; "
        f"{where}): the fp32 files are the faster choice on this CPU there"
    )


def default_recipe_for(model) -> str:
    """The recipe ``--int8-recipe default`` means for this checkpoint (None: the shipped default model). A norm-free OneStepNet runs all in int8
    but its label embedding ("student"); a OneStepNet that is a guided flow teacher (a '-t' net that samples
    with CFG at run time) also keeps its first and last conv in float ("student-float-ends"): on the shipped
    int8-built teacher all-int8 lost 18% FD at 4 steps, float ends 5%, for 95.5% of MACs still in int8. A
    folder whose fm_edge.json names an ``int8_recipe`` (the one its shipped int8 file was measured best with)
    gets that one."""
    from fm_edge.model import folder_or_shipped, is_student_net, model_config, read_fm_config
    from fm_edge.sampler_spec import checkpoint_spec

    folder = folder_or_shipped(model)  # None: the shipped default model
    fm = read_fm_config(folder)
    if fm.get("int8_recipe"):
        return fm["int8_recipe"]
    if not is_student_net(folder):
        return "default"
    guided = model_config(folder).get("time_input") and not checkpoint_spec(fm).distilled
    return "student-float-ends" if guided else "student"


def int8_config(args) -> Int8Config:
    """The ``--int8`` flags as an :class:`Int8Config`, checked before any export work starts."""
    recipe = args.int8_recipe
    if recipe == "default":
        recipe = default_recipe_for(args.model)
    return Int8Config(
        calib_samples=args.calib_samples,
        seed=args.seed,
        recipe=recipe,
        tolerance=Tolerance(max_fd_increase=args.tolerance),
        num_threads=args.num_threads,
    ).check()
