"""The velocity backends and the one batched sampling loop every command uses.

- :class:`Backend`: a ``velocity(x, t, labels)`` callable plus how numpy arrays go in and out of it;
- :func:`make_noise`: the shared starting noise (numpy PCG64, identical for every backend);
- :func:`torch_backend` (PyTorch, CPU or CUDA) and :func:`onnx_backend` (ONNX Runtime, no torch), placed by
  :func:`torch_device` / :func:`ort_providers` from ``--device auto|cpu|cuda``;
- :func:`generate`: labels + noise -> digits, in batches, through :func:`fm_edge.solvers.sample`.

Imports neither torch nor onnxruntime at module level, so a torch-free install can sample.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fm_edge.artifacts import mean_flow_steps
from fm_edge.convention import MODEL_SIZE, check_labels, check_model_input, decode_uint8
from fm_edge.errors import UsageError
from fm_edge.sampler_spec import SamplerSpec
from fm_edge.solvers import sample


@dataclass
class Backend:
    """A velocity callable plus how to move numpy arrays in and out of its array type."""

    name: str
    velocity: Callable
    sampler: SamplerSpec  # the model's recommended sampler
    to_native: Callable = lambda a: a
    to_numpy: Callable = lambda a: a
    info: dict | None = None
    #: a whole-solve replacement for fm_edge.solvers.sample (the CUDA-graph solver), or None
    solve: Callable | None = None


def make_noise(n: int, seed: int) -> np.ndarray:
    """The shared starting noise: float32 [n,1,32,32] from numpy's PCG64 (identical for every backend)."""
    return np.random.default_rng(seed).standard_normal((n, 1, MODEL_SIZE, MODEL_SIZE), dtype=np.float32)


DEVICES = ("auto", "cpu", "cuda")


def check_device(device: str) -> str:
    """Refuse anything but auto, cpu or cuda (one line, before any work)."""
    if device not in DEVICES:
        raise UsageError(f"--device {device!r} is unknown: choose one of {', '.join(DEVICES)}")
    return device


def _place(device: str, have_cuda: bool, why_not: str) -> str:
    """'cuda' or 'cpu': auto takes CUDA when it is there; cuda without it is a UsageError saying ``why_not``."""
    if check_device(device) == "cuda" and not have_cuda:
        raise UsageError(f"--device cuda: {why_not}; use --device cpu or auto")
    return "cuda" if device == "cuda" or (device == "auto" and have_cuda) else "cpu"


def torch_device(device: str = "auto") -> str:
    """'cuda' or 'cpu' for torch: CUDA when torch sees a GPU."""
    import torch

    why = "torch sees no CUDA device here (torch.cuda.is_available() is False; a CPU-only torch build or no GPU)"
    return _place(device, torch.cuda.is_available(), why)


def ort_providers(device: str = "auto") -> str:
    """'cuda' or 'cpu' for ONNX Runtime: CUDA when this onnxruntime has the CUDA provider (the ``gpu`` extra)."""
    import onnxruntime as ort

    why = "this onnxruntime has no CUDAExecutionProvider (pip install 'fm-edge[gpu]', which brings onnxruntime-gpu)"
    return _place(device, "CUDAExecutionProvider" in ort.get_available_providers(), why)


def torch_backend(
    model_dir=None,
    num_threads: int | None = None,
    device: str = "cpu",
    bf16: bool = False,
    cuda_graphs: bool | None = None,
) -> Backend:
    """PyTorch eager (CPU or CUDA); on CUDA each fixed-shape solve is replayed from a CUDA graph unless
    ``cuda_graphs=False``; ``bf16`` autocasts the UNet."""
    import torch

    from fm_edge.model import load, resolve, velocity_fn
    from fm_edge.sampler_spec import checkpoint_spec

    device = torch_device(device)
    if num_threads:
        torch.set_num_threads(num_threads)
    if bf16:
        from fm_edge.quantize.cpu import warn_emulated_bf16

        warn_emulated_bf16(device)
    model, fm = load(model_dir, device=device)
    velocity = velocity_fn(model, bf16=bf16)
    solve = None
    if device == "cuda" and cuda_graphs is not False:
        from fm_edge.cuda_graphs import GraphedSolver

        solve = GraphedSolver(velocity)
    return Backend(
        name="torch",
        velocity=velocity,
        solve=solve,
        sampler=checkpoint_spec(fm),
        to_native=lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device),
        to_numpy=lambda a: a.detach().float().cpu().numpy(),
        info={
            "model": str(resolve(model_dir)),
            "preset": fm.get("preset"),
            "module": model,
            "device": device,
            "bf16": bf16,
            "cuda_graphs": solve is not None,
        },
    )


