"""Fuzzing the input checks of the public sampling API with hypothesis.

Two properties per entry point (``OnnxSampler``, ``OnnxVelocity``, ``fm_edge.backends.generate``):

- any input that is valid by the documented contract (finite float32 [B,1,32,32] noise, integer labels
  0-10, one per row, CFG scale 0-20, t in [0, 1], a known solver and 1-1024 steps) is answered with an
  array of the right shape and dtype, and the caller's arrays are not modified;
- the same input with any one field broken (dtype, shape, NaN/inf, label range or type or count, scale,
  t, steps, solver) raises ``UsageError`` with a one-line message: no other exception, no silent fix.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fm_edge.backends import Backend, generate
from fm_edge.errors import UsageError
from fm_edge.runtime import OnnxSampler, OnnxVelocity
from fm_edge.sampler_spec import SamplerSpec

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

LABEL_TYPES = [list, lambda v: np.asarray(v, np.int64), lambda v: np.asarray(v, np.int32), tuple]


@st.composite
def valid_inputs(draw):
    """A valid call: noise, labels, cfg scale, t, steps, solver."""
    batch = draw(st.integers(1, 3))
    x = draw(
        hnp.arrays(
            np.float32,
            (batch, 1, 32, 32),
            elements=st.floats(-1e3, 1e3, width=32),
            fill=st.floats(-4, 4, width=32),
        )
    )
    labels = draw(st.sampled_from(LABEL_TYPES))(
        draw(st.lists(st.integers(0, 10), min_size=batch, max_size=batch))
    )
    scale = draw(st.one_of(st.none(), st.floats(0, 20)))
    t = draw(st.floats(0, 1))
    steps = draw(st.integers(1, 3))
    solver = draw(st.sampled_from(["euler", "midpoint", "heun", "rk4"]))
    return dict(x=x, labels=labels, scale=scale, t=t, steps=steps, solver=solver)


def _broken_x(draw, x):
    how = draw(st.sampled_from(["dtype", "shape", "nan", "inf", "list", "empty"]))
    if how == "dtype":
        return x.astype(draw(st.sampled_from([np.float64, np.float16, np.int64, np.uint8, np.bool_])))
    if how == "shape":
        shape = draw(
            hnp.array_shapes(min_dims=0, max_dims=5, max_side=33).filter(lambda s: s[1:] != (1, 32, 32))
        )
        return np.zeros(shape, np.float32)
    if how == "list":
        return x.tolist()
    if how == "empty":
        return np.zeros((0, 1, 32, 32), np.float32)
    bad = x.copy()
    bad.flat[draw(st.integers(0, x.size - 1))] = (
        np.nan if how == "nan" else draw(st.sampled_from([np.inf, -np.inf]))
    )
    return bad


def _broken_labels(draw, labels, batch):
    how = draw(st.sampled_from(["range", "float", "count", "2d", "bool"]))
    vals = [int(v) for v in labels]
    if how == "range":
        vals[draw(st.integers(0, batch - 1))] = draw(st.sampled_from([-1, 11, 255, -(2**40)]))
        return np.asarray(vals, np.int64)
    if how == "float":
        return np.asarray(vals, np.float32)
    if how == "count":
        return vals + [0] if draw(st.booleans()) or batch == 1 else vals[:-1]
    if how == "2d":
        return np.asarray(vals, np.int64)[:, None]
    return np.ones(batch, np.bool_)


@st.composite
def broken_inputs(draw, fields):
    """A valid call with exactly one of ``fields`` broken."""
    call = draw(valid_inputs())
    field = draw(st.sampled_from(fields))
    event(f"broken {field}")
    if field == "x":
        call["x"] = _broken_x(draw, call["x"])
    elif field == "labels":
        call["labels"] = _broken_labels(draw, call["labels"], len(call["x"]))
    elif field == "scale":
        call["scale"] = draw(st.sampled_from([np.nan, np.inf, -np.inf, -0.5, 20.5, 1e9, "2", [1.0], True]))
    elif field == "t":
        call["t"] = draw(
            st.one_of(
                st.sampled_from([np.nan, np.inf, -np.inf]), st.floats(1.0001, 1e6), st.floats(-1e6, -1e-6)
            )
        )
    elif field == "steps":
        call["steps"] = draw(st.sampled_from([0, -1, 1025, 10**6]))
    else:
        call["solver"] = draw(st.sampled_from(["dopri5", "", "Euler", "rk45"]))
    return call


def refused(fn):
    with pytest.raises(UsageError) as exc:
        fn()
    assert str(exc.value) and "\n" not in str(exc.value)


@pytest.fixture(scope="module")
def sampler(tiny_onnx):
    return OnnxSampler(tiny_onnx / "sampler.onnx", num_threads=1)


@pytest.fixture(scope="module")
def velocity(tiny_onnx):
    return OnnxVelocity(tiny_onnx / "velocity.onnx", num_threads=1)


@FUZZ
@given(call=valid_inputs())
def test_sampler_answers_every_valid_input(sampler, call):
    x, before = call["x"], call["x"].copy()
    out = sampler(x, call["labels"], call["scale"])
    assert out.dtype == np.uint8 and out.shape == (len(x), 28, 28)
    np.testing.assert_array_equal(x, before)


@FUZZ
@given(call=broken_inputs(["x", "labels", "scale"]))
def test_sampler_refuses_every_broken_input(sampler, call):
    refused(lambda: sampler(call["x"], call["labels"], call["scale"]))


@FUZZ
@given(call=valid_inputs())
def test_velocity_answers_every_valid_input(velocity, call):
    x = call["x"]
    v = velocity(x, call["t"], call["labels"])
    assert v.dtype == np.float32 and v.shape == x.shape


@FUZZ
@given(call=broken_inputs(["x", "labels", "t"]))
def test_velocity_refuses_every_broken_input(velocity, call):
    refused(lambda: velocity(call["x"], call["t"], call["labels"]))


def _generate(velocity, call):
    scale = 1.0 if call["scale"] is None else call["scale"]
    backend = Backend("onnx", velocity, SamplerSpec())
    return generate(
        backend, call["labels"], SamplerSpec(call["solver"], call["steps"], scale), noise=call["x"]
    )


@FUZZ
@given(call=valid_inputs())
def test_generate_answers_every_valid_input(velocity, call):
    x, before = call["x"], call["x"].copy()
    out = _generate(velocity, call)
    assert out.dtype == np.uint8 and out.shape == (len(x), 28, 28)
    np.testing.assert_array_equal(x, before)


@FUZZ
@given(call=broken_inputs(["x", "labels", "scale", "steps", "solver"]))
def test_generate_refuses_every_broken_input(velocity, call):
    refused(lambda: _generate(velocity, call))
