"""Learning curve of a progressive distillation run, and its per-round students as checkpoint folders.

    python scripts/student_curve.py runs/pd3 --curve runs/pd3_curve -n 2000

A progressive run (``fm-edge distill --method progressive``) keeps only its last checkpoints, so a watcher
copies each ``checkpoint-<step>/ema.safetensors`` to ``--curve`` as ``ema-<step>.safetensors`` while it
trains. This script turns every copy into a checkpoint folder of the student of the round that step
belongs to (8 -> 4 -> 2 -> 1 Euler steps), samples ``-n`` digits with that student's own step count through
``fm-edge sample``, scores them with ``fm-edge evaluate``, and writes the curve (FD / real-data floor against
images seen) to docs/results/student_curve.json and docs/student_curve.png.

``--export-round R`` instead writes the student frozen at the start of round R (``rounds/round-R``) as a
checkpoint folder, e.g. round 1 = the 4-step student of an 8-step teacher.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_settings(run: Path) -> dict:
    """The run's settings, teacher sampler and image count per step, from its newest checkpoint."""
    latest = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    record = json.loads((latest / "state.json").read_text())["record"]
    return record


def student_folder(weights: dict, teacher: Path, steps: int, record: dict, out: Path) -> Path:
    """A checkpoint folder: the teacher's config, these UNet weights, a distilled sampler of ``steps``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(teacher / "config.json", out / "config.json")
    save_file({k: v.contiguous() for k, v in weights.items()}, out / "diffusion_pytorch_model.safetensors")
    fm = json.loads((teacher / "fm_edge.json").read_text())
    fm.pop("quality", None)
    fm["sampler"] = {
        "solver": "euler",
        "steps": steps,
        "cfg_scale": 1.0,
        "shift": record["teacher_sampler"]["shift"],
        "guidance": "distilled",
        "distilled_cfg_scale": record["teacher_sampler"]["cfg_scale"],
    }
    fm["distillation"] = fm["training"] = record
    (out / "fm_edge.json").write_text(json.dumps(fm, indent=1))
    return out


def ema_weights(path: Path, teacher: Path) -> dict:
    """The EMA weights of a copied ``ema.safetensors`` under the teacher UNet's parameter names."""
    from fm_edge.checkpoint import named_ema_weights
    from fm_edge.model import load

    return named_ema_weights(path, load(teacher, device="cpu")[0])


def score(folder: Path, steps: int, n: int, threads: int) -> dict:
    """FD, floor and label accuracy of ``n`` digits from ``folder`` at ``steps`` Euler steps (CLI)."""
    with tempfile.TemporaryDirectory() as tmp:
        npz, rep = Path(tmp) / "s.npz", Path(tmp) / "r.json"
        common = ["--num-threads", str(threads)]
        subprocess.run(
            ["fm-edge", "sample", "--model", str(folder), "--backend", "torch", "--steps", str(steps),
             "--num-samples", str(n), "-o", str(npz), *common],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(["fm-edge", "evaluate", str(npz), "--json", str(rep), *common], check=True,
                       capture_output=True)  # fmt: skip
        return json.loads(rep.read_text())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--curve", type=Path, default=None, help="folder of ema-<step>.safetensors copies")
    ap.add_argument("--teacher", type=Path, default=ROOT / "fm_edge" / "checkpoints" / "compact-mnist")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--export-round", type=int, default=None)
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    record = run_settings(args.run)
    settings, teacher_steps = record["settings"], record["teacher_sampler"]["steps"]
    n_rounds = len(record["rounds"]) - 1
    per_round = settings["max_steps"] / n_rounds

    if args.export_round is not None:
        from safetensors.torch import load_file

        r = args.export_round
        weights = load_file(args.run / "rounds" / f"round-{r}.safetensors")
        rec = dict(record, rounds=record["rounds"][: r + 1], student_steps=teacher_steps // 2**r,
                   steps=round(per_round * r), images_seen=round(per_round * r) * settings["batch_size"])  # fmt: skip
        out = student_folder(weights, args.teacher, teacher_steps // 2**r, rec, args.output)
        print(out)
        return

    rows = []
    for path in sorted(args.curve.glob("ema-*.safetensors"), key=lambda p: int(p.stem.split("-")[1])):
        step = int(path.stem.split("-")[1])
        r = min(n_rounds - 1, (step - 1) * n_rounds // settings["max_steps"])
        steps = teacher_steps // 2 ** (r + 1)
        with tempfile.TemporaryDirectory() as tmp:
            folder = student_folder(ema_weights(path, args.teacher), args.teacher, steps, record, Path(tmp))
            rep = score(folder, steps, args.n, args.threads)
        row = {"step": step, "round": r, "student_steps": steps, "images_seen": step * settings["batch_size"],
               "fd": rep["fd"], "floor": rep["fd_floor"], "ratio": rep["fd"] / rep["fd_floor"],
               "label_accuracy": rep["label_accuracy"]}  # fmt: skip
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    out = {"run": str(args.run), "n": args.n, "settings": settings, "rows": rows}
    (ROOT / "docs" / "results" / "student_curve.json").write_text(json.dumps(out, indent=1))
    plot(rows, args.n, ROOT / "docs" / "student_curve.png")


def plot(rows: list, n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for steps in sorted({r["student_steps"] for r in rows}, reverse=True):
        pts = [r for r in rows if r["student_steps"] == steps]
        ax.plot([p["images_seen"] / 1e3 for p in pts], [p["ratio"] for p in pts], "o-",
                label=f"{steps}-step student ({steps} network eval{'s' if steps > 1 else ''})")  # fmt: skip
    ax.set_xlabel("student images seen (thousands)")
    ax.set_ylabel(f"FD / real-data floor (n={n})")
    ax.set_yscale("log")
    from fm_edge.bench import plain_log_ticks

    plain_log_ticks(ax.yaxis)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
