"""Where the time goes: ONNX Runtime's own profiler (``SessionOptions.enable_profiling``), summed per op type.

Each node's kernel time is taken as its median over the repeats (robust to a busy machine pre-empting a
run), times how often the node runs per call. This is what ``docs/int8_findings.md`` compares fp32 with
int8 by: Q/DQ churn around the float GroupNorm islands, layout reorders, the int8 convs themselves.
numpy + onnxruntime; ``python -m fm_edge.quantize.profile A.onnx B.onnx --batch 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict

import numpy as np


def _feeds(batch: int, seed: int = 0) -> dict:
    from fm_edge.convention import MODEL_SIZE, NULL_LABEL, T_SCALE

    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((batch, 1, MODEL_SIZE, MODEL_SIZE), dtype=np.float32),
        "timestep": (rng.random(batch) * T_SCALE).astype(np.float32),
        "class_labels": (np.arange(batch) % (NULL_LABEL + 1)).astype(np.int64),
    }


def op_profile(
    model_path,
    batch: int = 2,
    repeats: int = 50,
    num_threads: int | None = 1,
    disabled_optimizers=(),
) -> dict:
    """{'per_op_ms': {op: ms per call}, 'nodes': {op: count}, 'total_ms', 'batch', 'model'} for one model."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if num_threads:
        so.intra_op_num_threads = num_threads
        so.inter_op_num_threads = 1
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = os.path.join(tmp, "prof")
        sess = ort.InferenceSession(
            str(model_path),
            so,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(disabled_optimizers),
        )
        feeds = _feeds(batch)
        for _ in range(max(1, repeats)):
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"]].append(e["dur"])
            op_of[e["name"]] = e["args"]["op_name"]
    per_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    for name, durs in per_node.items():
        runs_per_call = max(1, round(len(durs) / max(1, repeats)))
        per_op[op_of[name]] += float(np.median(durs)) * runs_per_call / 1e3
        nodes[op_of[name]] += 1
    per_op = dict(sorted(per_op.items(), key=lambda kv: -kv[1]))
    return {
        "model": os.path.basename(str(model_path)),
        "batch": batch,
        "total_ms": round(sum(per_op.values()), 3),
        "per_op_ms": {k: round(v, 3) for k, v in per_op.items()},
        "nodes": dict(nodes),
    }


def format_profiles(profiles: list[dict], top: int = 12) -> str:
    """One block per model: total, then the top op types with ms and share."""
    lines = []
    for p in profiles:
        lines.append(f"{p['model']} (batch {p['batch']}): {p['total_ms']:.2f} ms of kernels per call")
        for op, ms in list(p["per_op_ms"].items())[:top]:
            lines.append(f"  {op:24s} {ms:8.3f} ms {ms / p['total_ms']:6.1%}  ({p['nodes'][op]} nodes)")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="per-op-type ORT profile of velocity models")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--num-threads", type=int, default=1)
    ap.add_argument("--disable", default="", help="comma-separated ORT optimizers to disable")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    dis = [d for d in a.disable.split(",") if d]
    profs = [op_profile(m, a.batch, a.repeats, a.num_threads, dis) for m in a.models]
    print(format_profiles(profs))
    if a.json:
        from fm_edge.atomic import write_bytes

        write_bytes(a.json, json.dumps(profs, indent=2).encode())


if __name__ == "__main__":
    main()
