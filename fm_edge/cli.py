"""The ``fm-edge`` command line: it only parses and dispatches, importing each command's module lazily.

``fm-edge --help`` and every ``fm-edge CMD --help`` run without importing torch, onnxruntime or gradio.
Errors become one line on stderr (exit 2 for bad usage, 1 for failed work); ``FM_EDGE_DEBUG=1`` shows
the traceback. Progress goes to stderr and the final artifact's path is printed last on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fm_edge import __version__

SOLVER_CHOICES = ("euler", "midpoint", "heun", "rk4")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
SAMPLE_BACKENDS = ("auto", "torch", "onnx", "torchao")
#: fm-edge bench's default backends (fm_edge.bench uses these; torch-eager and torch-bf16 run by name)
BENCH_BACKENDS = (
    "torch-fp32", "torch-compiled", "torchao-int8", "ort-fp32", "ort-int8", "sampler-fp32", "sampler-int8",
)  # fmt: skip


#: command -> (one-line summary for fm-edge --help, description for fm-edge COMMAND --help)
HELP = {
    "train": (
        "train a flow-matching UNet on MNIST (resumable)",
        "Writes checkpoint-<step>/ folders (weights, EMA, optimizer; atomic) and, at the end, model/: a diffusers save_pretrained folder with the EMA weights, fm_edge.json and a model card.",
    ),
    "distill": (
        "distil a guided teacher into a one-step student (guidance baked in; resumable)",
        "Writes checkpoint-<step>/ folders (atomic, resumable like train) and model/: a checkpoint of the same UNet that samples in 1 (or 2) Euler steps with one network evaluation per step and no CFG batch.",
    ),
    "sample": (
        "sample digits in a few ODE steps",
        "Starts from seeded noise and integrates the learned velocity from t=1 (noise) to t=0 (digits) with the checkpoint's recommended solver, steps, CFG scale and shift unless flags override them.",
    ),
    "evaluate": (
        "FD, label accuracy and class histogram of samples.npz (or --nfe-curve)",
        "Reads the digits through the project's MNIST classifier: FD against MNIST test beside the FD of as many real train digits (the floor), the share read as the requested digit, and the class histogram.",
    ),
    "export": (
        "export the velocity net and the whole sampler to ONNX (--int8: quantize)",
        "Writes velocity.onnx and sampler.onnx (noise, labels, CFG scale -> uint8 digits), each checked against PyTorch before it lands; --int8 adds velocity_int8.onnx, sampler_int8.onnx and quantization.json.",
    ),
    "bench": (
        "latency and quality of every backend; table, JSON and PNG",
        "Each backend runs in its own process on the same noise: warm-up, then the median of --repeats timed runs per batch size and NFE, peak memory, model size and (unless --quality-samples 0) FD.",
    ),
    "demo": (
        "Gradio demo: int8 next to fp32 from the same noise",
        "Serves a page (127.0.0.1 unless --host says otherwise) that samples the same noise through velocity.onnx and velocity_int8.onnx, and through PyTorch when torch is installed.",
    ),
    "env": (
        "versions, CPU features and providers (for bug reports)",
        "Prints the versions of fm-edge's dependencies, the CPU's int8/bf16 features and ORT's providers.",
    ),
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after a flag's help, except where there is nothing to say (None, False) or the
    help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return super()._get_help_string(action)


def _seed_and_threads(p: argparse.ArgumentParser, seed: str, threads: str) -> None:
    p.add_argument("--seed", type=int, default=0, help=seed)
    p.add_argument("--num-threads", type=int, default=None, help=threads)


def _device_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help=f"{what}: auto (CUDA when available), cpu or cuda (default: auto)",
    )


# Which extra provides each heavy import, for the "missing extra" message.
EXTRAS = {
    "torch": "train",
    "diffusers": "train",
    "datasets": "train",
    "accelerate": "train",
    "safetensors": "train",
    "torchdiffeq": "train",
    "scipy": "train",
    "onnxruntime": "runtime",
    "onnx": "export",
    "torchao": "quant",
    "gradio": "demo",
    "matplotlib": "bench",
}


def _sampler_flags(p: argparse.ArgumentParser, steps_flag: str = "--steps") -> None:
    p.add_argument(
        steps_flag, type=int, default=None, help="ODE steps (default: the checkpoint's recommendation)"
    )
    p.add_argument(
        "--solver", default=None, help=f"one of {', '.join(SOLVER_CHOICES)} (default: recommended)"
    )
    p.add_argument(
        "--cfg-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale, 1 = off (default: recommended)",
    )
    p.add_argument(
        "--shift",
        type=float,
        default=None,
        help="time-grid shift, >1: more steps near noise (default: recommended)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fm-edge", description="Flow-matching MNIST digits, from training to the edge."
    )
    parser.add_argument("--version", action="version", version=f"fm-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = sub.add_parser

    def command(name: str) -> argparse.ArgumentParser:
        summary, description = HELP[name]
        return add(name, help=summary, description=f"{summary}.\n\n{description}", formatter_class=_Formatter)

    sub.add_parser = command  # every subcommand gets a description and shows its defaults

    p = sub.add_parser("train")
    p.add_argument("-o", "--output-dir", default="runs/compact", help="run folder (checkpoints and model/)")
    p.add_argument("--preset", default="compact", help="model preset: compact, edge, ddpm-cifar10-32 or tiny")
    p.add_argument(
        "--data", default=None, help="local MNIST folder in the hub layout (default: hub ylecun/mnist)"
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per step (per process)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup-steps", type=int, default=500, help="linear learning-rate warm-up steps")
    p.add_argument(
        "--lr-schedule",
        default="constant",
        help="after warm-up: constant, cosine or linear (cosine/linear reach 0 at the last step)",
    )
    p.add_argument("--epochs", type=float, default=10.0, help="passes over the training set")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs)"
    )
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument(
        "--log-every",
        type=int,
        default=50,
        help="steps between loss fetches from the device (and NaN checks); checkpoints fetch too",
    )
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint-<step> folder")
    p.add_argument(
        "--init-from",
        default=None,
        help="start from this checkpoint folder's weights (same preset; fresh optimizer, EMA and schedule)",
    )
    p.add_argument("--time-sampling", default="uniform", help="uniform or logit-normal")
    p.add_argument(
        "--label-dropout", type=float, default=0.1, help="share of null labels (classifier-free guidance)"
    )
    p.add_argument("--ema-decay", type=float, default=0.999, help="largest EMA decay (after its warm-up)")
    p.add_argument(
        "--ot-coupling",
        action="store_true",
        help="pair noise and data within each batch by minimal squared distance (needs scipy)",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA, or CPUs with AVX512-BF16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPUs)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    _seed_and_threads(p, "seed of the weights, batch order and noise", "CPU threads for torch")

    p = sub.add_parser("distill")
    p.add_argument("--teacher", default=None, help="teacher checkpoint folder (default: the shipped one)")
    p.add_argument(
        "-o", "--output-dir", default="runs/student", help="run folder (pairs, checkpoints, model/)"
    )
    p.add_argument("--method", default="pairs", help="pairs (rectified-flow distillation) or progressive")
    p.add_argument(
        "--cfg-scale", type=float, default=None, help="guidance scale baked in (default: the teacher's)"
    )
    p.add_argument("--student-steps", type=int, default=1, help="Euler steps of the student: 1 or 2")
    p.add_argument("--pairs", type=int, default=4096, help="pairs: teacher samples to generate and cache")
    p.add_argument(
        "--teacher-steps", type=int, default=None, help="teacher ODE steps (default: the teacher's)"
    )
    p.add_argument("--teacher-solver", default=None, help="euler or heun (progressive: euler only)")
    p.add_argument(
        "--lr-schedule", default="constant", choices=("constant", "cosine", "linear"),
        help="constant, or a decay to 0 (progressive: within each round)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64, help="student rows per step")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (constant)")
    p.add_argument("--max-steps", type=int, default=1000, help="student training steps")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint-<step> folder")
    _device_flag(p, "where the teacher and the student run")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA, or CPUs with AVX512-BF16)")
    _seed_and_threads(p, "seed of the pairs, batch order and times", "CPU threads for torch")

    p = sub.add_parser("sample")
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint folder, or a velocity .onnx (default: the shipped checkpoint)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="auto, torch, onnx or torchao (int8 PyTorch); auto = ONNX Runtime when the checkpoint has an "
        "export of the same weights in onnx/, else torch",
    )
    _device_flag(p, "where the torch backend runs (ONNX: CUDA provider with onnxruntime-gpu)")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="torch backend: bf16 autocast (CUDA, or CPUs with AVX512-BF16/AMX)",
    )
    p.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="torch on CUDA: launch every kernel instead of replaying a graph",
    )
    _sampler_flags(p)
    p.add_argument("--num-samples", type=int, default=100, help="how many digits")
    p.add_argument(
        "--label", type=int, default=None, help="digit 0-9, 10 = unconditional (default: cycles 0-9)"
    )
    p.add_argument("--unconditional", action="store_true", help="sample with the null label")
    p.add_argument("--batch-size", type=int, default=256, help="digits per solver call")
    p.add_argument("--reference", action="store_true", help="also solve with dopri5 and report the distance")
    p.add_argument("-o", "--output", default="samples.png", help="out.npz (images, labels) or out.png (grid)")
    _seed_and_threads(p, "seed of the starting noise", "CPU threads (torch and ONNX Runtime)")

    p = sub.add_parser("evaluate")
    p.add_argument("samples", nargs="?", help="an .npz written by fm-edge sample -o x.npz")
    p.add_argument("--json", default=None, help="also write the report as JSON here")
    p.add_argument("--nfe-curve", action="store_true", help="instead: quality against NFE for a checkpoint")
    p.add_argument("--model", default=None, help="--nfe-curve: checkpoint folder (default: the shipped one)")
    p.add_argument("--solvers", default="euler,heun", help="--nfe-curve: solvers to compare")
    p.add_argument("--steps-list", default="1,2,4,8,16,32", help="--nfe-curve: step counts")
    p.add_argument("--num-samples", type=int, default=2000, help="--nfe-curve: samples per point")
    p.add_argument("--reference-samples", type=int, default=100, help="--nfe-curve: dopri5 subset (0: skip)")
    p.add_argument(
        "--cfg-scale", type=float, default=None, help="--nfe-curve: CFG scale (default: recommended)"
    )
    p.add_argument("--shift", type=float, default=None, help="--nfe-curve: time shift (default: recommended)")
    p.add_argument("-o", "--output-dir", default="eval", help="--nfe-curve: where nfe_curve.json/.png go")
    _device_flag(p, "where the classifier and the --nfe-curve sampler run")
    _seed_and_threads(p, "--nfe-curve: seed of the starting noise", "CPU threads for torch")

    p = sub.add_parser("export")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("-o", "--output-dir", default="onnx", help="folder for velocity.onnx, sampler.onnx, ...")
    p.add_argument(
        "--sampler-steps", type=int, default=None, help="steps baked into sampler.onnx (default: recommended)"
    )
    p.add_argument("--solver", default=None, help="solver baked into sampler.onnx (default: recommended)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17-20")
    p.add_argument("--int8", action="store_true", help="also write velocity_int8.onnx, sampler_int8.onnx")
    p.add_argument("--calib-samples", type=int, default=64, help="int8: noises per calibration run")
    p.add_argument("--tolerance", type=float, default=0.10, help="int8: allowed relative FD increase")
    p.add_argument(
        "--int8-recipe",
        default="default",
        help="int8: default; float-cond-add (time-embedding adds in float, +0.6 dB, any CPU); vnni (8-bit weights "
        "too: only for files that run on VNNI/AMX CPUs, AVX2 saturates); naive, conv-only, s8s8, full-range, "
        "norm-int8, nchw for comparison",
    )
    _seed_and_threads(
        p, "seed of the validation and calibration noise", "CPU threads (torch and ONNX Runtime)"
    )

    p = sub.add_parser("bench")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--onnx-dir", default=None, help="folder with the exported .onnx files (default: shipped)")
    p.add_argument("-o", "--output-dir", default="bench", help="where bench.json and bench.png go")
    p.add_argument(
        "--backends",
        default=None,
        help=f"comma-separated subset of {', '.join(BENCH_BACKENDS)} (default: all of these), or torch-eager (CUDA without graphs), torch-bf16",
    )
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--nfe", default="1,2,4,8,16", help="comma-separated Euler step counts")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cell (after one warm-up)")
    p.add_argument("--quality-samples", type=int, default=1000, help="digits for FD per NFE (0: no quality)")
    _device_flag(p, "where the torch backends run (ONNX: CUDA provider with onnxruntime-gpu)")
    p.add_argument(
        "--memory-cap-gb",
        type=float,
        default=None,
        help="CUDA: cap this process's GPU memory (torch.cuda.set_per_process_memory_fraction), e.g. 10",
    )
    _seed_and_threads(p, "seed of the starting noise", "CPU threads (torch and ONNX Runtime)")

    p = sub.add_parser("demo")
    p.add_argument(
        "--model", default=None, help="folder with velocity.onnx and velocity_int8.onnx (default: shipped)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (0: any free port)")
    p.add_argument(
        "--checkpoint", default=None, help="PyTorch checkpoint for the reference column (needs torch)"
    )
    p.add_argument("--no-reference", action="store_true", help="no PyTorch fp32 column, even with torch")
    p.add_argument(
        "--student",
        default=None,
        help="export folder of a distilled student for a one-step column (default: the shipped student, "
        "with the shipped teacher)",
    )
    p.add_argument("--no-student", action="store_true", help="no one-step student column")
    p.add_argument("--queue-size", type=int, default=32, help="requests that may wait (more: 'queue full')")
    _device_flag(p, "where the models run (ONNX: CUDA provider with onnxruntime-gpu)")
    p.add_argument("--num-threads", type=int, default=None, help="CPU threads (torch and ONNX Runtime)")

    sub.add_parser("env")
    return parser


def config_from_args(cls, args: argparse.Namespace):
    """A config dataclass filled from the parsed flags of the same names (the rest keep their defaults)."""
    import dataclasses

    given = vars(args)
    return cls(**{f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given})


# command -> (module, function); each function takes the parsed args and returns the artifact path or None
COMMANDS = {
    "train": ("fm_edge.train", "main"),
    "distill": ("fm_edge.distill", "main"),
    "sample": ("fm_edge.sample", "main"),
    "evaluate": ("fm_edge.evaluate", "main"),
    "export": ("fm_edge.export.command", "main"),
    "bench": ("fm_edge.bench", "main"),
    "demo": ("fm_edge.demo.command", "main"),
    "env": ("fm_edge.envinfo", "main"),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fm_edge.errors import FmEdgeError

    module, func = COMMANDS[args.command]
    if args.command == "evaluate" and args.nfe_curve:
        module = "fm_edge.curve"
    try:
        result = getattr(importlib.import_module(module), func)(args)
    except FmEdgeError as exc:
        if os.environ.get("FM_EDGE_DEBUG") == "1":
            raise
        print(f"fm-edge {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        if os.environ.get("FM_EDGE_DEBUG") == "1":
            raise
        top = (exc.name or "").split(".")[0]
        extra = EXTRAS.get(top)
        hint = f"pip install 'fm-edge[{extra}]'" if extra else "reinstall fm-edge"
        print(f"fm-edge {args.command}: error: {top or exc} is not installed; run: {hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fm-edge {args.command}: interrupted", file=sys.stderr)
        return 130
    if result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
