"""The int8/bf16-relevant ISA of this CPU, as `fm-edge env` prints it and quantization.json records it (Linux
/proc/cpuinfo; empty elsewhere).

Without VNNI, x86 int8 GEMMs multiply uint8 x int8 pairs with ``vpmaddubsw`` (16 MACs per 256-bit op into
saturating int16) instead of ``vpdpbusd``; this bounds what int8 can gain over fp32 FMA on AVX2 to ~2x per
conv, before any Q/DQ overhead.
"""

from __future__ import annotations

import platform
import sys

FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def isa_seen(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """{'model', 'flags': [...present of FLAGS], 'vnni': bool, 'amx': bool, 'bf16': bool (native bf16 dot
    products: AVX512-BF16 or AMX), 'int8_path': str}."""
    have: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags") and not have:
                    have = set(line.split(":", 1)[1].split())
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = [f for f in FLAGS if f in have]
    vnni = "avx512_vnni" in have or "avx_vnni" in have
    amx = "amx_int8" in have
    if amx:
        path = "AMX int8 tiles"
    elif vnni:
        path = "VNNI (vpdpbusd)"
    elif "avx2" in have:
        path = "AVX2 without VNNI (vpmaddubsw + vpmaddwd)"
    else:
        path = "unknown (no /proc/cpuinfo flags)" if not have else "pre-AVX2"
    bf16 = "avx512_bf16" in have or "amx_bf16" in have
    return {"model": model, "flags": flags, "vnni": vnni, "amx": amx, "bf16": bf16, "int8_path": path}


def warn_emulated_bf16(device: str, isa: dict | None = None) -> bool:
    """For bf16 autocast on ``device``: one line on stderr when that is this CPU and it has no native bf16 (no
    AVX512-BF16, no AMX), where autocast emulates it."""
    if device != "cpu":
        return False
    isa = isa or isa_seen()
    if not isa["flags"] or isa["bf16"]:  # unknown CPU (no /proc/cpuinfo), or native bf16
        return False
    print(
        f"warning: bf16 autocast on {isa['model']}, which has no AVX512-BF16 or AMX, is emulated and several "
        "times slower than fp32: drop --bf16 here",
        file=sys.stderr,
    )
    return True
