"""``fm-edge sample``: pick a backend, apply the flags over the model's recommended sampler, sample, and write
an .npz or a PNG grid.

``--backend auto`` (the default) samples with ONNX Runtime when the checkpoint folder holds an export of the
same weights in ``onnx/`` (the shipped one does): about 4x faster than torch eager on a laptop CPU at the same
digits. On a machine where torch sees a GPU, with ``--device cuda``, ``--bf16`` or ``--reference`` (dopri5
runs in torch), for a checkpoint without an export, and for a mean-flow student at a step count other than
its export's (its velocity.onnx has the step length baked in), it uses torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fm_edge.backends import Backend, generate, onnx_backend, torch_backend
from fm_edge.convention import decode_uint8, default_labels
from fm_edge.errors import UsageError

BACKENDS = ("auto", "torch", "onnx", "torchao")


def exported_onnx(model, steps: int | None = None) -> Path | None:
    """The checkpoint's ``onnx/velocity.onnx`` when it was exported from the same weights (and, for a mean-flow
    student, for ``steps`` steps when given), else None."""
    from fm_edge.artifacts import VELOCITY_FILE, mean_flow_steps, onnx_metadata, weights_hash
    from fm_edge.model import resolve

    ckpt = resolve(model)
    path = ckpt / "onnx" / VELOCITY_FILE
    if not path.is_file():
        return None
    meta = onnx_metadata(path)
    k = mean_flow_steps(meta)
    if steps is not None and k and k != steps:
        return None
    return path if meta.get("checkpoint_sha256") == weights_hash(ckpt) else None


def pick_backend(
    name: str, model=None, reference: bool = False, device: str = "auto", steps: int | None = None
) -> str:
    """The concrete backend ``auto`` stands for (see the module docstring); ``steps``: the --steps flag."""
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    if model is not None and str(model).endswith(".onnx"):
        return "onnx"
    if reference or device == "cuda" or (device == "auto" and _torch_sees_cuda()):
        return "torch"  # on a GPU, torch with CUDA graphs; ORT on CUDA is --backend onnx with onnxruntime-gpu
    return "onnx" if exported_onnx(model, steps) is not None else "torch"


def _torch_sees_cuda() -> bool:
    from fm_edge.backends import torch_device

    try:
        return torch_device("auto") == "cuda"
    except ImportError:  # laptop mode: ONNX Runtime only
        return False


def make_backend(
    name: str, model=None, num_threads: int | None = None, device: str = "auto", bf16: bool = False,
    cuda_graphs: bool | None = None,
) -> Backend:  # fmt: skip
    """A backend by concrete name; ``onnx`` on a checkpoint folder uses its own ``onnx/velocity.onnx``."""
    if bf16 and name != "torch":
        raise UsageError(
            f"--bf16 is for --backend torch, not {name} (int8 and ONNX files keep their own types)"
        )
    if name == "torch":
        return torch_backend(model, num_threads, device, bf16=bf16, cuda_graphs=cuda_graphs)
    if name == "onnx":
        if model is not None and Path(model).is_dir():
            onnx = exported_onnx(model)
            if onnx is None:
                raise UsageError(
                    f"--model {str(model)!r} is a checkpoint folder without an export of its weights in onnx/: "
                    f"run fm-edge export --model {model} -o {Path(model) / 'onnx'}, or pass a velocity .onnx"
                )
            model = onnx
        elif model is None:
            model = exported_onnx(None)
        return onnx_backend(model, num_threads, device)
    if name == "torchao":  # int8 PT2E, rebuilt at load from the fp32 safetensors (no pickles)
        if device == "cuda":
            raise UsageError("--backend torchao runs on the CPU (X86 int8 kernels): use --device cpu or auto")
        from fm_edge.quantize.torchao_backend import sample_backend

        return sample_backend(model, num_threads)
    raise UsageError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


def add_arguments(p) -> None:
    """``fm-edge sample``'s flags."""
    from fm_edge.flags import device_flag, sampler_flags, seed_and_threads

    p.add_argument(
        "--model",
        default=None,
        help="checkpoint folder, or a velocity .onnx (default: the shipped checkpoint)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="torchao: int8 PyTorch; auto: ONNX Runtime when the checkpoint has an export of the same "
        "weights in onnx/, else torch",
    )
    device_flag(p, "where the torch backend runs (ONNX: CUDA provider with onnxruntime-gpu)")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="torch backend: bf16 autocast (CUDA, or CPUs with AVX512-BF16/AMX)",
    )
    p.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="torch on CUDA: launch every kernel instead of replaying a graph",
    )
    sampler_flags(p)
    p.add_argument("--num-samples", type=int, default=100, help="how many digits")
    p.add_argument(
        "--label", type=int, default=None, help="digit 0-9, 10 = unconditional (default: cycles 0-9)"
    )
    p.add_argument("--unconditional", action="store_true", help="sample with the null label")
    p.add_argument("--batch-size", type=int, default=256, help="digits per solver call")
    p.add_argument("--reference", action="store_true", help="also solve with dopri5 and report the distance")
    p.add_argument("-o", "--output", default="samples.png", help="out.npz (images, labels) or out.png (grid)")
    seed_and_threads(p, "seed of the starting noise", "CPU threads (torch and ONNX Runtime)")


def main(args):
    """``fm-edge sample``."""
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if not str(args.output).endswith((".npz", ".png")):
        raise UsageError(f"-o {args.output!r} must end in .npz or .png")
    device, bf16 = args.device, args.bf16
    name = pick_backend(args.backend, args.model, args.reference or bf16, device, args.steps)
    labels = default_labels(args.num_samples, args.label, args.unconditional)
    if args.reference and name != "torch":
        raise UsageError("--reference needs --backend torch (dopri5 runs through torchdiffeq)")
    graphs = False if args.no_cuda_graphs else None
    backend = make_backend(name, args.model, args.num_threads, device, bf16, graphs)
    s = backend.sampler.override(args.steps, args.solver, args.cfg_scale, args.shift)
    if args.model is not None and Path(args.model).is_dir():  # a OneStepNet student runs 1 step only
        from fm_edge.model import check_steps_for

        check_steps_for(args.model, s.steps, solver=s.solver, shift=s.shift)
    x = generate(backend, labels, s, args.seed, args.batch_size, progress=True, raw=True)
    device = (backend.info or {}).get("device", "cpu")
    print(f"{args.num_samples} samples, {s.describe()}, backend {backend.name} ({device})", file=sys.stderr)
    if args.reference:
        from fm_edge.reference import distance_to_reference

        d = distance_to_reference(backend, x, labels, s.cfg_scale, args.seed)
        print(
            f"distance to the dopri5 solution: RMS {d['rms']:.4f}, max {d['max']:.4f} (model space)",
            file=sys.stderr,
        )
    from fm_edge.images import save_samples

    return save_samples(args.output, decode_uint8(x), labels)
