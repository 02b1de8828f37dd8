"""The one latency harness: warm up, then time several callables in alternating order, round by round.

Alternating (a b, b a, a b, ...) means a machine that gets busier or quieter during the run slows every
variant alike, so their ratio stays honest; a single callable is simply timed ``rounds`` times.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_alternating(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    progress: Callable | None = None,
    self_timed: bool = False,
) -> dict[str, list[float]]:
    """Wall-clock seconds of every call of each ``fns[name]()``, ``rounds`` each, after ``warmup`` calls.

    ``self_timed``: each call returns its own seconds instead (a worker process that timed its work, so the
    round trip to it is not counted). ``progress(done, total)`` is called after each round (for a progress bar).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    order = list(fns.items())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(rounds):
        for name, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            took = fn()
            times[name].append(float(took) if self_timed else time.perf_counter() - t0)
        if progress is not None:
            progress(i + 1, rounds)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def paired_speedup(base: list[float], other: list[float]) -> float:
    """Median of the per-round ratios base/other (> 1: ``other`` is faster)."""
    return statistics.median(a / b for a, b in zip(base, other))
