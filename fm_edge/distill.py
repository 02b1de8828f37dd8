"""Guidance distillation: a one-step (or two-step) student from a classifier-free-guided teacher.

The student is the teacher's own ``UNet2DModel`` (same config, initialised from the teacher's weights) whose
single forward pass per step replaces the teacher's guided pair ``v_u + S (v_c - v_u)``: the guidance scale S
is baked into the weights, so the student samples with ``cfg_scale`` 1 (no doubled batch). Two methods:

- ``pairs`` (rectified-flow distillation, Liu et al. 2022): the teacher's guided ODE maps noise x1 to a
  sample x0_T; the student learns the straight path between them, x_t = (1-t) x0_T + t x1 with target
  x1 - x0_T, t drawn with extra mass at t=1 (and at 0.5 for 2 steps), so one Euler step from t=1 gives
  x1 - v(x1, 1) = x0_T. The pairs are generated once (in chunks, atomically) and cached in ``OUT/pairs/``.
- ``progressive`` (Salimans & Ho 2022, with guidance folded in as in Meng et al. 2023), data-free: round 1
  teaches one student Euler step to match two guided teacher Euler steps on the teacher's time grid; each
  later round halves the steps again with the previous round's (frozen, EMA) student as its teacher, until
  ``student_steps`` remain. Training states are the previous sampler's own trajectory from fresh noise.
- ``regress``: a fresh time-free :class:`fm_edge.student_net.OneStepNet` (``student_arch``) learns the
  teacher sampler's map from noise x1 to its digit x0_T on the cached pairs (target x1 - x0_T at t=1). The
  teacher may itself be a distilled few-step student; its baked-in guidance carries over. A '-t' net (t as
  an input plane) with ``student_steps`` K > 1 learns the same pairs at the K grid times, as ``pairs``
  does (reflow), so it samples in K Euler steps or in any divisor of K.
- ``adversarial`` (the adversarial term of Sauer et al. 2023's ADD, on our regression): an existing net
  (``init``: a distilled UNet or OneStepNet student, or for K > 1 steps also a guided teacher) keeps
  regressing onto the cached teacher pairs while a small conditional critic (:mod:`fm_edge.critic`), trained
  in the same step on real MNIST, scores its digits; ``adv_weight`` x the critic's hinge term sharpens what
  plain regression leaves blurred, and ``class_weight`` x its class head's cross-entropy keeps each digit in
  its label's class. One step: digits from fresh noise. ``student_steps`` K > 1: the regression is ``pairs``
  at the K grid times (the straight path, so K Euler steps land on the teacher's digit) and the critic scores
  the digit estimated at each, x_t - t v.
- ``meanflow`` (:mod:`fm_edge.meanflow`): a '-t' flow teacher's own net, given a step-length input with zero
  weights, learns the average velocity of the teacher's guided flow over steps of any length, on real digits;
  one run learns every step length, and its folder runs ``student_steps`` K Euler steps of length 1/K.

Like :mod:`fm_edge.train`, each step's randomness is seeded from (seed, step) and the pair order from
(seed, epoch), and checkpoints are written atomically with the same helpers, so ``--resume latest`` after a
kill repeats the uninterrupted run exactly. The result is ``OUT/model``: a checkpoint folder whose
fm_edge.json says ``"guidance": "distilled"`` and records the distillation.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fm_edge.errors import FmEdgeError, UsageError
from fm_edge.sampler_spec import SamplerSpec

TEACHER_SOLVERS = ("euler", "heun")
ADVERSARIAL_STEPS = (1, 2, 4, 8)  # the adversarial, regress and meanflow methods' student grids
CHUNK = 1024  # teacher pairs per cached file (a kill during generation loses at most one chunk)
PAIRS_DIR = "pairs"
ROUNDS_DIR = "rounds"
# Adam momentum of a critic and the student it trains: the critic's target moves every step
GAN_BETAS = (0.5, 0.99)


@dataclass
class DistillConfig:
    teacher: str | None  # None: the shipped checkpoint
    output_dir: str
    method: str = "progressive"
    cfg_scale: float | None = None  # None: the teacher's recommended scale
    student_steps: int = 1
    student_arch: str = "s2-48-96-128"  # regress: a fm_edge.student_net.ARCHS name
    init: str | None = None  # adversarial: the net to start from (a distilled student; K > 1: or a teacher);
    # meanflow: a '-t' net of any size, or a mean-flow student (None: the teacher's own net)
    grow_to: str | None = None  # meanflow: widen the start net to this '-t' size first (same function)
    data: str | None = None  # adversarial: real MNIST (a local folder in the hub layout, or a hub id)
    adv_weight: float = 0.05  # adversarial: weight of the critic's term beside the regression
    class_weight: float = 0.0  # adversarial: weight of the critic's class head's cross-entropy on the digits
    critic_warmup: int = 0  # adversarial: first steps that train only the critic (the student holds still)
    critic_lr: float | None = None  # adversarial: the critic's learning rate (None: --lr)
    critic_init: str | None = None  # a critic's warm start: an earlier run's checkpoint-N folder
    mean_share: float = 0.5  # meanflow: share of rows with a step r < t (the rest learn the velocity, r = t)
    mean_grid: tuple[
        int, ...
    ] = ()  # meanflow: step rows take the steps of these K-step samplers (): any r < t
    mean_weight_power: float = 0.0  # meanflow: adaptive loss weighting 1 / (error + c)^p (0: plain MSE)
    mean_critic: float = 0.0  # meanflow: weight of a critic's hinge term on the student's own K-step digits
    critic_steps: tuple[int, ...] = ()  # meanflow --mean-critic: the sampler step counts it scores (): K
    rollout: float = 0.0  # K-step regress/adversarial: share of rows at the student's own state, not the path
    pairs: int = 4096
    teacher_steps: int | None = None  # None: the teacher's recommended steps (progressive: a power of 2)
    teacher_solver: str | None = None  # None: the teacher's recommended solver
    batch_size: int = 64
    lr: float = 3e-4
    lr_schedule: str = "constant"  # progressive: decays within each round; pairs: over the run
    warmup_steps: int = 0  # linear lr warm-up (progressive: of each round; adversarial: after the critic's)
    max_steps: int = 1000
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    t1_fraction: float = 0.5  # pairs: share of training times at the student's own grid points
    seed: int = 0
    num_threads: int | None = None
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False  # the student and the critic in channels_last (faster convs with bf16 on AMX)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.method in ("adversarial", "regress", "meanflow"):
            if self.student_steps not in ADVERSARIAL_STEPS:
                raise UsageError(f"--student-steps must be 1, 2, 4 or 8, got {self.student_steps}")
        elif self.student_steps not in (1, 2):
            raise UsageError(f"--student-steps must be 1 or 2, got {self.student_steps}")
        if self.method == "adversarial":
            if self.init is None:
                raise UsageError("--method adversarial starts from an existing net: pass --init DIR")
            if not (self.adv_weight >= 0 and math.isfinite(self.adv_weight)):
                raise UsageError(f"--adv-weight must be a finite number >= 0, got {self.adv_weight}")
        elif self.init is not None and self.method != "meanflow":
            raise UsageError(f"--init is for --method adversarial or meanflow, not {self.method}")
        if self.method in ("adversarial", "meanflow") and not (
            self.class_weight >= 0 and math.isfinite(self.class_weight)
        ):
            raise UsageError(f"--class-weight must be a finite number >= 0, got {self.class_weight}")
        if not 0 <= self.mean_share <= 1:
            raise UsageError(f"--mean-share must be in [0, 1], got {self.mean_share}")
        if any(k not in ADVERSARIAL_STEPS for k in self.mean_grid) or (
            self.mean_grid and self.method != "meanflow"
        ):
            raise UsageError(
                f"--mean-grid takes step counts 1, 2, 4 or 8 of --method meanflow, got {self.mean_grid}"
            )
        if not (0 <= self.mean_weight_power <= 2) or (self.mean_weight_power and self.method != "meanflow"):
            raise UsageError(
                f"--mean-weight-power takes a power in [0, 2] of --method meanflow, got {self.mean_weight_power}"
            )
        if not (self.mean_critic >= 0 and math.isfinite(self.mean_critic)) or (
            self.mean_critic and self.method != "meanflow"
        ):
            raise UsageError(
                f"--mean-critic takes a finite weight >= 0 of --method meanflow, got {self.mean_critic}"
            )
        if self.critic_steps and (
            not self.mean_critic
            or any(k not in ADVERSARIAL_STEPS or k % self.student_steps for k in self.critic_steps)
        ):
            raise UsageError(
                "--critic-steps takes step counts 1, 2, 4 or 8 that are multiples of --student-steps "
                f"({self.student_steps}), with --mean-critic; got {list(self.critic_steps)}"
            )
        if self.method == "meanflow" and self.class_weight and not self.mean_critic:
            raise UsageError(
                "--class-weight of --method meanflow weighs the critic's class head: add --mean-critic"
            )
        if self.grow_to is not None and self.method != "meanflow":
            raise UsageError(f"--grow-to widens the start net of --method meanflow, not {self.method}")
        if not 0 <= self.rollout <= 1:
            raise UsageError(f"--rollout must be in [0, 1], got {self.rollout}")
        if self.rollout and (self.method not in ("adversarial", "regress") or self.student_steps == 1):
            raise UsageError(
                "--rollout starts rows from the student's own Euler steps: it needs --method regress or "
                "adversarial with --student-steps 2, 4 or 8"
            )
        if self.critic_lr is not None and not (self.critic_lr > 0 and math.isfinite(self.critic_lr)):
            raise UsageError(f"--critic-lr must be a finite number > 0, got {self.critic_lr}")
        if self.critic_init is not None:
            if not (
                self.mean_critic or (self.method == "adversarial" and (self.adv_weight or self.class_weight))
            ):
                raise UsageError(
                    "--critic-init warm-starts the critic of --method adversarial or of --method meanflow "
                    "with --mean-critic"
                )
            from fm_edge.critic import critic_weights

            critic_weights(self.critic_init)
        if not 0 <= self.critic_warmup < self.max_steps:
            raise UsageError(
                f"--critic-warmup must be >= 0 and below --max-steps ({self.max_steps}), got {self.critic_warmup}"
            )
        if self.critic_warmup and (self.method != "adversarial" or self.adv_weight == self.class_weight == 0):
            raise UsageError("--critic-warmup warms the critic of --method adversarial with a weight above 0")
        if self.method == "regress":
            from fm_edge.student_net import ARCHS

            if self.student_arch not in ARCHS:
                raise UsageError(
                    f"unknown --student-arch {self.student_arch!r}: choose one of {', '.join(ARCHS)}"
                )
            if self.student_steps != 1 and not ARCHS[self.student_arch].get("time_input"):
                raise UsageError(
                    f"--student-steps {self.student_steps}: --student-arch {self.student_arch} has no time input "
                    f"and runs 1 step; a '-t' size ({self.student_arch}-t where it exists) runs several"
                )
        for name in ("pairs", "batch_size", "max_steps", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a finite number > 0, got {self.lr}")
        from fm_edge.loop import LR_SCHEDULES

        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(
                f"unknown --lr-schedule {self.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}"
            )
        if not 0 <= self.warmup_steps < self.max_steps:
            raise UsageError(
                f"--warmup-steps must be >= 0 and below --max-steps ({self.max_steps}), got {self.warmup_steps}"
            )
        if not 0 <= self.t1_fraction <= 1:
            raise UsageError(f"t1 fraction must be in [0, 1], got {self.t1_fraction}")
        from fm_edge.backends import check_device

        check_device(self.device)
        if self.cfg_scale is not None:
            from fm_edge.solvers import check_cfg

            check_cfg(self.cfg_scale)


def teacher_settings(cfg: DistillConfig) -> tuple[Path, dict, SamplerSpec]:
    """(teacher folder, its fm_edge.json, the teacher sampler to distill: its recommendation with the
    --teacher-steps, --teacher-solver and --cfg-scale overrides)."""
    from fm_edge.model import read_fm_config, resolve
    from fm_edge.sampler_spec import checkpoint_spec

    path = resolve(cfg.teacher)
    fm = read_fm_config(path)
    rec = checkpoint_spec(fm)
    if rec.distilled and cfg.method not in PAIR_ONLY:  # these copy a distilled student's sampler as it is
        raise UsageError(
            f"teacher {str(path)!r} is itself a distilled student (guidance 'distilled'): "
            "distill from a classifier-free-guided checkpoint written by fm-edge train"
        )
    solver = cfg.teacher_solver or rec.solver
    if solver not in TEACHER_SOLVERS:
        raise UsageError(f"unknown teacher solver {solver!r}: choose one of {', '.join(TEACHER_SOLVERS)}")
    s = rec.override(steps=cfg.teacher_steps, solver=solver, cfg_scale=cfg.cfg_scale)
    if cfg.method == "progressive":
        rounds = s.steps / cfg.student_steps
        if s.solver != "euler":
            raise UsageError("--method progressive halves an Euler grid: use --teacher-solver euler")
        if rounds < 2 or rounds != 2 ** round(math.log2(rounds)):
            raise UsageError(
                f"--teacher-steps {s.steps}: progressive needs {cfg.student_steps} x a power of 2 "
                f"(>= {2 * cfg.student_steps}) teacher steps"
            )
    return path, fm, s


# --- the pairs method ---


def _pair_meta(teacher_hash: str, s: SamplerSpec, seed: int, chunk: int) -> dict:
    return {"teacher_sha256": teacher_hash, **s.to_dict(), "seed": seed, "chunk": chunk, "chunk_size": CHUNK}


def pair_chunk_inputs(seed: int, chunk: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise and labels of one chunk of pairs: labels uniform over 0-10 (10 keeps unconditional working)."""
    from fm_edge.backends import make_noise

    sub = seed * 1_000_003 + chunk + 1
    labels = np.random.default_rng([sub, 7]).integers(0, 11, n).astype(np.int64)
    return make_noise(n, sub), labels


