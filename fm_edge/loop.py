"""The optimisation loop that train and distill share: learning rate, update, EMA, loss log, checkpoints.

What a step trains on comes from the caller, as ``step_loss(step) -> (loss, images)``; everything else is
here, once: the learning rate of each step from a schedule, backward, gradient clipping, the optimizer step,
the EMA, the loss log (fetched from the device every ``log_every`` steps and at checkpoints, where a
non-finite loss stops the run before anything is written) and the atomic checkpoints that ``--resume`` reads.
Every number a step uses depends only on the step, so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fm_edge.checkpoint import save_checkpoint
from fm_edge.errors import FmEdgeError

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


class EpochOrder:
    """Which items each step sees: a seeded permutation of ``n`` items per epoch (made on the CPU, so every
    device and every resumed run draws the same order), cut into consecutive slices of ``per_step``."""

    def __init__(self, n: int, per_step: int, seed: int, device=None):
        self.n, self.per_step, self.seed, self.device = n, per_step, seed, device
        self.steps_per_epoch = max(1, n // per_step)
        self._perm, self._epoch = None, -1

    def batch(self, step: int, size: int, offset: int = 0):
        """Indices of ``size`` items for ``step``, starting ``offset`` into the step's slice (a process's share)."""
        import torch

        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            self._perm = perm if self.device is None else perm.to(self.device)
            self._epoch = epoch
        return self._perm[within * self.per_step + offset :][:size]


class TrainingLoop:
    """Runs ``step_loss`` from ``state["step"]`` to ``total``, updating ``model`` and keeping ``state`` (step,
    images_seen, train_seconds, losses, loss_ema) current; ``module`` is the plain model the EMA follows and
    the checkpoints hold (``model`` may be wrapped by accelerate or torch.compile)."""

    def __init__(
        self, out: Path, model, ema, optimizer, *, total: int, lr: float, lr_factor: Callable[[int], float],
        grad_clip: float, checkpoint_every: int, keep_checkpoints: int, log_every: int = 1, module=None,
        backward: Callable | None = None, clip: Callable | None = None, main_process: bool = True,
        barrier: Callable[[], None] = lambda: None, desc: str = "train", progress: bool = True,
        postfix: Callable[[int], dict] | None = None, extras: dict | None = None,
    ):  # fmt: skip
        import torch

        self.out, self.model, self.ema, self.optimizer = Path(out), model, ema, optimizer
        self.module = module if module is not None else model
        self.total, self.lr, self.lr_factor, self.grad_clip = total, lr, lr_factor, grad_clip
        self.checkpoint_every, self.keep, self.log_every = checkpoint_every, keep_checkpoints, log_every
        self.backward = backward or (lambda loss: loss.backward())
        self.clip = clip or torch.nn.utils.clip_grad_norm_
        self.main_process, self.barrier = main_process, barrier
        self.desc, self.progress, self.postfix = desc, progress, postfix or (lambda step: {})
        self.extras = extras  # modules / optimizers trained beside the model: saved in every checkpoint

    def _set_lr(self, step: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * self.lr_factor(step)

    def update(self, loss, step: int) -> None:
        """One step's update from its loss: backward, clip, optimizer step, the next step's learning rate and
        the EMA. Nothing here waits for the device."""
        self.backward(loss)
        self.clip(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self._set_lr(step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.module.parameters())

    def run(self, step_loss: Callable[[int], tuple], state: dict) -> dict:
        from tqdm.auto import tqdm

        step, t_start = state["step"], time.time()
        pending: list = []  # this interval's losses, still on the device
        bar = tqdm(total=self.total, initial=step, disable=not (self.progress and self.main_process),
                   desc=self.desc, unit="step", file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        self._set_lr(step)
        while step < self.total:
            # 1. this step's loss, from the caller
            loss, images = step_loss(step)
            # 2. backward, clip, update, the next step's learning rate, EMA
            self.update(loss, step)
            step += 1
            # 3. bookkeeping: the loss log every log_every steps, progress, checkpoint
            pending.append(loss.detach())
            state.update(step=step, images_seen=state["images_seen"] + images)
            checkpoint = step % self.checkpoint_every == 0 or step == self.total
            if checkpoint or step % self.log_every == 0:
                self._log(pending, state, bar)
            bar.update(1)
            if checkpoint:
                state["train_seconds"] += time.time() - t_start
                t_start = time.time()
                if self.main_process:
                    save_checkpoint(
                        self.out, step, self.module, self.ema, self.optimizer, state, self.keep, self.extras
                    )
                self.barrier()
        bar.close()
        state["train_seconds"] += time.time() - t_start
        return state

    def _log(self, pending: list, state: dict, bar) -> None:
        """Fetch the pending losses (one host sync), check them, add them to the log and its moving average."""
        import torch

        if not pending:
            return
        values = torch.stack(pending).tolist()
        first = state["step"] - len(pending) + 1
        pending.clear()
        loss_ema = state.get("loss_ema")
        for i, lv in enumerate(values):
            if not math.isfinite(lv):
                when = f" (losses are checked every {self.log_every} steps and at checkpoints)" * (
                    self.log_every > 1
                )
                raise FmEdgeError(
                    f"loss is {lv} at step {first + i}{when}: stopping (lower --lr or check the data); "
                    "the last checkpoint is intact"
                )
            loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
            state["losses"].append([first + i, round(lv, 5)])
        state["loss_ema"] = loss_ema
        bar.set_postfix(loss=f"{loss_ema:.4f}", **self.postfix(state["step"]), refresh=False)
