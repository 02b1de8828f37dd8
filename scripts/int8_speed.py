"""Is int8 faster than fp32 here? Random-weight UNets of a few widths, fm-edge's exporter and quantizer,
fp32 and every int8 recipe timed alternately per velocity call (ORT, 2 intra-op threads by default).

Random weights show speed, not quality; the SQNR column (int8 velocity vs fp32 on the calibration inputs)
only guards against a recipe that is fast because it computes garbage. Calibration is fm-edge's trajectory
calibration (:func:`fm_edge.quantize.calibrate.collect` over the fp32 ORT model, euler x 4, CFG 2): with
random weights the trajectories are not digits, but the inputs still span every step and label.

    python scripts/int8_speed.py --archs compact,edge,wide --recipes default,vnni --json int8_speed.json

Prints one table (ms per velocity call, median; x = median of per-round fp32/int8 wall-clock ratios; xcpu
the same on process CPU time, which other jobs on the cores disturb less) and the
per-image figures that the sampler bars use: sampler batch B with CFG = velocity batch 2B, a one-step
student at batch B = velocity batch B.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ARCHS = {
    # as shipped: compact preset (mid-block attention included, as diffusers builds it)
    "compact": dict(block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8),
    # the attention-free `edge` teacher preset
    "edge": dict(block_out_channels=(32, 64, 128), layers_per_block=2, norm_num_groups=8, add_attention=False),
    # edge with one ResNet per level (half the GroupNorms)
    "edge-l1": dict(block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=8, add_attention=False),
    "wide": dict(block_out_channels=(64, 128, 256), layers_per_block=1, norm_num_groups=8, add_attention=False),
    "mid": dict(block_out_channels=(48, 96, 192), layers_per_block=1, norm_num_groups=8, add_attention=False),
}  # fmt: skip


def build(arch: str, seed: int = 0):
    """A random-weight UNet2DModel; GroupNorm affines are jittered so they are not the identity."""
    import torch
    from diffusers import UNet2DModel

    from fm_edge.convention import MODEL_SIZE, NUM_CLASS_EMBEDS

    cfg = dict(ARCHS[arch])
    n = len(cfg["block_out_channels"])
    torch.manual_seed(seed)
    model = UNet2DModel(
        sample_size=MODEL_SIZE,
        in_channels=1,
        out_channels=1,
        num_class_embeds=NUM_CLASS_EMBEDS,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        **cfg,
    ).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def ort_session(path, threads: int, spinning: bool):
    """A CPU session that honours the int8 file's ``int8_disabled_optimizers`` metadata."""
    import onnx
    import onnxruntime as ort

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    disabled = [d for d in meta.get("int8_disabled_optimizers", "").split(",") if d]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(
        str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )


def numpy_velocity(sess):
    from fm_edge.convention import T_SCALE

    def v(x, t, labels):
        t = np.broadcast_to(np.asarray(t, np.float32).reshape(-1), (len(x),)) * np.float32(T_SCALE)
        feeds = {"sample": x, "timestep": t.astype(np.float32), "class_labels": np.asarray(labels, np.int64)}
        return sess.run(None, feeds)[0]

    return v


