"""A student made for int8: a norm-free conv net, time-free or with t as one input plane, with the UNet2DModel
call signature.

A one-step student is only ever evaluated at t=1, so it needs no time input: no time embedding, no
scale-shift per block and no GroupNorm, whose float kernels kept the UNet's int8 graph in float. What is
left is what ONNX Runtime runs end to end in int8:

- label conditioning once, at the input: a learned embedding of the label (0-10) broadcast to planes and
  concatenated to the noise (float until the first QuantizeLinear, then never again);
- an optional space-to-depth stem (``patch_size=2``: a 4x4 stride-2 conv) so every conv works at 16x16 or
  below with wider channels (fewer, wider ops), and a depth-to-space output;
- residual blocks ``h + conv(relu(conv(h)))`` whose second conv starts at zero, so the net trains without
  norms; strided 3x3 convs down; nearest 2x resize + 3x3 conv up, with additive skips;
- ReLU only (ORT folds it into the quantized conv), channel counts that suit VNNI (multiples of 16).

A few-step student (``time_input=True``, the ``-t`` sizes) gets t the same way as its label: one more input
plane holding t, concatenated to the noise, so its graph stays the one-step graph plus one input channel.
With ``prediction="digit"`` it draws the digit from x_t and the velocity is (x_t - digit) / t, so an Euler
step from t lands on the straight line from x_t to that digit, and the last step lands on the digit itself.

A mean-flow net (``step_input=True``, on a ``-t`` net) gets the step length h = t - r as one more plane and
gives the average velocity over [r, t], so one Euler step of length h goes from t to r along the flow (Geng et
al. 2025's MeanFlow); at h = 0, the default, that is the instantaneous velocity, so every sampler, export and
pipeline that passes only t uses it as the flow net it starts from. A distilled mean-flow student stores the
step length of its Euler grid as ``default_step`` (1/K for K steps), so every sampler that passes only t runs
its K-step mean flow; :meth:`OneStepNet.run_steps` sets a shorter step (1/(mK), each of its steps split in m)
for a sampler of mK steps.

``forward(sample, timestep, class_labels)`` matches ``UNet2DModel`` (a time-free net accepts the timestep and
ignores it), so training, export and sampling treat both classes alike; see :data:`ARCHS` for the named sizes.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn
from torch.nn import functional as F

from fm_edge.convention import MODEL_SIZE, NULL_LABEL, NUM_CLASS_EMBEDS, T_SCALE
from fm_edge.errors import UsageError

#: Named student sizes (``--student-arch``); "tiny" is for tests.
ARCHS: dict[str, dict] = {
    "s2-64-128": dict(patch_size=2, block_out_channels=(64, 128), layers_per_block=(2, 3)),
    "s2-48-96-128": dict(patch_size=2, block_out_channels=(48, 96, 128), layers_per_block=(1, 2, 2)),
    # wider and deeper candidates for a few-step student with more capacity (the 48-96-128 '-digit-t' net
    # stopped near its inits' quality on better targets; docs/training.md, sixteenth session)
    "s2-64-128-192": dict(patch_size=2, block_out_channels=(64, 128, 192), layers_per_block=(1, 2, 2)),
    "s2-48-96-128-deep": dict(patch_size=2, block_out_channels=(48, 96, 128), layers_per_block=(2, 3, 3)),
    "p1-32-64-128": dict(patch_size=1, block_out_channels=(32, 64, 128), layers_per_block=(1, 2, 2)),
    "s2-32-64": dict(patch_size=2, block_out_channels=(32, 64), layers_per_block=(2, 2)),
    "tiny": dict(patch_size=2, block_out_channels=(8, 16), layers_per_block=(1, 1), label_channels=4),
}

#: what the last conv outputs: the velocity itself, or the digit (velocity = noise - digit, outside the convs)
PREDICTIONS = ("velocity", "digit")
#: each size also draws the digit: "<name>-digit" (better in int8 and in training, docs/int8.md)
ARCHS.update({f"{name}-digit": dict(arch, prediction="digit") for name, arch in list(ARCHS.items())})
#: and each digit size takes t as an input plane: "<name>-digit-t", a few-step student
ARCHS.update(
    {f"{name}-t": dict(arch, time_input=True) for name, arch in list(ARCHS.items()) if "digit" in name}
)
#: the digit head's velocity divides by t; no Euler grid comes near this
MIN_T = 1e-3


class _Block(nn.Module):
    """``h + conv2(relu(conv1(h)))``; conv2 starts at zero so every block starts as the identity."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h):
        return h + self.conv2(F.relu(self.conv1(h)))


