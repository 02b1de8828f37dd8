"""sampler.onnx: the whole few-step sampler in one ONNX graph, ``(noise, class_labels, cfg_scale) -> images``.

How the weights are stored once: the velocity graph becomes one model-local ONNX *function*
(``fm_edge.velocity``) whose formal inputs are ``sample, timestep, class_labels`` followed by every weight.
The main graph holds the weights once, as initializers, and unrolls the solver: each velocity evaluation is a
single call node that passes the shared initializers in. ONNX Runtime inlines the calls at load time, so it
sees a plain graph (no control flow) and the weights exist once in the file and in memory. Any velocity graph
with the three named inputs works, so the int8 (QDQ) velocity model can be wrapped the same way.

The graph mirrors :func:`fm_edge.solvers.sample` operation for operation (same float32 constants, same order):

1. ``labels2 = [class_labels, 10...]`` once: classifier-free guidance batches cond + uncond in one call;
2. for each step from t to s of the fixed time grid, the chosen Runge-Kutta stages, each
   ``v = v_u + cfg_scale * (v_c - v_u)`` from one call on ``[x, x]`` at timestep ``float32(t) * 1000``;
3. decode: crop the padding, ``(x + 1) * 127.5``, round half to even, clip to 0..255, cast to uint8.

A guidance-distilled student (metadata ``guidance`` = ``distilled``, see :mod:`fm_edge.distill`) has the
guidance in its weights: its graph makes ONE velocity call per stage on ``x`` with ``class_labels`` (no doubled
batch), so a 1-step student runs one network evaluation per image. It keeps the same three inputs so apps need
not care which file they hold, and it ignores ``cfg_scale`` (any value gives the same digits; the scale baked
in is in the metadata as ``distilled_cfg_scale``), just as the Python sampler runs it at ``cfg_scale`` 1.
"""

from __future__ import annotations

import numpy as np

from fm_edge.convention import (
    IMAGE_SIZE,
    MODEL_SIZE,
    NULL_LABEL,
    PAD,
    SAMPLER_INPUTS,
    SAMPLER_OUTPUT,
    T_SCALE,
    VELOCITY_INPUTS,
)
from fm_edge.errors import UsageError
from fm_edge.solvers import check_solver, time_grid

DOMAIN = "fm_edge"
FUNCTION = "velocity"
INPUTS = tuple(SAMPLER_INPUTS)
OUTPUT = SAMPLER_OUTPUT
GUIDANCE = ("cfg", "distilled")


def timestep_value(t: float) -> np.float32:
    """The scaled timestep exactly as the torch and ORT backends compute it: float32(t) * float32(1000)."""
    return np.float32(t) * np.float32(T_SCALE)


def velocity_function(velocity):
    """The velocity graph as a FunctionProto; returns (function, initializers in formal-input order)."""
    from onnx import helper

    graph = velocity.graph
    init_names = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in init_names]
    if tuple(inputs) != tuple(VELOCITY_INPUTS) or len(graph.output) != 1:
        raise UsageError(
            f"velocity model has inputs {inputs} and {len(graph.output)} outputs; "
            f"expected inputs {list(VELOCITY_INPUTS)} and one output"
        )
    if graph.sparse_initializer:
        raise UsageError("velocity model has sparse initializers, which sampler.onnx cannot share")
    inits = list(graph.initializer)
    func = helper.make_function(
        DOMAIN,
        FUNCTION,
        inputs=[*inputs, *(t.name for t in inits)],
        outputs=[graph.output[0].name],
        nodes=list(graph.node),
        opset_imports=[o for o in velocity.opset_import if o.domain != DOMAIN],
        doc_string="the fm-edge velocity net; weights are passed in from the main graph's initializers",
    )
    return func, inits


class _Builder:
    """Appends nodes to the main graph; values get short unique names and nodes none (ORT names them).

    Short names matter: each velocity call lists every weight, so its bytes are the file's per-call cost.
    """

    def __init__(self, opset: int):
        self.nodes, self.n, self.opset = [], 0, opset

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}{self.n}"

    def op(
        self, op_type: str, *inputs: str, domain: str = "", outputs: int = 1, hint: str | None = None, **attrs
    ):
        from onnx import helper

        outs = [self.name(hint or "a") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain, **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value, dtype=np.float32, hint: str = "c") -> str:
        from onnx import numpy_helper

        arr = np.asarray(value, dtype=dtype)
        return self.op("Constant", hint=hint, value=numpy_helper.from_array(arr))


