"""Training: flow matching on MNIST with AdamW, EMA, gradient clipping, atomic resumable checkpoints.

Runs under Accelerate, so ``fm-edge train`` works unchanged with ``accelerate launch`` on several
processes (CPU/gloo or GPUs). Each step's randomness (noise, t, label dropout) comes from a generator on
the training device seeded from (seed, step, process), and each epoch's order from (seed, epoch), so
``--resume latest`` repeats the original run exactly from its last complete ``checkpoint-<step>/``: no RNG
state needs saving. On CPU the streams are those of earlier versions.

The loop never waits for the device within a step: the dataset lives on the device, the losses stay there
and are fetched every ``log_every`` steps and at each checkpoint (where non-finite losses are caught, before
anything is written), AdamW is fused on CUDA (foreach on CPU) and the EMA is a foreach update.

A checkpoint holds only safetensors and JSON (weights, EMA, optimizer moments; step, loss log, optimizer
settings). It is written to a hidden temporary folder and renamed into place, so a run killed at any
moment (SIGKILL included) resumes from its last complete checkpoint, losing at most one interval;
temporaries left by a killed run are removed when the next run starts.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from fm_edge.atomic import prepare_output_dir, remove_leftovers
from fm_edge.errors import UsageError
from fm_edge.loop import LR_SCHEDULES, lr_factor


@dataclass
class TrainConfig:
    output_dir: str
    preset: str = "compact"
    data: str | None = None
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 500
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    label_dropout: float = 0.1
    time_sampling: str = "uniform"
    ot_coupling: bool = False
    epochs: float = 10.0
    max_steps: int | None = None
    checkpoint_every: int = 500
    log_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    bf16: bool = False
    compile: bool = False
    channels_last: bool = False
    num_threads: int | None = None
    limit: int | None = None  # use only the first N training images (tests, smoke runs)
    init_from: str | None = None  # start from this checkpoint's weights (fresh optimizer, EMA and schedule)

    def validate(self) -> None:
        for name in ("batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.label_dropout < 1:
            raise UsageError(f"--label-dropout must be in [0, 1), got {self.label_dropout}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {self.limit}")
        if self.warmup_steps < 0:
            raise UsageError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(
                f"unknown --lr-schedule {self.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}"
            )
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise UsageError(f"--epochs must be a finite number > 0, got {self.epochs}")
        from fm_edge.model import check_trainable

        check_trainable(self.preset)


def export_inference(out_dir: Path, model, ema, cfg: TrainConfig, state: dict, sampler=None) -> Path:
    """Write the inference folder (save_pretrained with EMA weights, fm_edge.json, model card)."""
    from fm_edge.flow import t_floor_for
    from fm_edge.model import fm_config, save_inference_folder

    config = fm_config(
        cfg.preset,
        sampler=sampler,
        training={k: v for k, v in asdict(cfg).items() if k not in ("output_dir", "data")}
        | {
            "data": cfg.data or "ylecun/mnist",
            "steps": state["step"],
            "images_seen": state["images_seen"],
            "train_seconds": round(state["train_seconds"], 1),
            "final_loss_ema": state.get("loss_ema"),
            # a digit-drawing net's loss holds the digit error's weight at t below this (flow.DIGIT_T_FLOOR)
            "digit_t_floor": t_floor_for(model),
        },
    )
    return save_inference_folder(out_dir, model, ema, config)


def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True) -> Path:
    """Train, checkpointing every ``checkpoint_every`` steps; returns the inference folder."""
    cfg.validate()
    import torch
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    from fm_edge.checkpoint import refuse_other_run, resume_checkpoint
    from fm_edge.convention import encode_uint8
    from fm_edge.data import load_split
    from fm_edge.flow import loss_fn, sample_t, t_floor_for
    from fm_edge.loop import EpochOrder, TrainingLoop
    from fm_edge.model import build

    sample_t(1, cfg.time_sampling, torch.Generator())  # validates the name before any work
    init = _init_weights(cfg) if cfg.init_from else None  # a bad --init-from fails before any work
    if cfg.ot_coupling:
        import scipy.optimize  # noqa: F401  (fail before any work when scipy is missing)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # cpu=True where there is no GPU: then a torchrun/`accelerate launch --multi_gpu` environment with
    # several processes becomes a gloo MULTI_CPU run instead of silently training each process alone.
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", cpu=not torch.cuda.is_available())
    device = accelerator.device
    if cfg.bf16:
        from fm_edge.quantize.cpu import warn_emulated_bf16

        warn_emulated_bf16(device.type)
    if device.type == "cuda":
        # autotuned conv kernels: faster, but a resumed GPU run then matches the straight one only
        # statistically (on CPU it is bit-exact)
        torch.backends.cudnn.benchmark = True
    images, labels = load_split(cfg.data, "train", limit=cfg.limit)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        prepare_output_dir(out)
        refuse_other_run(out, resume)
        for name in ("checkpoint-*", "model"):  # what a killed run was writing
            remove_leftovers(out, name)
    # the whole dataset on the device, uploaded once; batches are gathered there by index
    x_all = torch.from_numpy(encode_uint8(images)).to(device)
    y_all = torch.from_numpy(labels).to(device)
    n = len(x_all)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = cfg.batch_size * world
    steps_per_epoch = max(1, n // per_step)
    total = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))

    torch.manual_seed(cfg.seed)
    model = build(cfg.preset)
    if init is not None:
        model.load_state_dict(init)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=2 / 3, foreach=True)
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)
    state = {"step": 0, "images_seen": 0, "train_seconds": 0.0, "losses": []}
    if resume:
        state = resume_checkpoint(out, resume, model, ema, optimizer, accelerator.print) or state
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.compile:
        model = torch.compile(model)
    ema.to(device)
    model.train()
    module = accelerator.unwrap_model(model)

    order = EpochOrder(len(x_all), per_step, cfg.seed, device)
    t_floor = t_floor_for(module)

    def step_loss(step: int):
        """This step's batch (this process's share of the epoch's order) and its flow-matching loss."""
        idx = order.batch(step, cfg.batch_size, offset=rank * cfg.batch_size)
        gen = torch.Generator(device=device).manual_seed((cfg.seed * 1_000_003 + step) * world + rank)
        with accelerator.autocast():
            loss = loss_fn(
                model,
                x_all[idx],
                y_all[idx],
                gen,
                cfg.time_sampling,
                cfg.label_dropout,
                cfg.ot_coupling,
                t_floor,
            )
        return loss, per_step

    loop = TrainingLoop(
        out, model, ema, optimizer, module=module, total=total, lr=cfg.lr,
        lr_factor=lambda s: lr_factor(s, total, cfg.warmup_steps, cfg.lr_schedule), grad_clip=cfg.grad_clip,
        checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints, log_every=cfg.log_every,
        backward=accelerator.backward, clip=accelerator.clip_grad_norm_, main_process=accelerator.is_main_process,
        barrier=accelerator.wait_for_everyone, desc="train", progress=progress,
        postfix=lambda s: {"epoch": f"{s / order.steps_per_epoch:.2f}"},
    )  # fmt: skip
    start_step = state["step"]
    state = loop.run(step_loss, state)
    step = state["step"]
    run_steps = step - start_step
    if run_steps and accelerator.is_main_process:
        secs = max(1e-9, state["train_seconds"])
        accelerator.print(
            f"{state['images_seen'] / secs:.1f} images/s over {state['step']} steps "
            f"({'bf16' if cfg.bf16 else 'fp32'}, {world} process(es))",
            file=sys.stderr,
        )
    final = out / "model"
    if accelerator.is_main_process:
        final = export_inference(out, accelerator.unwrap_model(model), ema, cfg, state)
    accelerator.wait_for_everyone()
    return final


