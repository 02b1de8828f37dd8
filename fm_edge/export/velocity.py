"""velocity.onnx: the UNet as one ONNX graph, ``(sample, timestep, class_labels) -> velocity``.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), chosen explicitly. On this
UNet with torch 2.13 both exporters give graphs that ONNX Runtime runs and that match PyTorch to ~2e-6, but
the TorchScript one exports in ~1 s instead of ~50 s, writes opset 17 natively (the dynamo exporter builds
opset 18 and down-converts), and needs no extra dependency (the dynamo exporter needs ``onnxscript``). Its
graph is plain ONNX: GroupNorm becomes Reshape + InstanceNormalization, never GroupNormalization-21.
It is deprecated upstream; the pin ``torch<=2.13`` keeps it available, and ``dynamo=True`` is the way out.
"""

from __future__ import annotations

import io
import warnings

from fm_edge.convention import MODEL_SIZE, VELOCITY_INPUTS, VELOCITY_OUTPUT
from fm_edge.errors import UsageError

INPUTS = tuple(VELOCITY_INPUTS)
OUTPUT = VELOCITY_OUTPUT
OPSETS = range(17, 21)  # opset 21 brings GroupNormalization-21, which ORT's CPU provider may lack
EXPORT_BATCH = 2  # traced batch; validation runs at other sizes to prove the batch axis is dynamic


def check_opset(opset: int) -> None:
    if opset not in OPSETS:
        raise UsageError(f"opset {opset} is not supported: use {OPSETS.start} to {OPSETS.stop - 1}")


def _wrapper(model):
    import torch

    class Velocity(torch.nn.Module):
        """Positional tensors in, the velocity tensor out (diffusers returns a dataclass)."""

        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, class_labels):
            return self.unet(sample, timestep, class_labels=class_labels).sample

    return Velocity(model).eval()


def export_velocity(model, opset: int = 17, metadata: dict[str, str] | None = None):
    """Export a UNet2DModel to an in-memory onnx ModelProto with a dynamic batch axis and metadata."""
    import onnx
    import torch

    from fm_edge.export.metadata import set_metadata

    check_opset(opset)
    g = torch.Generator().manual_seed(0)
    args = (
        torch.randn(EXPORT_BATCH, 1, MODEL_SIZE, MODEL_SIZE, generator=g),
        torch.rand(EXPORT_BATCH, generator=g) * 1000.0,
        torch.tensor([3, 10], dtype=torch.int64),
    )
    batch = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings for diffusers' shape asserts and the legacy-exporter deprecation: expected here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _wrapper(model),
            args,
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={name: batch for name in (*INPUTS, OUTPUT)},
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    _keep_timestep_input(proto)
    proto.producer_name, proto.doc_string = (
        "fm-edge",
        "fm-edge flow-matching velocity net (see metadata_props)",
    )
    set_metadata(proto, metadata or {})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _keep_timestep_input(proto) -> None:
    """A time-free net (a one-step student) ignores ``timestep`` and the exporter drops it; put it back as an
    unused input so every velocity.onnx has the same three inputs (ORT accepts and ignores it)."""
    import onnx

    if any(i.name == INPUTS[1] for i in proto.graph.input):
        return
    t = onnx.helper.make_tensor_value_info(INPUTS[1], onnx.TensorProto.FLOAT, ["batch"])
    proto.graph.input.insert(1, t)
