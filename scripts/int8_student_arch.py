"""Which one-step student architecture pays in int8? Random-weight candidates, fp32 vs int8, float islands.

For every candidate (``fm_edge.student_net.ARCHS`` names, plus ``compact`` = the shipped student's UNet2DModel
preset for reference): fm-edge's velocity export, fm-edge's static QDQ quantizer with each recipe
(calibrated on noise at t=1: the only input a one-step student sees), then

- float islands: ORT's optimized int8 graph (saved through ``SessionOptions.optimized_model_filepath``)
  is searched for float compute nodes between a DequantizeLinear and a QuantizeLinear; ``islands`` counts
  their connected groups, ``float_ops`` the nodes, ``dq_to_q`` the DQ -> Q requantize round trips and
  ``q``/``dq`` the boundary nodes left;
- speed: fp32 and every int8 file timed alternately in one loop (2 intra-op threads, spinning off) at
  batch 1 and 64, with the first release's ``sampler.onnx`` (``--baseline``) in the same loop, so the
  per-digit bars (>= 10x faster per digit than it) are ratios measured under the same load.

A one-step sampler costs one velocity call plus ``x1 - v`` and the uint8 decode, so the velocity call per
digit is its per-digit time (a trained student's real ``sampler.onnx`` files: ``scripts/tradeoff.py``).

    git show 0ecbb1b:fm_edge/checkpoints/compact-mnist/onnx/sampler.onnx > /tmp/first_release_sampler.onnx
    python scripts/int8_student_arch.py --baseline /tmp/first_release_sampler.onnx \\
        --json docs/results/int8_student_arch.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_speed import ort_session  # noqa: E402 (same session settings as scripts/int8_speed.py)

DEFAULT_ARCHS = "compact,s2-32-64,s2-64-128,s2-48-96-128,p1-32-64-128"


def build(arch: str, seed: int = 0):
    """A random-weight candidate; the student's zero-initialised block convs get random weights too."""
    import torch

    torch.manual_seed(seed)
    if arch == "compact":
        from fm_edge.model import build as unet

        return unet("compact").eval()
    from fm_edge.student_net import build as student

    model = student(arch).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith("conv2"):
                mod.reset_parameters()
                mod.weight.mul_(0.5)
    return model


def noise_calibration(n: int, seed: int = 0):
    """Trajectories of one step: noise at t=1, labels cycling 0-10."""
    from fm_edge.backends import make_noise
    from fm_edge.convention import T_SCALE
    from fm_edge.quantize.calibrate import Trajectories

    x = make_noise(n, seed)
    y = (np.arange(n) % 11).astype(np.int64)
    t = np.full(n, T_SCALE, np.float32)
    return Trajectories(x, t, y, np.zeros(n, np.int32), x[:11], x[:11], y[:11], {"source": "noise at t=1"})


FLOAT_FREE = {"QuantizeLinear", "DequantizeLinear", "Shape", "Gather", "Unsqueeze", "Concat", "Reshape",
              "Constant", "ConstantOfShape", "Cast", "Identity", "Slice", "Squeeze"}  # fmt: skip


