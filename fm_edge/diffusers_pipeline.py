"""``FmEdgePipeline``: an fm-edge checkpoint as a diffusers pipeline (UNet2DModel + diffusers' own
FlowMatchEulerDiscreteScheduler), giving the same digits as ``fm-edge sample``'s Euler sampler.

The two conventions already agree: the scheduler's sigma is fm-edge's t (1 = noise, 0 = data), its
timesteps are sigma * 1000 as float32 (the UNet's time input), and its Euler step ``x + (sigma_next - sigma)
* v`` is fm-edge's. Only the grid differs: ``set_timesteps(n)`` spaces timesteps from 1000 to 1 (shift 2, 4 steps:
1000, 800, 501, 4), while fm-edge uses ``1 - i/n`` warped by the time shift and ending at 0
(:func:`fm_edge.solvers.time_grid`). So :func:`set_fm_edge_grid` passes fm-edge's grid as explicit sigmas (the
scheduler appends the final 0). The shift stays the scheduler's ``shift``, but the scheduler would apply it
in float32 (up to 4 ulp off fm-edge's float64 grid), so the grid is shifted by ``time_grid`` and the scheduler's
own shift is 1 for that one call: the sigmas are then fm-edge's, rounded once to float32.

``FmEdgePipeline.from_pretrained`` loads a pipeline folder (model_index.json, unet/, scheduler/) or an fm-edge
checkpoint folder (UNet files + fm_edge.json); ``save_pretrained`` writes the pipeline layout. Importing this
module imports torch and diffusers; nothing else in fm_edge imports it at module level.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from fm_edge.artifacts import FM_CONFIG
from fm_edge.convention import IMAGE_SIZE, NULL_LABEL, PAD, T_SCALE, check_labels, decode_uint8
from fm_edge.errors import UsageError
from fm_edge.model import model_class, read_fm_config
from fm_edge.sampler_spec import SamplerSpec, check_net_steps
from fm_edge.solvers import check_cfg, check_solver, time_grid

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "latent")
#: Scheduler options that would move the grid away from fm-edge's (or, for stochastic_sampling, the sampler).
GRID_OPTIONS = (
    "use_dynamic_shifting",
    "shift_terminal",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "invert_sigmas",
    "stochastic_sampling",
)


def set_fm_edge_grid(scheduler: FlowMatchEulerDiscreteScheduler, steps: int, device=None) -> None:
    """Set ``scheduler``'s sigmas to ``time_grid(steps, scheduler.shift)`` (float32) and begin at its first step."""
    shift = float(scheduler.shift)
    sigmas = time_grid(steps, shift)[:-1]  # the scheduler appends the final sigma 0
    scheduler.set_shift(1.0)  # already shifted: shift 1 leaves the sigmas exactly as given
    try:
        scheduler.set_timesteps(sigmas=sigmas, device=device)
    finally:
        scheduler.set_shift(shift)
    scheduler.set_begin_index(0)


