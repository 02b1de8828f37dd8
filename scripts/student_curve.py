"""Learning curves of distillation runs, and a progressive run's per-round students as checkpoint folders.

    python scripts/student_curve.py runs/pd3 --curve runs/pd3_curve -n 2000
    python scripts/student_curve.py runs/adv_unet runs/adv_one --curve runs/adv_unet_curve runs/adv_one_curve \
        --name adversarial
    python scripts/student_curve.py runs/advk8a runs/advk8b --curve runs/advk8a_curve runs/advk8b_curve \
        --name multistep --steps 4 8 -n 1000

A progressive run (``fm-edge distill --method progressive``) keeps only its last checkpoints, so a watcher
copies each ``checkpoint-<step>/ema.safetensors`` to ``--curve`` as ``ema-<step>.safetensors`` while it
trains. This script turns every copy into a checkpoint folder of the student of the round that step
belongs to (8 -> 4 -> 2 -> 1 Euler steps), samples ``-n`` digits with that student's own step count through
``fm-edge sample``, scores them with ``fm-edge evaluate``, and writes the curve (FD / real-data floor against
images seen) to docs/results/student_curve.json and docs/student_curve.png.

A ``meanflow`` run's student is scored at each ``--steps`` k as a k-step mean flow (its step length set to
1/k), so one run gives a curve per step count.

``--export-round R`` instead writes the student frozen at the start of round R (``rounds/round-R``) as a
checkpoint folder, e.g. round 1 = the 4-step student of an 8-step teacher.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EMA_COPY = re.compile(r"ema-(\d+)\.safetensors")


def run_settings(run: Path) -> dict:
    """The run's settings, teacher sampler and image count per step, from its newest checkpoint."""
    latest = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    record = json.loads((latest / "state.json").read_text())["record"]
    return record


def ema_copies(curve: Path) -> list[tuple[int, Path]]:
    """The watcher's ``ema-<step>.safetensors`` copies in ``curve``, by step; a one-line exit when there are none."""
    found = [
        (int(m.group(1)), p) for p in curve.glob("ema-*.safetensors") if (m := EMA_COPY.fullmatch(p.name))
    ]
    if not found:
        raise SystemExit(f"error: {curve} holds no ema-<step>.safetensors copies")
    return sorted(found)


def weights_folder(weights: dict, base: Path, out: Path) -> Path:
    """A folder with ``base``'s config.json and these weights (the caller adds fm_edge.json)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(base / "config.json", out / "config.json")
    save_file({k: v.contiguous() for k, v in weights.items()}, out / "diffusion_pytorch_model.safetensors")
    return out


def student_folder(
    weights: dict, teacher: Path, steps: int, record: dict, out: Path, default_step: float | None = None
) -> Path:
    """A checkpoint folder: the config of ``teacher`` (the teacher, or the init of an adversarial run), these
    weights, a distilled sampler of ``steps``; ``default_step`` re-targets a mean-flow student's step length."""
    weights_folder(weights, teacher, out)
    if default_step is not None:
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, "default_step": default_step}))
    fm = json.loads((teacher / "fm_edge.json").read_text())
    fm.pop("quality", None)
    ts = record["teacher_sampler"]
    fm["sampler"] = {
        "solver": "euler",
        "steps": steps,
        "cfg_scale": 1.0,
        "shift": ts["shift"] if record["method"] == "progressive" else 1.0,  # as distill writes it
        "guidance": "distilled",
        "distilled_cfg_scale": ts.get("distilled_cfg_scale") or ts["cfg_scale"],
    }
    fm["distillation"] = fm["training"] = record
    (out / "fm_edge.json").write_text(json.dumps(fm, indent=1))
    return out


def fresh_student(arch: str, out: Path) -> Path:
    """A checkpoint folder of a freshly built OneStepNet of ``arch``: the config a regress run's EMA copies need."""
    from fm_edge.model import fm_config
    from fm_edge.student_net import build

    build(arch).save_pretrained(out, safe_serialization=True)
    (out / "fm_edge.json").write_text(json.dumps(fm_config(arch)))
    return out