def float_islands(int8_path: str, out_path: str) -> dict:
    """Float compute between DQ and Q in ORT's optimized graph (shape plumbing not counted)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = out_path
    ort.InferenceSession(int8_path, so, providers=["CPUExecutionProvider"])
    g = onnx.load(out_path).graph
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def is_float_op(n):
        return n.op_type not in FLOAT_FREE and not n.op_type.startswith("QLinear") and n.op_type not in (
            "QGemm", "DynamicQuantizeLinear")  # fmt: skip

    def reach(n, step, goal, seen):
        for m in step(n):
            if m.name in seen:
                continue
            seen.add(m.name)
            if (
                m.op_type == goal
                or (is_float_op(m) or m.op_type in FLOAT_FREE)
                and reach(m, step, goal, seen)
            ):
                return True
        return False

    def down(n):
        return [c for o in n.output for c in cons.get(o, [])]

    def up(n):
        return [prod[i] for i in n.input if i in prod]

    ops = [n for n in g.node if is_float_op(n)]
    island = [
        n for n in ops if reach(n, up, "DequantizeLinear", set()) and reach(n, down, "QuantizeLinear", set())
    ]
    names = {n.name for n in island}
    parent = {n: n for n in names}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for n in island:
        for m in down(n):
            if m.name in names:
                parent[find(m.name)] = find(n.name)
    counts: dict[str, int] = {}
    for n in g.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {
        "islands": len({find(n) for n in names}),
        "float_ops": len(island),
        "float_op_types": sorted({n.op_type for n in island}),
        "dq_to_q": sum(
            1
            for n in g.node
            if n.op_type == "QuantizeLinear"
            and n.input[0] in prod
            and prod[n.input[0]].op_type == "DequantizeLinear"
        ),  # requantize round trips
        "q": counts.get("QuantizeLinear", 0),
        "dq": counts.get("DequantizeLinear", 0),
        "optimized_ops": len(g.node),
    }


def sampler_feeds(b: int) -> dict:
    from fm_edge.backends import make_noise

    return {"noise": make_noise(b, 1), "class_labels": (np.arange(b) % 10).astype(np.int64),
            "cfg_scale": np.array(1.5, np.float32)}  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=DEFAULT_ARCHS)
    ap.add_argument("--recipes", default="student,student-no-relu,vnni")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", default="40,6", help="alternating rounds per batch size")
    ap.add_argument("--repeats", type=int, default=2, help="whole timing loops (the median is reported)")
    ap.add_argument(
        "--baseline", default=None, help="the first release's sampler.onnx (timed in the same loop)"
    )
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--note", default="")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import onnx

    from fm_edge.export.velocity import export_velocity
    from fm_edge.quantize.cpu import isa_seen
    from fm_edge.quantize.ort_int8 import quantize_velocity
    from fm_edge.quantize.recipe import get
    from fm_edge.quantize.sqnr import output_sqnr
    from fm_edge.timing import median, paired_speedup, time_alternating

    archs = [s for s in a.archs.split(",") if s]
    recipes = [s for s in a.recipes.split(",") if s]
    for r in recipes:
        get(r)
    batches = [int(b) for b in a.batches.split(",")]
    rounds = dict(zip(batches, [int(r) for r in a.rounds.split(",")], strict=True))
    calib = noise_calibration(a.calib)
    held = noise_calibration(33, seed=99).feeds()
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8_student_") as tmp:
        folder = Path(tmp)
        files = {}
        for arch in archs:
            model = build(arch)
            row = {"arch": arch, "params": sum(p.numel() for p in model.parameters()), "recipes": {}}
            fp32 = folder / f"{arch}.onnx"
            onnx.save(export_velocity(model), str(fp32))
            files[arch] = str(fp32)
            for r in recipes:
                q = folder / f"{arch}_{r}.onnx"
                with open(os.devnull, "w") as devnull:
                    facts = quantize_velocity(fp32, q, calib, r, log=devnull)
                files[f"{arch}/{r}"] = str(q)
                row["recipes"][r] = {
                    "sqnr_db": round(output_sqnr(fp32, q, held), 1),
                    "macs_int8_fraction": facts["macs_int8_fraction"],
                    **float_islands(str(q), str(folder / f"{arch}_{r}.opt.onnx")),
                }
            row["macs_per_image"] = facts["macs_per_image"]
            print(f"{arch}: {row['params'] / 1e6:.2f}M params, {row['macs_per_image'] / 1e6:.1f}M MACs, "
                  + "; ".join(f"{r}: {v['islands']} islands, {v['dq_to_q']} DQ->Q ({v['float_ops']} float ops "
                              f"{','.join(v['float_op_types'])}), SQNR {v['sqnr_db']} dB"
                              for r, v in row["recipes"].items()), flush=True)  # fmt: skip
            rows.append(row)
        sessions = {k: ort_session(p, a.threads, False) for k, p in files.items()}
        if a.baseline:
            sessions["first_release"] = ort_session(a.baseline, a.threads, False)
        timing = {}
        for b in batches:
            from fm_edge.export.validate import fixed_inputs

            x, t, y = fixed_inputs(b)
            vfeeds = {"sample": x, "timestep": np.full(b, 1000.0, np.float32), "class_labels": y}
            sfeeds = sampler_feeds(b)
            fns = {k: (lambda s=s, f=(sfeeds if k == "first_release" else vfeeds): s.run(None, f))
                   for k, s in sessions.items()}  # fmt: skip
            runs = []
            for rep in range(a.repeats):
                load = os.getloadavg()[0]
                t0 = time.time()
                runs.append((time_alternating(fns, rounds[b], warmup=2), load))
                print(f"  batch {b} loop {rep + 1}: {time.time() - t0:.0f} s, load {load:.2f}", flush=True)
            timing[b] = runs
    for row in rows:
        arch = row["arch"]
        for b in batches:
            per_loop = []
            for times, load in timing[b]:
                d = {"fp32_ms_per_digit": median(times[arch]) * 1e3 / b, "loadavg_1m": load}
                for r in recipes:
                    d[f"{r}_ms_per_digit"] = median(times[f"{arch}/{r}"]) * 1e3 / b
                    d[f"{r}_speedup"] = paired_speedup(times[arch], times[f"{arch}/{r}"])
                    if "first_release" in times:
                        d[f"{r}_vs_first_release"] = paired_speedup(
                            times["first_release"], times[f"{arch}/{r}"]
                        )
                if "first_release" in times:
                    d["fp32_vs_first_release"] = paired_speedup(times["first_release"], times[arch])
                    d["first_release_ms_per_digit"] = median(times["first_release"]) * 1e3 / b
                per_loop.append(d)
            row[f"b{b}"] = {k: round(float(np.median([d[k] for d in per_loop])), 3) for k in per_loop[0]}
    head = f"{'arch':14s} {'params':>7s} {'MMACs':>6s} " + " ".join(
        f"{r[:14]:>14s} isl/ops x b1  x b64 ms/d b1 ms/d b64 vsFR b1 b64" for r in recipes
    )
    print("\n" + head)
    for row in rows:
        cells = []
        for r in recipes:
            v = row["recipes"][r]
            b1, b64 = row.get("b1", {}), row.get("b64", {})
            cells.append(
                f"{'':14s} {v['islands']:3d}/{v['float_ops']:<3d} {b1.get(f'{r}_speedup', 0):4.2f} "
                f"{b64.get(f'{r}_speedup', 0):5.2f} {b1.get(f'{r}_ms_per_digit', 0):7.3f} "
                f"{b64.get(f'{r}_ms_per_digit', 0):8.3f} {b1.get(f'{r}_vs_first_release', 0):7.1f} "
                f"{b64.get(f'{r}_vs_first_release', 0):4.1f}"
            )
        print(
            f"{row['arch']:14s} {row['params'] / 1e6:6.2f}M {row['macs_per_image'] / 1e6:6.1f} "
            + " ".join(cells)
        )
    if a.json:
        from fm_edge.atomic import write_bytes

        doc = {
            "what": __doc__.splitlines()[0],
            "cpu": isa_seen(),
            "threads": a.threads,
            "note": a.note,
            "calibration": f"{a.calib} noises at t=1, labels cycling 0-10 (random weights: speed, not quality)",
            "rows": rows,
        }
        write_bytes(a.json, json.dumps(doc, indent=1).encode())


if __name__ == "__main__":
    main()
