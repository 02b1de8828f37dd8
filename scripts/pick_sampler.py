"""Sweep CFG scale and time shift at 4 Euler steps and record the best as a checkpoint's recommended sampler
(``fm_edge.json``'s ``sampler``, written atomically): what a fresh training run needs before it is evaluated,
exported or distilled (``fm-edge train`` records the package default).

    python scripts/pick_sampler.py runs/teacher/model [--num-samples 1000] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import sys

from fm_edge.artifacts import FM_CONFIG
from fm_edge.atomic import write_bytes
from fm_edge.backends import torch_backend
from fm_edge.card import write_card
from fm_edge.curve import best_setting, sweep
from fm_edge.model import read_fm_config, resolve


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--cfg-scales", default="1.0,1.25,1.5,2.0")
    p.add_argument("--shifts", default="1,2")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    ckpt = resolve(args.checkpoint)
    backend = torch_backend(ckpt, device=args.device)
    rows = sweep(backend, args.num_samples, [float(c) for c in args.cfg_scales.split(",")],
                 [float(s) for s in args.shifts.split(",")])  # fmt: skip
    fm = read_fm_config(ckpt)
    fm["sampler"] = best_setting(rows)
    fm["sampler_sweep"] = {"n": args.num_samples, "rows": rows}
    write_bytes(ckpt / FM_CONFIG, json.dumps(fm, indent=1).encode())
    write_card(ckpt, fm)  # the card names the recommended sampler
    print(json.dumps(fm["sampler"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
