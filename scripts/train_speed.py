"""Training throughput on this machine: images/s of `fm-edge train`'s step (flow-matching loss, backward,
AdamW, EMA) for a preset in fp32, channels-last, bf16 autocast, both, and torch.compile (inductor), timed
in one alternating loop in one process so that every variant sees the same machine.

    python scripts/train_speed.py --presets compact,edge --variants fp32,channels-last,bf16,bf16+cl,compile \\
        --num-threads 2 --json docs/results/train_speed_amd.json

Random pixels in [-1, 1] stand in for MNIST: speed depends on the shapes, not on the digits. Prints one
table (median images/s over the timed rounds, and the speed-up over fp32 as the median of per-round ratios).
"""

from __future__ import annotations

import argparse
import json
import sys

VARIANTS = ("fp32", "channels-last", "bf16", "bf16+cl", "compile")


def make_step(preset: str, variant: str, batch: int):
    """A closure running one training step of ``preset`` in ``variant`` on a fixed random batch: the loss of
    ``fm-edge train`` and the update of its loop (``TrainingLoop.update``)."""
    import torch
    from diffusers.training_utils import EMAModel

    from fm_edge.flow import loss_fn
    from fm_edge.loop import TrainingLoop
    from fm_edge.model import build

    torch.manual_seed(0)
    model = build(preset)
    cl = variant in ("channels-last", "bf16+cl")
    if cl:
        model = model.to(memory_format=torch.channels_last)
    ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True, power=2 / 3, foreach=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    net = torch.compile(model) if variant == "compile" else model
    x = torch.rand(batch, 1, 32, 32) * 2 - 1
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    gen = torch.Generator().manual_seed(0)
    bf16 = variant.startswith("bf16")

    # the update of fm-edge train (backward, clip, AdamW, EMA), without its checkpoints
    loop = TrainingLoop(".", net, ema, opt, module=model, total=1, lr=1e-3, lr_factor=lambda s: 1.0,
                        grad_clip=1.0, checkpoint_every=1, keep_checkpoints=1, progress=False)  # fmt: skip

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(net, x, y, gen)
        loop.update(loss, 0)

    step.model, step.ema = model, ema
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="compact")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--rounds", type=int, default=8, help="alternating timed rounds (one step per variant each)"
    )
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed steps per variant first (compile happens here)"
    )
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    import torch

    from fm_edge.envinfo import collect
    from fm_edge.timing import median, paired_speedup, time_alternating

    torch.set_num_threads(args.num_threads)
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}: choose from {', '.join(VARIANTS)}")
    env = collect()
    out = {"cpu": env["cpu"], "cpu_flags": env["cpu_flags"], "torch": torch.__version__,
           "num_threads": args.num_threads, "batch_size": args.batch_size, "rounds": args.rounds, "presets": {}}  # fmt: skip
    b = args.batch_size
    for preset in args.presets.split(","):
        steps = {v: make_step(preset, v, b) for v in variants}
        times = time_alternating(steps, args.rounds, warmup=args.warmup)
        row = {}
        for v in variants:
            row[v] = {"images_per_s": round(b / median(times[v]), 1)}
            if "fp32" in times:
                row[v]["speedup_vs_fp32"] = round(paired_speedup(times["fp32"], times[v]), 2)
        out["presets"][preset] = row
        print(f"{preset}: " + ", ".join(f"{v} {r['images_per_s']} img/s ({r.get('speedup_vs_fp32', '-')}x)"
                                        for v, r in row.items()), flush=True)  # fmt: skip
    print(f"{env['cpu']} ({', '.join(env['cpu_flags'])}), {args.num_threads} threads, batch {b}")
    if args.json:
        from fm_edge.atomic import write_bytes

        write_bytes(args.json, (json.dumps(out, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
