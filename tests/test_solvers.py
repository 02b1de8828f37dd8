"""Analytic truths of the few-step solvers (numpy and torch), the time grid and classifier-free guidance."""

import numpy as np
import pytest

from fm_edge.errors import UsageError
from fm_edge.solvers import SOLVERS, check_solver, guided, nfe, sample, time_grid

# exact polynomial order in t that each solver integrates without error
ORDER = {"euler": 0, "midpoint": 1, "heun": 1, "rk4": 3}


def counting(f):
    calls = []

    def v(x, t, labels):
        calls.append(t)
        return f(x, t, labels)

    return v, calls


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_polynomial_velocity_integrates_exactly(solver, steps):
    # dx/dt = sum_k c_k t^k for k up to the solver's order: x(0) = x(1) - sum_k c_k / (k+1)
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((4, 1, 32, 32)).astype(np.float64)
    coeffs = rng.standard_normal(ORDER[solver] + 1)
    v, calls = counting(lambda x, t, y: np.full_like(x, sum(c * t**k for k, c in enumerate(coeffs))))
    x0 = sample(v, x1, np.zeros(4, np.int64), steps, solver)
    exact = x1 - sum(c / (k + 1) for k, c in enumerate(coeffs))
    np.testing.assert_allclose(x0, exact, atol=1e-12)
    assert len(calls) == nfe(solver, steps)


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_single_point_data_field_lands_on_the_data(solver):
    # For data concentrated at one point a, x_t = (1-t) a + t x1 and the exact velocity x1 - a is
    # constant along each path; written as a field of (x, t) it is (x - a) / t. A solver that never
    # evaluates at the singular t=0 (heun and rk4 do) lands exactly on a.
    a = np.linspace(-1, 1, 32 * 32).reshape(1, 1, 32, 32)
    x1 = np.random.default_rng(1).standard_normal((2, 1, 32, 32))
    x0 = sample(lambda x, t, y: (x - a) / max(t, 1e-12), x1, np.zeros(2, np.int64), 4, solver)
    np.testing.assert_allclose(x0, np.broadcast_to(a, x0.shape), atol=1e-9)


def test_higher_order_solvers_converge_faster():
    # dx/dt = x * cos(t): x(0) = x(1) * exp(-sin(1)); error at 4 steps shrinks with the order
    x1 = np.ones((1, 1, 2, 2))
    exact = np.exp(-np.sin(1.0))
    err = {s: abs(sample(lambda x, t, y: x * np.cos(t), x1, None, 4, s)[0, 0, 0, 0] - exact) for s in SOLVERS}
    assert err["rk4"] < err["heun"] < err["euler"]
    assert err["rk4"] < 1e-5


def test_torch_tensors_work_too():
    torch = pytest.importorskip("torch")
    x1 = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample(
        lambda x, t, y: torch.full_like(x, 2.0 * t), x1, torch.zeros(3, dtype=torch.int64), 2, "heun"
    )
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, x1 - 1.0)


def test_time_grid_runs_from_noise_to_data():
    for shift in (1.0, 3.0):
        ts = time_grid(5, shift)
        assert ts[0] == 1.0 and ts[-1] == 0.0
        assert all(a > b for a, b in zip(ts, ts[1:]))
    # a shift > 1 spends more of the grid near the noise end
    assert time_grid(4, 3.0)[1] > time_grid(4, 1.0)[1]


def test_cfg_combines_conditional_and_unconditional():
    def v(x, t, labels):
        return np.where(labels[:, None, None, None] == 10, 1.0, 3.0) * np.ones_like(x)

    x = np.zeros((2, 1, 4, 4))
    out = guided(v, 2.5)(x, 0.5, np.array([3, 7]))
    np.testing.assert_allclose(out, 1.0 + 2.5 * (3.0 - 1.0))
    assert guided(v, 1.0) is v


@pytest.mark.parametrize(
    "solver, steps, match",
    [
        ("dopri", 4, "unknown solver"),
        ("euler", 0, "steps=0"),
        ("euler", -1, "steps=-1"),
        ("euler", 10**6, "out of range"),
    ],
)
def test_bad_solver_arguments(solver, steps, match):
    with pytest.raises(UsageError, match=match):
        check_solver(solver, steps)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -1.0, 1e6])
def test_bad_cfg_scale(scale):
    with pytest.raises(UsageError, match="cfg scale"):
        guided(lambda x, t, y: x, scale)