def _per_level(value, levels: int, name: str) -> tuple[int, ...]:
    vals = (value,) * levels if isinstance(value, int) else tuple(value)
    if len(vals) != levels or any(not isinstance(v, int) or v < 0 for v in vals):
        raise UsageError(f"{name} must be one int >= 0 or {levels} of them (one per level), got {value!r}")
    return vals


class OneStepNet(ModelMixin, ConfigMixin):
    """Norm-free conv student, time-free or with a t plane (``time_input``);
    ``forward(sample, timestep, class_labels).sample`` is the velocity."""

    @property
    def one_step_only(self) -> bool:
        """Read by the samplers, the export and the pipeline: a time-free net refuses any step count but 1."""
        return not self.config.time_input

    @register_to_config
    def __init__(
        self,
        sample_size: int = MODEL_SIZE,
        in_channels: int = 1,
        out_channels: int = 1,
        num_class_embeds: int = NUM_CLASS_EMBEDS,
        label_channels: int = 16,
        patch_size: int = 2,
        block_out_channels: tuple[int, ...] = (64, 128),
        layers_per_block: int | tuple[int, ...] = 2,
        up_layers_per_block: int | tuple[int, ...] = 1,
        prediction: str = "velocity",
        time_input: bool = False,
        step_input: bool = False,
        default_step: float = 0.0,
    ):
        super().__init__()
        if step_input and not time_input:
            raise UsageError("step_input (the mean-flow step length) needs time_input: use a '-t' size")
        if not (
            default_step == 0
            or (0 < default_step <= 1 and abs(1 / default_step - round(1 / default_step)) < 1e-6)
        ):
            raise UsageError(
                f"default_step must be 0 or 1/K for a whole number of steps K, got {default_step}"
            )
        chans = tuple(block_out_channels)
        levels = len(chans)
        if levels < 1 or any(not isinstance(c, int) or c < 1 for c in chans):
            raise UsageError(f"block_out_channels must be positive ints, got {block_out_channels!r}")
        if patch_size not in (1, 2):
            raise UsageError(f"patch_size must be 1 or 2, got {patch_size}")
        if sample_size % (patch_size * 2 ** (levels - 1)):
            raise UsageError(
                f"sample_size {sample_size} is not divisible by patch_size x 2^(levels-1) = "
                f"{patch_size * 2 ** (levels - 1)}"
            )
        for name, v in (("label_channels", label_channels), ("num_class_embeds", num_class_embeds)):
            if v < 1:
                raise UsageError(f"{name} must be >= 1, got {v}")
        if prediction not in PREDICTIONS:
            raise UsageError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        down = _per_level(layers_per_block, levels, "layers_per_block")
        up = _per_level(up_layers_per_block, levels - 1, "up_layers_per_block") if levels > 1 else ()
        self.label_embedding = nn.Embedding(num_class_embeds, label_channels)
        stem_in = in_channels + label_channels + int(bool(time_input)) + int(bool(step_input))
        if patch_size == 1:
            self.stem = nn.Conv2d(stem_in, chans[0], 3, padding=1)
        else:
            self.stem = nn.Conv2d(stem_in, chans[0], 4, stride=2, padding=1)
        self.downsamplers = nn.ModuleList(
            nn.Conv2d(chans[i - 1], chans[i], 3, stride=2, padding=1) for i in range(1, levels)
        )
        self.down_blocks = nn.ModuleList(
            nn.Sequential(*(_Block(c) for _ in range(n))) for c, n in zip(chans, down)
        )
        self.upsamplers = nn.ModuleList(
            nn.Conv2d(chans[i + 1], chans[i], 3, padding=1) for i in range(levels - 1)
        )
        self.up_blocks = nn.ModuleList(
            nn.Sequential(*(_Block(chans[i]) for _ in range(up[i]))) for i in range(levels - 1)
        )
        self.conv_out = nn.Conv2d(chans[0], out_channels * patch_size**2, 3, padding=1)

    def run_steps(self, steps: int) -> None:
        """Make a mean-flow student (``default_step`` 1/K) take steps of length 1/``steps`` wherever no step
        length is passed (samplers, export, pipeline); ``steps`` must be a multiple of its K
        (:func:`fm_edge.sampler_spec.check_net_steps`). Any other net is left as it is."""
        from fm_edge.sampler_spec import check_net_steps

        if self.config.step_input and self.config.default_step:
            if steps < 1:
                raise UsageError(f"--steps {steps}: a sampler takes 1 step or more")
            check_net_steps(self.config, steps)
            self._run_step = 1.0 / steps

    @property
    def step_length(self) -> float:
        """The step length used when none is passed: 1/steps after :meth:`run_steps`, else ``default_step``."""
        return getattr(self, "_run_step", self.config.default_step)

    def forward(self, sample, timestep=None, class_labels=None, return_dict: bool = True, step_size=None):
        """Velocity for ``sample`` [B, C, H, W] at ``timestep`` (t x T_SCALE, [B] or a number); a time-free net
        ignores ``timestep`` and gives its velocity at t=1. A mean-flow net gives the average velocity over the
        step of length ``step_size`` (h in t units, [B] or a number; None: its ``default_step``) that ends at
        t - h."""
        b, _, h, w = sample.shape
        if class_labels is None:
            class_labels = torch.full((b,), NULL_LABEL, dtype=torch.long, device=sample.device)
        planes = self.label_embedding(class_labels.reshape(-1)).to(sample.dtype)
        inputs = [sample, planes[:, :, None, None].expand(b, planes.shape[1], h, w)]
        t = None
        if self.config.time_input:
            if timestep is None:
                raise UsageError("this OneStepNet takes a time input: pass timestep = t x 1000")
            t = torch.as_tensor(timestep, dtype=sample.dtype, device=sample.device).reshape(-1) / T_SCALE
            t = t.expand(b)[:, None, None, None]
            inputs.append(t.expand(b, 1, h, w))
        if self.config.step_input:
            step_size = self.step_length if step_size is None else step_size
            step = torch.as_tensor(step_size, dtype=sample.dtype, device=sample.device)
            inputs.append(step.reshape(-1).expand(b)[:, None, None, None].expand(b, 1, h, w))
        x = F.relu(self.stem(torch.cat(inputs, dim=1)))
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            if i > 0:
                x = F.relu(self.downsamplers[i - 1](x))
            x = blocks(x)
            skips.append(x)
        for i in reversed(range(len(self.upsamplers))):
            x = F.relu(self.upsamplers[i](F.interpolate(x, scale_factor=2.0, mode="nearest")))
            x = self.up_blocks[i](x + skips[i])
        x = self.conv_out(x)
        if self.config.patch_size > 1:
            x = F.pixel_shuffle(x, self.config.patch_size)
        if self.config.prediction == "digit":
            x = sample - x  # the net draws the digit; the noise reaches the velocity exactly, in float
            if t is not None:
                x = x / t.clamp(min=MIN_T)
        return UNet2DOutput(sample=x) if return_dict else (x,)


