"""Finish a shipped or stage folder: its history and measured quality in fm_edge.json, samples.png, the card.

A distilled student names its teacher with ``--parent`` (recorded as ``teacher``); a net trained from data names
the model it started from, or its data, there (recorded as ``parent``).

    python scripts/ship_student.py fm_edge/checkpoints/compact-mnist-student --parent "compact-mnist (v1.1)" \\
        --cpu "Intel Xeon (AVX512-VNNI), 2 threads" --command "fm-edge distill ..." \\
        --quality euler1=runs/eval/pd3_model_1.json [--quality euler4=...]

A net trained in stages (``fm-edge train --init-from``) takes ``--history STAGE1 STAGE2 ...``, the folders of
the stages before it, oldest first: their training records go into ``training.history``.

Each ``--quality NAME=REPORT`` is an ``fm-edge evaluate --json`` report; the folder's ONNX files are made
beforehand by ``fm-edge export --int8``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fm_edge.card import write_card  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument(
        "--parent",
        required=True,
        help="the teacher of a distilled net, or the parent (init model or data) of a trained one, as people "
        "should read it",
    )
    ap.add_argument(
        "--init", default=None, help="adversarial: the net it started from, as people should read it"
    )
    ap.add_argument(
        "--history",
        type=Path,
        nargs="+",
        default=[],
        help="a net trained in stages: the folders of the stages before it, oldest first; their training "
        "records go into training.history, so the shipped record holds every stage",
    )
    ap.add_argument("--cpu", required=True)
    ap.add_argument("--command", required=True, help="the command that trained it")
    ap.add_argument("--quality", action="append", default=[], help="NAME=evaluate.json")
    args = ap.parse_args()
    path = args.folder / "fm_edge.json"
    fm = json.loads(path.read_text())
    for key in ("training", "distillation"):
        rec = fm.get(key)
        if rec:
            rec["teacher" if "distillation" in fm else "parent"] = args.parent
            if args.init:
                rec["init"] = args.init
            rec["cpu"] = args.cpu
            rec["command"] = args.command
            rec["wall_minutes"] = round(rec.get("seconds", rec.get("train_seconds", 0)) / 60, 1)
    if args.history:
        records = [json.loads((f / "fm_edge.json").read_text())["training"] for f in args.history]
        fm["training"]["history"] = [{k: v for k, v in r.items() if k != "history"} for r in records]
    quality = {"evaluator": "fm-edge classifier, FD vs MNIST test features"}
    for spec in args.quality:
        name, _, report = spec.partition("=")
        r = json.loads(Path(report).read_text())
        quality["n"] = r["n"] if "n" in r else r.get("samples")
        quality[name] = {"fd": round(r["fd"], 3), "fd_over_floor": round(r["fd"] / r["fd_floor"], 2),
                         "label_accuracy": round(r["label_accuracy"], 4)}  # fmt: skip
        quality["fd_floor_real_train"] = round(r["fd_floor"], 3)
    fm["quality"] = quality
    path.write_text(json.dumps(fm, indent=1) + "\n")
    subprocess.run(["fm-edge", "sample", "--model", str(args.folder), "--num-samples", "100",
                    "-o", str(args.folder / "samples.png")], check=True, capture_output=True)  # fmt: skip
    write_card(args.folder, fm, quality)
    print(args.folder)


if __name__ == "__main__":
    main()
