"""The velocity network: diffusers UNet2DModel presets, the checkpoint folder, and the torch ``velocity`` backend.

A checkpoint is a diffusers ``save_pretrained`` folder (config.json + diffusion_pytorch_model.safetensors,
EMA weights) plus ``fm_edge.json`` (convention, preset, recommended sampler) and a model card README.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fm_edge import __version__
from fm_edge.artifacts import FM_CONFIG, SHIPPED, WEIGHTS
from fm_edge.convention import CONVENTION, MODEL_SIZE, NUM_CLASS_EMBEDS, T_SCALE
from fm_edge.errors import FmEdgeError, UsageError, first_line
from fm_edge.sampler_spec import SamplerSpec, check_net_steps

_BASE = dict(
    sample_size=MODEL_SIZE,
    in_channels=1,
    out_channels=1,
    num_class_embeds=NUM_CLASS_EMBEDS,
)


def _plain(block_out_channels: tuple, layers_per_block: int, norm_num_groups: int, **extra) -> dict:
    """A UNet2DModel config with plain ResNet blocks (DownBlock2D / UpBlock2D) at every level."""
    levels = len(block_out_channels)
    return dict(
        _BASE,
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        norm_num_groups=norm_num_groups,
        **extra,
    )


PRESETS: dict[str, dict] = {
    # google/ddpm-cifar10-32 exactly (35.7M parameters), with one input/output channel: for GPUs.
    "ddpm-cifar10-32": dict(
        _BASE,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        norm_eps=1e-6,
        norm_num_groups=32,
        time_embedding_type="positional",
    ),
    # Sized for 2 CPU cores (0.64M parameters, ~100 training images/s here): no attention in the
    # down/up blocks (Softmax has no int8 kernel in ORT; the mid block keeps diffusers' one 8x8
    # attention), one ResNet per level, 32x32 -> 16 -> 8. The README has the measurements behind it.
    "compact": _plain((16, 32, 64), layers_per_block=1, norm_num_groups=8),
    # Quality + int8 speed (GPU-trained teacher): attention-free everywhere (mid block too: Softmax has no
    # int8 kernel in ORT), so 3x3 convs dominate the compute; two ResNets per level, 32x32 -> 16 -> 8.
    # The width is the one line to change when measuring int8 speed against quality.
    "edge": _plain((32, 64, 128), layers_per_block=2, norm_num_groups=8, add_attention=False),
    # For tests: a few thousand parameters.
    "tiny": _plain((8, 16), layers_per_block=1, norm_num_groups=4),
}


def trainable_presets() -> tuple[str, ...]:
    """What ``fm-edge train --preset`` takes: the UNet2DModel presets, and the int8-built OneStepNet sizes
    with a t input (``fm_edge.student_net.ARCHS``' ``-t`` names), which can learn the whole velocity field."""
    from fm_edge.student_net import ARCHS

    return (*PRESETS, *(name for name, arch in ARCHS.items() if arch.get("time_input")))


def check_trainable(preset: str) -> None:
    """A UsageError unless ``fm-edge train --preset`` can train ``preset`` (see :func:`trainable_presets`)."""
    if preset in PRESETS:
        return
    from fm_edge.student_net import ARCHS

    if preset in ARCHS and not ARCHS[preset].get("time_input"):
        t_size = f"{preset}-t" if f"{preset}-t" in ARCHS else f"{preset}-digit-t"
        raise UsageError(
            f"--preset {preset} is a one-step net without a time input; flow matching trains a '-t' size, "
            f"such as {t_size}"
        )
    names = trainable_presets()
    if preset not in names:
        raise UsageError(f"unknown preset {preset!r}: choose one of {', '.join(names)}")


def build(preset: str):
    """A freshly initialised model of the named preset: a UNet2DModel, or a ``-t`` OneStepNet size."""
    from diffusers import UNet2DModel

    if preset in PRESETS:
        return UNet2DModel(**PRESETS[preset])
    check_trainable(preset)
    from fm_edge.student_net import build as build_student

    return build_student(preset)


def fm_config(preset: str, sampler: SamplerSpec | dict | None = None, **extra) -> dict:
    """The small fm-edge config stored next to the diffusers config (``sampler``: a spec, or its
    fm_edge.json form; default :class:`SamplerSpec`'s)."""
    if isinstance(sampler, dict):
        sampler = SamplerSpec.from_dict(sampler)
    return {
        "fm_edge_version": __version__,
        "preset": preset,
        **CONVENTION,
        "sampler": (sampler or SamplerSpec()).to_dict(),
        **extra,
    }


def read_fm_config(folder: str | os.PathLike) -> dict:
    """fm_edge.json of a checkpoint folder (empty dict when absent)."""
    path = Path(folder) / FM_CONFIG
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FmEdgeError(f"{path} is not valid JSON: {exc}") from None


def resolve(folder: str | os.PathLike | None) -> Path:
    """The checkpoint folder to use: the given one, or the shipped default; checks its files exist."""
    path = Path(folder) if folder else SHIPPED
    if not path.is_dir():
        raise UsageError(f"checkpoint {str(path)!r} is not a folder (expected a save_pretrained folder)")
    for name in ("config.json", WEIGHTS):
        if not (path / name).is_file():
            raise UsageError(f"checkpoint {str(path)!r} has no {name}: not a fm-edge checkpoint folder")
    return path


#: config.json ``_class_name`` of the time-free one-step student (fm_edge.student_net)
ONE_STEP_CLASS = "OneStepNet"


def model_config(folder: str | os.PathLike) -> dict:
    """config.json as a dict (json only: no torch import); a file that is not a JSON object is one error."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise ValueError(f"a JSON {type(config).__name__}, not an object")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise FmEdgeError(
            f"checkpoint {str(folder)!r} could not be loaded: config.json is not a valid diffusers config ({exc})"
        ) from None
    return config


def class_name(folder: str | os.PathLike) -> str:
    """config.json's ``_class_name`` (json only: no torch import)."""
    return str(model_config(folder).get("_class_name", "UNet2DModel"))


def folder_or_shipped(folder: str | os.PathLike | None) -> Path:
    """``folder``, or the shipped default model's folder for None (no checks: :func:`resolve` checks)."""
    return SHIPPED if folder is None else Path(folder)


def is_student_net(folder: str | os.PathLike | None) -> bool:
    """Whether ``folder`` (None: the shipped default) is a OneStepNet checkpoint folder, time-free or not."""
    folder = folder_or_shipped(folder)
    return (folder / "config.json").is_file() and class_name(folder) == ONE_STEP_CLASS


def is_one_step(folder: str | os.PathLike | None) -> bool:
    """Whether ``folder`` (None: the shipped default) is a time-free OneStepNet checkpoint folder; a OneStepNet
    with a time input (a '-t' size) runs any step count."""
    return is_student_net(folder) and not model_config(folder_or_shipped(folder)).get("time_input")


def check_steps_for(
    folder: str | os.PathLike | None,
    steps: int,
    flag: str = "--steps",
    solver: str = "euler",
    shift: float = 1.0,
) -> None:
    """:func:`check_net_steps` when ``folder`` (None: the shipped default) is a OneStepNet checkpoint folder;
    nothing otherwise."""
    if is_student_net(folder):
        check_net_steps(model_config(folder_or_shipped(folder)), steps, flag, solver, shift)


def model_class(folder: str | os.PathLike):
    """The diffusers class named by config.json's ``_class_name``: UNet2DModel, or the one-step
    :class:`fm_edge.student_net.OneStepNet`; anything else is a UsageError."""
    path = Path(folder) / "config.json"
    name = class_name(folder)
    if name == ONE_STEP_CLASS:
        from fm_edge.student_net import OneStepNet

        return OneStepNet
    if name != "UNet2DModel":
        raise UsageError(f"{path} names model class {name!r}: fm-edge loads UNet2DModel or OneStepNet")
    from diffusers import UNet2DModel

    return UNet2DModel


def load(folder: str | os.PathLike | None = None, device: str = "cpu"):
    """Load (model in eval mode, fm_edge config) from a checkpoint folder (safetensors only)."""
    path = resolve(folder)
    cls = model_class(path)
    try:
        model = cls.from_pretrained(path, use_safetensors=True)
    except Exception as exc:  # diffusers raises OSError/ValueError/SafetensorError for bad files
        raise FmEdgeError(f"checkpoint {str(path)!r} could not be loaded: {first_line(exc)}") from None
    # diffusers leaves parameters that the weights file does not name on the meta device
    empty = [name for name, p in model.named_parameters() if p.is_meta]
    if empty:
        raise FmEdgeError(
            f"checkpoint {str(path)!r} has no weights for {len(empty)} of the parameters in its config.json "
            f"(the first: {empty[0]}): its safetensors file was written for another model"
        )
    return model.to(device).eval(), read_fm_config(path)


def save_inference_folder(out_dir: str | os.PathLike, model, ema, config: dict) -> Path:
    """``out_dir/model``, atomically: the EMA weights as a diffusers save_pretrained folder (contiguous, so
    also after --channels-last), ``fm_edge.json`` = ``config`` and the model card."""
    import copy

    import torch

    from fm_edge.atomic import atomic_dir
    from fm_edge.card import write_card

    ema_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    ema.copy_to(ema_model.parameters())
    final = Path(out_dir) / "model"
    with atomic_dir(final) as tmp:
        ema_model.save_pretrained(tmp, safe_serialization=True)
        (tmp / FM_CONFIG).write_text(json.dumps(config, indent=1))
        write_card(tmp, config)
    return final


def velocity_fn(model, bf16: bool = False):
    """The torch backend: ``velocity(x, t, labels)`` with t in [0, 1] (a float or a [B] tensor).

    ``bf16`` runs the UNet under bf16 autocast (CUDA, or CPUs with AVX512-BF16/AMX); x, t and the returned
    velocity stay float32, so the solver's arithmetic does not lose precision.
    """
    import torch

    @torch.no_grad()
    def velocity(x, t, labels):
        if bf16:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return unet(x, t, labels).float()
        return unet(x, t, labels)

    one_step = getattr(model, "one_step_only", False)

    def unet(x, t, labels):
        if one_step and isinstance(t, (int, float)) and t != 1:
            raise UsageError(
                f"this one-step student (OneStepNet, no time input) is evaluated only at t=1, not t={t:g}: "
                "sample with --steps 1 --solver euler"
            )
        if isinstance(t, (int, float)):  # a fill kernel, not a host-to-device copy: CUDA graphs capture it
            tt = torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device) * T_SCALE
        else:
            tt = (
                torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
                * T_SCALE
            )
        return model(x, tt, class_labels=labels).sample

    return velocity
