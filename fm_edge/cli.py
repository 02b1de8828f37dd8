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

#: command -> (one-line summary for fm-edge --help, description for fm-edge COMMAND --help)
HELP = {
    "train": (
        "train a flow-matching UNet on MNIST (resumable)",
        "Writes checkpoint-<step>/ folders (weights, EMA, optimizer; atomic) and, at the end, model/: a diffusers save_pretrained folder with the EMA weights, fm_edge.json and a model card.",
    ),
    "distill": (
        "distill a guided teacher into a 1-, 2-, 4- or 8-step student (guidance baked in; resumable)",
        "Writes checkpoint-<step>/ folders (atomic, resumable like train) and model/: a checkpoint that samples in --student-steps Euler steps with one network evaluation per step and no CFG batch.",
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
    "web": (
        "static site: digits in the browser with onnxruntime-web (no server code)",
        "Writes a folder any static host serves: a page that runs the int8 sampler (and, behind a checkbox, its fp32 sibling from the same noise) with onnxruntime-web's WASM or WebGPU backend; the runtime's files come from npm ci --prefix web.",
    ),
    "env": (
        "versions, CPU features and providers (for bug reports)",
        "Prints the versions of fm-edge's dependencies, the CPU's int8/bf16 features and ORT's providers.",
    ),
}


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


class _Parser(argparse.ArgumentParser):
    """Bad flags give the one-line error every command gives (no usage block), and a value outside a flag's
    ``choices`` is named with what is allowed."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            flag = "/".join(action.option_strings) or action.dest
            allowed = ", ".join(map(str, action.choices))
            raise argparse.ArgumentError(None, f"{flag} {value!r} is unknown: choose one of {allowed}")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each command's module declares its flags in ``add_arguments``."""
    from fm_edge.flags import Formatter

    parser = _Parser(prog="fm-edge", description="Flow-matching MNIST digits, from training to the edge.")
    parser.add_argument("--version", action="version", version=f"fm-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, _) in COMMANDS.items():
        summary, description = HELP[name]
        p = sub.add_parser(
            name, help=summary, description=f"{summary}.\n\n{description}", formatter_class=Formatter
        )
        importlib.import_module(module).add_arguments(p)
    return parser


# command -> (module, function); each function takes the parsed args and returns the artifact path or None
COMMANDS = {
    "train": ("fm_edge.train", "main"),
    "distill": ("fm_edge.distill", "main"),
    "sample": ("fm_edge.sample", "main"),
    "evaluate": ("fm_edge.evaluate", "main"),
    "export": ("fm_edge.export.command", "main"),
    "bench": ("fm_edge.bench", "main"),
    "demo": ("fm_edge.demo.command", "main"),
    "web": ("fm_edge.web.command", "main"),
    "env": ("fm_edge.envinfo", "main"),
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad flag (already reported in one line)
        return exc.code if isinstance(exc.code, int) else 1
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