def onnx_backend(
    model_path=None, num_threads: int | None = None, device: str = "cpu", name: str = "onnx"
) -> Backend:
    """ONNX Runtime over a velocity .onnx (default: the shipped one), placed by ``device``: the one way every
    command builds an ORT backend."""
    from fm_edge.artifacts import VELOCITY_FILE, shipped_onnx
    from fm_edge.runtime import OnnxVelocity

    providers = ort_providers(device)
    v = OnnxVelocity(model_path or shipped_onnx(VELOCITY_FILE), num_threads=num_threads, providers=providers)
    return Backend(
        name=name,
        velocity=v,
        sampler=v.sampler,
        info={"model": str(v.path), "device": providers},
    )


def match_step_length(backend: Backend, steps: int) -> None:
    """A mean-flow student takes steps of length 1/``steps``: torch sets it on the net (a multiple of the
    student's own step count, else a UsageError); an ONNX velocity file has its step length baked in at
    export (metadata ``mean_flow_step``), so another step count is a UsageError."""
    module = (backend.info or {}).get("module")
    if hasattr(module, "run_steps"):
        module.run_steps(steps)
    k = mean_flow_steps(getattr(backend.velocity, "metadata", {}))
    if k and steps != k:
        raise UsageError(
            f"--steps {steps}: this velocity.onnx is a mean-flow student exported for {k} steps (length "
            f"1/{k}): sample it with --steps {k}, export its checkpoint with --sampler-steps {steps}, or use "
            "--backend torch"
        )


def generate(
    backend: Backend,
    labels: np.ndarray,
    spec: SamplerSpec,
    seed: int = 0,
    batch_size: int = 256,
    noise: np.ndarray | None = None,
    progress: bool = False,
    raw: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Sample len(labels) digits with the sampler ``spec``; uint8 [N,28,28] (or the float model-space x when
    ``raw``).

    ``progress`` shows a tqdm bar on stderr; ``callback(done, total)`` is called after every ODE step of
    every batch (the demo's progress), ``total`` = steps x batches.
    """
    spec.check()
    steps = spec.steps
    match_step_length(backend, steps)
    labels = check_labels(labels)
    if labels.ndim != 1:
        raise UsageError(f"labels have shape {list(labels.shape)}: expected one label per sample, [N]")
    n = len(labels)
    x1 = make_noise(n, seed) if noise is None else check_model_input(noise, "noise")
    if len(x1) != n:
        raise UsageError(f"noise has {len(x1)} rows but there are {n} labels: give one noise per label")
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    bar = None
    total, done = steps * -(-n // batch_size), [0]
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"sample ({spec.describe()})", unit="step", file=sys.stderr)
    outs = []
    try:
        for i in range(0, n, batch_size):
            xb = backend.to_native(x1[i : i + batch_size])
            yb = backend.to_native(np.asarray(labels[i : i + batch_size], dtype=np.int64))

            def cb(_step, _steps):
                done[0] += 1
                if bar:
                    bar.update(1)
                if callback:
                    callback(done[0], total)

            if backend.solve is not None:  # one replay does every step
                x0 = backend.solve(xb, yb, spec)
                for s in range(steps):
                    cb(s + 1, steps)
            else:
                x0 = sample(
                    backend.velocity, xb, yb, steps, spec.solver, spec.cfg_scale, spec.shift, callback=cb
                )
            outs.append(backend.to_numpy(x0))
    finally:
        if bar:
            bar.close()
    x = np.concatenate(outs) if outs else np.zeros((0, 1, MODEL_SIZE, MODEL_SIZE), np.float32)
    return x if raw else decode_uint8(x)