def build_sampler(
    velocity,
    solver: str,
    steps: int,
    shift: float = 1.0,
    metadata: dict[str, str] | None = None,
    guidance: str | None = None,
):
    """Wrap a velocity ModelProto into the sampler ModelProto (solver and steps fixed here).

    ``guidance``: ``"cfg"`` (doubled batch, ``cfg_scale`` used) or ``"distilled"`` (one call per stage,
    ``cfg_scale`` ignored); by default the ``guidance`` entry of ``metadata``, else ``"cfg"``.
    """
    import onnx
    from onnx import TensorProto, helper

    from fm_edge.export.metadata import set_metadata

    check_solver(solver, steps)
    guidance = guidance or (metadata or {}).get("guidance", "cfg")
    if guidance not in GUIDANCE:
        raise UsageError(f"unknown guidance {guidance!r}: choose one of {', '.join(GUIDANCE)}")
    func, inits = velocity_function(velocity)
    opset = next(o.version for o in velocity.opset_import if o.domain in ("", "ai.onnx"))
    b = _Builder(opset)
    weights = [f"w{i}" for i in range(len(inits))]

    # 1. guidance batch: labels2 = [class_labels, 10, ..., 10], and its shape [2B] for the timesteps
    #    (a distilled student needs neither: its calls take x, class_labels and their shape [B])
    if guidance == "cfg":
        null = b.op("Add", b.op("Mul", "class_labels", b.const(0, np.int64)), b.const(NULL_LABEL, np.int64))
        labels2 = b.op("Concat", "class_labels", null, axis=0, hint="labels2")
        shape2 = b.op("Shape", labels2, hint="shape2")
    else:
        shape1 = b.op("Shape", "class_labels", hint="shape1")

    def v_distilled(x: str, t: float) -> str:
        tt = b.op("Expand", b.const([timestep_value(t)]), shape1, hint="t")
        return b.op(FUNCTION, x, tt, "class_labels", *weights, domain=DOMAIN, hint="v")

    def v(x: str, t: float) -> str:
        if guidance == "distilled":
            return v_distilled(x, t)
        x2 = b.op("Concat", x, x, axis=0, hint="x2")
        tt = b.op("Expand", b.const([timestep_value(t)]), shape2, hint="t")
        both = b.op(FUNCTION, x2, tt, labels2, *weights, domain=DOMAIN, hint="vv")
        split = {"num_outputs": 2} if opset >= 18 else {}
        vc, vu = b.op("Split", both, outputs=2, axis=0, hint="vh", **split)
        return b.op("Add", vu, b.op("Mul", "cfg_scale", b.op("Sub", vc, vu)), hint="v")

    def axpy(x: str, a: float, k: str) -> str:  # x - a * k, as numpy computes x - a * k with a python float
        return b.op("Sub", x, b.op("Mul", b.const(a), k), hint="x")

    # 2. the solver, unrolled over the fixed time grid: a copy of fm_edge.solvers.sample's steps, held to it
    #    by tests/test_solvers.py on a known velocity field (change both together)
    ts = time_grid(steps, shift)
    x = "noise"
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        h = t - s
        k1 = v(x, t)
        if solver == "euler":
            x = axpy(x, h, k1)
        elif solver == "midpoint":
            k2 = v(axpy(x, 0.5 * h, k1), t - 0.5 * h)
            x = axpy(x, h, k2)
        elif solver == "heun":
            if i < steps - 1:
                k2 = v(axpy(x, h, k1), s)
                x = axpy(x, 0.5 * h, b.op("Add", k1, k2))
            else:  # the final step ends at t=0: Euler
                x = axpy(x, h, k1)
        else:  # rk4: x - h/6 * (k1 + 2*k2 + 2*k3 + k4), summed left to right like Python
            k2 = v(axpy(x, 0.5 * h, k1), t - 0.5 * h)
            if i < steps - 1:
                k3 = v(axpy(x, 0.5 * h, k2), t - 0.5 * h)
                k4 = v(axpy(x, h, k3), s)
                two = b.const(2.0)
                acc = b.op("Add", k1, b.op("Mul", two, k2))
                acc = b.op("Add", acc, b.op("Mul", two, k3))
                x = axpy(x, h / 6.0, b.op("Add", acc, k4))
            else:  # the final step ends at t=0: midpoint
                x = axpy(x, h, k2)

    # 3. decode: crop the padding, [-1, 1] -> [0, 255], round half to even, clip, uint8
    lo, hi = PAD, PAD + IMAGE_SIZE
    crop = b.op(
        "Slice", x, b.const([lo, lo], np.int64), b.const([hi, hi], np.int64), b.const([2, 3], np.int64)
    )
    crop = b.op("Squeeze", crop, b.const([1], np.int64))
    pix = b.op("Round", b.op("Mul", b.op("Add", crop, b.const(1.0)), b.const(127.5)))
    pix = b.op("Clip", pix, b.const(0.0), b.const(255.0))
    b.nodes.append(helper.make_node("Cast", [pix], [OUTPUT], to=TensorProto.UINT8))

    initializers = []
    for name, t in zip(weights, inits, strict=True):
        w = onnx.TensorProto()
        w.CopyFrom(t)
        w.name = name
        initializers.append(w)
    graph = helper.make_graph(
        b.nodes,
        "fm_edge_sampler",
        inputs=[
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["batch", 1, MODEL_SIZE, MODEL_SIZE]),
            helper.make_tensor_value_info("class_labels", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("cfg_scale", TensorProto.FLOAT, []),
        ],
        outputs=[helper.make_tensor_value_info(OUTPUT, TensorProto.UINT8, ["batch", IMAGE_SIZE, IMAGE_SIZE])],
        initializer=initializers,
    )
    opsets = [o for o in velocity.opset_import if o.domain != DOMAIN] + [helper.make_opsetid(DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[func], producer_name="fm-edge")
    model.ir_version = max(velocity.ir_version, 8)  # model-local functions need IR >= 8
    how = "CFG in-graph" if guidance == "cfg" else "guidance distilled into the weights, cfg_scale ignored"
    model.doc_string = f"fm-edge sampler: {solver} x {steps} steps, {how}, uint8 digits (see metadata_props)"
    set_metadata(model, metadata or {})
    onnx.checker.check_model(model)
    return model
