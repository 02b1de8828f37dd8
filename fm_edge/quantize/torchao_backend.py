"""``--backend torchao``: the PyTorch int8 path behind the same ``velocity(x, t, labels)`` seam.

Two recipes, both rebuilt at load from the fp32 safetensors plus a small JSON recipe (no pickles; the
calibration is re-run from its seeds, so the same weights give the same int8 model):

- ``pt2e`` (the conv path): ``torch.export`` -> ``prepare_pt2e`` with the ``X86InductorQuantizer``
  (uint8 activations, per-channel int8 weights) -> calibration on the fp32 sampler's trajectories (the same
  :mod:`.calibrate` data as the ORT path) -> ``convert_pt2e`` -> ``torch.compile`` (Inductor lowers the
  q/dq patterns to oneDNN int8 convs and fuses the float elementwise ops around them);
- ``linear-int8-dynamic`` / ``linear-int8-weight-only``: torchao ``quantize_`` with
  ``Int8DynamicActivationInt8WeightConfig`` / ``Int8WeightOnlyConfig``. These touch only ``nn.Linear``:
  the report lists exactly which weights they quantized (in this UNet: the time-embedding MLP, the per-block
  time projections and the attention projections, a few % of the weights and well under 1% of the MACs).

A torchao-quantized model does not export to ONNX; it is a separate backend. Where torchao, torch.export or
an x86 CPU is missing, :func:`available` says why and the tests skip.
"""

from __future__ import annotations

import json
import platform
import time
import types
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from fm_edge.errors import FmEdgeError, UsageError

METHODS = ("pt2e", "linear-int8-dynamic", "linear-int8-weight-only")
MIN_EXPORT_BATCH = 2  # torch.export specialises batch 1; a batch of 1 is padded to 2
#: modules PT2E leaves in float: the time-embedding MLP sees the sinusoidal features of t
FLOAT_MODULES = ("unet.time_embedding",)


@dataclass
class TorchaoRecipe:
    method: str = "pt2e"
    reduce_range: bool = True  # 7-bit activations for the X86 quantizer: no int16 saturation without VNNI
    compile: bool = True
    calib_noises: int = 64
    solver: str = "euler"
    steps: int = 4
    cfg_scale: float = 2.0
    shift: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"torchao method {self.method!r} is unknown: choose one of {', '.join(METHODS)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TorchaoRecipe:
        d = json.loads(text)
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) - known:
            raise UsageError(
                f"torchao recipe has unknown keys {sorted(set(d) - known)}: allowed {sorted(known)}"
            )
        return cls(**d)


