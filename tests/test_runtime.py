"""fm_edge.runtime: the numpy + onnxruntime backend, torch-free sampling, and clear errors on bad input."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fm_edge import artifacts, runtime
from fm_edge.artifacts import shipped_onnx
from fm_edge.backends import generate, make_noise, onnx_backend, torch_backend
from fm_edge.cli import main
from fm_edge.convention import decode_uint8, default_labels
from fm_edge.errors import FmEdgeError, UsageError
from fm_edge.runtime import OnnxSampler, OnnxVelocity
from fm_edge.sampler_spec import SamplerSpec
from fm_edge.solvers import sample

REPO = Path(__file__).resolve().parents[1]


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


# --- the velocity backend ---


def test_velocity_scales_t_and_broadcasts(tiny_onnx):
    v = OnnxVelocity(tiny_onnx / "velocity.onnx", num_threads=1)
    x = make_noise(3, 0)
    y = np.array([0, 5, 10])
    raw = v.session.run(None, {"sample": x, "timestep": np.full(3, 300.0, np.float32), "class_labels": y})[0]
    np.testing.assert_array_equal(v(x, 0.3, y), raw)
    np.testing.assert_array_equal(v(x, np.full(3, 0.3, np.float32), y), raw)
    assert v.sampler == SamplerSpec("heun", 3, 1.5, 1.0)
    assert v.metadata["preset"] == "tiny" and v.providers == ["CPUExecutionProvider"]


def test_onnx_backend_matches_torch_backend(tiny_onnx, tiny_ckpt):
    labels = default_labels(6)
    spec = SamplerSpec("heun", 3, 1.5)
    a = generate(torch_backend(tiny_ckpt, num_threads=1), labels, spec, raw=True)
    b = generate(onnx_backend(tiny_onnx / "velocity.onnx", num_threads=1), labels, spec, raw=True)
    assert np.abs(a - b).max() < 1e-4


def test_sampler_defaults_to_recorded_cfg(tiny_onnx):
    s = OnnxSampler(tiny_onnx / "sampler.onnx", num_threads=1)
    v = OnnxVelocity(tiny_onnx / "velocity.onnx", num_threads=1)
    noise, labels = make_noise(4, 1), np.array([1, 2, 3, 10])
    img = s(noise, labels)
    assert img.dtype == np.uint8 and img.shape == (4, 28, 28)
    ref = decode_uint8(sample(v, noise, labels, s.steps, s.solver, s.cfg_scale))
    assert np.abs(img.astype(int) - ref).max() <= 1
    assert not np.array_equal(s(noise, labels, cfg_scale=4.0), img)


def test_session_options(tiny_onnx):
    v = OnnxVelocity(tiny_onnx / "velocity.onnx", num_threads=1, graph_optimization_level="disable")
    x, y = make_noise(2, 0), np.array([1, 2])
    ref = OnnxVelocity(tiny_onnx / "velocity.onnx")(x, 0.5, y)
    assert np.abs(v(x, 0.5, y) - ref).max() < 1e-5
    with pytest.raises(UsageError, match="graph optimization level"):
        OnnxVelocity(tiny_onnx / "velocity.onnx", graph_optimization_level="max")
    with pytest.raises(UsageError, match="num_threads"):
        OnnxVelocity(tiny_onnx / "velocity.onnx", num_threads=0)
    with pytest.raises(UsageError, match="unknown execution provider"):
        OnnxVelocity(tiny_onnx / "velocity.onnx", providers="tpu")
    if "CUDAExecutionProvider" not in runtime.ort.get_available_providers():
        with pytest.raises(UsageError, match="CUDAExecutionProvider is not available"):
            OnnxVelocity(tiny_onnx / "velocity.onnx", providers="cuda")


def test_shipped_onnx(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "SHIPPED_ONNX", tmp_path)
    with pytest.raises(UsageError, match="no shipped velocity.onnx") as e:
        shipped_onnx("velocity.onnx")
    one_line(e)
    (tmp_path / "velocity.onnx").write_bytes(b"")
    assert shipped_onnx("velocity.onnx") == tmp_path / "velocity.onnx"


# --- bad files ---


def test_truncated_and_corrupt_onnx(tiny_onnx, tmp_path):
    data = (tiny_onnx / "velocity.onnx").read_bytes()
    for name, blob in [
        ("trunc.onnx", data[: len(data) // 2]),
        ("junk.onnx", b"not an onnx file"),
        ("e.onnx", b""),
    ]:
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(FmEdgeError, match="is not a valid ONNX model") as e:
            OnnxVelocity(path)
        assert name in one_line(e)
    with pytest.raises(UsageError, match="is not a file"):
        OnnxSampler(tmp_path / "missing.onnx")


def test_wrong_inputs(tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="this is a sampler.onnx") as e:
        OnnxVelocity(tiny_onnx / "sampler.onnx")
    assert "needs [sample tensor(float), timestep tensor(float), class_labels tensor(int64)]" in one_line(e)
    with pytest.raises(UsageError, match="this is a velocity.onnx"):
        OnnxSampler(tiny_onnx / "velocity.onnx")
    # some other model: input x -> output y
    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), other)
    with pytest.raises(
        UsageError, match=r"has inputs \[x tensor\(float\)\] but an fm-edge velocity model needs"
    ):
        OnnxVelocity(other)


# --- bad arrays ---


@pytest.mark.parametrize(
    "noise,match",
    [
        (
            np.zeros((2, 1, 28, 28), np.float32),
            r"noise has shape \[2, 1, 28, 28\]: expected float32 \[B,1,32,32\]",
        ),
        (np.zeros((2, 32, 32), np.float32), r"noise has shape \[2, 32, 32\]"),
        (np.zeros((0, 1, 32, 32), np.float32), r"noise has shape \[0, 1, 32, 32\]"),
        (np.zeros((2, 1, 32, 32), np.float64), "noise has dtype float64: expected float32"),
        (np.full((2, 1, 32, 32), np.nan, np.float32), "noise contains NaN"),
        ([[0.0]], "noise must be a numpy array"),
    ],
)
def test_bad_noise(tiny_onnx, noise, match):
    s = OnnxSampler(tiny_onnx / "sampler.onnx")
    with pytest.raises(UsageError, match=match) as e:
        s(noise, np.array([1, 2]))
    one_line(e)


def test_bad_labels_and_cfg(tiny_onnx):
    s = OnnxSampler(tiny_onnx / "sampler.onnx")
    v = OnnxVelocity(tiny_onnx / "velocity.onnx")
    noise = make_noise(2, 0)
    for bad, match in [([1, 11], "label 11 is out of range"), ([-1, 0], "label -1 is out of range")]:
        with pytest.raises(UsageError, match=match):
            s(noise, np.array(bad))
        with pytest.raises(UsageError, match=match):
            v(noise, 0.5, np.array(bad))
    with pytest.raises(UsageError, match="labels must be integers"):
        s(noise, np.array([1.0, 2.0]))
    with pytest.raises(UsageError, match=r"labels have shape \[3\]: expected \[2\]"):
        s(noise, np.array([1, 2, 3]))
    for cfg in (-1.0, 21.0, float("nan")):
        with pytest.raises(UsageError, match="cfg scale"):
            s(noise, np.array([1, 2]), cfg)
    with pytest.raises(UsageError, match="t must be a float in"):
        v(noise, 1.5, np.array([1, 2]))


def test_cli_sample_bad_onnx_is_one_line(tiny_onnx, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes((tiny_onnx / "velocity.onnx").read_bytes()[:1000])
    out = tmp_path / "s.npz"
    code = main(["sample", "--backend", "onnx", "--model", str(bad), "-o", str(out), "--num-samples", "2"])
    _, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1 and "bad.onnx" in err
    assert not out.exists()


# --- no torch ---

HIDE_TORCH = textwrap.dedent(
    """
    import sys

    class HideTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchao", "torchvision", "torchdiffeq", "diffusers"):
                raise ModuleNotFoundError(f"{name!r} is hidden by the torch-free test", name=name)
            return None

    sys.meta_path.insert(0, HideTorch())
    """
)


def _torch_free_env(tmp_path) -> dict:
    site = tmp_path / "hide_torch"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE_TORCH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]), OMP_NUM_THREADS="1")
    env.pop("FM_EDGE_DEBUG", None)
    return env


def test_runtime_imports_only_numpy_and_onnxruntime():
    code = (
        "import sys, fm_edge.runtime\n"
        "heavy = {'torch', 'diffusers', 'onnx', 'safetensors'}\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & heavy)\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_sample_onnx_without_torch(tiny_onnx, tmp_path):
    env = _torch_free_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "hidden by the torch-free test" in probe.stderr
    out = tmp_path / "samples.npz"
    cmd = [sys.executable, "-m", "fm_edge.cli", "sample", "--backend", "onnx", "--model"]
    cmd += [str(tiny_onnx / "velocity.onnx"), "--num-samples", "5", "-o", str(out), "--num-threads", "1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out)
    with np.load(out) as d:
        assert d["images"].shape == (5, 28, 28) and d["images"].dtype == np.uint8
    # and the whole-sampler file, through the Python API
    code = (
        "import numpy as np\nfrom fm_edge.runtime import OnnxSampler\n"
        f"s = OnnxSampler({str(tiny_onnx / 'sampler.onnx')!r})\n"
        "noise = np.random.default_rng(0).standard_normal((3, 1, 32, 32), dtype=np.float32)\n"
        "img = s(noise, np.array([1, 2, 10]))\n"
        "assert img.shape == (3, 28, 28) and img.dtype == np.uint8\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
