"""Digits per second against quality: sampler ONNX files (teacher and student, fp32 and int8) timed on the same
machine in one alternating loop, and their FD on the same noise. Writes a JSON table and a plot.

    python scripts/tradeoff.py NAME=PATH/sampler.onnx [NAME=PATH ...] -o docs/results/tradeoff.json \\
        --plot docs/tradeoff.png [--num-threads 2] [--quality-samples 2000]
    python scripts/tradeoff.py --first-release --shipped -o tradeoff.json --plot tradeoff.png  # README's table

``--shipped`` adds both sampler files of every folder in ``fm_edge/checkpoints``; ``--first-release`` takes
the first release's ``sampler.onnx`` from git history as the baseline.
``--process-each`` times every sampler in a process of its own with ONNX Runtime's defaults, as an app holds
one session (by default all sessions share this process, with thread spinning off).

Quality and timing can be split: a run with ``--rounds 1`` measures FD while other work loads the machine,
and a later run on a quiet machine takes those columns with ``--quality-from`` and only times. Each int8 file
is also timed against the fp32 file beside it (``int8_over_fp32_b*``); the table prints as markdown.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fm_edge.artifacts import sha256
from fm_edge.atomic import write_bytes
from fm_edge.backends import make_noise
from fm_edge.convention import default_labels
from fm_edge.envinfo import collect
from fm_edge.evaluate import evaluate_images
from fm_edge.runtime import OnnxSampler
from fm_edge.timing import median, paired_speedup, time_alternating

CHECKPOINTS = Path(__file__).resolve().parents[1] / "fm_edge" / "checkpoints"
FIRST_RELEASE = "0ecbb1b:fm_edge/checkpoints/compact-mnist/onnx/sampler.onnx"  # git commit:path
SETTLE = 0.2  # seconds of quiet before each --process-each round, so no other worker's threads still spin
PROCESS_CALLS = 16  # back-to-back calls per round and process at batch 1 (batch b: 16 // b, at least 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", help="NAME=path/to/sampler.onnx; the first is the baseline")
    p.add_argument("--first-release", action="store_true",
                   help=f"time the first release's sampler.onnx ({FIRST_RELEASE} in git history) first, as the "
                   "baseline")  # fmt: skip
    p.add_argument("--shipped", action="store_true",
                   help="time sampler.onnx and sampler_int8.onnx of every folder in fm_edge/checkpoints, "
                   "before the files named")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="the JSON table")
    p.add_argument("--plot", default=None, help="also draw digits/s against FD here (PNG)")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--rounds", type=int, default=15, help="alternating timed rounds per batch size")
    p.add_argument("--quality-samples", type=int, default=2000, help="0: time only, no FD columns")
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--process-each", action="store_true",
                   help="time each sampler in a process of its own (ORT defaults, spinning on), "
                   f"{PROCESS_CALLS} back-to-back calls per round at batch 1 after {SETTLE} s of quiet; rounds "
                   "still alternate")  # fmt: skip
    p.add_argument(
        "--quality-from",
        default=None,
        help="take the FD columns from this earlier output instead of sampling again (rows matched by file "
        "sha256): quality can be measured while other work loads the machine, timing only when it is quiet",
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # a child of --process-each
        return worker(argv[1], int(argv[2]))
    args = p.parse_args(argv)
    specs = [f"first release={first_release()}"] if args.first_release else []
    specs += shipped_files(CHECKPOINTS) if args.shipped else []
    if not specs + args.files:
        p.error("name at least one sampler file, or pass --shipped / --first-release")
    samplers = {}
    for spec in specs + args.files:
        name, _, path = spec.partition("=")
        # no spinning: idle sessions' threads would otherwise busy-wait while another session runs
        samplers[name] = OnnxSampler(path, num_threads=args.num_threads,
                                     session_config={"session.intra_op.allow_spinning": "0"})  # fmt: skip
    base = next(iter(samplers))
    rows = {n: {"name": n, "file": str(s.path), "sha256": sha256(s.path), "metadata": {
        k: s.metadata.get(k) for k in ("solver", "steps", "nfe", "network_evals_per_image", "guidance", "cfg_scale",
                                        "precision", "checkpoint_sha256")}} for n, s in samplers.items()}  # fmt: skip
    siblings = int8_pairs(list(rows.values()))
    workers = {n: Worker(s.path, args.num_threads) for n, s in samplers.items()} if args.process_each else {}
    try:
        times_by_batch = {}
        for b in (int(v) for v in args.batch_sizes.split(",")):
            if workers:
                fns = {
                    n: (lambda w=w, b=b: w.time(b, max(1, PROCESS_CALLS // b))) for n, w in workers.items()
                }
                times_by_batch[b] = time_alternating(fns, args.rounds, warmup=2, self_timed=True)
            else:
                noise, labels = make_noise(b, 0), default_labels(b)
                fns = {n: (lambda s=s, x=noise, y=labels: s(x, y)) for n, s in samplers.items()}
                times_by_batch[b] = time_alternating(fns, args.rounds, warmup=2)
    finally:
        for w in workers.values():
            w.close()
    for b, times in times_by_batch.items():
        for n in samplers:
            rows[n][f"ms_per_image_b{b}"] = round(1000 * median(times[n]) / b, 3)
            rows[n][f"images_per_s_b{b}"] = round(b / median(times[n]), 1)
            rows[n][f"speedup_vs_{base}_b{b}"] = round(paired_speedup(times[base], times[n]), 2)
            if n in siblings:  # the int8 file against the fp32 file beside it, round by round
                rows[n]["fp32_sibling"] = siblings[n]
                rows[n][f"int8_over_fp32_b{b}"] = round(paired_speedup(times[siblings[n]], times[n]), 2)
        print(
            f"batch {b}: " + ", ".join(f"{n} {rows[n][f'ms_per_image_b{b}']:.2f} ms" for n in samplers),
            file=sys.stderr,
        )
    if args.quality_from:
        n = copy_quality(json.loads(Path(args.quality_from).read_text()), rows)
    else:
        n = args.quality_samples
        measure_quality(samplers, rows, n)
    env = collect()
    out = {"cpu": env["cpu"], "int8_path": env["int8_path"], "onnxruntime": env["onnxruntime"],
           "num_threads": args.num_threads, "process_each": args.process_each, "rounds": args.rounds, "quality_samples": n, "baseline": base,
           "rows": list(rows.values())}  # fmt: skip
    write_bytes(args.output, (json.dumps(out, indent=1) + "\n").encode())
    if args.plot and n > 0:
        plot(out, Path(args.plot))
    print(markdown(out))
    print(args.output)
    return 0


def worker(path: str, num_threads: int) -> int:
    """One sampler's session alone in this process: for each "BATCH CALLS" line on stdin, one untimed call
    (the threads wake, as after an app's previous call), then CALLS timed ones; prints seconds per call."""
    s = OnnxSampler(path, num_threads=num_threads)
    for line in sys.stdin:
        b, calls = (int(v) for v in line.split())
        x, y = make_noise(b, 0), default_labels(b)
        s(x, y)
        t0 = time.perf_counter()
        for _ in range(calls):
            s(x, y)
        print((time.perf_counter() - t0) / calls, flush=True)
    return 0


class Worker:
    """The controller's end of a ``worker`` process."""

    def __init__(self, path: Path, num_threads: int):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path), str(num_threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def time(self, batch: int, calls: int) -> float:
        time.sleep(SETTLE)  # the worker timed before stops spinning first, as ORT's threads do after a run
        self.proc.stdin.write(f"{batch} {calls}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the timing process for {batch=} ended (exit code {self.proc.wait()})")
        return float(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def shipped_files(root: Path) -> list[str]:
    """NAME=PATH for both sampler files of every model folder under ``root`` that has them, the int8 file named
    after its folder with " int8"."""
    specs = []
    for folder in sorted(d for d in root.iterdir() if (d / "onnx" / "sampler.onnx").is_file()):
        specs.append(f"{folder.name}={folder / 'onnx' / 'sampler.onnx'}")
        if (folder / "onnx" / "sampler_int8.onnx").is_file():
            specs.append(f"{folder.name} int8={folder / 'onnx' / 'sampler_int8.onnx'}")
    return specs


def first_release(source: str = FIRST_RELEASE) -> Path:
    """The first release's sampler file, written from git history into the temporary folder (once)."""
    commit, _, path = source.partition(":")
    out = Path(tempfile.gettempdir()) / f"fm_edge_first_release_{commit}_{Path(path).name}"
    if not out.is_file():
        got = subprocess.run(["git", "-C", str(CHECKPOINTS), "show", source], capture_output=True)
        if got.returncode != 0:
            msg = got.stderr.decode(errors="replace").strip().splitlines()
            raise SystemExit(
                f"--first-release needs fm-edge's git history ({source}): {msg[-1] if msg else ''}"
            )
        write_bytes(out, got.stdout)
    return out


def measure_quality(samplers: dict, rows: dict, n: int) -> None:
    """FD and label accuracy of every file on the same ``n`` noises, labels cycling 0-9 (none for n = 0)."""
    labels, noise = default_labels(n), make_noise(n, 0)
    for name, s in samplers.items() if n > 0 else ():
        imgs = np.concatenate([s(noise[i : i + 250], labels[i : i + 250]) for i in range(0, n, 250)])
        r = evaluate_images(imgs, labels)
        rows[name].update(
            fd=round(r["fd"], 3), fd_floor=round(r["fd_floor"], 3), label_accuracy=r["label_accuracy"]
        )
        print(
            f"{name}: FD {r['fd']:.2f} (floor {r['fd_floor']:.2f}), accuracy {r['label_accuracy']:.1%}",
            file=sys.stderr,
        )


def copy_quality(earlier: dict, rows: dict) -> int:
    """Copy fd, fd_floor and label_accuracy from an earlier output's row of the same file (by sha256) into
    every row; returns the sample count they were measured on."""
    by_sha = {r["sha256"]: r for r in earlier["rows"] if "fd" in r}
    missing = [name for name, r in rows.items() if r["sha256"] not in by_sha]
    if missing:
        raise SystemExit(f"--quality-from has no quality for {', '.join(missing)} (no row of the same file)")
    for r in rows.values():
        r.update({k: by_sha[r["sha256"]][k] for k in ("fd", "fd_floor", "label_accuracy")})
    return earlier["quality_samples"]


def int8_pairs(rows: list[dict]) -> dict[str, str]:
    """{int8 row name: fp32 row name} for the rows of an output whose files are a folder's ``sampler_int8.onnx``
    and ``sampler.onnx`` (outputs from before ``fp32_sibling`` was recorded included)."""
    by_path = {Path(r["file"]).resolve(): r["name"] for r in rows}
    pairs = {}
    for r in rows:
        path = Path(r["file"]).resolve()
        if path.name.endswith("_int8.onnx"):
            fp32 = by_path.get(path.with_name(path.name.replace("_int8.onnx", ".onnx")))
            if fp32 is not None:
                pairs[r["name"]] = fp32
    return pairs


def batch_sizes(out: dict) -> list[str]:
    """The batch sizes an output was timed at, as written in its column names."""
    return [k[len("ms_per_image_b") :] for k in out["rows"][0] if k.startswith("ms_per_image_b")]


def markdown(out: dict) -> str:
    """The table as markdown: ms per digit at each batch, speed against the baseline and int8 against its
    fp32 sibling, and the quality columns when they were measured."""
    batches = batch_sizes(out)
    quality = out["quality_samples"] > 0
    head = ["sampler file", "network evals / digit", *[f"ms / digit b{b}" for b in batches],
            f"vs {out['baseline']} ({' / '.join('b' + b for b in batches)})", "int8 over fp32"]  # fmt: skip
    if quality:
        head += ["FD / floor", "label acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = out["baseline"]
    for r in out["rows"]:
        cells = [r["name"], r["metadata"].get("network_evals_per_image") or "?"]
        cells += [f"{r[f'ms_per_image_b{b}']:.2f}" for b in batches]
        cells.append(" / ".join(f"{r[f'speedup_vs_{base}_b{b}']:.2f}×" for b in batches))
        cells.append(
            " / ".join(f"{r[f'int8_over_fp32_b{b}']:.2f}×" for b in batches) if "fp32_sibling" in r else "—"
        )
        if quality:
            cells += [f"{r['fd'] / r['fd_floor']:.2f}", f"{r['label_accuracy']:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    """Digits per second against FD / floor at each batch size: one colour per model, its fp32 file an open
    circle and its int8 file a filled one, joined by an arrow; names in a legend, not on the points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from fm_edge.atomic import atomic_file
    from fm_edge.bench import plain_log_ticks

    rows = {r["name"]: r for r in out["rows"]}
    fp32_of = int8_pairs(out["rows"])
    models = [n for n in rows if n not in fp32_of]  # fp32 files and unpaired ones, in order
    palette = plt.get_cmap("tab10").colors
    colours = {n: palette[i % len(palette)] for i, n in enumerate(models)}
    colours |= {n: colours[f] for n, f in fp32_of.items()}
    batches = batch_sizes(out)
    fig, axes = plt.subplots(1, len(batches), figsize=(1 + 5.5 * len(batches), 4.4), squeeze=False)
    for ax, b in zip(axes[0], batches):

        def point(name, b=b):
            return rows[name][f"images_per_s_b{b}"], rows[name]["fd"] / rows[name]["fd_floor"]

        for name, r in rows.items():
            c = colours[name]
            if r["file"].endswith("_int8.onnx"):  # filled: an int8 file, with an arrow from its fp32 file
                ax.scatter(*point(name), s=55, color=c, zorder=3)
            else:
                ax.scatter(*point(name), s=55, facecolors="white", edgecolors=[c], linewidths=1.8, zorder=3)
            if name in fp32_of:
                ax.annotate("", point(name), point(fp32_of[name]),
                            arrowprops={"arrowstyle": "->", "color": c, "shrinkA": 5, "shrinkB": 5})  # fmt: skip
        ax.set(xscale="log", xlabel=f"digits per second (batch {b}, {out['num_threads']} threads)",
               ylabel="FD / FD of real digits (lower is better)", title=f"batch {b}")  # fmt: skip
        ax.grid(alpha=0.3)
        plain_log_ticks(ax.xaxis)
    handles = [Line2D([], [], ls="", marker="o", color=colours[n], label=n) for n in models]
    handles += [Line2D([], [], ls="", marker="o", mfc="white", mec="grey", label="fp32 sampler.onnx"),
                Line2D([], [], ls="", marker="o", color="grey", label="int8 sampler_int8.onnx")]  # fmt: skip
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"{out['cpu']} ({out['int8_path']}), onnxruntime {out['onnxruntime']}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
