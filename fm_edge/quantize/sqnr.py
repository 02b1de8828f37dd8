"""Quality of an int8 model against its fp32 original: SQNR in dB (per layer and end to end) and the PSNR of
final images sampled from the same noise.

Per-layer SQNR compares each Conv/Gemm/MatMul output tensor of the QDQ graph (run unfused, so it is the
exact fake-quant arithmetic: every error upstream plus this layer's own weight and input rounding) with the
same tensor of the float graph, over the same inputs. numpy + onnx + onnxruntime.
"""

from __future__ import annotations

import numpy as np

from fm_edge.metrics import sqnr_db
from fm_edge.quantize import graph as G


def _run_exposed(model, names: list[str], feeds: dict) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(G.load(model))
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(names, feeds)
    return dict(zip(names, outs, strict=True))


def layer_sqnr(fp32_model, int8_model, feeds: dict) -> list[dict]:
    """[{'node', 'op', 'sqnr_db', 'int8'}] for every Conv/Gemm/MatMul of the int8 graph, in graph order."""
    f = G.load(fp32_model)
    q = G.load(int8_model)
    float_out = {n.name: n.output[0] for n in f.graph.node if n.op_type in G.MAC_OPS}
    q8 = set(G.int8_nodes(q))
    rows = [(n.name, n.op_type, n.output[0]) for n in q.graph.node if n.name in float_out]
    ref = _run_exposed(f, [float_out[r[0]] for r in rows], feeds)
    got = _run_exposed(q, [r[2] for r in rows], feeds)
    return [
        {
            "node": node,
            "op": op,
            "sqnr_db": round(sqnr_db(ref[float_out[node]], got[t]), 2),
            "int8": node in q8,
        }
        for node, op, t in rows
    ]


def output_sqnr(fp32_model, int8_model, feeds: dict) -> float:
    """End-to-end SQNR of the velocity output over ``feeds``."""
    out = G.load(fp32_model).graph.output[0].name
    return sqnr_db(_run_exposed(fp32_model, [out], feeds)[out], _run_exposed(int8_model, [out], feeds)[out])