def mean_flow_student(start: Path, out: Path, grow_to: str | None = None) -> Path:
    """A checkpoint folder of the net a meanflow run started from (its teacher, or its --init) with the
    mean-flow step plane (and grown to ``grow_to``): the config the run's EMA copies need."""
    from fm_edge.model import load
    from fm_edge.student_net import grown, with_step_input

    net = load(start, device="cpu")[0]
    net = net if net.config.step_input else with_step_input(net)
    (grown(net, grow_to) if grow_to else net).save_pretrained(out, safe_serialization=True)
    shutil.copy2(start / "fm_edge.json", out / "fm_edge.json")
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
        for cmd in (
            ["sample", "--model", str(folder), "--backend", "torch", "--steps", str(steps), "--num-samples", str(n),
             "-o", str(npz), *common],
            ["evaluate", str(npz), "--json", str(rep), *common],
        ):  # fmt: skip
            done = subprocess.run(["fm-edge", *cmd], capture_output=True, text=True)
            if done.returncode:  # the CLI's own one-line error, not a CalledProcessError traceback
                lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
                raise SystemExit(f"fm-edge {cmd[0]}: {lines[-1]}")
        return json.loads(rep.read_text())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, nargs="+")
    ap.add_argument("--curve", type=Path, nargs="+", default=[], help="folders of ema-<step> copies, per run")
    ap.add_argument("--name", default="student", help="docs/results/<name>_curve.json, docs/<name>_curve.png")
    ap.add_argument(
        "--teacher", type=Path, default=ROOT / "fm_edge" / "checkpoints" / "teacher-mnist-digit-t"
    )
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="sample at these steps (default: own)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--export-round", type=int, default=None)
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    if args.export_round is not None:
        from safetensors.torch import load_file

        record = run_settings(args.run[0])
        settings, teacher_steps = record["settings"], record["teacher_sampler"]["steps"]
        n_rounds = len(record["rounds"]) - 1
        per_round = settings["max_steps"] / n_rounds
        r = args.export_round
        weights = load_file(args.run[0] / "rounds" / f"round-{r}.safetensors")
        rec = dict(record, rounds=record["rounds"][: r + 1], student_steps=teacher_steps // 2**r,
                   steps=round(per_round * r), images_seen=round(per_round * r) * settings["batch_size"])  # fmt: skip
        out = student_folder(weights, args.teacher, teacher_steps // 2**r, rec, args.output)
        print(out)
        return

    rows, runs = [], {}
    for run, curve in zip(args.run, args.curve, strict=True):
        rows += curve_rows(run, curve, args)
        runs[str(run)] = run_settings(run)["settings"]
    out = {"runs": runs, "n": args.n, "rows": rows}
    (ROOT / "docs" / "results" / f"{args.name}_curve.json").write_text(json.dumps(out, indent=1))
    plot(rows, args.n, ROOT / "docs" / f"{args.name}_curve.png")


def curve_rows(run: Path, curve: Path, args) -> list[dict]:
    """One scored row per ema-<step> copy of the run: its student at its own step count."""
    with tempfile.TemporaryDirectory() as scratch:
        return _curve_rows(run, curve, args, Path(scratch))


def _curve_rows(run: Path, curve: Path, args, scratch: Path) -> list[dict]:
    record = run_settings(run)
    settings = record["settings"]
    adversarial, meanflow = record["method"] == "adversarial", record["method"] == "meanflow"
    one_student = record["method"] in ("adversarial", "regress", "meanflow")  # one student all run long
    if (run / "model").is_dir() and one_student:  # the run's own student has its config
        base = run / "model"
    elif meanflow:  # a run stopped before model/: its teacher's net with the step plane
        base = mean_flow_student(
            Path(record.get("init") or record["teacher"]), scratch, record.get("grown_to")
        )
    elif adversarial and record.get("init_t_plane"):  # a time-free init given its t plane: its '-t' size
        from fm_edge.model import read_fm_config

        base = fresh_student(f"{read_fm_config(record['init'])['preset']}-t", scratch)
    elif adversarial:  # a run stopped before model/: its init has the config
        base = Path(record["init"])
    elif one_student:  # a regress run stopped before model/: a fresh net of its size
        base = fresh_student(record["student_arch"], scratch)
    else:
        base = args.teacher
    n_rounds = 1 if one_student else len(record["rounds"]) - 1
    rows = []
    for step, path in ema_copies(curve):
        r = min(n_rounds - 1, (step - 1) * n_rounds // settings["max_steps"])
        steps = record["student_steps"] if one_student else record["teacher_sampler"]["steps"] // 2 ** (r + 1)
        with tempfile.TemporaryDirectory() as tmp:
            weights = ema_weights(path, base)
            folder = student_folder(weights, base, steps, record, Path(tmp))
            for k in args.steps or [steps]:
                if meanflow:  # the same weights, run as a k-step mean flow
                    folder = student_folder(weights, base, k, record, Path(tmp) / f"k{k}", default_step=1 / k)
                rep = score(folder, k, args.n, args.threads)
                label = (f"mean-flow student, {k} steps" if meanflow else f"{steps}-step student") + (
                    f", adversarial {settings['adv_weight']:g}"
                    + (f" + class {settings['class_weight']:g}" if settings.get("class_weight") else "")
                    + f" from {Path(record['init']).name}, run for {k}"
                    if adversarial
                    else ""
                )
                row = {"run": str(run), "label": label, "step": step, "round": r, "student_steps": steps,
                       "sampled_steps": k, "images_seen": step * settings["batch_size"], "fd": rep["fd"],
                       "floor": rep["fd_floor"], "ratio": rep["fd"] / rep["fd_floor"],
                       "label_accuracy": rep["label_accuracy"]}  # fmt: skip
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def plot(rows: list, n: int, path: Path, xlabel: str = "student images seen (thousands)", x=None) -> None:
    """FD / floor per row against ``x(row)`` (default: images seen, in thousands), one line per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label in dict.fromkeys(r["label"] for r in rows):
        pts = [r for r in rows if r["label"] == label]
        xs = [x(p) if x else p["images_seen"] / 1e3 for p in pts]
        ax.plot(xs, [p["ratio"] for p in pts], "o-", label=label)
    ax.set_xlabel(xlabel)
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