def _init_weights(cfg: TrainConfig) -> dict:
    """The state dict of ``--init-from``, refused unless it is a checkpoint of the same preset."""
    from fm_edge.model import load, read_fm_config, resolve

    path = resolve(cfg.init_from)
    preset = read_fm_config(path).get("preset")
    if preset != cfg.preset:
        raise UsageError(
            f"--init-from {cfg.init_from!r} is a {preset or 'unknown'} checkpoint, but --preset is {cfg.preset}: "
            "pass the same preset"
        )
    model, _ = load(path)
    return model.state_dict()


def add_arguments(p) -> None:
    """``fm-edge train``'s flags."""
    from fm_edge.flags import lr_schedule_flag, seed_and_threads
    from fm_edge.flow import TIME_SAMPLING
    from fm_edge.model import PRESETS

    p.add_argument("-o", "--output-dir", default="runs/compact", help="run folder (checkpoints and model/)")
    p.add_argument(
        "--preset",
        default="compact",
        help=f"model preset: a UNet2DModel ({', '.join(PRESETS)}), or an int8-built OneStepNet size with a t "
        "input (a '-digit-t' name of fm_edge.student_net.ARCHS, e.g. s2-48-96-128-digit-t)",
    )
    p.add_argument(
        "--data", default=None, help="local MNIST folder in the hub layout (default: hub ylecun/mnist)"
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per step (per process)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    lr_schedule_flag(
        p, "after warm-up: constant, or a decay that reaches 0 at the last step", TrainConfig.warmup_steps,
        "linear learning-rate warm-up steps",
    )  # fmt: skip
    p.add_argument("--epochs", type=float, default=10.0, help="passes over the training set")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs)"
    )
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument(
        "--log-every",
        type=int,
        default=50,
        help="steps between loss fetches from the device (and NaN checks); checkpoints fetch too",
    )
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint-<step> folder")
    p.add_argument(
        "--init-from",
        default=None,
        help="start from this checkpoint folder's weights (same preset; fresh optimizer, EMA and schedule)",
    )
    p.add_argument("--time-sampling", default="uniform", choices=TIME_SAMPLING, help="training-time density")
    p.add_argument(
        "--label-dropout", type=float, default=0.1, help="share of null labels (classifier-free guidance)"
    )
    p.add_argument("--ema-decay", type=float, default=0.999, help="largest EMA decay (after its warm-up)")
    p.add_argument(
        "--ot-coupling",
        action="store_true",
        help="pair noise and data within each batch by minimal squared distance (needs scipy)",
    )
    p.add_argument(
        "--bf16", action="store_true",
        help="bf16 autocast: the fastest setting on CUDA and on CPUs with AVX512-BF16 or AMX (`fm-edge env` "
        "lists the flags; with --channels-last 2.97x the int8-built '-digit-t' net on an Intel Xeon with AMX, "
        "1.36x compact on an AMD EPYC with AVX512-BF16); emulated and several times slower without them",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (1.0x on an AMD EPYC CPU)")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last memory format (1.17x the '-digit-t' net and 1.05x compact in fp32 on an Intel Xeon "
        "with AMX, 0.97x on an AMD EPYC)",
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    seed_and_threads(p, "seed of the weights, batch order and noise", "CPU threads for torch")


def main(args) -> Path:
    """``fm-edge train``: build a TrainConfig from the CLI flags and train."""
    from fm_edge.flags import config_from_args

    return train(config_from_args(TrainConfig, args), resume=args.resume)
