"""``fm-edge env``: versions, CPU features and execution providers, for bug reports and benchmarks."""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys

from fm_edge import __version__
from fm_edge.quantize.cpu import isa_seen

PACKAGES = (
    "numpy",
    "torch",
    "diffusers",
    "datasets",
    "accelerate",
    "onnx",
    "onnxruntime",
    "torchao",
    "gradio",
)


def collect() -> dict:
    isa = isa_seen()
    info = {
        "fm_edge": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": isa["model"],
        "cpu_flags": isa["flags"],
        "int8_path": isa["int8_path"],
    }
    for name in PACKAGES:
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = None
    return info


def add_arguments(p) -> None:
    """``fm-edge env`` takes no flags."""


def main(args) -> None:
    info = collect()
    for key, val in info.items():
        shown = ", ".join(val) if isinstance(val, list) else (val if val is not None else "not installed")
        print(f"{key:12s} {shown}")
    if info["onnxruntime"]:
        import onnxruntime as ort

        print(f"{'ort EPs':12s} {', '.join(ort.get_available_providers())}")
