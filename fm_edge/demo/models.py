"""The demo's models: ``velocity.onnx`` and ``velocity_int8.onnx`` through the torch-free runtime, and, when
torch is installed, the PyTorch checkpoint they were exported from as the fp32 reference.

The reference is optional in every way: without torch (laptop mode), without the checkpoint, or with a
checkpoint whose weights are not the ones in ``velocity.onnx``, the demo runs without that column and says why.
torch loads in a background thread, so the page is served before torch has finished importing.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fm_edge.artifacts import SHIPPED, SHIPPED_ONNX, VELOCITY_FILE, VELOCITY_INT8, WEIGHTS, weights_hash
from fm_edge.backends import Backend
from fm_edge.errors import UsageError

FP32_FILE, INT8_FILE = VELOCITY_FILE, VELOCITY_INT8
NAMES = {"fp32": "ONNX fp32", "int8": "ONNX int8", "torch": "PyTorch fp32", "student": "one-step student"}
#: the shipped student's export: the demo's student column when it shows the shipped teacher
SHIPPED_STUDENT = SHIPPED.parent / "onestep-mnist-digit" / "onnx"


def model_folder(model_dir=None) -> Path:
    """The folder with velocity.onnx and velocity_int8.onnx (default: the shipped one)."""
    folder = Path(model_dir) if model_dir is not None else SHIPPED_ONNX
    if not folder.is_dir():
        hint = "run: fm-edge export --int8 -o DIR, then fm-edge demo --model DIR"
        raise UsageError(f"model folder {str(folder)!r} does not exist ({hint})")
    missing = [f for f in (FP32_FILE, INT8_FILE) if not (folder / f).is_file()]
    if missing:
        raise UsageError(
            f"model folder {str(folder)!r} has no {' or '.join(missing)}: the demo needs both "
            "(fm-edge export --int8 -o DIR writes them)"
        )
    return folder


def torch_importable() -> bool:
    """True when torch and diffusers can be imported (checked without importing them)."""
    for name in ("torch", "diffusers"):
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


class Reference:
    """The PyTorch fp32 backend, loaded in a background thread; :meth:`get` waits for it."""

    def __init__(self, checkpoint: Path, num_threads: int | None, device: str = "cpu"):
        self.checkpoint, self.device = checkpoint, device
        self._backend: Backend | None = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._load, args=(num_threads,), daemon=True)
        self._thread.start()

    def _load(self, num_threads):
        try:
            from fm_edge.backends import torch_backend

            b = torch_backend(self.checkpoint, num_threads=num_threads, device=self.device)
            b.name = NAMES["torch"]
            self._backend = b
        except Exception as exc:  # shown on the page; the ONNX columns still work
            text = str(exc).strip()
            self._error = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"

    @property
    def ready(self) -> bool:
        """Loaded (or failed): get() will not wait."""
        return not self._thread.is_alive()

    def get(self, timeout: float | None = None) -> Backend | None:
        self._thread.join(timeout)
        return self._backend

    @property
    def error(self) -> str | None:
        return self._error


@dataclass
class DemoModels:
    folder: Path
    fp32: Backend
    int8: Backend
    sampler: dict  # recommended solver, steps, cfg_scale, shift
    sizes: dict[str, int]  # backend name -> bytes of its weights file
    reference: Reference | None
    reference_note: str  # why there is no reference column ("" when there is one)
    student: Backend | None = None  # a guidance-distilled model, sampled with its own few-step sampler

    def backends(self) -> list[Backend]:
        """fp32 first (the others are compared to it), then int8, then the PyTorch reference if loaded."""
        out = [self.fp32, self.int8]
        if self.reference is not None:
            ref = self.reference.get()
            if ref is not None:
                out.append(ref)
        return out


def _onnx_backend(path: Path, name: str, num_threads: int | None, device: str = "cpu") -> Backend:
    from fm_edge.backends import make_noise, onnx_backend

    b = onnx_backend(path, num_threads, device, name=name)
    # one batch-1 call, so that the first request's latency is not ORT's lazy initialisation
    b.velocity(make_noise(1, 0), 1.0, np.zeros(1, np.int64))
    return b


def _default_checkpoint(folder: Path) -> Path:
    """The checkpoint beside the ONNX folder (the shipped layout: checkpoint/onnx/), else the shipped one."""
    parent = folder.resolve().parent
    return parent if (parent / "config.json").is_file() else SHIPPED


def _reference(
    folder: Path, fp32: Backend, checkpoint, want: bool | None, num_threads, device="cpu"
) -> tuple:
    """(Reference or None, note): the PyTorch column when wanted and possible."""
    if want is False:
        return None, "PyTorch reference off (--no-reference)"
    if not torch_importable():
        if want:
            raise UsageError("the PyTorch reference needs torch: pip install 'fm-edge[train]'")
        return None, "PyTorch reference off: torch is not installed (laptop mode)"
    ckpt = Path(checkpoint) if checkpoint is not None else _default_checkpoint(folder)
    if not (ckpt / WEIGHTS).is_file():
        if want or checkpoint is not None:
            raise UsageError(f"checkpoint {str(ckpt)!r} has no {WEIGHTS}: not a fm-edge checkpoint folder")
        return None, f"PyTorch reference off: no checkpoint at {ckpt}"
    recorded = fp32.velocity.metadata.get("checkpoint_sha256")
    if recorded and recorded != weights_hash(ckpt):
        msg = f"checkpoint {str(ckpt)!r} is not the one {FP32_FILE} was exported from (weights differ)"
        if want or checkpoint is not None:
            raise UsageError(msg)
        return None, f"PyTorch reference off: {msg}"
    return Reference(ckpt, num_threads, device), ""


def _student(folder: Path, student, num_threads, device) -> Backend | None:
    """The student column: ``student`` (a folder with a distilled velocity.onnx), False for none, or None for
    the shipped student when the demo shows the shipped teacher."""
    if student is False or (student is None and folder.resolve() != SHIPPED_ONNX.resolve()):
        return None
    path = Path(student) if student is not None else SHIPPED_STUDENT
    if not (path / FP32_FILE).is_file():  # the shipped student is optional (a given one: load_models)
        return None
    b = _onnx_backend(path / FP32_FILE, NAMES["student"], num_threads, device)
    if not b.sampler.distilled:
        raise UsageError(
            f"--student {str(path)!r} is not a distilled model (its sampler has no guidance 'distilled'): "
            "fm-edge distill makes one"
        )
    return b


def load_models(
    model_dir=None,
    checkpoint=None,
    reference: bool | None = None,
    num_threads: int | None = None,
    device: str = "cpu",
    student=None,
) -> DemoModels:
    """Open both ONNX files (and start loading the PyTorch reference when ``reference`` is not False).

    ``reference=None`` adds the reference when it can and says why not otherwise; ``True`` makes a missing
    torch or checkpoint an error.
    """
    if student not in (None, False) and not (Path(student) / FP32_FILE).is_file():  # before any model loads
        raise UsageError(f"--student {str(student)!r} has no {FP32_FILE}: pass a student's export folder")
    folder = model_folder(model_dir)
    fp32 = _onnx_backend(folder / FP32_FILE, NAMES["fp32"], num_threads, device)
    int8 = _onnx_backend(folder / INT8_FILE, NAMES["int8"], num_threads, device)
    a, b = (m.velocity.metadata.get("checkpoint_sha256") for m in (fp32, int8))
    if a and b and a != b:  # a comparison of two different nets would mislead
        raise UsageError(
            f"{str(folder / INT8_FILE)!r} was quantized from other weights than {FP32_FILE}: "
            f"run fm-edge export --int8 -o {folder} again"
        )
    ref, note = _reference(folder, fp32, checkpoint, reference, num_threads, device)
    sizes = {fp32.name: os.path.getsize(folder / FP32_FILE), int8.name: os.path.getsize(folder / INT8_FILE)}
    if ref is not None:
        sizes[NAMES["torch"]] = os.path.getsize(ref.checkpoint / WEIGHTS)
    st = _student(folder, student, num_threads, device)
    if st is not None:
        sizes[st.name] = os.path.getsize(st.velocity.path)
    return DemoModels(folder, fp32, int8, fp32.sampler, sizes, ref, note, st)
