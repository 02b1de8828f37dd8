"""Facts about an ONNX velocity graph that the int8 recipe needs: is it already quantized, which nodes are
which (first/last conv, the time/class embedding, attention, norms), MACs per node, and how much of the
weights and MACs an int8 graph really runs in int8.

Node roles are found from the graph's structure, not from node names, so they hold for any exporter.
onnx + numpy (+ onnxruntime for MAC counting: shapes are read off one batch-1 run).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from fm_edge.errors import UsageError

#: Op types that only appear in an already-quantized graph.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
        "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
        "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax", "QGemm",
        "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits",
    }
)  # fmt: skip
MAC_OPS = ("Conv", "Gemm", "MatMul")
NORM_OPS = ("InstanceNormalization", "GroupNormalization", "LayerNormalization")
#: A norm's float chain (norm, affine, activation) ends at these.
STOP_OPS = (*MAC_OPS, "Concat", "Softmax", "Resize")
INT8_TYPES = (np.int8, np.uint8)


def load(model):
    """An onnx.ModelProto from a path or a ModelProto; a clear error for a missing or corrupt file."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except FileNotFoundError:
        raise UsageError(f"{str(model)!r} does not exist: expected an fp32 velocity.onnx") from None
    except Exception as exc:  # DecodeError and friends: a truncated or non-ONNX file
        raise UsageError(f"{str(model)!r} is not a readable ONNX model ({type(exc).__name__})") from None


def quantized_ops(model) -> list[str]:
    """The quantization op types present in the graph (empty for a float graph)."""
    return sorted({n.op_type for n in load(model).graph.node if n.op_type in QUANTIZED_OPS})


def opset(model) -> int:
    m = load(model)
    return max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _producers(graph) -> dict[str, object]:
    return {o: n for n in graph.node for o in n.output}


def _consumers(graph) -> dict[str, list]:
    out = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            out[i].append(n)
    return out


#: Ops whose output carries only the input's shape, not its values.
SHAPE_OPS = ("Shape", "Size")


def depends_on(graph, source: str) -> set[str]:
    """Names of the nodes whose values depend on graph input ``source`` (a Shape of it does not count)."""
    cons = _consumers(graph)
    seen: set[str] = set()
    frontier = [source]
    while frontier:
        name = frontier.pop()
        for n in cons.get(name, []):
            if n.name not in seen and n.op_type not in SHAPE_OPS:
                seen.add(n.name)
                frontier.extend(n.output)
    return seen


def roles(model, sample_input: str = "sample") -> dict[str, list[str]]:
    """Node names by role, found from the graph structure.

    - ``first_conv``: the Conv(s) nearest the ``sample`` input (no Conv on the way there);
    - ``last_conv``: the Conv(s) nearest a graph output (no Conv on the way from there);
    - ``embedding``: MAC nodes that do not depend on ``sample`` (time and class embedding MLPs and the
      per-block time projections: they see [B, C] vectors, not images);
    - ``conditioning``: every node whose values do not depend on ``sample`` (the sinusoidal time
      embedding, its MLP, the class embedding and the per-block projections);
    - ``attention``: MatMuls whose two inputs are both activations (q@k^T, attn@v) and Softmax;
    - ``norm``: InstanceNormalization / GroupNormalization / LayerNormalization nodes;
    - ``norm_chain``: each norm with the Reshape feeding it and the elementwise nodes after it that see
      only its result (the GroupNorm affine and the SiLU), up to the next Conv/MatMul/Gemm/Concat;
    - ``conditioning_add``: Adds that mix a conditioning tensor into an activation (a ResNet's
      ``conv1(x) + time_emb_proj(t)``); their output feeds the float GroupNorm, so in int8 they cost a
      QLinearAdd plus a Q and a DQ where float costs one DQ and one Add;
    - ``conv``, ``gemm``, ``matmul``: every node of that op type.
    """
    m = load(model)
    g = m.graph
    prod, cons = _producers(g), _consumers(g)
    inits = {i.name for i in g.initializer}
    on_sample = depends_on(g, sample_input)
    graph_inputs = [i.name for i in g.input if i.name not in inits and i.name != sample_input]
    on_cond = set().union(*(depends_on(g, i) for i in graph_inputs))  # time / label dependent

    def nearest(starts, step):
        found, seen, frontier = [], set(), list(starts)
        while frontier:
            n = frontier.pop()
            if n is None or n.name in seen:
                continue
            seen.add(n.name)
            if n.op_type == "Conv":
                found.append(n.name)
                continue
            frontier.extend(step(n))
        return sorted(set(found))

    def downstream(n):
        return [c for o in n.output for c in cons.get(o, []) if c.op_type not in SHAPE_OPS]

    def upstream(n):
        return [prod[i] for i in n.input if i in prod and prod[i].name in on_sample]

    first = nearest([c for c in cons.get(sample_input, []) if c.op_type not in SHAPE_OPS], downstream)
    last = nearest([prod.get(o.name) for o in g.output], upstream)
    norms = [n for n in g.node if n.op_type in NORM_OPS]
    chain: set[str] = set()
    for nn in norms:
        chain.add(nn.name)
        p = prod.get(nn.input[0])
        if p is not None and p.op_type == "Reshape":
            chain.add(p.name)
    changed = True
    while changed:  # grow forward: a node joins when all its activation inputs come from the chain
        changed = False
        for n in g.node:
            if n.name in chain or n.op_type in STOP_OPS or n.op_type in SHAPE_OPS:
                continue
            acts = [
                i for i in n.input if i and i not in inits and i in prod and prod[i].op_type != "Constant"
            ]
            acts = [i for i in acts if prod[i].name in on_sample]
            if acts and all(prod[i].name in chain for i in acts):
                chain.add(n.name)
                changed = True
    r = {
        "first_conv": first,
        "last_conv": last,
        "embedding": [n.name for n in g.node if n.op_type in MAC_OPS and n.name not in on_sample],
        "conditioning": [n.name for n in g.node if n.name not in on_sample and n.op_type not in SHAPE_OPS],
        "attention": [
            n.name
            for n in g.node
            if (n.op_type == "MatMul" and n.name in on_sample and not any(i in inits for i in n.input[:2]))
            or n.op_type == "Softmax"
        ],
        "conditioning_add": [
            n.name
            for n in g.node
            if n.op_type == "Add"
            and n.name in on_sample
            and any(i in prod and prod[i].name in on_cond and prod[i].name not in on_sample for i in n.input)
        ],
        "norm": [n.name for n in norms],
        "norm_chain": [n.name for n in g.node if n.name in chain],
        "conv": [n.name for n in g.node if n.op_type == "Conv"],
        "gemm": [n.name for n in g.node if n.op_type == "Gemm"],
        "matmul": [n.name for n in g.node if n.op_type == "MatMul"],
    }
    return r