def prepare(arch: str, recipes: list[str], folder: Path, noises: int, log) -> dict:
    """Export fp32, calibrate on trajectories, quantize each recipe; returns paths, SQNR and sizes."""
    import onnx

    from fm_edge.export.velocity import export_velocity
    from fm_edge.quantize import calibrate
    from fm_edge.quantize.ort_int8 import quantize_velocity
    from fm_edge.quantize.sqnr import output_sqnr
    from fm_edge.sampler_spec import SamplerSpec

    S = SamplerSpec()  # the package default sampler

    model = build(arch)
    params = sum(p.numel() for p in model.parameters())
    fp32 = folder / f"{arch}.onnx"
    onnx.save(export_velocity(model), str(fp32))
    traj = calibrate.collect(
        numpy_velocity(ort_session(fp32, 2, True)),
        noises,
        S.solver,
        S.steps,
        S.cfg_scale,
        S.shift,
    )
    held = traj.feeds(slice(1, None, max(1, len(traj) // 96)))  # ~96 rows, every step and label
    out = {"arch": arch, "params": params, "fp32": str(fp32), "int8": {}, "sqnr_db": {}, "size_ratio": {}}
    for r in recipes:
        path = folder / f"{arch}_{r}.onnx"
        t0 = time.perf_counter()
        facts = quantize_velocity(fp32, path, traj, r, log=log)
        out["int8"][r] = str(path)
        out["sqnr_db"][r] = round(output_sqnr(fp32, path, held), 2)
        out["size_ratio"][r] = facts["size_ratio"]
        print(f"  {arch}/{r}: quantized in {time.perf_counter() - t0:.0f} s, "
              f"SQNR {out['sqnr_db'][r]:.1f} dB", file=log)  # fmt: skip
    out["calibration"] = {"source": "trajectories (euler x4, CFG 2) of the fp32 ORT model", "rows": len(traj)}
    return out


def rounds_for(batch: int, scale: float) -> int:
    return max(3, int((40 if batch <= 2 else 7 if batch <= 64 else 5) * scale))


def time_arch(prep: dict, batches, threads: int, spinning: bool, rounds_scale: float) -> dict:
    from fm_edge.export.validate import fixed_inputs
    from fm_edge.timing import median, paired_speedup, time_alternating

    sessions = {"fp32": ort_session(prep["fp32"], threads, spinning)}
    sessions.update({r: ort_session(p, threads, spinning) for r, p in prep["int8"].items()})
    res = {}
    for b in batches:
        x, t, y = fixed_inputs(b)
        feeds = {"sample": x, "timestep": t, "class_labels": y}
        cpu: dict[str, list[float]] = {k: [] for k in sessions}

        def timed(k, s, feeds=feeds, cpu=cpu):
            def fn():
                c0 = time.process_time()
                s.run(None, feeds)
                cpu[k].append(time.process_time() - c0)

            return fn

        fns = {k: timed(k, s) for k, s in sessions.items()}
        load = f"{os.getloadavg()[0]:.2f}"
        times = time_alternating(fns, rounds_for(b, rounds_scale), warmup=2)
        cpu = {k: v[2:] for k, v in cpu.items()}  # drop the warm-up calls
        res[b] = {
            "ms": {k: round(median(v) * 1e3, 3) for k, v in times.items()},
            "speedup": {
                k: round(paired_speedup(times["fp32"], v), 3) for k, v in times.items() if k != "fp32"
            },
            # process CPU time (both threads): less disturbed by other jobs taking the cores
            "cpu_ms": {k: round(median(v) * 1e3, 3) for k, v in cpu.items()},
            "cpu_speedup": {
                k: round(paired_speedup(cpu["fp32"], v), 3) for k, v in cpu.items() if k != "fp32"
            },
            "loadavg_1m": load,
        }
    return res


def table(results: list[dict], recipes: list[str]) -> str:
    head = f"{'arch':8s} {'params':>7s} {'batch':>5s} {'fp32 ms':>9s} " + " ".join(
        f"{r + ' ms':>12s} {'x':>5s} {'xcpu':>5s}" for r in recipes
    )
    lines = [head, "-" * len(head)]
    for res in results:
        for b, row in res["timing"].items():
            cells = " ".join(
                f"{row['ms'][r]:12.2f} {row['speedup'][r]:5.2f} {row['cpu_speedup'][r]:5.2f}" for r in recipes
            )
            lines.append(
                f"{res['arch']:8s} {res['params'] / 1e6:6.2f}M {b:5d} {row['ms']['fp32']:9.2f} {cells}"
                f"   load {row['loadavg_1m']}"
            )
        lines.append(
            f"{'':8s} SQNR dB: " + ", ".join(f"{r} {res['sqnr_db'][r]:.1f}" for r in recipes)
            + "; size ratio: " + ", ".join(f"{r} {res['size_ratio'][r]:.3f}" for r in recipes)
        )  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="compact,edge,wide", help=f"comma list of {', '.join(ARCHS)}")
    ap.add_argument("--recipes", default="default,vnni", help="comma list of fm_edge.quantize.recipe.RECIPES")
    ap.add_argument("--batches", default="1,2,64,128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spinning", action="store_true",
                    help="leave ORT's intra-op spinning on (off by default: idle sessions would steal the cores)")  # fmt: skip
    ap.add_argument("--noises", type=int, default=33, help="calibration noises (x8 velocity inputs)")
    ap.add_argument("--rounds-scale", type=float, default=1.0)
    ap.add_argument("--keep", default=None, help="folder to keep the .onnx files in")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from fm_edge.quantize.cpu import isa_seen
    from fm_edge.quantize.recipe import get

    archs = [s for s in a.archs.split(",") if s]
    recipes = [s for s in a.recipes.split(",") if s]
    for r in recipes:
        get(r)  # a UsageError for an unknown name, before any work
    batches = [int(b) for b in a.batches.split(",")]
    isa = isa_seen()
    print(f"CPU: {isa['model']} ({isa['int8_path']}; {', '.join(isa['flags'])}), {a.threads} threads")
    results = []
    with tempfile.TemporaryDirectory(prefix="int8_speed_") as tmp:
        folder = Path(a.keep) if a.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for arch in archs:
            prep = prepare(arch, recipes, folder, a.noises, log=io.StringIO())
            print(f"{arch}: {prep['params'] / 1e6:.2f}M params, SQNR {prep['sqnr_db']}", flush=True)
            prep["timing"] = time_arch(prep, batches, a.threads, a.spinning, a.rounds_scale)
            results.append(prep)
            print(table([prep], recipes), flush=True)
    print()
    print(table(results, recipes))
    per_image = []
    for res in results:
        for label, vb, nb in (("sampler b1 (CFG)", 2, 1), ("sampler b64 (CFG)", 128, 64),
                              ("student b1", 1, 1), ("student b64", 64, 64)):  # fmt: skip
            if vb in res["timing"]:
                row = res["timing"][vb]
                per_image.append(
                    {"arch": res["arch"], "case": label, "velocity_batch": vb,
                     "fp32_ms_per_image": round(row["ms"]["fp32"] / nb, 3),
                     **{f"{r}_speedup": row["speedup"][r] for r in recipes},
                     **{f"{r}_cpu_speedup": row["cpu_speedup"][r] for r in recipes}}
                )  # fmt: skip
    for p in per_image:
        print(f"{p['arch']:8s} {p['case']:18s} fp32 {p['fp32_ms_per_image']:8.2f} ms/img  "
              + "  ".join(f"{r} x{p[f'{r}_speedup']:.2f} (cpu x{p[f'{r}_cpu_speedup']:.2f})" for r in recipes))  # fmt: skip
    if a.json:
        from fm_edge.atomic import write_bytes

        doc = {
            "cpu": isa,
            "threads": a.threads,
            "spinning": a.spinning,
            "results": results,
            "per_image": per_image,
        }
        write_bytes(a.json, json.dumps(doc, indent=2, default=str).encode())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
