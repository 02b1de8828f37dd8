"""``fm-edge bench``: every backend x batch size x NFE on the same noise: latency, memory, size, quality.

Backends: torch eager fp32, torch compiled, torchao int8, ORT fp32, ORT int8 (velocity models driven by
the Python Euler loop), and sampler.onnx fp32/int8 (whole sampler in one graph, at its exported NFE).
All share the noise, labels, CFG scale and thread count; each cell gets a warm-up run (which also absorbs
torch.compile's compilation), then the median of ``--repeats`` timed runs. Each backend runs in a fresh
process, so its peak RSS (sampled while its cells ran, before the evaluator is loaded for the quality
columns) is its own. Writes bench.json, bench.png and prints a table.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from fm_edge.artifacts import SAMPLER_FILE, SAMPLER_INT8, VELOCITY_FILE, VELOCITY_INT8, WEIGHTS
from fm_edge.convention import default_labels
from fm_edge.errors import FmEdgeError, UsageError

#: the default backends
ALL_BACKENDS = (
    "torch-fp32", "torch-compiled", "torchao-int8", "ort-fp32", "ort-int8", "sampler-fp32", "sampler-int8",
)  # fmt: skip
#: by name only: torch fp32 on CUDA without CUDA graphs, and torch with bf16 autocast
EXTRA_BACKENDS = ("torch-eager", "torch-bf16")
ONNX_FILES = {
    "ort-fp32": VELOCITY_FILE,
    "ort-int8": VELOCITY_INT8,
    "sampler-fp32": SAMPLER_FILE,
    "sampler-int8": SAMPLER_INT8,
}


class PeakRSS:
    """Samples the process RSS every 5 ms in a thread; ``peak_mb`` after the ``with`` block."""

    def __enter__(self):
        import psutil

        self._proc, self._stop, self.peak = psutil.Process(), threading.Event(), 0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        self.peak_mb = self.peak / 2**20


def _velocity_runner(backend, cfg_scale, shift):
    from fm_edge.backends import generate
    from fm_edge.sampler_spec import SamplerSpec

    def run(noise, labels, steps):
        spec = SamplerSpec("euler", steps, cfg_scale, shift)
        return generate(backend, labels, spec, noise=noise, batch_size=len(noise))

    return run


def make_runner(
    name: str,
    model_dir,
    onnx_dir: Path,
    num_threads: int | None,
    cfg_scale: float,
    shift: float,
    device: str = "cpu",
):
    """(run(noise, labels, steps) -> uint8 images, size in bytes, fixed steps or None) for one backend."""
    from fm_edge.backends import Backend, onnx_backend, ort_providers, torch_backend
    from fm_edge.model import resolve

    if name in ("torch-fp32", "torch-compiled", "torchao-int8", "torch-eager", "torch-bf16"):
        if name == "torch-eager" and device != "cuda":
            raise NotImplementedError("torch-eager differs from torch-fp32 only on CUDA (no CUDA graphs)")
        b = torch_backend(
            model_dir, num_threads, device, bf16=name == "torch-bf16", cuda_graphs=name != "torch-eager"
        )
        size = (resolve(model_dir) / WEIGHTS).stat().st_size
        if name == "torch-compiled":
            import torch

            from fm_edge.model import velocity_fn

            b = Backend(
                "torch-compiled",
                velocity_fn(torch.compile(b.info["module"])),
                b.sampler,
                b.to_native,
                b.to_numpy,
            )
        elif name == "torchao-int8":  # rebuilt at load from the fp32 safetensors + recipe: same file size
            from fm_edge.quantize.torchao_backend import sample_backend

            b = sample_backend(model_dir, num_threads)
        return _velocity_runner(b, cfg_scale, shift), size, None
    path = onnx_dir / ONNX_FILES[name]
    if not path.is_file():
        raise UsageError(f"{name}: {str(path)!r} does not exist (run fm-edge export --int8 -o {onnx_dir})")
    from fm_edge.runtime import OnnxSampler

    if name.startswith("ort"):
        b = onnx_backend(path, num_threads, device, name=name)
        return _velocity_runner(b, cfg_scale, shift), path.stat().st_size, None
    s = OnnxSampler(path, num_threads=num_threads, providers=ort_providers(device))
    if s.solver != "euler":
        raise UsageError(f"{name}: {str(path)!r} bakes in {s.solver}; the bench compares euler samplers")
    return (lambda noise, labels, steps: s(noise, labels, cfg_scale)), path.stat().st_size, s.steps


def bench(
    backends,
    model_dir=None,
    onnx_dir=None,
    batch_sizes=(1, 64),
    nfes=(1, 2, 4, 8, 16),
    repeats: int = 5,
    quality_samples: int = 500,
    seed: int = 0,
    num_threads: int | None = None,
    isolate: bool = True,
    device: str = "cpu",
    memory_cap_gb: float | None = None,
) -> dict:
    """Every backend x NFE x batch size; ``isolate`` runs each backend in its own process.

    On CUDA, ``memory_cap_gb`` caps the process (``torch.cuda.set_per_process_memory_fraction``: an allocation
    beyond it fails as on a card of that size) and each row records the peak GPU memory it allocated.
    """
    from tqdm.auto import tqdm

    from fm_edge.artifacts import shipped_onnx
    from fm_edge.backends import make_noise
    from fm_edge.model import read_fm_config, resolve
    from fm_edge.sampler_spec import checkpoint_spec
    from fm_edge.timing import median, time_alternating

    rec = checkpoint_spec(read_fm_config(resolve(model_dir)))
    cfg_scale, shift = rec.cfg_scale, rec.shift
    onnx_dir = Path(onnx_dir) if onnx_dir else shipped_onnx(VELOCITY_FILE).parent
    q_labels = default_labels(quality_samples)
    q_noise = make_noise(quality_samples, seed + 1)
    rows, skipped = [], {}
    for name in backends:
        if isolate:
            res = _in_subprocess(dict(backends=[name], model_dir=model_dir and str(model_dir), onnx_dir=str(onnx_dir),
                                      batch_sizes=list(batch_sizes), nfes=list(nfes), repeats=repeats,
                                      quality_samples=quality_samples, seed=seed, num_threads=num_threads,
                                      device=device, memory_cap_gb=memory_cap_gb))  # fmt: skip
            rows += res["rows"]
            skipped.update(res["skipped"])
            continue
        gpu = _GpuMemory(device, memory_cap_gb)
        try:
            run, size, fixed = make_runner(name, model_dir, onnx_dir, num_threads, cfg_scale, shift, device)
        except (ImportError, FmEdgeError, NotImplementedError) as exc:
            skipped[name] = str(exc).splitlines()[0]
            print(f"skip {name}: {skipped[name]}", file=sys.stderr)
            continue
        timed = []
        for nfe in nfes:
            if fixed is not None and nfe != fixed:
                continue
            for b in batch_sizes:
                noise, labels = make_noise(b, seed), default_labels(b)
                gpu.reset()
                with PeakRSS() as mem, tqdm(total=repeats, desc=f"{name} b{b} nfe{nfe}", file=sys.stderr,
                                            leave=False) as bar:  # fmt: skip
                    # the warm-up call also absorbs torch.compile's compilation
                    call = lambda run=run, noise=noise, labels=labels, nfe=nfe: run(noise, labels, nfe)
                    times = time_alternating({name: call}, repeats, progress=lambda *_: bar.update(1))[name]
                med = median(times)
                timed.append(
                    {
                        "backend": name,
                        "batch": b,
                        "nfe": nfe,
                        "ms_per_image": 1000 * med / b,
                        "images_per_s": b / med,
                        "peak_rss_mb": round(mem.peak_mb, 1),
                        "model_bytes": size,
                        **gpu.row(),
                    }
                )
        # quality after the timings: the evaluator (torch) is not in the backend's memory figures
        for nfe in sorted({r["nfe"] for r in timed}):
            quality = {}
            if quality_samples:
                from fm_edge.evaluate import evaluate_images

                imgs = np.concatenate(
                    [
                        run(q_noise[i : i + 64], q_labels[i : i + 64], nfe)
                        for i in range(0, quality_samples, 64)
                    ]
                )
                r = evaluate_images(imgs, q_labels)
                quality = {"fd": r["fd"], "label_accuracy": r["label_accuracy"], "fd_floor": r["fd_floor"]}
            for row in timed:
                if row["nfe"] == nfe:
                    row.update(quality)
                    rows.append(row)
                    tqdm.write(format_row(row), file=sys.stderr)  # above any progress bar, not through it
    from fm_edge.envinfo import collect

    return {
        "env": collect(),
        "num_threads": num_threads or os.cpu_count(),
        "cfg_scale": cfg_scale,
        "shift": shift,
        "solver": "euler",
        "repeats": repeats,
        "quality_samples": quality_samples,
        "rows": rows,
        "skipped": skipped,
    }


class _GpuMemory:
    """Peak CUDA memory per bench cell (a no-op on the CPU); applies the memory cap once."""

    def __init__(self, device: str, cap_gb: float | None):
        self.on = device == "cuda"
        if not self.on:
            return
        import torch

        self.torch = torch
        total = torch.cuda.get_device_properties(0).total_memory
        if cap_gb:
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * 2**30 / total))
        self.info = {"gpu": torch.cuda.get_device_name(0), "memory_cap_gb": cap_gb}

    def reset(self) -> None:
        if self.on:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def row(self) -> dict:
        if not self.on:
            return {}
        return {**self.info, "peak_gpu_mb": round(self.torch.cuda.max_memory_allocated() / 2**20, 1)}


def _in_subprocess(kwargs: dict) -> dict:
    """bench() for one backend in a fresh Python process (its progress on our stderr); its result dict."""
    r = subprocess.run(
        [sys.executable, "-m", "fm_edge.bench", json.dumps(kwargs)], stdout=subprocess.PIPE, text=True
    )
    if r.returncode != 0:
        name = kwargs["backends"][0]
        return {"rows": [], "skipped": {name: f"the benchmark process exited with {r.returncode}"}}
    return json.loads(r.stdout.strip().splitlines()[-1])


def format_row(r: dict) -> str:
    q = f"  FD {r['fd']:7.2f}  acc {r['label_accuracy']:.1%}" if r.get("fd") is not None else ""
    return (
        f"{r['backend']:15s} b{r['batch']:<3d} NFE {r['nfe']:2d}  {r['ms_per_image']:8.2f} ms/img "
        f"{r['images_per_s']:8.1f} img/s  {r['peak_rss_mb']:7.0f} MB  {r['model_bytes'] / 1e6:5.2f} MB{q}"
    )


def plain_log_ticks(*axes) -> None:
    """Log-scale ticks at 1, 2, 5 x 10^k labelled as plain numbers (29, not 2.9x10^1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    for axis in axes:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda *_: ""))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = list(dict.fromkeys(r["backend"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    quality = any(r.get("fd") is not None for r in rows)  # no quality panel for --quality-samples 0
    panels = int(quality) + len(batches)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    axes = list(axes[0])
    if quality:
        for name in names:
            pts = sorted(
                {(r["nfe"], r["fd"]) for r in rows if r["backend"] == name and r.get("fd") is not None}
            )
            if pts:
                axes[0].plot(*zip(*pts), "o-", label=name)
        axes[0].set(
            xscale="log", yscale="log", xlabel="NFE (euler steps)", ylabel="FD", title="quality vs NFE"
        )
        axes[0].legend(fontsize=7)
    for ax, b in zip(axes[int(quality) :], batches):
        for name in names:
            pts = sorted(
                (r["nfe"], r["ms_per_image"]) for r in rows if r["backend"] == name and r["batch"] == b
            )
            if pts:
                ax.plot(*zip(*pts), "o-", label=name)
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="ms per image", title=f"latency, batch {b}")
        ax.legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
        plain_log_ticks(ax.xaxis, ax.yaxis)
    fig.tight_layout()
    from fm_edge.atomic import atomic_file

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} {text!r} must be comma-separated integers") from None
    if not vals or min(vals) < 1:
        raise UsageError(f"{flag} {text!r}: every value must be >= 1")
    return vals


def add_arguments(p) -> None:
    """``fm-edge bench``'s flags."""
    from fm_edge.flags import device_flag, seed_and_threads

    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--onnx-dir", default=None, help="folder with the exported .onnx files (default: shipped)")
    p.add_argument("-o", "--output-dir", default="bench", help="where bench.json and bench.png go")
    p.add_argument(
        "--backends",
        default=None,
        help=f"comma-separated subset of {', '.join(ALL_BACKENDS)} (default: all of these), or "
        f"{' / '.join(EXTRA_BACKENDS)} (CUDA without graphs / bf16 autocast)",
    )
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--nfe", default="1,2,4,8,16", help="comma-separated Euler step counts")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cell (after one warm-up)")
    p.add_argument("--quality-samples", type=int, default=1000, help="digits for FD per NFE (0: no quality)")
    device_flag(p, "where the torch backends run (ONNX: CUDA provider with onnxruntime-gpu)")
    p.add_argument(
        "--memory-cap-gb",
        type=float,
        default=None,
        help="CUDA: cap this process's GPU memory (torch.cuda.set_per_process_memory_fraction), e.g. 10",
    )
    seed_and_threads(p, "seed of the starting noise", "CPU threads (torch and ONNX Runtime)")


