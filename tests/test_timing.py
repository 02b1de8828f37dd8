"""The latency harness: warm-up calls first, then the call order alternates round by round, and the paired
ratio is the median of the per-round ratios."""

import pytest

from fm_edge import timing


def test_rounds_alternate_and_every_call_is_timed():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    times = timing.time_alternating(fns, rounds=3, warmup=2)
    assert calls[:6] == list("aabbcc")  # warm-up first, each callable in turn
    assert calls[6:] == list("abccbaabc")
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"rounds": -1}])
def test_no_rounds_is_an_error(kwargs):
    with pytest.raises(ValueError):
        timing.time_alternating({"a": lambda: None}, **kwargs)


def test_paired_speedup_is_the_median_of_round_ratios():
    assert timing.paired_speedup([2.0, 4.0, 9.0], [1.0, 1.0, 1.0]) == 4.0
    assert timing.median([3.0, 1.0, 2.0]) == 2.0


def test_self_timed_calls_report_their_own_seconds():
    times = timing.time_alternating({"a": lambda: 0.25, "b": lambda: 0.5}, rounds=2, self_timed=True)
    assert times == {"a": [0.25, 0.25], "b": [0.5, 0.5]}
