"""Make the shipped checkpoint from a training run: pick the few-step setting, measure, write the card.

    python scripts/ship_checkpoint.py runs/compact [--quick]

1. copy the run's inference folder (EMA weights) to fm_edge/checkpoints/compact-mnist/;
2. export velocity.onnx there (ORT samples ~2x faster than torch eager on this CPU, same numbers to 1e-4);
3. sweep CFG scale and time shift at NFE 4 and record the best setting as the recommended sampler;
4. the bars: 4 and 32 Euler steps on 2,000 samples; then the NFE curve (euler, heun) with dopri5 distance;
5. a 10x10 sample grid, fm_edge.json (sampler + quality) and the model card.
Results go to docs/results/*.json and docs/*.png.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fm_edge.artifacts import FM_CONFIG, SHIPPED  # noqa: E402
from fm_edge.backends import generate, onnx_backend, torch_backend  # noqa: E402
from fm_edge.card import write_card  # noqa: E402
from fm_edge.convention import default_labels  # noqa: E402
from fm_edge.curve import best_setting, format_row, nfe_curve, plot  # noqa: E402
from fm_edge.curve import sweep as curve_sweep  # noqa: E402
from fm_edge.evaluate import evaluate_images  # noqa: E402
from fm_edge.images import grid, png_bytes  # noqa: E402
from fm_edge.model import read_fm_config  # noqa: E402
from fm_edge.sampler_spec import SamplerSpec  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="training run folder (with model/)")
    ap.add_argument("--quick", action="store_true", help="small sample counts (smoke test)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-curve", action="store_true", help="stop after the bars, grid and card")
    args = ap.parse_args()
    n_sweep, n_bar, n_curve, n_ref = (40, 60, 40, 4) if args.quick else (500, 2000, 500, 50)
    res_dir = ROOT / "docs" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)

    # 1. the inference folder
    src = Path(args.run) / "model"
    previous = read_fm_config(SHIPPED).get("training") if (SHIPPED / FM_CONFIG).is_file() else None
    SHIPPED.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors", FM_CONFIG):
        shutil.copy2(src / name, SHIPPED / name)
    fm = read_fm_config(SHIPPED)

    # 2. a velocity.onnx to sample with (fm-edge export later writes the shipped ONNX files)
    from fm_edge.export.command import export

    tmp_onnx = ROOT / "runs" / "ship_onnx"
    export(SHIPPED, tmp_onnx, num_threads=args.threads)
    ob = onnx_backend(tmp_onnx / "velocity.onnx", num_threads=args.threads)
    tb = torch_backend(SHIPPED, num_threads=args.threads)

    # 3. CFG / shift sweep at NFE 4
    cached = res_dir / "sweep.json"
    if cached.exists() and not args.quick:  # the sweep is the slow part: reuse a finished one
        sweep = json.loads(cached.read_text())["rows"]
    else:
        sweep = curve_sweep(ob, n_sweep, (1.25, 1.5, 2.0, 3.0), (1.0, 2.0))
        cached.write_text(
            json.dumps({"n": n_sweep, "rows": sweep, "best": best_setting(sweep, 0.95)}, indent=1)
        )
    sampler = best_setting(sweep, 0.95)
    best = next(r for r in sweep if all(r[k] == v for k, v in sampler.items()))
    log("recommended", sampler)
    fm["sampler"] = sampler
    (SHIPPED / FM_CONFIG).write_text(json.dumps(fm, indent=1))

    # 4. the bars: 4, 8 and 32 Euler steps on the same 2,000 noises, with the recommended CFG
    labels = default_labels(n_bar)
    bars_file = res_dir / "bars.json"
    bars = json.loads(bars_file.read_text()) if bars_file.exists() and not args.quick else {}
    for steps in (4, 8, 32):
        if f"euler{steps}" in bars:
            continue
        spec = SamplerSpec("euler", steps, sampler["cfg_scale"], sampler["shift"])
        imgs = generate(ob, labels, spec, seed=0)
        bars[f"euler{steps}"] = evaluate_images(imgs, labels)
        log("bar", steps, {k: bars[f"euler{steps}"][k] for k in ("fd", "fd_floor", "label_accuracy")})
        bars_file.write_text(json.dumps(bars, indent=1))

    # 5. grid, config, card
    lab = np.repeat(np.arange(10), 10)
    imgs = generate(ob, lab, SamplerSpec.from_dict(sampler), seed=0)
    (SHIPPED / "samples.png").write_bytes(png_bytes(grid(imgs, nrow=10, scale=2)))
    e4, e32 = bars["euler4"], bars["euler32"]
    fm["training"]["data"] = "ylecun/mnist (local copy in the hub layout)"
    tr = fm["training"]
    if tr.get("init_from") and previous:  # a fine-tuning run from the weights shipped before
        tr["init_from"] = "the previously shipped compact-mnist weights (training.history[0])"
        tr["history"] = [previous]
        tr["note"] = (
            f"{tr['steps']} more steps ({tr['images_seen'] / 60000:.1f} epochs), lr {tr['lr']:g} with "
            f"{tr.get('lr_schedule', 'constant')} decay, from weights trained {previous['steps']} steps before"
        )
    else:
        tr["note"] = (
            f"stopped after {tr['steps']} steps ({tr['images_seen'] / 60000:.1f} epochs) for the session's time"
        )
    fm["quality"] = {
        "evaluator": "fm-edge classifier, FD vs MNIST test features",
        "n": n_bar,
        "euler4": {"fd": round(e4["fd"], 3), "label_accuracy": round(e4["label_accuracy"], 4)},
        "euler8": {
            "fd": round(bars["euler8"]["fd"], 3),
            "label_accuracy": round(bars["euler8"]["label_accuracy"], 4),
        },
        "euler32": {"fd": round(e32["fd"], 3), "label_accuracy": round(e32["label_accuracy"], 4)},
        "fd_floor_real_train": round(e4["fd_floor"], 3),
        "recommended": {k: v for k, v in best.items() if k not in ("seconds",)},
    }
    (SHIPPED / FM_CONFIG).write_text(json.dumps(fm, indent=1))
    write_card(SHIPPED, fm)
    log("done", json.dumps(fm["quality"], indent=1))

    # 6. the NFE curve (euler and heun, 1-16 steps; 32 Euler steps is in the bars) beside dopri5
    if args.skip_curve:
        return
    curve = nfe_curve(
        ob,
        tb,
        ("euler", "heun"),
        (1, 2, 4, 8, 16),
        n_curve,
        sampler["cfg_scale"],
        sampler["shift"],
        seed=0,
        reference_n=n_ref,
    )
    (res_dir / "nfe_curve.json").write_text(json.dumps(curve, indent=1))
    plot(curve, ROOT / "docs" / "nfe_curve.png")
    for row in curve["rows"]:
        log(format_row(row))


if __name__ == "__main__":
    main()