def main(args) -> Path:
    backends = tuple(b.strip() for b in args.backends.split(",")) if args.backends else ALL_BACKENDS
    unknown = [b for b in backends if b not in ALL_BACKENDS + EXTRA_BACKENDS]
    if unknown:
        known = ", ".join(ALL_BACKENDS + EXTRA_BACKENDS)
        raise UsageError(f"unknown backend {unknown[0]!r}: choose from {known}")
    batch_sizes, nfes = _ints(args.batch_sizes, "--batch-sizes"), _ints(args.nfe, "--nfe")
    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    cap = args.memory_cap_gb
    if cap is not None and not (math.isfinite(cap) and cap > 0):
        raise UsageError(f"--memory-cap-gb {cap} must be a finite number of GiB > 0, e.g. 10")
    device = args.device
    if device != "cpu":  # refuse --device cuda without CUDA before any work
        from fm_edge.backends import torch_device

        device = torch_device(device)
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    result = bench(
        backends,
        args.model,
        args.onnx_dir,
        batch_sizes,
        nfes,
        args.repeats,
        args.quality_samples,
        args.seed,
        args.num_threads,
        device=device,
        memory_cap_gb=cap,
    )
    out = Path(args.output_dir)
    from fm_edge.atomic import write_bytes

    write_bytes(out / "bench.json", (json.dumps(result, indent=1) + "\n").encode())
    try:
        plot(result, out / "bench.png")
    except ImportError:  # a bare GPU image: the JSON and the table are the results, the plot is a view
        print(
            "bench: matplotlib is not installed, so no bench.png (pip install 'fm-edge[bench]')",
            file=sys.stderr,
        )
    print(markdown_table(result))
    return out / "bench.json"


def markdown_table(result: dict) -> str:
    lines = [
        "| backend | batch | NFE | ms/image | images/s | peak RSS MB | model MB | FD | label acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        fd = f"{r['fd']:.2f}" if r.get("fd") is not None else ""
        acc = f"{r['label_accuracy']:.1%}" if r.get("label_accuracy") is not None else ""
        lines.append(
            f"| {r['backend']} | {r['batch']} | {r['nfe']} | {r['ms_per_image']:.2f} | {r['images_per_s']:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {r['model_bytes'] / 1e6:.2f} | {fd} | {acc} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # one isolated backend (see _in_subprocess)
    print(json.dumps(bench(**json.loads(sys.argv[1]), isolate=False)))
