"""Average two checkpoints of the same architecture (a "model soup"): (1 - w) x A + w x B, parameter by parameter.

    python scripts/average_weights.py fm_edge/checkpoints/compact-mnist-student-4step runs/cls4/model \\
        --weight 0.25 -o runs/ship4

Both folders must hold the same architecture (a fine-tune and its starting point, say): their config.json
files are compared with the class's defaults filled in, so a folder written before a key existed still matches. The output is B's
folder (config, fm_edge.json, card) with the averaged weights, and B's ``distillation`` (or ``training``)
record in fm_edge.json (or the file itself) gains ``weight_average``: both parents, their weight hashes, the
weight and A's own record (``a_record``). Interpolating between a student and its fine-tune trades their
figures (FD against label accuracy, say) without training. The output folder appears whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fm_edge.artifacts import FM_CONFIG, WEIGHTS, weights_hash  # noqa: E402
from fm_edge.atomic import atomic_dir  # noqa: E402
from fm_edge.errors import UsageError  # noqa: E402


def made_by(fm: dict) -> dict | None:
    """A folder's record of how it was made: its ``distillation`` or ``training`` block, if it has one."""
    return next((fm[k] for k in ("distillation", "training") if isinstance(fm.get(k), dict)), None)


def architecture(folder: Path) -> dict:
    """The folder's model config as the class builds it: config.json with the defaults of keys it lacks."""
    from fm_edge.model import model_class

    cls = model_class(folder)
    config = cls.from_config(cls.load_config(folder)).config
    return {"class": cls.__name__, **{k: v for k, v in config.items() if not k.startswith("_")}}


def average(a: Path, b: Path, weight: float, out: Path) -> Path:
    from safetensors.torch import load_file, save_file

    if not 0.0 <= weight <= 1.0:
        raise UsageError(f"--weight {weight} is not in [0, 1]")
    if architecture(a) != architecture(b):
        raise UsageError(f"{a} and {b} have different config.json files: only the same architecture averages")
    wa, wb = load_file(a / WEIGHTS), load_file(b / WEIGHTS)
    if wa.keys() != wb.keys():
        raise UsageError(f"{a} and {b} hold different parameter names")
    if out.exists():
        raise UsageError(f"{out} exists: give a new -o folder")
    if not (b / FM_CONFIG).is_file():
        raise UsageError(f"{b} has no {FM_CONFIG}: B must be an fm-edge checkpoint folder")
    fm = json.loads((b / FM_CONFIG).read_text())
    # the record of how B was made gains the average (a folder without one gets it at the top level), and A's
    # record beside it: B's settings alone would not say how the other half was made
    rec = made_by(fm)
    rec = fm if rec is None else rec
    rec["weight_average"] = {"a": str(a), "a_sha256": weights_hash(a), "b": str(b), "b_sha256": weights_hash(b),
                             "b_weight": weight, "formula": "(1 - b_weight) * a + b_weight * b"}  # fmt: skip
    if (a / FM_CONFIG).is_file() and (a_rec := made_by(json.loads((a / FM_CONFIG).read_text()))) is not None:
        rec["weight_average"]["a_record"] = a_rec
    with atomic_dir(out) as tmp:  # a killed run leaves no half folder under the final name
        shutil.copytree(b, tmp, ignore=shutil.ignore_patterns("onnx", WEIGHTS), dirs_exist_ok=True)
        save_file({k: ((1 - weight) * wa[k] + weight * wb[k]).contiguous() for k in wa}, tmp / WEIGHTS)
        (tmp / FM_CONFIG).write_text(json.dumps(fm, indent=1) + "\n")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--weight", type=float, required=True, help="B's share, 0-1")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    try:
        print(average(args.a, args.b, args.weight, args.output))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
