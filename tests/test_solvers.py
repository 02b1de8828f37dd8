"""Analytic truths of the few-step solvers (numpy and torch), the time grid and classifier-free guidance."""

import numpy as np
import pytest

from fm_edge.errors import UsageError
from fm_edge.solvers import SOLVERS, check_solver, guided, nfe, sample, time_grid

# exact polynomial order in t that each solver's steps integrate without error, and that of its final step
# (the one ending at t=0, where heun takes an Euler step and rk4 a midpoint step: no evaluation at t=0)
ORDER = {"euler": 0, "midpoint": 1, "heun": 1, "rk4": 3}
FINAL_ORDER = {"euler": 0, "midpoint": 1, "heun": 0, "rk4": 1}


def counting(f):
    calls = []

    def v(x, t, labels):
        calls.append(t)
        return f(x, t, labels)

    return v, calls


def polynomial_field(degree: int, seed: int = 0):
    """dx/dt = p(t) with random coefficients: (the field, p, the antiderivative P)."""
    coeffs = np.random.default_rng(seed).standard_normal(degree + 1)
    p = lambda t: sum(c * t**k for k, c in enumerate(coeffs))  # noqa: E731
    big_p = lambda t: sum(c * t ** (k + 1) / (k + 1) for k, c in enumerate(coeffs))  # noqa: E731
    return (lambda x, t, y: np.full_like(x, p(t))), p, big_p


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_polynomial_velocity_integrates_exactly(solver, steps):
    x1 = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float64)
    y = np.zeros(4, np.int64)
    # 1. fields of the final step's order are integrated exactly over the whole way: x(0) = x(1) - P(1)
    field, _, big_p = polynomial_field(FINAL_ORDER[solver])
    v, calls = counting(field)
    np.testing.assert_allclose(sample(v, x1, y, steps, solver), x1 - big_p(1.0), atol=1e-12)
    assert len(calls) == nfe(solver, steps) and 0.0 not in calls
    # 2. fields of the solver's order: exact down to the final step's start t_f, then the final step's
    #    rule over [0, t_f] (Euler for euler and heun, midpoint for midpoint and rk4)
    field, p, big_p = polynomial_field(ORDER[solver], seed=1)
    t_f = time_grid(steps)[-2]
    final = t_f * (p(t_f) if FINAL_ORDER[solver] == 0 else p(t_f / 2))
    expected = x1 - (big_p(1.0) - big_p(t_f)) - final
    np.testing.assert_allclose(sample(field, x1, y, steps, solver), expected, atol=1e-12)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_single_point_data_field_lands_on_the_data(solver):
    # For data concentrated at one point a, x_t = (1-t) a + t x1 and the exact velocity x1 - a is
    # constant along each path; written as a field of (x, t) it is (x - a) / t, singular at t=0. No solver
    # evaluates there (heun's and rk4's final steps skip their t=0 stages), so all land exactly on a.
    a = np.linspace(-1, 1, 32 * 32).reshape(1, 1, 32, 32)
    x1 = np.random.default_rng(1).standard_normal((2, 1, 32, 32))
    x0 = sample(lambda x, t, y: (x - a) / t, x1, np.zeros(2, np.int64), 4, solver)
    np.testing.assert_allclose(x0, np.broadcast_to(a, x0.shape), atol=1e-9)


@pytest.mark.parametrize("solver, order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 3)])
def test_global_error_shrinks_with_the_solvers_order(solver, order):
    # dx/dt = x * cos(t): x(0) = x(1) * exp(-sin(1)). Halving the step divides the error by 2^order; rk4
    # is third order here because its final step is a midpoint step (no evaluation at t=0)
    x1 = np.ones((1, 1, 2, 2))
    exact = np.exp(-np.sin(1.0))
    err = [
        abs(sample(lambda x, t, y: x * np.cos(t), x1, None, n, solver)[0, 0, 0, 0] - exact) for n in (16, 32)
    ]
    assert 0.8 * 2**order < err[0] / err[1] < 1.25 * 2**order, err


def test_torch_tensors_work_too():
    torch = pytest.importorskip("torch")
    x1 = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample(
        lambda x, t, y: torch.full_like(x, 2.0 * t), x1, torch.zeros(3, dtype=torch.int64), 2, "midpoint"
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


# --- the three copies of the solver and CFG math agree ---------------------------------------------------
# solvers.sample (numpy/torch loop), export/sampler_graph.build_sampler (the unrolled ONNX graph) and
# diffusers_pipeline (Euler through diffusers' scheduler) each write the steps out. This test holds the
# first two to one analytic velocity field with a label term (so CFG changes the result), every solver and
# two shifts; test_diffusers_pipeline holds the pipeline to the loop.


def _field_onnx(a: float = 0.3, b: float = 0.01):
    """velocity(sample, timestep, class_labels) = a * sample * timestep / 1000 + b * label, as an ONNX model."""
    import onnx
    from onnx import TensorProto, helper

    from fm_edge.convention import T_SCALE

    def const(name, value):
        return helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, [], [value])
        )

    nodes = [
        const("ka", a / T_SCALE),
        const("kb", b),
        helper.make_node(
            "Constant", [], ["shape"], value=helper.make_tensor("s", TensorProto.INT64, [4], [-1, 1, 1, 1])
        ),
        helper.make_node("Reshape", ["timestep", "shape"], ["t4"]),
        helper.make_node("Cast", ["class_labels"], ["yf"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["yf", "shape"], ["y4"]),
        helper.make_node("Mul", ["sample", "t4"], ["xt"]),
        helper.make_node("Mul", ["xt", "ka"], ["ax"]),
        helper.make_node("Mul", ["y4", "kb"], ["by"]),
        helper.make_node("Add", ["ax", "by"], ["velocity"]),
    ]
    graph = helper.make_graph(
        nodes,
        "field",
        [
            helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["b", 1, 32, 32]),
            helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["b"]),
            helper.make_tensor_value_info("class_labels", TensorProto.INT64, ["b"]),
        ],
        [helper.make_tensor_value_info("velocity", TensorProto.FLOAT, ["b", 1, 32, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)

    def field(x, t, y):
        return a * x * np.float32(t) + b * np.asarray(y, np.float32).reshape(-1, 1, 1, 1)

    return model, field


@pytest.mark.parametrize("solver", ["euler", "midpoint", "heun", "rk4"])
@pytest.mark.parametrize("shift", [1.0, 2.0])
def test_loop_and_sampler_graph_agree_on_a_known_field(solver, shift, tmp_path):
    import onnx

    from fm_edge.convention import decode_uint8
    from fm_edge.export.sampler_graph import build_sampler
    from fm_edge.runtime import OnnxSampler

    model, field = _field_onnx()
    path = tmp_path / "sampler.onnx"
    onnx.save(build_sampler(model, solver, 3, shift, {}), str(path))
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal((6, 1, 32, 32)) * 0.5).astype(np.float32)
    labels = np.arange(6, dtype=np.int64) + 3
    for cfg in (1.0, 2.5):
        want = decode_uint8(sample(field, noise, labels, 3, solver, cfg, shift))
        got = OnnxSampler(path, num_threads=1)(noise, labels, cfg)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, (solver, shift, cfg)
