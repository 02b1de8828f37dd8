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

import json
import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fm_edge.atomic import atomic_dir, prepare_output_dir, remove_leftovers
from fm_edge.errors import FmEdgeError, UsageError


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


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning-rate multiplier for 0-based ``step`` of ``total``: linear warm-up over ``warmup`` steps,
    then constant, or a cosine or linear decay that reaches exactly 0 at the last step (``total - 1``)."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return warm
    start = min(warmup, total - 1)  # the decay always ends at the last step, however long the warm-up
    p = min(1.0, max(0.0, (step + 1 - start) / max(1, total - start)))
    decay = 0.5 * (1 + math.cos(math.pi * p)) if schedule == "cosine" else 1.0 - p
    return warm * decay


CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-<step>/ in output_dir, by step (temporary folders excluded)."""
    return sorted(
        (int(m.group(1)), p) for p in output_dir.glob("checkpoint-*") if (m := CKPT_RE.match(p.name))
    )


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint-<step>/ with the highest step (temporary folders are ignored)."""
    found = [(s, p) for s, p in _checkpoints(output_dir) if (p / "state.json").is_file()]
    return found[-1][1] if found else None


def _optimizer_tensors(sd: dict) -> tuple[dict, dict]:
    """An optimizer state_dict as safetensors tensors + string metadata (no pickle)."""
    import torch

    tensors, scalars = {}, {}
    for pid, entry in sd["state"].items():
        for key, val in entry.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = val.detach().contiguous()
            else:
                scalars[f"{pid}.{key}"] = val
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, meta


def _optimizer_state(path: Path) -> dict:
    """The optimizer state_dict from optimizer.safetensors (or a legacy optimizer.pt, weights only)."""
    import torch
    from safetensors import safe_open

    if not (path / "optimizer.safetensors").is_file() and (path / "optimizer.pt").is_file():
        return torch.load(path / "optimizer.pt", weights_only=True)
    state: dict = {}
    with safe_open(str(path / "optimizer.safetensors"), framework="pt") as f:
        meta = f.metadata()
        for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = f.get_tensor(name)
    for name, val in json.loads(meta["scalars"]).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    groups = json.loads(meta["param_groups"])
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def _save_checkpoint(out: Path, step: int, model, ema, optimizer, state: dict, keep: int) -> Path:
    from safetensors.torch import save_file

    final = out / f"checkpoint-{step}"
    with atomic_dir(final) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        ema_sd = {f"shadow.{i}": p.detach().contiguous() for i, p in enumerate(ema.shadow_params)}
        save_file(ema_sd, tmp / "ema.safetensors")
        tensors, meta = _optimizer_tensors(optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors", metadata=meta)
        state = dict(state, ema_optimization_step=ema.optimization_step)
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    for _, p in _checkpoints(out)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _load_checkpoint(path: Path, model, ema, optimizer) -> dict:
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(path / "model.safetensors"))
        shadow = load_file(path / "ema.safetensors")
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(shadow[f"shadow.{i}"])
        optimizer.load_state_dict(_optimizer_state(path))
        state = json.loads((path / "state.json").read_text())
    except Exception as exc:
        raise FmEdgeError(f"checkpoint {str(path)!r} could not be resumed: {exc}") from None
    ema.optimization_step = state.get("ema_optimization_step", state["step"])
    return state


def resume_checkpoint(out: Path, resume: str, model, ema, optimizer, log=print) -> dict | None:
    """Load ``--resume`` ('latest' or a checkpoint folder) into model, EMA and optimizer: its saved state, or
    None when 'latest' finds no checkpoint yet (the run then starts from step 0)."""
    path = latest_checkpoint(out) if resume == "latest" else Path(resume)
    if path is None:
        log(f"no checkpoint in {out}: starting from step 0", file=sys.stderr)
        return None
    if not (path / "state.json").is_file():
        raise UsageError(f"--resume {resume!r}: {str(path)!r} is not a complete checkpoint folder")
    state = _load_checkpoint(path, model, ema, optimizer)
    log(f"resumed from {path} at step {state['step']}", file=sys.stderr)
    return state


def export_inference(out_dir: Path, model, ema, cfg: TrainConfig, state: dict, sampler=None) -> Path:
    """Write the inference folder (save_pretrained with EMA weights, fm_edge.json, model card)."""
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
        },
    )
    return save_inference_folder(out_dir, model, ema, config)


