"""Flags several commands share, and the help formatter every command uses.

Each command module declares its own flags in ``add_arguments(parser)`` beside its ``main(args)``; the
helpers here keep the shared ones (seed, threads, device, sampler) spelled the same everywhere. Only light
modules are imported, so ``fm-edge --help`` stays instant.
"""

from __future__ import annotations

import argparse


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after a flag's help, except where there is nothing to say (None, False) or the
    help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return super()._get_help_string(action)


def seed_and_threads(p: argparse.ArgumentParser, seed: str, threads: str) -> None:
    p.add_argument("--seed", type=int, default=0, help=seed)
    p.add_argument("--num-threads", type=int, default=None, help=threads)


def device_flag(p: argparse.ArgumentParser, what: str) -> None:
    from fm_edge.backends import DEVICES

    p.add_argument("--device", default="auto", choices=DEVICES, help=f"{what}; auto: CUDA when available")


def sampler_flags(p: argparse.ArgumentParser, steps_flag: str = "--steps", what: str = "") -> None:
    """--steps, --solver, --cfg-scale, --shift: each overrides the model's recommended sampler."""
    from fm_edge.sampler_spec import shipped_teacher_spec
    from fm_edge.solvers import SOLVERS

    rec = shipped_teacher_spec()
    p.add_argument(
        steps_flag, type=int, default=None,
        help=f"{what}ODE steps (default: the model's recommendation; the shipped teacher's is {rec.steps})",
    )  # fmt: skip
    p.add_argument(
        "--solver", default=None, choices=tuple(SOLVERS),
        help=f"{what}ODE solver (default: the model's recommendation; the shipped teacher's is {rec.solver})",
    )  # fmt: skip
    p.add_argument(
        "--cfg-scale", type=float, default=None,
        help=f"classifier-free guidance scale, 1 = off (default: the model's recommendation; the shipped "
        f"teacher's is {rec.cfg_scale:g}; a distilled student has its scale in the weights)",
    )  # fmt: skip
    p.add_argument(
        "--shift", type=float, default=None,
        help=f"time-grid shift, >1: more steps near noise (default: the model's recommendation; the shipped "
        f"teacher's is {rec.shift:g})",
    )  # fmt: skip


def lr_schedule_flag(p: argparse.ArgumentParser, what: str, warmup: int, warmup_what: str) -> None:
    """--lr-schedule and --warmup-steps (a linear warm-up of ``warmup`` steps by default)."""
    from fm_edge.loop import LR_SCHEDULES

    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES, help=what)
    p.add_argument("--warmup-steps", type=int, default=warmup, help=warmup_what)


def config_from_args(cls, args: argparse.Namespace):
    """A config dataclass filled from the parsed flags of the same names (the rest keep their defaults)."""
    import dataclasses

    given = vars(args)
    return cls(**{f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given})