def make_scheduler(sampler: dict) -> FlowMatchEulerDiscreteScheduler:
    """diffusers' flow-matching Euler scheduler with fm-edge's time scale and the recommended shift."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=int(T_SCALE), shift=float(sampler["shift"]))


def _check_scale(scale) -> None:
    try:
        check_cfg(scale)
    except UsageError as exc:
        raise UsageError(f"guidance_scale: {exc}") from None


def _guidance_scale(guidance_scale, sampler: dict) -> tuple[float, bool]:
    """(scale, whether to run the batched cond+uncond pass) for a requested guidance_scale."""
    spec = SamplerSpec.from_dict(sampler)
    if spec.distilled:
        distilled = spec.distilled_cfg_scale
        if guidance_scale is not None:
            _check_scale(guidance_scale)
            if distilled is None or guidance_scale != distilled:
                raise UsageError(
                    f"guidance_scale={guidance_scale}: this model was guidance-distilled"
                    + (f" at scale {distilled}" if distilled is not None else "")
                    + "; pass guidance_scale=None (it runs one forward pass per step, no CFG)"
                )
        return float(distilled if distilled is not None else 1.0), False
    scale = sampler["cfg_scale"] if guidance_scale is None else guidance_scale
    _check_scale(scale)
    return float(scale), scale != 1.0


def _labels(class_labels) -> np.ndarray:
    if isinstance(class_labels, torch.Tensor):
        class_labels = class_labels.detach().cpu().numpy()
    arr = np.asarray(class_labels)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.size == 0:
        raise UsageError(f"class_labels has shape {list(arr.shape)}: expected one or more labels, [B]")
    return check_labels(arr)


def _latents(latents, shape, generator, device, dtype) -> torch.Tensor:
    if latents is None:
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    if isinstance(latents, np.ndarray):
        if latents.dtype.kind != "f":
            raise UsageError(f"latents has dtype {latents.dtype}: expected a float tensor {list(shape)}")
        latents = torch.from_numpy(np.ascontiguousarray(latents))
    if not isinstance(latents, torch.Tensor):
        raise UsageError(
            f"latents must be a torch.Tensor of shape {list(shape)}, got {type(latents).__name__}"
        )
    if not latents.is_floating_point():
        raise UsageError(f"latents has dtype {latents.dtype}: expected a float tensor {list(shape)}")
    if tuple(latents.shape) != tuple(shape):
        raise UsageError(
            f"latents has shape {list(latents.shape)}: expected {list(shape)} (one noise per class label)"
        )
    if not torch.isfinite(latents).all():
        raise UsageError("latents contains NaN or infinite values")
    return latents.to(device=device, dtype=dtype)


class FmEdgePipeline(DiffusionPipeline):
    r"""Class-conditional MNIST digits from an fm-edge flow-matching UNet.

    Parameters:
        unet ([`UNet2DModel`] or fm-edge's one-step `OneStepNet`): the velocity network (timestep input t * 1000, labels 0-9, null label 10).
        scheduler ([`FlowMatchEulerDiscreteScheduler`]): its ``shift`` is the time shift of the grid.
        sampler (`dict`, *optional*): the checkpoint's recommended sampler (fm_edge.json's ``sampler``): the
            defaults for ``num_inference_steps`` (``steps``) and ``guidance_scale`` (``cfg_scale``), and
            ``"guidance": "distilled"`` for a guidance-distilled model.
    """

    model_cpu_offload_seq = "unet"

    def __init__(
        self, unet: UNet2DModel, scheduler: FlowMatchEulerDiscreteScheduler, sampler: dict | None = None
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(sampler=SamplerSpec.from_dict(sampler).to_dict())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a pipeline folder or Hub repo, or an fm-edge checkpoint folder (fm_edge.json, no model_index.json).

        Safetensors only.
        """
        if kwargs.get("use_safetensors") is False:
            raise UsageError("use_safetensors=False: FmEdgePipeline loads safetensors weights only")
        kwargs["use_safetensors"] = True
        path = Path(os.fspath(pretrained_model_name_or_path))
        if path.is_dir() and not (path / "model_index.json").is_file() and (path / FM_CONFIG).is_file():
            return cls.from_fm_edge_checkpoint(path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_fm_edge_checkpoint(cls, folder, sampler: dict | None = None, scheduler=None, **unet_kwargs):
        """Build the pipeline from an fm-edge checkpoint folder: its UNet, and a scheduler from fm_edge.json."""
        fm = read_fm_config(folder)
        for key, want in (("t_scale", T_SCALE), ("null_label", NULL_LABEL)):
            if key in fm and float(fm[key]) != want:
                raise UsageError(f"{folder}: {FM_CONFIG} has {key}={fm[key]}, FmEdgePipeline needs {want:g}")
        sampler = SamplerSpec.from_dict(sampler or fm.get("sampler")).to_dict()
        if sampler["solver"] != "euler":
            logger.warning(
                f"{folder} recommends the {sampler['solver']} solver; FmEdgePipeline runs diffusers' Euler "
                "scheduler with its steps, cfg_scale and shift"
            )
        unet_kwargs["use_safetensors"] = True
        unet = model_class(folder).from_pretrained(folder, **unet_kwargs)  # UNet2DModel or OneStepNet
        return cls(unet=unet, scheduler=scheduler or make_scheduler(sampler), sampler=sampler)

    def _check_scheduler(self) -> None:
        s = self.scheduler
        if not isinstance(s, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"FmEdgePipeline needs a FlowMatchEulerDiscreteScheduler, got {type(s).__name__}"
            )
        on = [k for k in GRID_OPTIONS if s.config.get(k)]
        if on:
            raise ValueError(
                f"the scheduler sets {', '.join(on)}: FmEdgePipeline runs fm-edge's grid, unset them"
            )
        if s.config.num_train_timesteps != T_SCALE:
            raise ValueError(
                f"scheduler num_train_timesteps={s.config.num_train_timesteps}: the UNet expects t * {T_SCALE:g}"
            )

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate one 28x28 digit per class label.

        Args:
            class_labels (`int` or list of `int`): digits 0-9, or 10 for unconditional samples.
            num_inference_steps (`int`, *optional*): Euler steps; defaults to the checkpoint's recommendation.
            guidance_scale (`float`, *optional*): classifier-free guidance ``v_u + s (v_c - v_u)``, 0 to 20
                (1 = no guidance); defaults to the recommendation. A guidance-distilled model accepts only None
                or its distilled scale.
            generator (`torch.Generator`, *optional*): makes the starting noise deterministic.
            latents (`torch.Tensor`, *optional*): the starting noise, [B, 1, 32, 32] (B = number of labels).
            output_type (`str`): "pil" (28x28 grey `PIL.Image`), "np" (float [B, 28, 28, 1] in [0, 1]) or
                "latent" (the model-space result [B, 1, 32, 32] in about [-1, 1], padding included).
            return_dict (`bool`): return an [`ImagePipelineOutput`] instead of a tuple.
        """
        sampler = dict(self.config.sampler)
        steps = sampler["steps"] if num_inference_steps is None else num_inference_steps
        try:
            check_solver("euler", steps)
        except UsageError as exc:
            raise UsageError(f"num_inference_steps: {exc}") from None
        if type(self.unet).__name__ == "OneStepNet":
            check_net_steps(self.unet.config, steps, "num_inference_steps", shift=sampler.get("shift", 1.0))
            self.unet.run_steps(steps)  # a mean-flow student's step length
        scale, guided = _guidance_scale(guidance_scale, sampler)
        labels = _labels(class_labels)
        if output_type not in OUTPUT_TYPES:
            raise UsageError(f"output_type={output_type!r}: choose one of {', '.join(OUTPUT_TYPES)}")
        self._check_scheduler()

        device, dtype = self._execution_device, self.unet.dtype
        size = self.unet.config.sample_size
        shape = (len(labels), self.unet.config.in_channels, size, size)
        x = _latents(latents, shape, generator, device, dtype)
        y = torch.as_tensor(labels, device=device)
        if guided:  # cond and uncond in one batch, as fm_edge.solvers.guided does
            y = torch.cat([y, torch.full_like(y, NULL_LABEL)])

        set_fm_edge_grid(self.scheduler, steps, device)
        for t in self.progress_bar(self.scheduler.timesteps):
            xin = torch.cat([x, x]) if guided else x
            v = self.unet(xin, t.to(torch.float32).expand(len(xin)), class_labels=y).sample
            if guided:  # a copy of fm_edge.solvers.guided (change both together)
                vc, vu = v.chunk(2)
                v = vu + scale * (vc - vu)
            x = self.scheduler.step(v, t, x).prev_sample  # Euler, as fm_edge.solvers.sample
        self.maybe_free_model_hooks()

        if output_type == "latent":
            images = x
        elif output_type == "np":
            crop = x[:, :, PAD : PAD + IMAGE_SIZE, PAD : PAD + IMAGE_SIZE]
            images = ((crop.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        else:
            from PIL import Image

            images = [Image.fromarray(a) for a in decode_uint8(x.float().cpu().numpy())]
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