def node_macs(model, batch: int = 1) -> dict[str, int]:
    """Multiply-accumulates per Conv/Gemm/MatMul node at batch ``batch`` of a float graph.

    Shapes are read off one ORT run with every MAC node's output exposed (exported UNets lose static
    shapes behind their GroupNorm reshapes, so shape inference alone cannot say).
    """
    import onnx
    import onnxruntime as ort

    from fm_edge.convention import MODEL_SIZE

    m = onnx.ModelProto()
    m.CopyFrom(load(model))
    g = m.graph
    nodes = [n for n in g.node if n.op_type in MAC_OPS]
    have = {o.name for o in g.output}
    inits = {i.name: i for i in g.initializer}
    extra = {n.output[0] for n in nodes} | {n.input[0] for n in nodes if n.op_type != "Conv"}
    for name in sorted(extra - have - set(inits)):
        g.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {
        "sample": np.zeros((batch, 1, MODEL_SIZE, MODEL_SIZE), np.float32),
        "timestep": np.full(batch, 500.0, np.float32),
        "class_labels": np.zeros(batch, np.int64),
    }
    names = [o.name for o in sess.get_outputs()]
    shapes = {n: np.shape(v) for n, v in zip(names, sess.run(None, feeds), strict=True)}
    macs = {}
    for n in nodes:
        out = shapes[n.output[0]]
        if n.op_type == "Conv":
            w = inits[n.input[1]].dims
            macs[n.name] = int(np.prod(out)) * int(np.prod(w[1:]))
        else:  # Gemm / MatMul: out elements x reduction length
            a = shapes.get(n.input[0])
            k = a[-1] if a is not None else 0
            if n.op_type == "Gemm" and any(at.name == "transA" and at.i for at in n.attribute):
                k = a[0]
            macs[n.name] = int(np.prod(out)) * int(k)
    return macs


def int8_nodes(qmodel) -> list[str]:
    """Nodes of a QDQ graph whose activation input and weight both come from DequantizeLinear."""
    g = load(qmodel).graph
    prod = _producers(g)

    def from_dq(name):
        p = prod.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    return [
        n.name
        for n in g.node
        if (n.op_type in MAC_OPS and len(n.input) >= 2 and from_dq(n.input[0]) and from_dq(n.input[1]))
        or n.op_type.startswith("QLinear")
        or n.op_type in ("QGemm", "ConvInteger", "MatMulInteger")
    ]


def weight_fractions(fp32_model, qmodel, macs: dict[str, int]) -> dict:
    """Fraction of the float graph's MAC-node weights and MACs that run in int8 in ``qmodel``."""
    f = load(fp32_model).graph
    inits = {i.name: int(np.prod(i.dims, dtype=np.int64)) for i in f.initializer}
    params = {n.name: inits.get(n.input[1], 0) for n in f.node if n.op_type in MAC_OPS and len(n.input) > 1}
    q8 = {n.removesuffix("_quant") for n in int8_nodes(qmodel)}  # QOperator nodes are named <node>_quant
    total_w = sum(params.values()) or 1
    total_m = sum(macs.values()) or 1
    return {
        "weights_int8_fraction": round(sum(v for k, v in params.items() if k in q8) / total_w, 4),
        "macs_int8_fraction": round(sum(v for k, v in macs.items() if k in q8) / total_m, 4),
        "mac_weights_total": int(total_w),
        "macs_per_image": int(total_m),
    }
