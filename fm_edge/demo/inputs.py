"""The demo's request: every control's value checked, with a one-line message naming what is allowed.

The page bounds its sliders, but the API (``gradio_client``, curl) can send any value, so everything is
checked here again. Nothing is "fixed" silently: 2.5 steps is an error, not 2. numpy only.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from fm_edge.convention import NUM_CLASSES, default_labels
from fm_edge.errors import UsageError
from fm_edge.sampler_spec import SamplerSpec
from fm_edge.solvers import MAX_CFG, SOLVERS

MAX_SAMPLES = 64
MAX_STEPS = 64
MAX_SEED = 2**32 - 1
#: "cycle": 0, 1, ..., 9, 0, ... ; "any": unconditional (the null label); "0".."9": that digit
DIGITS = ("cycle", "any", *(str(d) for d in range(NUM_CLASSES)))


@dataclass(frozen=True)
class Request:
    labels: np.ndarray  # int64 [N]
    steps: int
    solver: str
    cfg_scale: float
    shift: float
    seed: int
    randomized: bool  # the seed was drawn for this request

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    @property
    def spec(self) -> SamplerSpec:
        return SamplerSpec(self.solver, self.steps, self.cfg_scale, self.shift)


def _shown(value, limit: int = 40) -> str:
    """repr of a rejected value, cut short: a 400-digit number should not fill the error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finite(value, allowed: str) -> float:
    """``value`` as a finite float (not a bool or None); a UsageError naming ``allowed`` otherwise."""
    if isinstance(value, bool) or value is None:
        raise UsageError(f"{allowed}, got {_shown(value)}")
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float
        raise UsageError(f"{allowed}, got {_shown(value)}") from None
    if not math.isfinite(f):
        raise UsageError(f"{allowed}, got {_shown(value)}")
    return f


def as_int(value, name: str, lo: int, hi: int) -> int:
    """An integer lo..hi from an int or an integral float/str; a UsageError otherwise."""
    allowed = f"{name} must be a whole number from {lo} to {hi}"
    f = _finite(value, allowed)
    if not f.is_integer():
        raise UsageError(f"{allowed}, got {_shown(value)}")
    n = int(f)
    if not lo <= n <= hi:
        raise UsageError(f"{allowed}, got {n}")
    return n


def as_float(value, name: str, lo: float, hi: float) -> float:
    allowed = f"{name} must be a number from {lo:g} to {hi:g}"
    f = _finite(value, allowed)
    if not lo <= f <= hi:
        raise UsageError(f"{allowed}, got {_shown(value)}")
    return f


def _digit(digit) -> str:
    key = str(digit).strip().lower()
    if key not in DIGITS:
        raise UsageError(f"digit must be one of {', '.join(DIGITS)}, got {_shown(digit)}")
    return key


def labels_for(digit, n: int) -> np.ndarray:
    """The N labels a digit choice asks for."""
    key = _digit(digit)
    if key == "cycle":
        return default_labels(n)
    return default_labels(n, unconditional=True) if key == "any" else default_labels(n, int(key))


def _solver(solver) -> str:
    if not isinstance(solver, str) or solver not in SOLVERS:  # a list is unhashable
        raise UsageError(f"solver must be one of {', '.join(SOLVERS)}, got {_shown(solver)}")
    return solver


def _randomize(randomize) -> bool:
    if not isinstance(randomize, (bool, np.bool_)):
        raise UsageError(f"randomize must be true or false, got {_shown(randomize)}")
    return bool(randomize)


def _checked(digit, num_samples, steps, solver, cfg_scale, seed, randomize) -> dict[str, tuple]:
    """Every control checked once: name -> (value, None) or (None, its one-line message), in the page's order."""
    drawn = isinstance(randomize, (bool, np.bool_)) and bool(randomize)  # a randomized seed is drawn later
    checks = {
        "digit": lambda: _digit(digit),
        "num_samples": lambda: as_int(num_samples, "number of samples", 1, MAX_SAMPLES),
        "steps": lambda: as_int(steps, "ODE steps", 1, MAX_STEPS),
        "solver": lambda: _solver(solver),
        "cfg_scale": lambda: as_float(cfg_scale, "CFG scale", 0.0, MAX_CFG),
        "seed": lambda: None if drawn else as_int(seed, "seed", 0, MAX_SEED),
        "randomize": lambda: _randomize(randomize),
    }
    fields = {}
    for name, check in checks.items():
        try:
            fields[name] = (check(), None)
        except UsageError as exc:
            fields[name] = (None, str(exc))
    return fields


def field_errors(digit, num_samples, steps, solver, cfg_scale, seed, randomize) -> list[str | None]:
    """One message per control (None when its value is fine), in the page's order: what the queue's
    validator shows next to each control before a request may join the queue."""
    return [
        err for _, err in _checked(digit, num_samples, steps, solver, cfg_scale, seed, randomize).values()
    ]


def parse(
    digit,
    num_samples,
    steps,
    solver,
    cfg_scale,
    seed,
    randomize=False,
    shift: float = 1.0,
) -> Request:
    """Check every control; a randomized request draws its seed here (and reports it)."""
    fields = _checked(digit, num_samples, steps, solver, cfg_scale, seed, randomize)
    for name in ("num_samples", "digit", "steps", "solver", "cfg_scale", "randomize", "seed"):  # first error
        if fields[name][1] is not None:
            raise UsageError(fields[name][1])
    v = {name: value for name, (value, _) in fields.items()}
    seed = secrets.randbelow(2**31) if v["randomize"] else v["seed"]
    labels = labels_for(v["digit"], v["num_samples"])
    return Request(labels, v["steps"], v["solver"], v["cfg_scale"], float(shift), seed, v["randomize"])
