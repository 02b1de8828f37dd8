"""``fm-edge export``: checkpoint -> ``velocity.onnx`` and ``sampler.onnx``, each validated before it lands.

1. check the arguments and the output folder (cheap, before torch is imported);
2. export the UNet to ``velocity.onnx`` (:mod:`.velocity`) and check it against PyTorch (:mod:`.validate`);
3. wrap it into ``sampler.onnx``, the whole sampler in one graph with the weights stored once
   (:mod:`.sampler_graph`), and check it against the Python sampler on the same noise;
4. only then move both files from their temporary names to the final ones (:mod:`fm_edge.atomic`).

A failed check exits non-zero and leaves no model file behind (an older good export stays untouched).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from fm_edge.artifacts import SAMPLER_FILE, VELOCITY_FILE, VELOCITY_INT8, onnx_metadata
from fm_edge.atomic import prepare_output_dir
from fm_edge.errors import FmEdgeError


def export(
    checkpoint: str | os.PathLike | None = None,
    output_dir: str | os.PathLike = "onnx",
    opset: int = 17,
    solver: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    num_threads: int | None = None,
    log=None,
) -> dict[str, Path]:
    """Export and validate both files; returns {"velocity": path, "sampler": path}.

    ``solver``/``steps`` default to the checkpoint's recommended sampler (fm_edge.json), as do the time
    shift and the CFG scale recorded in sampler.onnx.
    """
    from fm_edge.export.metadata import check_convention
    from fm_edge.export.velocity import check_opset
    from fm_edge.model import check_steps_for, read_fm_config, resolve
    from fm_edge.sampler_spec import checkpoint_spec

    log = log or sys.stderr
    # 1. arguments and output folder, before anything heavy
    check_opset(opset)
    ckpt = resolve(checkpoint)
    fm = read_fm_config(ckpt)
    check_convention(ckpt, fm)
    spec = checkpoint_spec(fm).override(steps=steps, solver=solver)
    check_steps_for(
        ckpt, spec.steps, "--sampler-steps", spec.solver, spec.shift
    )  # a OneStepNet student runs exactly 1 step
    out, created = prepare_output_dir(output_dir)
    paths = {"velocity": out / VELOCITY_FILE, "sampler": out / SAMPLER_FILE}
    try:
        _export(ckpt, fm, paths, opset, spec, seed, num_threads, log)
    except BaseException:
        if created:  # leave nothing behind, not even the empty folder this run made
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return paths


def _export(ckpt, fm, paths, opset, spec, seed, num_threads, log) -> None:
    import onnx
    import torch

    from fm_edge.atomic import atomic_file
    from fm_edge.export.metadata import sampler_metadata, velocity_metadata
    from fm_edge.export.sampler_graph import build_sampler
    from fm_edge.export.validate import check_size, report, require, validate_sampler, validate_velocity
    from fm_edge.export.velocity import export_velocity
    from fm_edge.model import load

    if num_threads:
        torch.set_num_threads(num_threads)
    model, _ = load(ckpt)
    if hasattr(model, "run_steps"):  # a mean-flow student takes steps of 1/steps
        model.run_steps(spec.steps)
    print(f"exporting {ckpt} (opset {opset}, TorchScript exporter)", file=log)
    velocity = export_velocity(model, opset, velocity_metadata(ckpt, fm, model))
    meta = sampler_metadata(ckpt, fm, spec)
    sampler = build_sampler(velocity, spec.solver, spec.steps, spec.shift, meta)
    try:
        with atomic_file(paths["velocity"]) as vtmp, atomic_file(paths["sampler"]) as stmp:
            # 2. velocity.onnx against PyTorch
            onnx.save(velocity, vtmp)
            checks = validate_velocity(vtmp, model, seed=seed, num_threads=num_threads)
            report(f"validating {VELOCITY_FILE} against PyTorch:", checks, log)
            require(VELOCITY_FILE, checks)
            # 3. sampler.onnx against the Python sampler over the ORT velocity model
            onnx.save(sampler, stmp)
            checks = validate_sampler(stmp, vtmp, spec, seed=seed, num_threads=num_threads)
            checks.append(check_size(stmp, vtmp))
            report(
                f"validating {SAMPLER_FILE} ({spec.describe()}) against the Python sampler:",
                checks,
                log,
            )
            require(SAMPLER_FILE, checks)
        # 4. atomic_file has moved both into place
    except OSError as exc:
        raise FmEdgeError(
            f"cannot write to {str(paths['velocity'].parent)!r}: {exc.strerror or exc}"
        ) from None


def _warn_if_int8_is_stale(out: Path) -> None:
    """Say so when the folder's int8 files were quantized from other weights than the new fp32 export."""
    if not (out / VELOCITY_INT8).is_file():
        return
    key = "checkpoint_sha256"
    old = onnx_metadata(out / VELOCITY_INT8).get(key)
    if old and old != onnx_metadata(out / VELOCITY_FILE).get(key):
        print(
            f"warning: {out / VELOCITY_INT8} was quantized from other weights: "
            f"run fm-edge export --int8 -o {out} to refresh the int8 files",
            file=sys.stderr,
        )


