"""The edge runtime: run exported fm-edge ONNX files with nothing but numpy and onnxruntime.

- :class:`OnnxVelocity` wraps ``velocity.onnx`` as the shared ``velocity(x, t, labels)`` backend, so
  :func:`fm_edge.solvers.sample` (and ``fm-edge sample --backend onnx``) drive it without torch.
- :class:`OnnxSampler` wraps ``sampler.onnx``, the whole sampler in one graph: noise in, uint8 digits out.
- the shipped files are found through :mod:`fm_edge.artifacts` (``shipped_onnx("sampler.onnx")``).

Imports: numpy, onnxruntime, and the numpy-only fm-edge modules (convention, solvers, errors). Every file
goes through ``onnx.checker`` before a session is built (``onnx`` is in the runtime extra; where it is
missing, ORT's own load-time checks remain).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fm_edge.convention import SAMPLER_INPUTS, T_SCALE, VELOCITY_INPUTS, check_labels, check_model_input
from fm_edge.errors import FmEdgeError, UsageError, first_line
from fm_edge.sampler_spec import SamplerSpec
from fm_edge.solvers import check_cfg

#: name -> element type of the inputs each kind of file must have, in order

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def _providers(providers) -> list[str]:
    """None/'cpu' -> CPU; 'cuda' -> CUDA then CPU (refused when this onnxruntime has no CUDA provider)."""
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        key = providers.lower()
        if key not in PROVIDERS and providers not in PROVIDERS.values():
            raise UsageError(f"unknown execution provider {providers!r}: use cpu or cuda")
        name = PROVIDERS.get(key, providers)
        providers = [name, "CPUExecutionProvider"] if name != "CPUExecutionProvider" else [name]
    available = ort.get_available_providers()
    for p in providers:
        name = p[0] if isinstance(p, tuple) else p
        if name not in available:
            hint = " (pip install onnxruntime-gpu)" if name == "CUDAExecutionProvider" else ""
            raise UsageError(
                f"execution provider {name} is not available{hint}; available: {', '.join(available)}"
            )
    return list(providers)


def _session_options(num_threads: int | None, graph_optimization_level) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: ORT's load-time warnings are not the user's business
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
            raise UsageError(f"num_threads must be an integer >= 1, got {num_threads!r}")
        so.intra_op_num_threads = int(num_threads)
        so.inter_op_num_threads = 1
    level = graph_optimization_level
    if isinstance(level, str):
        if level not in OPT_LEVELS:
            raise UsageError(
                f"unknown graph optimization level {level!r}: choose one of {', '.join(OPT_LEVELS)}"
            )
        level = OPT_LEVELS[level]
    so.graph_optimization_level = level
    return so


def _why_invalid(path: Path) -> str | None:
    """onnx.checker's one-line reason why ``path`` is not a valid model, or None (also when onnx is absent)."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # ValidationError, DecodeError, ...
        return first_line(exc)
    return None


class _OnnxModel:
    """An InferenceSession on one fm-edge file, with its inputs checked against what the wrapper expects."""

    kind = ""
    expected_inputs: dict[str, str] = {}

    def __init__(
        self,
        path: str | os.PathLike,
        num_threads: int | None = None,
        providers=None,
        graph_optimization_level="all",
        session_config: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"{str(self.path)!r} is not a file (expected an fm-edge {self.kind} .onnx)")
        so = _session_options(num_threads, graph_optimization_level)
        for key, value in (session_config or {}).items():  # e.g. {"session.intra_op.allow_spinning": "0"}
            so.add_session_config_entry(key, value)
        reason = _why_invalid(self.path)  # onnx.checker first: a clear reason, before ORT parses the file
        if reason is not None:
            raise FmEdgeError(f"{str(self.path)!r} is not a valid ONNX model: {reason}")
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=_providers(providers))
        except UsageError:
            raise
        except (
            Exception
        ) as exc:  # InvalidProtobuf, InvalidGraph, Fail, ... (onnx.checker passed, or is absent)
            raise FmEdgeError(f"{str(self.path)!r} is not a valid ONNX model: {first_line(exc)}") from None
        found = {i.name: i.type for i in self.session.get_inputs()}
        if found != self.expected_inputs:
            want = ", ".join(f"{k} {v}" for k, v in self.expected_inputs.items())
            got = ", ".join(f"{k} {v}" for k, v in found.items())
            hint = ""
            if found == SAMPLER_INPUTS:
                hint = " (this is a sampler.onnx: pass velocity.onnx, or run this file with OnnxSampler)"
            elif found == VELOCITY_INPUTS:
                hint = " (this is a velocity.onnx: use OnnxVelocity)"
            raise UsageError(
                f"{str(self.path)!r} has inputs [{got}] but an fm-edge {self.kind} model needs [{want}]{hint}"
            )
        self.output_name = self.session.get_outputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def sampler(self) -> SamplerSpec:
        """The sampler recorded at export (package defaults for what it omits)."""
        return SamplerSpec.from_metadata(self.metadata, repr(str(self.path)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, providers={self.providers})"


def _check_batch_labels(labels, batch: int) -> np.ndarray:
    arr = check_labels(labels)
    if arr.shape != (batch,):
        raise UsageError(f"labels have shape {list(arr.shape)}: expected [{batch}], one per noise")
    return arr


class OnnxVelocity(_OnnxModel):
    """``velocity.onnx`` as a ``velocity(x, t, labels)`` callable: x float32 [B,1,32,32], t in [0, 1]."""

    kind = "velocity"
    expected_inputs = VELOCITY_INPUTS

    def __call__(self, x: np.ndarray, t, labels) -> np.ndarray:
        x = check_model_input(x, "x")
        b = x.shape[0]
        t = np.asarray(t, dtype=np.float32)
        if t.ndim == 0:
            t = np.full(b, t, dtype=np.float32)
        if t.shape != (b,) or not np.isfinite(t).all() or (t < 0).any() or (t > 1).any():
            raise UsageError(f"t must be a float in [0, 1] or {b} of them, got {t.tolist()[:4]}")
        feeds = {
            "sample": x,
            "timestep": t * np.float32(T_SCALE),
            "class_labels": _check_batch_labels(labels, b),
        }
        return self.session.run([self.output_name], feeds)[0]


class OnnxSampler(_OnnxModel):
    """``sampler.onnx``: ``sampler(noise, labels, cfg_scale=None) -> uint8 [B,28,28]`` in one ORT call.

    The solver and step count are fixed in the file (``.solver``, ``.steps``); ``cfg_scale=None`` uses the
    scale recommended at export.
    """

    kind = "sampler"
    expected_inputs = SAMPLER_INPUTS

    @property
    def solver(self) -> str:
        return self.sampler.solver

    @property
    def steps(self) -> int:
        return self.sampler.steps

    @property
    def cfg_scale(self) -> float:
        return self.sampler.cfg_scale

    def __call__(self, noise: np.ndarray, labels, cfg_scale: float | None = None) -> np.ndarray:
        noise = check_model_input(noise, "noise")
        labels = _check_batch_labels(labels, noise.shape[0])
        scale = self.cfg_scale if cfg_scale is None else cfg_scale
        check_cfg(scale)
        feeds = {"noise": noise, "class_labels": labels, "cfg_scale": np.asarray(scale, dtype=np.float32)}
        return self.session.run([self.output_name], feeds)[0]