def build(arch: str, **overrides) -> OneStepNet:
    """A freshly initialised student of the named size (``ARCHS``)."""
    if arch not in ARCHS:
        raise UsageError(f"unknown student arch {arch!r}: choose one of {', '.join(ARCHS)}")
    return OneStepNet(**{**ARCHS[arch], **overrides})


def check_growable(config, arch: str) -> None:
    """A UsageError unless a net of ``config`` (a OneStepNet's config) can grow into the size ``arch``: a '-t'
    name of :data:`ARCHS` with the same levels, blocks and patch, and as many channels or more at every level."""
    if arch not in ARCHS or not ARCHS[arch].get("time_input"):
        names = ", ".join(k for k, v in ARCHS.items() if v.get("time_input"))
        raise UsageError(f"--grow-to {arch!r} is not a '-t' size: choose one of {names}")
    import inspect

    params = inspect.signature(OneStepNet.__init__).parameters.values()
    new = {**{a.name: a.default for a in params if a.default is not a.empty}, **ARCHS[arch]}
    old_chans, new_chans = tuple(config["block_out_channels"]), tuple(new["block_out_channels"])
    levels = len(old_chans)

    def shape(c) -> tuple:  # what must match: all but the channel counts
        return (
            c["patch_size"], c["in_channels"], c["out_channels"], _per_level(c["layers_per_block"], levels, "layers"),
            _per_level(c["up_layers_per_block"], levels - 1, "up layers") if levels > 1 else (),
        )  # fmt: skip

    if (
        len(new_chans) != levels
        or any(n < o for n, o in zip(new_chans, old_chans))
        or shape(config) != shape(new)
    ):
        raise UsageError(
            f"--grow-to {arch}: a net grows only to as many channels or more at the same levels and blocks, and "
            f"channels {list(old_chans)} with layers {config['layers_per_block']} do not grow into "
            f"{list(new_chans)} with layers {new['layers_per_block']}"
        )