def add_arguments(p) -> None:
    """``fm-edge export``'s flags."""
    from fm_edge.flags import seed_and_threads
    from fm_edge.quantize.recipe import RECIPES
    from fm_edge.sampler_spec import shipped_teacher_spec
    from fm_edge.solvers import SOLVERS

    rec = shipped_teacher_spec()
    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("-o", "--output-dir", default="onnx", help="folder for velocity.onnx, sampler.onnx, ...")
    p.add_argument(
        "--sampler-steps",
        type=int,
        default=None,
        help=f"steps baked into sampler.onnx (default: the checkpoint's recommendation; the shipped "
        f"teacher's is {rec.steps})",
    )
    p.add_argument(
        "--solver",
        default=None,
        choices=tuple(SOLVERS),
        help=f"solver baked into sampler.onnx (default: the checkpoint's recommendation; the shipped "
        f"teacher's is {rec.solver})",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17-20")
    p.add_argument("--int8", action="store_true", help="also write velocity_int8.onnx, sampler_int8.onnx")
    p.add_argument("--calib-samples", type=int, default=64, help="int8: noises per calibration run")
    p.add_argument("--tolerance", type=float, default=0.10, help="int8: allowed relative FD increase")
    p.add_argument(
        "--int8-recipe",
        default="default",
        choices=tuple(RECIPES),
        help="int8: default picks by model (a UNet: default; a OneStepNet: student; a OneStepNet flow teacher "
        "that samples with CFG: student-float-ends); float-cond-add keeps the time-embedding adds in float "
        "(+0.6 dB, any CPU); vnni has 8-bit weights too (only for VNNI/AMX CPUs, AVX2 saturates); the rest "
        "are for comparison",
    )
    seed_and_threads(
        p, "seed of the validation and calibration noise", "CPU threads (torch and ONNX Runtime)"
    )


def main(args):
    """``fm-edge export``: writes velocity.onnx and sampler.onnx (and the int8 files with --int8).

    With ``--int8`` every file is first written and checked in a hidden staging folder inside the output
    folder, and the files move into place only when all of them passed: a failed int8 step leaves an
    older export (fp32 and int8 files alike) untouched, never a mix of two checkpoints.
    """
    options = None
    if args.int8:
        from fm_edge.quantize.pipeline import int8_config, quantize_export

        options = int8_config(args)  # bad int8 flags fail here, before any work
    kwargs = dict(opset=args.opset, solver=args.solver, steps=args.sampler_steps, seed=args.seed,
                  num_threads=args.num_threads)  # fmt: skip
    if options is None:
        paths = export(args.model, args.output_dir, **kwargs)
        _warn_if_int8_is_stale(Path(args.output_dir))
    else:
        import shutil
        import tempfile

        out, created = prepare_output_dir(args.output_dir)
        stage = Path(tempfile.mkdtemp(prefix=".export-", suffix=".tmp", dir=out))
        try:
            export(args.model, stage, **kwargs)
            quantize_export(stage, options)
            paths = {}
            for f in sorted(stage.iterdir()):
                os.replace(f, out / f.name)
                paths[f.name] = out / f.name
        except BaseException:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    for p in paths.values():
        print(f"wrote {p}", file=sys.stderr)
    return str(Path(args.output_dir))
