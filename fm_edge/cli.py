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

# Which extra provides each heavy import, for the "missing extra" message.
EXTRAS = {
    "torch": "train",
    "diffusers": "train",
    "datasets": "train",
    "accelerate": "train",
    "safetensors": "train",
    "torchdiffeq": "train",
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
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--shift", type=float, default=None, help="time-grid shift (>1: more steps near noise)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fm-edge", description="Flow-matching MNIST digits, from training to the edge."
    )
    parser.add_argument("--version", action="version", version=f"fm-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a flow-matching UNet on MNIST (resumable)")
    p.add_argument("-o", "--output-dir", default="runs/compact", help="run folder (checkpoints and model/)")
    p.add_argument("--preset", default="compact", help="model preset: compact, ddpm-cifar10-32 or tiny")
    p.add_argument(
        "--data", default=None, help="local MNIST folder in the hub layout (default: hub ylecun/mnist)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--epochs", type=float, default=10.0)
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs)"
    )
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint-<step> folder")
    p.add_argument("--time-sampling", default="uniform", help="uniform or logit-normal")
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA, or CPUs with AVX512-BF16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=None)

    p = sub.add_parser("sample", help="sample digits in a few ODE steps")
    p.add_argument("--model", default=None, help="checkpoint folder, or velocity .onnx with --backend onnx")
    p.add_argument("--backend", default="torch", help="torch, onnx or torchao (int8)")
    _sampler_flags(p)
    p.add_argument("--num-samples", type=int, default=100)
    p.add_argument(
        "--label", type=int, default=None, help="digit 0-9 (10 = unconditional); default cycles 0-9"
    )
    p.add_argument("--unconditional", action="store_true", help="sample with the null label")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--reference", action="store_true", help="also solve with dopri5 and report the distance")
    p.add_argument("-o", "--output", default="samples.png", help="out.npz (images, labels) or out.png (grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=None)

    p = sub.add_parser(
        "evaluate", help="FD, label accuracy and class histogram of samples.npz (or --nfe-curve)"
    )
    p.add_argument("samples", nargs="?", help="an .npz written by fm-edge sample")
    p.add_argument("--json", default=None, help="also write the report as JSON here")
    p.add_argument("--nfe-curve", action="store_true", help="instead: quality against NFE for a checkpoint")
    p.add_argument("--model", default=None, help="--nfe-curve: checkpoint folder (default: the shipped one)")
    p.add_argument("--solvers", default="euler,heun", help="--nfe-curve: solvers to compare")
    p.add_argument("--steps-list", default="1,2,4,8,16,32", help="--nfe-curve: step counts")
    p.add_argument("--num-samples", type=int, default=2000, help="--nfe-curve: samples per point")
    p.add_argument("--reference-samples", type=int, default=100, help="--nfe-curve: dopri5 subset (0: skip)")
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--shift", type=float, default=None)
    p.add_argument("-o", "--output-dir", default="eval", help="--nfe-curve: where nfe_curve.json/.png go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=None)

    p = sub.add_parser(
        "export", help="export the velocity net and the whole sampler to ONNX (--int8: quantize)"
    )
    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("-o", "--output-dir", default="onnx", help="folder for velocity.onnx, sampler.onnx, ...")
    p.add_argument("--sampler-steps", type=int, default=None, help="steps baked into sampler.onnx")
    p.add_argument("--solver", default=None, help="solver baked into sampler.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17-20")
    p.add_argument("--int8", action="store_true", help="also write velocity_int8.onnx, sampler_int8.onnx")
    p.add_argument("--calib-samples", type=int, default=64, help="int8: noises per calibration run")
    p.add_argument("--tolerance", type=float, default=0.10, help="int8: allowed relative FD increase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=None)

    p = sub.add_parser("bench", help="latency and quality of every backend; table, JSON and PNG")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--onnx-dir", default=None, help="folder with the exported .onnx files")
    p.add_argument("-o", "--output-dir", default="bench", help="where bench.json and bench.png go")
    p.add_argument("--backends", default=None, help="comma-separated subset of backends")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--nfe", default="1,2,4,8,16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quality-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=None)

    p = sub.add_parser("demo", help="Gradio demo: int8 next to fp32 from the same noise")
    p.add_argument(
        "--model", default=None, help="folder with velocity.onnx and velocity_int8.onnx (default: shipped)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--checkpoint", default=None, help="PyTorch checkpoint for the reference column (needs torch)"
    )
    p.add_argument("--no-reference", action="store_true", help="no PyTorch fp32 column, even with torch")
    p.add_argument("--queue-size", type=int, default=32, help="requests that may wait (more: 'queue full')")
    p.add_argument("--num-threads", type=int, default=None)

    sub.add_parser("env", help="versions, CPU features and providers (for bug reports)")
    return parser


# command -> (module, function); each function takes the parsed args and returns the artifact path or None
COMMANDS = {
    "train": ("fm_edge.train", "main"),
    "sample": ("fm_edge.sample", "main"),
    "evaluate": ("fm_edge.evaluate", "main"),
    "export": ("fm_edge.export.command", "main"),
    "bench": ("fm_edge.bench", "main"),
    "demo": ("fm_edge.demo", "main"),
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