def grown(model: OneStepNet, arch: str) -> OneStepNet:
    """``model`` in the wider size ``arch`` (:func:`check_growable`), drawing exactly what ``model`` draws: its
    weights fill the first channels, every weight that reads a new channel is zero, and the weights that write
    one keep their fresh initialisation, so training grows the new channels out of the trained net (as Net2Net
    widens a net)."""
    import torch

    cfg = dict(model.config)
    check_growable(cfg, arch)
    keep = ("prediction", "time_input", "step_input", "default_step", "label_channels", "num_class_embeds")
    new = build(arch, **{k: cfg[k] for k in keep})
    state = new.state_dict()
    with torch.no_grad():
        for name, old in model.state_dict().items():
            w = state[name]
            if w.ndim == 4:  # conv [out, in, k, k]: reading a new input channel gives 0
                w[:, old.shape[1] :] = 0
                w[: old.shape[0], : old.shape[1]] = old
            else:
                w[: old.shape[0]] = old
    new.load_state_dict(state)
    return new.to(next(model.parameters()).device)


def _with_new_plane(model: OneStepNet, **change) -> OneStepNet:
    """A copy of ``model`` with ``change`` in its config and one more input plane, last, with zero stem weights:
    the copy gives exactly ``model``'s output whatever that plane holds."""
    import torch

    new = OneStepNet.from_config(model.config, **change)
    state = model.state_dict()
    w = state["stem.weight"]  # [out, in, k, k]
    state["stem.weight"] = torch.cat([w, w.new_zeros(w.shape[0], 1, *w.shape[2:])], dim=1)
    new.load_state_dict(state)
    return new.to(next(model.parameters()).device)


def with_time_input(model: OneStepNet) -> OneStepNet:
    """The '-t' copy of a time-free digit net: its stem gets the t plane with zero weights, so at t = 1 the copy
    is ``model`` exactly (velocity x - digit) and a few-step student starts from the one-step one."""
    if model.config.time_input or model.config.prediction != "digit":
        raise UsageError("only a time-free '-digit' OneStepNet gets a t plane added (its '-t' size)")
    return _with_new_plane(model, time_input=True)


def with_step_input(model: OneStepNet) -> OneStepNet:
    """The mean-flow copy of a '-t' flow net: its stem gets the step-length plane with zero weights, so at every
    step length the copy starts as ``model``'s instantaneous velocity."""
    if not model.config.time_input or model.config.step_input:
        raise UsageError("only a '-t' OneStepNet without a step input gets a step-length plane added")
    return _with_new_plane(model, step_input=True)