def teacher_pairs(
    cfg: DistillConfig, teacher: Path, s: dict, device: str, progress: bool = True, record: dict | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x1 noise, labels, x0 teacher samples) for cfg.pairs pairs, generated chunk by chunk or read back.

    New chunks come from the teacher's own ``onnx/velocity.onnx`` through ONNX Runtime when that file was
    exported from the same weights and the run is on the CPU (about twice torch eager's pairs per second on
    a 2-core AVX2 CPU), else from torch. Each chunk keeps the name of the backend that made it, and
    ``record["pairs_backend"]`` names those of all the run's chunks ("onnx", "torch", or both joined by "+";
    "unrecorded" for chunks cached before chunks kept it), so a resumed run says the same as a fresh one.
    """
    from tqdm.auto import tqdm

    from fm_edge.artifacts import weights_hash
    from fm_edge.atomic import atomic_file, remove_leftovers
    from fm_edge.backends import generate
    from fm_edge.sample import make_backend, pick_backend

    folder = Path(cfg.output_dir) / PAIRS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder, "chunk-*")
    teacher_hash = weights_hash(teacher)
    backend = None
    xs, ys, x0s, made_by = [], [], [], set()
    n_chunks = math.ceil(cfg.pairs / CHUNK)
    with tqdm(
        total=cfg.pairs, desc="teacher pairs", unit="pair", disable=not progress, file=sys.stderr
    ) as bar:
        for c in range(n_chunks):
            n = min(CHUNK, cfg.pairs - c * CHUNK)
            meta = _pair_meta(teacher_hash, s, cfg.seed, c)
            path = folder / f"chunk-{c:05d}.npz"
            cached = _read_chunk(path, meta, n)
            if cached is None:
                x1, y = pair_chunk_inputs(cfg.seed, c, CHUNK)
                x1, y = x1[:n], y[:n]
                if backend is None:
                    name = pick_backend("auto", teacher, device=device, steps=s.steps)
                    backend = make_backend(name, teacher, cfg.num_threads, device)
                x0 = generate(
                    backend, y, s, noise=x1, raw=True,
                    batch_size=CHUNK,
                )  # fmt: skip
                with atomic_file(path) as tmp, open(tmp, "wb") as f:
                    np.savez(
                        f,
                        x1=x1,
                        labels=y,
                        x0=x0.astype(np.float32),
                        meta=json.dumps(meta),
                        backend=backend.name,
                    )
                cached = (x1, y, x0, backend.name)
            *arrays, name = cached
            for lst, a in zip((xs, ys, x0s), arrays, strict=True):
                lst.append(a)
            made_by.add(name)
            bar.update(n)
    if record is not None:
        record["pairs_backend"] = "+".join(sorted(made_by))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(x0s)


def _read_chunk(path: Path, meta: dict, n: int):
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if json.loads(str(z["meta"])) != meta or len(z["labels"]) != n:
                return None
            made_by = str(z["backend"]) if "backend" in z.files else "unrecorded"
            return z["x1"], z["labels"], z["x0"], made_by
    except Exception:  # a damaged cache file is regenerated
        return None


def sample_times(n: int, student_steps: int, t1_fraction: float, generator) -> object:
    """Training times: with probability t1_fraction one of the student's Euler grid points (1, 1 - 1/K, ...,
    1/K for K steps), else uniform in (0, 1)."""
    import torch

    u = torch.rand(n, generator=generator)
    t = torch.rand(n, generator=generator)
    grid = 1.0 - torch.arange(student_steps) / student_steps
    pick = grid[torch.randint(len(grid), (n,), generator=generator)]
    return torch.where(u < t1_fraction, pick, t)


def path_loss(model, x1, labels, x0, t, xt=None):
    """(MSE between the student's velocity at times t and the velocity to the teacher's digit x0_T, the
    student's digit estimate from there: x_t - t v, which one Euler step to t=0 would return). The states
    ``xt`` default to the straight teacher path, where that velocity is x1 - x0_T; from any other state it
    is (x_t - x0_T) / t, the straight line from there to the digit."""
    import torch

    from fm_edge.convention import T_SCALE
    from fm_edge.flow import interpolate

    tv = t.view(-1, 1, 1, 1)
    if xt is None:
        xt, target = interpolate(x0, x1, t), x1 - x0
    else:
        target = (xt - x0) / tv
    pred = model(xt, t * T_SCALE, class_labels=labels).sample
    return torch.nn.functional.mse_loss(pred.float(), target.float()), xt - tv * pred


def own_states(model, x1, labels, k, steps: int):
    """Where the student's own first k[i] Euler steps (of ``steps``) take each noise x1[i] (no gradient)."""
    import torch

    from fm_edge.convention import T_SCALE

    x = x1.clone()
    with torch.no_grad():
        for j in range(int(k.max()) if len(k) else 0):
            rows = k > j
            t = torch.full((int(rows.sum()),), (1.0 - j / steps) * T_SCALE, device=x1.device)
            x[rows] = x[rows] - model(x[rows], t, class_labels=labels[rows]).sample / steps
    return x


def reflow_loss(model, x1, labels, x0, steps: int, generator, rollout: float = 0.0):
    """:func:`path_loss` at the K=``steps`` Euler grid times only (reflow: K Euler steps on the straight path
    land on the teacher's digit); (loss, the student's digit estimate). A ``rollout`` share of the rows below
    t=1 starts from the student's own state at its grid time instead of the teacher's path: the state its
    sampler really reaches, so the later steps learn to correct the earlier ones' errors."""
    import torch

    t = sample_times(len(x1), steps, 1.0, generator).to(x1.device)
    if not rollout:
        return path_loss(model, x1, labels, x0, t)
    from fm_edge.flow import interpolate

    k = torch.round((1.0 - t) * steps).long()  # the grid index: Euler steps already taken
    own = (torch.rand(len(x1), generator=generator).to(x1.device) < rollout) & (k > 0)
    xt = interpolate(x0, x1, t)
    xt[own] = own_states(model, x1[own], labels[own], k[own], steps)
    return path_loss(model, x1, labels, x0, t, xt)


def pairs_loss(model, x1, labels, x0, generator, cfg: DistillConfig):
    """MSE between the student's velocity on the straight teacher path and x1 - x0_T."""
    t = sample_times(len(x1), cfg.student_steps, cfg.t1_fraction, generator).to(x1.device)
    return path_loss(model, x1, labels, x0, t)[0]


# --- the regress method ---


def velocity_at_noise(model, x1, labels):
    """The one-step student's velocity at t=1 on the noise x1 (its digit is x1 minus this)."""
    import torch

    from fm_edge.convention import T_SCALE

    return model(x1, torch.full((len(x1),), T_SCALE, device=x1.device), class_labels=labels).sample


def regress_loss(model, x1, labels, x0):
    """One-step regression onto the teacher sampler's output: the student's velocity at t=1 on the noise
    x1 should be x1 - x0_T, so its one Euler step x1 - v(x1, 1) lands on x0_T."""
    import torch

    pred = velocity_at_noise(model, x1, labels)
    return torch.nn.functional.mse_loss(pred.float(), (x1 - x0).float())


# --- the progressive method ---


def rounds_of(cfg: DistillConfig, s: dict) -> int:
    return round(math.log2(s.steps / cfg.student_steps))


def round_at(step: int, cfg: DistillConfig, n_rounds: int) -> int:
    """0-based round of the (0-based) step: the steps are split evenly over the rounds."""
    return min(n_rounds - 1, step * n_rounds // cfg.max_steps)


def round_start(r: int, cfg: DistillConfig, n_rounds: int) -> int:
    """The first step of round r (0 <= r <= n_rounds; round_start(n_rounds) is max_steps, the end)."""
    return -(-r * cfg.max_steps // n_rounds)


def progressive_batch(prev, grid: list[float], x1, labels):
    """States at every second point of the fine ``grid`` along the previous sampler's own Euler trajectory,
    and the velocity that makes one student step from each equal two previous steps (targets)."""
    import torch

    xs, ts, targets = [], [], []
    x = x1
    with torch.no_grad():
        for i in range(0, len(grid) - 1, 2):
            ta, tb, tc = grid[i], grid[i + 1], grid[i + 2]
            xb = x - (ta - tb) * prev(x, ta, labels)
            xc = xb - (tb - tc) * prev(xb, tb, labels)
            xs.append(x)
            ts.append(torch.full((len(x),), ta, device=x.device))
            targets.append((x - xc) / (ta - tc))
            x = xc
    return torch.cat(xs), torch.cat(ts), torch.cat(targets), torch.cat([labels] * len(xs))


def progressive_loss(model, prev, grid, x1, labels):
    import torch

    from fm_edge.convention import T_SCALE

    x, t, target, y = progressive_batch(prev, grid, x1, labels)
    pred = model(x, t * T_SCALE, class_labels=y).sample
    return torch.nn.functional.mse_loss(pred.float(), target.float())


# --- the methods: the net that learns and what each step trains on ---


class Method:
    """One distillation method. :meth:`prepare` readies what every step needs (cached pairs, a teacher) and
    records it; :meth:`student` is the net that learns; :meth:`loss` is one step's loss and its row count;
    :meth:`lr_factor` scales the learning rate per step. A new method subclasses this and joins METHODS."""

    #: the student samples on the teacher's (shifted) time grid; else on the plain grid (shift 1)
    keeps_teacher_grid = False
    #: the student optimizer's Adam betas
    betas = (0.9, 0.999)

    def __init__(
        self, cfg: DistillConfig, teacher: Path, s: SamplerSpec, device: str, out: Path, resume=None
    ):
        self.cfg, self.teacher, self.s, self.device = cfg, teacher, s, device
        self.out, self.resume = out, resume
        self.model = self.ema = None  # the student and its EMA, set once they exist

    def check(self) -> None:
        """Fail on bad inputs (with a UsageError) before the run folder is touched."""

    def prepare(self, record: dict, progress: bool) -> None:
        """Whatever every step needs, made before the student (and noted in the run's record)."""

    def _new_critic(self, record: dict) -> None:
        """The critic and its optimizer (fresh, or from ``--critic-init``, noted with its sha256 in the record)."""
        from fm_edge.critic import critic_path, new_critic

        init = self.cfg.critic_init
        self.critic, self.critic_opt = new_critic(
            self.cfg.seed, self.cfg.critic_lr or self.cfg.lr, GAN_BETAS, self.device, init
        )
        if init is not None:
            from fm_edge.artifacts import sha256

            file = critic_path(init)
            record.update(critic_init=str(file), critic_init_sha256=sha256(file))

    def student(self):
        from fm_edge.model import load

        model, _ = load(self.teacher, device=self.device)  # the student starts as the teacher
        return model

    def preset(self, fm: dict) -> str:
        return fm.get("preset", "unknown")

    def lr_factor(self, step: int) -> float:
        from fm_edge.loop import lr_factor

        return lr_factor(step, self.cfg.max_steps, self.cfg.warmup_steps, self.cfg.lr_schedule)

    def loss(self, step: int, gen) -> tuple:
        raise NotImplementedError

    def extras(self) -> dict:
        """Modules and optimizers trained beside the student, by checkpoint file name."""
        return {}

    def postfix(self, step: int) -> dict:
        """Extra figures for the progress bar."""
        return {}

    def finish(self, model) -> None:
        """Set what the written student's config needs (before its folder is written)."""


def pairs_quality(labels, x0, per_class: int = 100, min_per_class: int = 50) -> dict | None:
    """The teacher digits' FD / floor and label accuracy on a class-balanced subset of the pairs (the first
    ``per_class`` of each digit, or as many as every digit has, down to ``min_per_class``; None below that).
    A student regressed onto the pairs learns toward their quality, so this is its ceiling, known before the
    run spends hours (a random-label FD would read high: the classes are not balanced)."""
    import numpy as np

    from fm_edge.convention import NUM_CLASSES, decode_uint8
    from fm_edge.evaluate import evaluate_images

    labels = np.asarray(labels)
    k = min([per_class, *(int((labels == d).sum()) for d in range(NUM_CLASSES))])
    if k < min_per_class:
        return None
    idx = np.concatenate([np.flatnonzero(labels == d)[:k] for d in range(NUM_CLASSES)])
    r = evaluate_images(decode_uint8(x0[idx]), labels[idx])
    return {
        "n": int(len(idx)),
        "fd": round(r["fd"], 3),
        "fd_over_floor": round(r["fd"] / r["fd_floor"], 2),
        "label_accuracy": round(r["label_accuracy"], 4),
    }


class Pairs(Method):
    """Rectified-flow distillation: the straight path between noise and the teacher's cached sample."""

    def prepare(self, record: dict, progress: bool) -> None:
        import torch

        from fm_edge.loop import EpochOrder

        t0 = time.time()
        arrays = teacher_pairs(self.cfg, self.teacher, self.s, self.device, progress, record)
        self.x1, self.y, self.x0 = (torch.from_numpy(a).to(self.device) for a in arrays)
        record["pairs_seconds"] = round(time.time() - t0, 1)
        q = record["pairs_quality"] = pairs_quality(arrays[1], arrays[2])
        if q is not None and progress:
            print(
                f"teacher pairs: FD / floor {q['fd_over_floor']:.2f} at n = {q['n']:,} (label accuracy "
                f"{q['label_accuracy']:.1%}), the students' ceiling",
                file=sys.stderr,
            )
        self.order = EpochOrder(len(self.x1), self.cfg.batch_size, self.cfg.seed)

    def loss(self, step: int, gen) -> tuple:
        idx = self.order.batch(step, self.cfg.batch_size)
        x1, y, x0 = (a[idx].to(self.device) for a in (self.x1, self.y, self.x0))
        return self.pair_loss(step, x1, y, x0, gen), len(idx)

    def pair_loss(self, step: int, x1, y, x0, gen):
        return pairs_loss(self.model, x1, y, x0, gen, self.cfg)


class Regress(Pairs):
    """A fresh time-free OneStepNet regressed onto the teacher sampler's digits, on the cached pairs."""

    def student(self):
        import torch

        from fm_edge.student_net import build as build_student

        if self.resume:
            _check_resumed_arch(self.out, self.resume, self.cfg.student_arch)
        with torch.random.fork_rng():
            torch.manual_seed(self.cfg.seed)
            return build_student(self.cfg.student_arch).to(self.device)

    def preset(self, fm: dict) -> str:
        return self.cfg.student_arch

    def pair_loss(self, step: int, x1, y, x0, gen):
        if self.cfg.student_steps == 1:
            return regress_loss(self.model, x1, y, x0)
        return reflow_loss(self.model, x1, y, x0, self.cfg.student_steps, gen, self.cfg.rollout)[0]


class Adversarial(Pairs):
    """An existing net (``--init``: a distilled student; for K > 1 steps also a guided teacher) sharpened for
    ``student_steps`` Euler steps: regression on the cached teacher pairs plus ``adv_weight`` x the hinge term
    of a conditional critic that learns, in the same step, real MNIST from the student's digits. One step:
    the digits come from fresh noise. K steps: each pair row sits at one of the K grid times on its straight
    path (reflow) and the critic scores the digit the student estimates from there, x_t - t v, from the same
    forward pass as the regression."""

    betas = GAN_BETAS

    @property
    def rests(self) -> bool:
        """Both weights 0 (plain regression or reflow): the critic does no work and no real digits are read."""
        return self.cfg.adv_weight == 0 and self.cfg.class_weight == 0

    def check(self) -> None:
        from fm_edge.data import load_split
        from fm_edge.model import check_steps_for, is_one_step, model_config, read_fm_config, resolve
        from fm_edge.sampler_spec import checkpoint_spec

        self.init = resolve(self.cfg.init)
        self.init_fm = read_fm_config(self.init)
        # a K-step student may start from a guided teacher's own weights (reflow, as the 2-rectified flow starts
        # from the 1-rectified one); one step sharpens a student that is already distilled
        if not checkpoint_spec(self.init_fm).distilled and self.cfg.student_steps == 1:
            raise UsageError(
                f"--init {str(self.init)!r} samples with classifier-free guidance: one step of the adversarial "
                "method sharpens a distilled student (written by fm-edge distill); --student-steps 2 or more "
                "may start from a teacher"
            )
        # a time-free digit net becomes its '-t' size for several steps (student_net.with_time_input)
        self.add_t = (
            self.cfg.student_steps > 1
            and is_one_step(self.init)
            and model_config(self.init).get("prediction") == "digit"
        )
        if not self.add_t:
            check_steps_for(self.init, self.cfg.student_steps, "--student-steps")
        if not self.rests:
            self.images, self.labels = load_split(self.cfg.data, "train")

    def prepare(self, record: dict, progress: bool) -> None:
        import torch

        from fm_edge.artifacts import weights_hash
        from fm_edge.data import HUB_ID, model_space
        from fm_edge.loop import EpochOrder

        super().prepare(record, progress)
        if not self.rests:
            self.real = torch.from_numpy(model_space(self.images)).to(self.device)
            self.real_y = torch.from_numpy(self.labels).to(self.device)
            self.real_order = EpochOrder(len(self.labels), self.cfg.batch_size, self.cfg.seed + 1)
        # the critic keeps its rate throughout (its warm-up is what the student's lr 0 is for)
        self._new_critic(record)
        data = None if self.rests else self.cfg.data or HUB_ID
        record.update(init=str(self.init), init_sha256=weights_hash(self.init), data=data)
        if self.add_t:
            record["init_t_plane"] = "added, zero weights: at t = 1 the student starts as --init"
        self.figures: dict = {}

    def student(self):
        from fm_edge.model import load
        from fm_edge.student_net import with_time_input

        model, _ = load(self.init, device=self.device)
        return with_time_input(model) if self.add_t else model

    def preset(self, fm: dict) -> str:
        preset = self.init_fm.get("preset", "unknown")
        return f"{preset}-t" if self.add_t else preset

    def extras(self) -> dict:
        return {"critic": self.critic, "critic_optimizer": self.critic_opt}

    def lr_factor(self, step: int) -> float:
        """0 while the critic warms up (the student holds still: with lr 0 AdamW leaves it and its EMA as
        they were), then the schedule over the remaining steps."""
        from fm_edge.loop import lr_factor

        cfg = self.cfg
        w = cfg.critic_warmup
        return 0.0 if step < w else lr_factor(step - w, cfg.max_steps - w, cfg.warmup_steps, cfg.lr_schedule)

    def postfix(self, step: int) -> dict:
        return self.figures

    def _regression_only(self, reg):
        self.figures = {"reg": f"{reg.item():.4f}"}
        return reg

    def pair_loss(self, step: int, x1, y, x0, gen):
        """The regression on this step's pairs plus adv_weight x the critic's term on fresh noise; the critic
        takes its own step first, on real digits against the student's. With both weights 0 the critic does no
        work (plain regression or reflow) and needs no real digits; it is still checkpointed, unchanged."""
        import torch

        from fm_edge.convention import NUM_CLASSES
        from fm_edge.critic import critic_round

        b, k = self.cfg.batch_size, self.cfg.student_steps
        if k == 1:
            reg = regress_loss(self.model, x1, y, x0)
            if self.rests:
                return self._regression_only(reg)
            noise = torch.randn((b, *x1.shape[1:]), generator=gen).to(self.device)
            labels = torch.randint(0, NUM_CLASSES, (b,), generator=gen).to(self.device)
            fake = noise - velocity_at_noise(self.model, noise, labels)
        else:
            reg, fake = reflow_loss(self.model, x1, y, x0, k, gen, self.cfg.rollout)
            if self.rests:
                return self._regression_only(reg)
            keep = y < NUM_CLASSES  # the critic judges conditional digits only
            fake, labels = fake[keep], y[keep]
        j = self.real_order.batch(step, b)
        classify = self.cfg.class_weight > 0
        # while the critic warms up the student holds still (lr 0): no need for its adversarial terms
        warm = step >= self.cfg.critic_warmup
        d_loss, g_loss, c_loss = critic_round(
            self.critic, self.critic_opt, self.real[j], self.real_y[j], fake, labels, classify, warm
        )
        self.figures = {"reg": f"{reg.item():.4f}", "critic": f"{d_loss.item():.3f}"}
        if not warm:
            return reg
        if classify:
            self.figures["class"] = f"{c_loss.item():.3f}"
        return reg + self.cfg.adv_weight * g_loss + self.cfg.class_weight * c_loss


class Progressive(Method):
    """Halve the teacher's Euler steps per round; round r > 0 learns from round r-1's frozen EMA student."""

    keeps_teacher_grid = True

    def prepare(self, record: dict, progress: bool) -> None:
        from fm_edge.model import load, velocity_fn
        from fm_edge.solvers import guided

        tmodel, _ = load(self.teacher, device=self.device)
        self.teacher_v = guided(velocity_fn(tmodel), self.s.cfg_scale)
        self.n_rounds = rounds_of(self.cfg, self.s)
        record["rounds"] = [self.s.steps // 2**r for r in range(self.n_rounds + 1)]
        self.round, self.prev, self.grid = -1, None, None

    def lr_factor(self, step: int) -> float:
        """The schedule restarts with each round (each round is a new regression problem)."""
        from fm_edge.loop import lr_factor

        cfg, n = self.cfg, self.n_rounds
        r = round_at(step, cfg, n)
        start, end = round_start(r, cfg, n), round_start(r + 1, cfg, n)
        return lr_factor(step - start, end - start, cfg.warmup_steps, cfg.lr_schedule)

    def loss(self, step: int, gen) -> tuple:
        import torch

        from fm_edge.solvers import time_grid

        # this round's teacher: the guided teacher, then the previous round's frozen student
        r = round_at(step, self.cfg, self.n_rounds)
        if r != self.round:
            self.prev = self.teacher_v if r == 0 else _round_teacher(
                self.out, r, step, self.cfg, self.n_rounds, self.model, self.ema, self.device
            )  # fmt: skip
            self.round, self.grid = r, time_grid(self.s.steps // 2**r, self.s.shift)
        b = self.cfg.batch_size
        x1 = torch.randn((b, 1, 32, 32), generator=gen).to(self.device)
        y = torch.randint(0, 11, (b,), generator=gen).to(self.device)
        return progressive_loss(self.model, self.prev, self.grid, x1, y), b


class MeanFlow(Method):
    """A mean-flow student (:mod:`fm_edge.meanflow`) of a '-t' flow teacher: the teacher's net given a zero-weight
    step-length plane learns the average velocity of the teacher's guided flow on real --data digits over steps
    of random length or of ``mean_grid``; its folder runs ``student_steps`` Euler steps of length 1/K."""

    def check(self) -> None:
        from fm_edge.data import load_split
        from fm_edge.model import model_config, read_fm_config, resolve

        cfg = model_config(self.teacher)
        if not cfg.get("time_input") or cfg.get("step_input"):
            raise UsageError(
                f"--method meanflow needs a '-t' OneStepNet flow teacher (fm-edge train --preset "
                f"s2-48-96-128-digit-t), and {str(self.teacher)!r} is not one"
            )
        # --init: the student starts from another '-t' net (any size: a wider one learns the teacher's flow
        # with more capacity), or from a mean-flow student's folder (the next stage of a run)
        self.init = resolve(self.cfg.init) if self.cfg.init else None
        if self.init is not None:
            icfg = model_config(self.init)
            if not icfg.get("time_input") or icfg.get("prediction") != cfg.get("prediction"):
                raise UsageError(
                    f"--init {str(self.init)!r} must be a '-t' OneStepNet that predicts what the teacher does "
                    f"({cfg.get('prediction')}): a flow net from fm-edge train, or a mean-flow student"
                )
            self.init_fm = read_fm_config(self.init)
        if self.cfg.grow_to is not None:
            from fm_edge.student_net import check_growable

            check_growable(model_config(self.init or self.teacher), self.cfg.grow_to)
        self.images, self.labels = load_split(self.cfg.data, "train")

    def prepare(self, record: dict, progress: bool) -> None:
        import torch

        from fm_edge.data import HUB_ID, model_space
        from fm_edge.flow import t_floor_for
        from fm_edge.loop import EpochOrder
        from fm_edge.model import load, velocity_fn
        from fm_edge.solvers import guided

        tmodel, _ = load(self.teacher, device=self.device)
        self.teacher_v = guided(velocity_fn(tmodel), self.s.cfg_scale)
        self.t_floor = t_floor_for(tmodel)
        self.real = torch.from_numpy(model_space(self.images)).to(self.device)
        self.real_y = torch.from_numpy(self.labels).to(self.device)
        self.order = EpochOrder(len(self.labels), self.cfg.batch_size, self.cfg.seed)
        record.update(
            data=self.cfg.data or HUB_ID,
            mean_share=self.cfg.mean_share,
            mean_grid=list(self.cfg.mean_grid),
            mean_weight_power=self.cfg.mean_weight_power,
        )
        if self.init is not None:
            from fm_edge.artifacts import weights_hash

            record.update(init=str(self.init), init_sha256=weights_hash(self.init))
        record.update(grown_to=self.cfg.grow_to)
        record.update(mean_critic=self.cfg.mean_critic, critic_steps=list(self.cfg.critic_steps))
        self.figures: dict = {}
        if self.cfg.mean_critic:
            self._new_critic(record)
            self.real_order = EpochOrder(len(self.labels), self.cfg.batch_size, self.cfg.seed + 1)

    def student(self):
        from fm_edge.model import load
        from fm_edge.student_net import grown, with_step_input

        model, _ = load(self.init or self.teacher, device=self.device)
        model = model if model.config.step_input else with_step_input(model)
        if self.cfg.grow_to is not None:
            import torch

            with torch.random.fork_rng():  # the new channels' first weights come from --seed
                torch.manual_seed(self.cfg.seed)
                model = grown(model, self.cfg.grow_to)
        return model

    def preset(self, fm: dict) -> str:
        if self.cfg.grow_to is not None:
            return self.cfg.grow_to
        return (self.init_fm if self.init is not None else fm).get("preset", "unknown")

    def loss(self, step: int, gen) -> tuple:
        from fm_edge.meanflow import meanflow_loss

        idx = self.order.batch(step, self.cfg.batch_size)
        x0, y = self.real[idx], self.real_y[idx]
        cfg = self.cfg
        loss = meanflow_loss(
            self.model, self.teacher_v, x0, y, gen, cfg.mean_share, self.t_floor, cfg.mean_grid,
            cfg.mean_weight_power,
        )  # fmt: skip
        if not cfg.mean_critic:
            return loss, len(idx)
        return loss + self._critic_terms(step, gen), len(idx)

    def _critic_terms(self, step: int, gen):
        """The critic's round on the student's K-step digits from fresh noise (labels 0-9) against real
        digits, K drawn from ``critic_steps``; the student's weighted hinge and class terms."""
        import torch

        from fm_edge.convention import NUM_CLASSES
        from fm_edge.critic import critic_round
        from fm_edge.meanflow import rollout_digits

        cfg, b = self.cfg, self.cfg.batch_size
        noise = torch.randn((b, 1, *self.real.shape[2:]), generator=gen).to(self.device)
        labels = torch.randint(0, NUM_CLASSES, (b,), generator=gen).to(self.device)
        steps = cfg.critic_steps or (cfg.student_steps,)
        k = steps[int(torch.randint(len(steps), (1,), generator=gen))] if len(steps) > 1 else steps[0]
        fake = rollout_digits(self.model, noise, labels, k)
        j = self.real_order.batch(step, b)
        classify = cfg.class_weight > 0
        d_loss, g_loss, c_loss = critic_round(
            self.critic, self.critic_opt, self.real[j], self.real_y[j], fake, labels, classify
        )
        self.figures = {"critic": f"{d_loss.item():.3f}", "adv": f"{g_loss.item():.3f}"}
        return cfg.mean_critic * g_loss + (cfg.class_weight * c_loss if classify else 0.0)

    def extras(self) -> dict:
        return {"critic": self.critic, "critic_optimizer": self.critic_opt} if self.cfg.mean_critic else {}

    def postfix(self, step: int) -> dict:
        return self.figures

    def finish(self, model) -> None:
        model.register_to_config(default_step=1.0 / self.cfg.student_steps)


#: method name -> its unit (the --method choices, in order)
METHODS = {
    "progressive": Progressive,
    "pairs": Pairs,
    "regress": Regress,
    "adversarial": Adversarial,
    "meanflow": MeanFlow,
}
#: the methods that only read the teacher's cached samples: the teacher may be a distilled student
PAIR_ONLY = ("regress", "adversarial")


# --- the run ---


def _write_student(
    out: Path, model, ema, cfg: DistillConfig, state: dict, fm: dict, record: dict, method: Method
) -> Path:
    """OUT/model: save_pretrained with the EMA weights, fm_edge.json (distilled sampler), model card."""
    from fm_edge.model import fm_config, save_inference_folder

    ts = SamplerSpec.from_dict(record["teacher_sampler"])
    baked = ts.distilled_cfg_scale if ts.distilled else ts.cfg_scale
    shift = ts.shift if method.keeps_teacher_grid else 1.0
    sampler = SamplerSpec("euler", cfg.student_steps, 1.0, shift, distilled_cfg_scale=baked)
    record = dict(
        record, steps=state["step"], images_seen=state["images_seen"],
        seconds=round(state["train_seconds"], 1), final_loss_ema=state.get("loss_ema"),
    )  # fmt: skip
    config = fm_config(method.preset(fm), sampler=sampler, distillation=record, training=record)
    method.finish(model)
    return save_inference_folder(out, model, ema, config)


def distill(cfg: DistillConfig, resume: str | None = None, progress: bool = True) -> Path:
    """Distill ``cfg.teacher`` into a student; returns the student checkpoint folder ``OUT/model``."""
    cfg.validate()
    teacher, fm, s = teacher_settings(cfg)
    from fm_edge.atomic import prepare_output_dir, remove_leftovers
    from fm_edge.backends import torch_device
    from fm_edge.checkpoint import refuse_other_run

    device = torch_device(cfg.device)
    method = METHODS[cfg.method](cfg, teacher, s, device, Path(cfg.output_dir), resume)
    method.check()
    out, _ = prepare_output_dir(cfg.output_dir)
    refuse_other_run(out, resume)
    import torch
    from diffusers.training_utils import EMAModel

    from fm_edge.artifacts import weights_hash
    from fm_edge.checkpoint import resume_checkpoint
    from fm_edge.loop import TrainingLoop

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    for name in ("checkpoint-*", "model"):  # what a killed run was writing
        remove_leftovers(out, name)
    record = {
        "method": cfg.method,
        "teacher": str(teacher),
        "teacher_sha256": weights_hash(teacher),
        "teacher_sampler": s.to_dict(),
        "student_steps": cfg.student_steps,
        "pairs": cfg.pairs if cfg.method in ("pairs", *PAIR_ONLY) else None,
        "student_arch": cfg.student_arch if cfg.method == "regress" else None,
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("teacher", "output_dir")},
        "init_sha256": None,  # adversarial: the student it started from
    }
    method.prepare(record, progress)
    model = method.student()
    # --channels-last: the student and what trains beside it (a critic); checkpoints store contiguous copies
    if cfg.channels_last:
        for net in (model, *(m for m in method.extras().values() if isinstance(m, torch.nn.Module))):
            net.to(memory_format=torch.channels_last)
    model.train()
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=2 / 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=method.betas, weight_decay=0.0)
    method.model, method.ema = model, ema
    state = {"step": 0, "images_seen": 0, "train_seconds": 0.0, "losses": [], "record": record}
    extras = method.extras()
    resumed = resume_checkpoint(out, resume, model, ema, optimizer, extras=extras) if resume else None
    if resumed is not None:
        _check_same_run(out, resumed.get("record", {}), record)
        state = resumed
    ema.to(device)
    if cfg.bf16:
        from fm_edge.quantize.cpu import warn_emulated_bf16

        warn_emulated_bf16(device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cfg.bf16)

    def step_loss(step: int):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        with autocast:
            return method.loss(step, gen)

    loop = TrainingLoop(
        out, model, ema, optimizer, total=cfg.max_steps, lr=cfg.lr, lr_factor=method.lr_factor,
        grad_clip=cfg.grad_clip, checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
        desc=f"distill ({cfg.method})", progress=progress, postfix=method.postfix, extras=extras,
    )  # fmt: skip
    state = loop.run(step_loss, state)
    return _write_student(out, model, ema, cfg, state, fm, state.get("record", record), method)


RECORD_DEFAULTS = {
    "mean_weight_power": 0.0,
    "mean_critic": 0.0,
    "critic_steps": [],
}  # what a record written before the key existed meant


def _check_same_run(out: Path, old: dict, record: dict) -> None:
    """A resumed run must distill the same teacher, the same way."""
    for key in (
        "method",
        "teacher_sha256",
        "teacher_sampler",
        "student_steps",
        "student_arch",
        "init_sha256",
        "mean_share",
        "mean_grid",
        "mean_weight_power",
        "mean_critic",
        "critic_steps",
        "grown_to",
        "data",
    ):
        default = RECORD_DEFAULTS.get(key)
        if old.get(key, default) != record.get(key, default):
            raise UsageError(
                f"--resume: {out} was distilled with {key}={old.get(key)!r}, not {record.get(key)!r}: "
                "use another -o folder"
            )


def _check_resumed_arch(out: Path, resume: str, arch: str) -> None:
    """Before any weights load: the checkpoint to resume holds a student of the same ``--student-arch``."""
    from fm_edge.checkpoint import latest_checkpoint

    path = latest_checkpoint(out) if resume == "latest" else Path(resume)
    state = path / "state.json" if path is not None else None
    if state is None or not state.is_file():
        return  # nothing to resume, or resume_checkpoint names the bad folder
    old = json.loads(state.read_text()).get("record", {}).get("student_arch")
    if old != arch:
        raise UsageError(
            f"--resume: {out} was distilled with student_arch={old!r}, not {arch!r}: use another -o folder"
        )


def _round_teacher(out: Path, r: int, step: int, cfg, n_rounds: int, model, ema, device):
    """Round r's teacher: the EMA student frozen when round r began (saved, so a resume reloads it)."""
    import copy

    from safetensors.torch import load_file, save_file

    from fm_edge.atomic import atomic_file
    from fm_edge.model import velocity_fn

    frozen = copy.deepcopy(model).eval()
    path = out / ROUNDS_DIR / f"round-{r}.safetensors"
    if step == round_start(r, cfg, n_rounds):  # the round begins now: freeze the EMA weights
        ema.copy_to(frozen.parameters())
        path.parent.mkdir(exist_ok=True)
        with atomic_file(path) as tmp:
            save_file({k: v.contiguous() for k, v in frozen.state_dict().items()}, tmp)
    else:  # resumed inside the round
        if not path.is_file():
            raise FmEdgeError(f"{str(path)!r} is missing: cannot resume round {r} (start a new -o folder)")
        frozen.load_state_dict(load_file(path, device=str(device)))
    for p in frozen.parameters():
        p.requires_grad_(False)
    return velocity_fn(frozen)


def add_arguments(p) -> None:
    """``fm-edge distill``'s flags."""
    from fm_edge.flags import device_flag, lr_schedule_flag, seed_and_threads

    p.add_argument("--teacher", default=None, help="teacher checkpoint folder (default: the shipped one)")
    p.add_argument(
        "-o", "--output-dir", default="runs/student", help="run folder (pairs, checkpoints, model/)"
    )
    p.add_argument(
        "--method",
        default="progressive",
        choices=METHODS,
        help="progressive (halves the teacher's Euler steps per round; made the first, UNet students), "
        "pairs (rectified-flow distillation on cached teacher samples), regress (a fresh time-free "
        "--student-arch net learns noise -> the teacher sampler's digit; the teacher may be a student) or "
        "adversarial (the --init net keeps that regression plus a critic's term, trained on "
        "real --data digits) or meanflow (a '-t' flow teacher given a step-length input learns the average "
        "velocity of its guided flow on real --data digits: one run for any step count)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="adversarial: the distilled student folder to start from; with --student-steps above 1 also a "
        "guided teacher (reflow from its own weights), and a time-free '-digit' net starts as its '-t' size "
        "(t plane weights 0: at t = 1 it is the init). meanflow: a '-t' flow net of any size to start from "
        "instead of the teacher's own net (its step plane added), or a mean-flow student (the next stage)",
    )
    p.add_argument(
        "--grow-to",
        default=None,
        help="meanflow: widen the start net (the teacher's, or --init) to this '-t' size first: more channels "
        "at the same levels and blocks, drawing exactly what it drew (new channels start unread), so a "
        "trained net gets more room without starting over",
    )
    p.add_argument(
        "--data",
        default=None,
        help="adversarial and meanflow: local MNIST folder in the hub layout (default: hub ylecun/mnist)",
    )
    p.add_argument(
        "--adv-weight", type=float, default=DistillConfig.adv_weight,
        help="adversarial: weight of the critic's term beside the regression",
    )  # fmt: skip
    p.add_argument(
        "--class-weight", type=float, default=DistillConfig.class_weight,
        help="adversarial, and meanflow with --mean-critic: weight of the cross-entropy of the critic's class head "
        "(trained on real digits) against each student digit's label, which keeps digits in their class (0: off)",
    )  # fmt: skip
    p.add_argument(
        "--critic-warmup", type=int, default=DistillConfig.critic_warmup,
        help="adversarial: train only the critic for this many first steps while the student holds still "
        "(a run from a trained --init starts with a fresh critic)",
    )  # fmt: skip
    p.add_argument(
        "--critic-lr", type=float, default=DistillConfig.critic_lr,
        help="adversarial, and meanflow with --mean-critic: the critic's learning rate, constant (default: --lr)",
    )  # fmt: skip
    p.add_argument(
        "--critic-init", default=DistillConfig.critic_init, metavar="CHECKPOINT",
        help="adversarial, and meanflow with --mean-critic: start the critic from an earlier run's critic (its "
        "checkpoint-N folder) instead of fresh weights, so a new stage skips the first steps of a fresh critic",
    )  # fmt: skip
    p.add_argument(
        "--mean-share", type=float, default=DistillConfig.mean_share,
        help="meanflow: share of rows that learn a step (of random length, or of --mean-grid); the rest (step 0) "
        "learn the velocity",
    )  # fmt: skip
    p.add_argument(
        "--mean-grid", type=int, nargs="+", default=(),
        help="meanflow: the step rows take the steps of these K-step Euler samplers (t on the K grid, h = 1/K) "
        "instead of steps of random length; the student's own K alone trained best (docs/training.md)",
    )  # fmt: skip
    p.add_argument(
        "--mean-weight-power", type=float, default=DistillConfig.mean_weight_power,
        help="meanflow: adaptive loss weighting, each row's error weighted by 1 / (error + c)^p (0.5: every row's "
        "gradient the same size; 1: MeanFlow's choice; 0: plain mean squared error)",
    )  # fmt: skip
    p.add_argument(
        "--mean-critic", type=float, default=DistillConfig.mean_critic, metavar="WEIGHT",
        help="meanflow: add a critic (the one-step method's, trained on real --data digits in the same step) that "
        "scores the student's own --student-steps digits from fresh noise, with this weight on its hinge term; "
        "the last step gets the gradient (0: off). About twice the time of a step",
    )  # fmt: skip
    p.add_argument(
        "--critic-steps", type=int, nargs="+", default=(),
        help="meanflow with --mean-critic: the critic scores the digits of these K-step samplers, one drawn per "
        "step (multiples of --student-steps, e.g. 4 8: the 8-step sampler splits each step; default: "
        "--student-steps)",
    )  # fmt: skip
    p.add_argument(
        "--rollout", type=float, default=DistillConfig.rollout,
        help="K-step regress and adversarial: share of the rows below t=1 that start from the student's own "
        "state after its first Euler steps from their noise, instead of from the straight teacher path; the "
        "target is still the teacher's digit (0: plain reflow)",
    )  # fmt: skip
    p.add_argument(
        "--student-arch",
        default=DistillConfig.student_arch,
        help="regress: the one-step net's size (fm_edge.student_net.ARCHS); a '-digit' name draws the digit "
        "and takes the noise through in float (velocity = noise - digit): less int8 error; a '-digit-t' name "
        "also takes t and runs --student-steps K (and any divisor of K)",
    )
    p.add_argument(
        "--cfg-scale", type=float, default=None, help="guidance scale baked in (default: the teacher's)"
    )
    p.add_argument(
        "--student-steps",
        type=int,
        default=1,
        help="Euler steps of the student: 1 or 2 (adversarial, meanflow, and regress with a '-t' arch: 1, 2, "
        "4 or 8)",
    )
    p.add_argument("--pairs", type=int, default=4096, help="pairs: teacher samples to generate and cache")
    p.add_argument(
        "--teacher-steps", type=int, default=None, help="teacher ODE steps (default: the teacher's)"
    )
    p.add_argument(
        "--teacher-solver",
        default=None,
        choices=TEACHER_SOLVERS,
        help="teacher ODE solver (default: the teacher's; progressive: euler only)",
    )
    lr_schedule_flag(
        p, "constant, or a decay to 0 (progressive: within each round)", DistillConfig.warmup_steps,
        "linear learning-rate warm-up steps (progressive: of each round; adversarial: after --critic-warmup). "
        "A run from trained weights (--init) starts with a fresh AdamW, whose first steps move every weight by "
        "about --lr; a warm-up keeps them small",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64, help="student rows per step")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (peak, with --lr-schedule)")
    p.add_argument("--max-steps", type=int, default=1000, help="student training steps")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint-<step> folder")
    device_flag(p, "where the teacher and the student run")
    p.add_argument(
        "--bf16", action="store_true",
        help="bf16 autocast (CUDA, or CPUs with AVX512-BF16 or AMX: on an Intel Xeon with AMX, 1 thread, 2.1x an "
        "adversarial one-step step, 2.7x a mean-flow step)",
    )  # fmt: skip
    p.add_argument(
        "--channels-last", action="store_true",
        help="channels_last memory format for the student and the critic (with --bf16 on an Intel Xeon with AMX: "
        "2.8x fp32 for an adversarial one-step step, 3.5x for a mean-flow step)",
    )  # fmt: skip
    seed_and_threads(p, "seed of the pairs, batch order and times", "CPU threads for torch")


def main(args) -> Path:
    """``fm-edge distill``: build a DistillConfig from the CLI flags and distill."""
    from fm_edge.flags import config_from_args

    return distill(config_from_args(DistillConfig, args), resume=args.resume)
