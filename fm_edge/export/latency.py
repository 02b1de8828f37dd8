"""Per-image sampling latency of the three fp32 paths, same noise, same solver and steps, one process:

- ``torch``: the PyTorch eager UNet driven by the Python solver loop;
- ``onnx``: ``velocity.onnx`` in ONNX Runtime driven by the same Python loop;
- ``sampler``: ``sampler.onnx``, the whole loop in one ORT call.

All use the solver, steps, CFG scale and shift baked into ``sampler.onnx`` (CFG batches cond + uncond in
each). Timing: warm-up runs, then the median of ``repeats`` wall-clock runs per batch size. Importable
(:func:`measure_latency`) and runnable: ``python -m fm_edge.export.latency --model CKPT --onnx-dir DIR``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

BACKENDS = ("torch", "onnx", "sampler")


def _time(fn, repeats: int, warmup: int) -> tuple[float, float]:
    """Median wall-clock and median process CPU seconds of ``fn()``.

    On a shared, loaded machine the wall clock includes waiting for a core; with one thread the CPU time
    is close to what the wall clock would be on an idle machine, so both are reported.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def measure_latency(
    checkpoint: str | os.PathLike | None = None,
    onnx_dir: str | os.PathLike | None = None,
    batch_sizes=(1, 64),
    backends=BACKENDS,
    repeats: int = 5,
    warmup: int = 1,
    num_threads: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """One row per (backend, batch): median wall seconds per batch, wall and CPU ms per image, images/s."""
    from fm_edge.convention import default_labels
    from fm_edge.runtime import SHIPPED_ONNX, OnnxSampler
    from fm_edge.sample import generate, make_noise, onnx_backend, torch_backend
    from fm_edge.solvers import nfe

    onnx_dir = Path(onnx_dir) if onnx_dir else SHIPPED_ONNX
    graph = OnnxSampler(onnx_dir / "sampler.onnx", num_threads=num_threads)
    solver, steps, cfg = graph.solver, graph.steps, graph.cfg_scale
    shift = float(graph.metadata.get("shift", 1.0))
    runners = {}
    if "torch" in backends:
        runners["torch"] = torch_backend(checkpoint, num_threads=num_threads)
    if "onnx" in backends:
        runners["onnx"] = onnx_backend(onnx_dir / "velocity.onnx", num_threads=num_threads)
    rows = []
    for b in batch_sizes:
        noise, labels = make_noise(b, seed), default_labels(b)
        for name in backends:
            if name == "sampler":
                fn = lambda noise=noise, labels=labels: graph(noise, labels, cfg)
            else:
                fn = lambda backend=runners[name], noise=noise, labels=labels, b=b: generate(
                    backend, labels, steps, solver, cfg, shift, noise=noise, batch_size=b
                )
            sec, cpu = _time(fn, repeats, warmup)
            rows.append(
                {
                    "backend": name,
                    "batch": b,
                    "solver": solver,
                    "steps": steps,
                    "nfe": nfe(solver, steps),
                    "cfg_scale": cfg,
                    "median_s": sec,
                    "ms_per_image": 1000.0 * sec / b,
                    "cpu_ms_per_image": 1000.0 * cpu / b,
                    "images_per_s": b / sec,
                    "repeats": repeats,
                    "num_threads": num_threads,
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        f"{'backend':<10} {'batch':>5} {'NFE':>4} {'ms/image':>10} {'CPU ms/image':>13} {'images/s':>10}"
    ]
    for r in rows:
        ms, cpu, ips = r["ms_per_image"], r["cpu_ms_per_image"], r["images_per_s"]
        lines.append(
            f"{r['backend']:<10} {r['batch']:>5} {r['nfe']:>4} {ms:>10.3f} {cpu:>13.3f} {ips:>10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fm_edge.export.latency", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--onnx-dir", default=None, help="folder with velocity.onnx and sampler.onnx")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    rows = measure_latency(
        args.model,
        args.onnx_dir,
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        backends=tuple(args.backends.split(",")),
        repeats=args.repeats,
        num_threads=args.num_threads,
    )
    print(format_table(rows))
    if args.json:
        import json

        from fm_edge.atomic import write_bytes

        write_bytes(args.json, json.dumps(rows, indent=1).encode())
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