def available(method: str = "pt2e") -> tuple[bool, str]:
    """(usable here?, why not) for a torchao method."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False, f"the X86 Inductor quantizer needs an x86-64 CPU, this is {platform.machine()}"
    try:
        import torch  # noqa: F401
        import torchao  # noqa: F401
    except ImportError as exc:
        return False, f"{exc.name} is not installed (pip install 'fm-edge[quant]')"
    try:
        if method == "pt2e":
            import torch.export  # noqa: F401
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: F401
            from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer  # noqa: F401
        else:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_  # noqa: F401
    except Exception as exc:  # ImportError, or a torchao built against another torch
        return (
            False,
            f"torchao {method} is unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
        )
    return True, ""


def _plain_upsample(module) -> bool:
    """Make diffusers' Upsample2D export with a dynamic batch.

    Its forward branches on ``batch >= 64`` (a ``.contiguous()`` workaround), which torch.export turns into
    a guard that caps the batch at 63. The replacement computes the same nearest-x2 + conv without the
    branch; it applies only to the configuration it reproduces (checked numerically by the caller).
    """
    if getattr(module, "use_conv_transpose", True) or not getattr(module, "interpolate", False):
        return False
    if getattr(module, "norm", None) is not None or not getattr(module, "use_conv", False):
        return False

    def forward(self, hidden_states, output_size=None, *args, **kwargs):
        import torch.nn.functional as F

        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        return self.conv(hidden_states)

    module.forward = types.MethodType(forward, module)
    return True


class _Net:
    """Positional (sample, timestep, class_labels) -> velocity tensor (diffusers returns a dataclass)."""

    @staticmethod
    def wrap(unet):
        import torch

        class Net(torch.nn.Module):
            def __init__(self, u):
                super().__init__()
                self.unet = u

            def forward(self, sample, timestep, class_labels):
                return self.unet(sample, timestep, class_labels=class_labels).sample

        return Net(unet).eval()


def _pt2e(net, recipe: TorchaoRecipe, traj, log) -> tuple[object, dict]:
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    x = torch.from_numpy(traj.sample[:4])
    t = torch.from_numpy(traj.timestep[:4])
    y = torch.from_numpy(traj.class_labels[:4])
    with torch.no_grad():
        before = net(x, t, y)
        patched = sum(_plain_upsample(m) for m in net.modules() if type(m).__name__ == "Upsample2D")
        diff = float((net(x, t, y) - before).abs().max())
    if diff > 1e-5:
        raise FmEdgeError(
            f"the export-friendly Upsample2D differs from diffusers' by {diff:.2e}: cannot use PT2E"
        )
    batch = torch.export.Dim("batch", min=MIN_EXPORT_BATCH, max=1 << 16)
    try:
        ep = torch.export.export(net, (x, t, y), dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    except Exception as exc:
        raise FmEdgeError(f"torch.export failed on the UNet: {str(exc).splitlines()[0][:200]}") from None
    quantizer = xiq.X86InductorQuantizer().set_global(
        xiq.get_default_x86_inductor_quantization_config(reduce_range=recipe.reduce_range)
    )
    for name in FLOAT_MODULES:  # the conditioning MLP stays float, as in the ORT recipe
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(ep.module(), quantizer)
    with torch.no_grad():
        for i in range(0, len(traj), 64):
            rows = slice(i, i + 64)
            if len(traj.sample[rows]) < MIN_EXPORT_BATCH:
                break
            prepared(
                *(
                    torch.from_numpy(np.ascontiguousarray(a[rows]))
                    for a in (traj.sample, traj.timestep, traj.class_labels)
                )
            )
    converted = convert_pt2e(prepared)
    report = {"upsample_patched": patched, **_pt2e_report(converted)}
    return converted, report


def _pt2e_report(gm) -> dict:
    """Which conv/linear weights the converted PT2E graph runs in int8 (weight fed by a dequantize)."""
    quantized, float_ = [], []
    for node in gm.graph.nodes:
        if node.op != "call_function" or "conv" not in str(node.target) and "linear" not in str(node.target):
            continue
        if len(node.args) < 2 or not hasattr(node.args[1], "target"):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        name = list(stack.values())[-1][0] if stack else node.name
        (quantized if "dequantize" in str(node.args[1].target) else float_).append(name)
    return {"int8_weights": quantized, "float_weights": float_}


def _linear_quantize(net, method: str) -> dict:
    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    cfg = (
        Int8DynamicActivationInt8WeightConfig() if method == "linear-int8-dynamic" else Int8WeightOnlyConfig()
    )
    quantize_(net, cfg)
    quantized, untouched = [], []
    for name, mod in net.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) or w is None:
            continue
        is_q = type(w) not in (torch.Tensor, torch.nn.Parameter)
        (quantized if is_q else untouched).append(f"{name} ({type(mod).__name__})")
    return {"config": type(cfg).__name__, "int8_weights": quantized, "float_weights": untouched}


class TorchaoVelocity:
    """``velocity(x, t, labels)`` over a torchao int8 UNet: torch tensors in and out, t in [0, 1]."""

    def __init__(self, module, recipe: TorchaoRecipe, report: dict):
        self.module, self.recipe, self.report = module, recipe, report

    def __call__(self, x, t, labels):
        import torch

        from fm_edge.convention import T_SCALE

        with torch.no_grad():
            b = x.shape[0]
            tt = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1).expand(b) * T_SCALE
            if self.recipe.method == "pt2e" and b < MIN_EXPORT_BATCH:  # pad to the exported minimum
                pad = MIN_EXPORT_BATCH - b
                out = self.module(
                    torch.cat([x, x[:1].expand(pad, *x.shape[1:])]),
                    torch.cat([tt, tt[:1].expand(pad)]),
                    torch.cat([labels, labels[:1].expand(pad)]),
                )
                return out[:b]
            return self.module(x.contiguous(), tt.contiguous(), labels)


def build_velocity(
    model_dir=None, recipe: TorchaoRecipe | None = None, num_threads: int | None = None, log=None
):
    """Load the fp32 checkpoint (safetensors), quantize it with ``recipe``, and wrap it as a velocity backend."""
    import sys

    import torch

    from fm_edge.metrics import sqnr_db
    from fm_edge.model import load, velocity_fn
    from fm_edge.quantize import calibrate

    recipe = recipe or TorchaoRecipe()
    log = log if log is not None else sys.stderr
    ok, why = available(recipe.method)
    if not ok:
        raise FmEdgeError(f"--backend torchao is not available here: {why}")
    if num_threads:
        torch.set_num_threads(num_threads)
    model, _ = load(model_dir)
    fp32 = calibrate.numpy_velocity(velocity_fn(model))
    traj = calibrate.collect(
        fp32, recipe.calib_noises, recipe.solver, recipe.steps, recipe.cfg_scale, recipe.shift, recipe.seed
    )
    net = _Net.wrap(model)
    feeds = [torch.from_numpy(a[:16].copy()) for a in (traj.sample, traj.timestep, traj.class_labels)]
    with torch.no_grad():
        ref = net(*feeds).numpy()
    if recipe.method == "pt2e":
        module, report = _pt2e(net, recipe, traj, log)
    else:
        report = _linear_quantize(net, recipe.method)
        module = net
    if recipe.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # lets Inductor constant-fold the int8 weights into oneDNN kernels
        module = torch.compile(module, dynamic=False)
        print(
            "torchao: compiling the int8 UNet with torch.compile (Inductor, once per process and batch size; "
            "a few minutes on 2 cores)...",
            file=log,
            flush=True,
        )
    t0 = time.perf_counter()
    with torch.no_grad():
        got = module(*feeds).numpy()
    if recipe.compile:
        print(f"torchao: compiled in {time.perf_counter() - t0:.0f} s", file=log, flush=True)
    report.update(method=recipe.method, velocity_sqnr_db=round(sqnr_db(ref, got), 2), calibration=traj.meta)
    print(f"torchao {recipe.method}: velocity SQNR vs fp32 {report['velocity_sqnr_db']:.1f} dB", file=log)
    return TorchaoVelocity(module, recipe, report)


def save_recipe(path, recipe: TorchaoRecipe) -> Path:
    from fm_edge.atomic import write_bytes

    write_bytes(path, (recipe.to_json() + "\n").encode())
    return Path(path)


def load_velocity(model_dir, recipe_path, num_threads: int | None = None, log=None) -> TorchaoVelocity:
    """Rebuild the torchao backend from the fp32 checkpoint and a recipe JSON written by :func:`save_recipe`."""
    try:
        text = Path(recipe_path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read torchao recipe {str(recipe_path)!r}: {exc.strerror}") from None
    try:
        recipe = TorchaoRecipe.from_json(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"torchao recipe {str(recipe_path)!r} is not JSON: {exc.msg}") from None
    return build_velocity(model_dir, recipe, num_threads, log)


def sample_backend(model_dir=None, num_threads: int | None = None, recipe_path=None):
    """A :class:`fm_edge.sample.Backend` for ``fm-edge sample --backend torchao``."""
    import torch

    from fm_edge.backends import Backend
    from fm_edge.model import read_fm_config, resolve
    from fm_edge.sampler_spec import checkpoint_spec

    path = resolve(model_dir)
    sampler = checkpoint_spec(read_fm_config(path))
    if recipe_path is not None:
        v = load_velocity(path, recipe_path, num_threads)
    else:
        rec = TorchaoRecipe(solver=sampler.solver, steps=sampler.steps, cfg_scale=sampler.cfg_scale,
                            shift=sampler.shift)  # fmt: skip
        v = build_velocity(path, rec, num_threads)
    return Backend(
        name="torchao",
        velocity=v,
        sampler=sampler,
        to_native=lambda a: torch.from_numpy(np.ascontiguousarray(a)),
        to_numpy=lambda a: a.detach().float().cpu().numpy(),
        info={"model": str(path), "torchao": v.report},
    )