def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True) -> Path:
    """Train, checkpointing every ``checkpoint_every`` steps; returns the inference folder."""
    cfg.validate()
    import torch
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from fm_edge.convention import encode_uint8
    from fm_edge.data import load_split
    from fm_edge.flow import loss_fn, sample_t
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
    if device.type == "cuda":
        # autotuned conv kernels: faster, but a resumed GPU run then matches the straight one only
        # statistically (on CPU it is bit-exact)
        torch.backends.cudnn.benchmark = True
    images, labels = load_split(cfg.data, "train", limit=cfg.limit)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        prepare_output_dir(out)
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
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, total, cfg.warmup_steps, cfg.lr_schedule),
        last_epoch=state["step"] - 1,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.compile:
        model = torch.compile(model)
    ema.to(device)
    model.train()

    bar = tqdm(
        total=total,
        initial=state["step"],
        disable=not (progress and accelerator.is_main_process),
        desc="train",
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    step, t_start, start_step = state["step"], time.time(), state["step"]
    loss_ema = state.get("loss_ema")
    perm, perm_epoch = None, -1
    pending: list = []  # this interval's losses, still on the device

    def sync_losses() -> None:
        """Fetch the pending losses (one host sync), check them, log them."""
        nonlocal loss_ema
        if not pending:
            return
        values = torch.stack(pending).tolist()
        first = step - len(pending) + 1
        pending.clear()
        for i, lv in enumerate(values):
            if not math.isfinite(lv):
                raise FmEdgeError(
                    f"loss is {lv} at step {first + i} (losses are checked every --log-every "
                    f"{cfg.log_every} steps and at checkpoints): stopping (lower --lr or check the data); "
                    "the last checkpoint is intact"
                )
            loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
            state["losses"].append([first + i, round(lv, 5)])
        state["loss_ema"] = loss_ema
        bar.set_postfix(loss=f"{loss_ema:.4f}", epoch=f"{step / steps_per_epoch:.2f}", refresh=False)

    while step < total:
        # 1. this step's batch: a seeded permutation per epoch (made on the CPU, as before), sharded by process
        epoch, within = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch)).to(
                device
            )
            perm_epoch = epoch
        idx = perm[within * per_step + rank * cfg.batch_size :][: cfg.batch_size]
        x0, y = x_all[idx], y_all[idx]
        gen = torch.Generator(device=device).manual_seed((cfg.seed * 1_000_003 + step) * world + rank)
        # 2. flow-matching loss, backward, clip, update, EMA: nothing here waits for the device
        with accelerator.autocast():
            loss = loss_fn(model, x0, y, gen, cfg.time_sampling, cfg.label_dropout, cfg.ot_coupling)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(accelerator.unwrap_model(model).parameters())
        step += 1
        # 3. bookkeeping: loss log every log_every steps, progress bar, checkpoint
        pending.append(loss.detach())
        state.update(step=step, images_seen=state["images_seen"] + per_step)
        checkpoint = step % cfg.checkpoint_every == 0 or step == total
        if checkpoint or step % cfg.log_every == 0:
            sync_losses()
        bar.update(1)
        if checkpoint:
            elapsed = time.time() - t_start
            state["train_seconds"] = state["train_seconds"] + elapsed
            t_start = time.time()
            if accelerator.is_main_process:
                _save_checkpoint(
                    out, step, accelerator.unwrap_model(model), ema, optimizer, state, cfg.keep_checkpoints
                )
            accelerator.wait_for_everyone()
    bar.close()
    state["train_seconds"] += time.time() - t_start
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
    from fm_edge.flags import seed_and_threads
    from fm_edge.flow import TIME_SAMPLING
    from fm_edge.model import PRESETS

    p.add_argument("-o", "--output-dir", default="runs/compact", help="run folder (checkpoints and model/)")
    p.add_argument("--preset", default="compact", choices=tuple(PRESETS), help="model preset")
    p.add_argument(
        "--data", default=None, help="local MNIST folder in the hub layout (default: hub ylecun/mnist)"
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per step (per process)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup-steps", type=int, default=500, help="linear learning-rate warm-up steps")
    p.add_argument(
        "--lr-schedule",
        default="constant",
        choices=LR_SCHEDULES,
        help="after warm-up: constant, or a decay that reaches 0 at the last step",
    )
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
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA, or CPUs with AVX512-BF16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPUs)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    seed_and_threads(p, "seed of the weights, batch order and noise", "CPU threads for torch")


def main(args) -> Path:
    """``fm-edge train``: build a TrainConfig from the CLI flags and train."""
    from fm_edge.flags import config_from_args

    return train(config_from_args(TrainConfig, args), resume=args.resume)
