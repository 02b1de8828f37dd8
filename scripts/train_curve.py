"""Learning curve of ``fm-edge train`` runs: FD / real-data floor against images seen, at a few Euler steps.

    python scripts/train_curve.py runs/t1 runs/t2 --curve runs/t1_curve runs/t2_curve --name teacher_digit_t \
        --steps 4 8 -n 1000

A train run keeps only its last checkpoints, so a watcher copies each ``checkpoint-<step>/ema.safetensors`` to
``--curve`` as ``ema-<step>.safetensors`` while it trains. Every copy becomes a checkpoint folder with the
config and recommended sampler (solver, CFG scale, shift) of the run's finished ``model/`` folder, is sampled
at each ``--steps`` through ``fm-edge sample`` and scored with ``fm-edge evaluate``. A run started with
``--init-from`` a finished run counts that run's images too, so a continued run extends its parent's curve.
Points already in docs/results/<name>_curve.json (same run, step, step count and n) are reused, so a curve can
grow while its run trains. Writes that JSON and docs/<name>_curve.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def finished_run(run: Path) -> tuple[Path, dict]:
    """The run's model/ folder and its fm_edge.json; FmEdgeError unless the run finished."""
    from fm_edge.errors import FmEdgeError
    from fm_edge.model import read_fm_config, resolve

    base = resolve(str(run / "model"))
    fm = read_fm_config(base)
    if "images_seen" not in fm.get("training", {}) or "sampler" not in fm:
        raise FmEdgeError(f"{base / 'fm_edge.json'} has no training record or sampler")
    return base, fm


def images_before(training: dict) -> int:
    """Images the ``--init-from`` parent had seen (0 for a run from scratch or a parent without a record)."""
    from fm_edge.model import read_fm_config

    parent = training.get("init_from")
    if not parent or not Path(parent).is_dir():
        return 0
    rec = read_fm_config(parent).get("training", {})
    return int(rec.get("images_seen", 0)) + images_before(rec)


def main(argv=None) -> int:
    from student_curve import ema_copies, plot, score, weights_folder

    from fm_edge.checkpoint import named_ema_weights
    from fm_edge.errors import FmEdgeError
    from fm_edge.model import load

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="train run folders (model/ gives config and sampler)")
    ap.add_argument(
        "--curve", type=Path, nargs="+", required=True, help="per run, its folder of ema-<step> copies"
    )
    ap.add_argument("--name", required=True, help="docs/results/<name>_curve.json, docs/<name>_curve.png")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.n < 1 or min(args.steps) < 1 or args.threads < 1:
        ap.error("-n, --steps and --threads must be at least 1")
    if len(args.curve) != len(args.runs):
        ap.error(f"--curve needs one folder per run: {len(args.runs)} runs, {len(args.curve)} folders")
    plan = []
    for run, curve in zip(args.runs, args.curve):  # every input checked before any sampling or writing
        try:
            plan.append((run, *finished_run(run), ema_copies(curve)))
        except FmEdgeError as exc:
            ap.error(f"{run} is not a finished train run: {exc}")
    out_json = ROOT / "docs" / "results" / f"{args.name}_curve.json"
    old = json.loads(out_json.read_text()) if out_json.is_file() else {}
    done = {
        (r["run"], r["step"], r["sampled_steps"]): r for r in old.get("rows", []) if old.get("n") == args.n
    }
    rows = []
    for run, base, fm, copies in plan:
        sampler, before = fm["sampler"], images_before(fm["training"])
        per_step = fm["training"]["images_seen"] / fm["training"]["steps"]  # batch x processes
        model = load(base, device="cpu")[0]
        for step, path in copies:
            todo = [k for k in args.steps if (str(run), step, k) not in done]
            rows += [done[(str(run), step, k)] for k in args.steps if k not in todo]
            if not todo:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                folder = weights_folder(named_ema_weights(path, model), base, Path(tmp))
                shutil.copy2(base / "fm_edge.json", folder / "fm_edge.json")
                for k in todo:
                    rep = score(folder, k, args.n, args.threads)
                    row = {"run": str(run), "label": f"{sampler['solver']} {k} + CFG {sampler['cfg_scale']:g}",
                           "step": step, "sampled_steps": k, "images_seen": before + round(step * per_step),
                           "fd": rep["fd"], "floor": rep["fd_floor"], "ratio": rep["fd"] / rep["fd_floor"],
                           "label_accuracy": rep["label_accuracy"]}  # fmt: skip
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
    rows.sort(key=lambda r: (r["sampled_steps"], r["images_seen"]))
    runs = [{"run": str(run), "sampler": fm["sampler"], "training": fm["training"]} for run, _, fm, _ in plan]
    out_json.write_text(json.dumps({"n": args.n, "runs": runs, "rows": rows}, indent=1) + "\n")
    plot(rows, args.n, ROOT / "docs" / f"{args.name}_curve.png", xlabel="images seen (thousands)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
