"""``fm-edge env``: versions, CPU features and execution providers, for bug reports and benchmarks."""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys

from fm_edge import __version__

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
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_flags() -> list[str]:
    """The int8/bf16-relevant ISA extensions this CPU reports (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in have]
    except OSError:
        pass
    return []


def collect() -> dict:
    info = {
        "fm_edge": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_flags": cpu_flags(),
    }
    for name in PACKAGES:
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = None
    return info


def main(args) -> None:
    info = collect()
    for key, val in info.items():
        shown = ", ".join(val) if isinstance(val, list) else (val if val is not None else "not installed")
        print(f"{key:12s} {shown}")
    if info["onnxruntime"]:
        import onnxruntime as ort

        print(f"{'ort EPs':12s} {', '.join(ort.get_available_providers())}")
