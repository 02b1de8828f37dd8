"""Contract tests of the velocity net: conventions, save/load round trip, determinism, shapes, bad files."""

import numpy as np
import pytest
import torch

from fm_edge.backends import generate, torch_backend
from fm_edge.convention import decode_uint8, default_labels, encode_uint8
from fm_edge.errors import FmEdgeError, UsageError
from fm_edge.model import PRESETS, build, load, velocity_fn
from fm_edge.sampler_spec import SamplerSpec


def test_encode_decode_round_trip():
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x = encode_uint8(imgs)
    assert x.shape == (5, 1, 32, 32) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    assert (x[:, :, :2] == -1).all() and (x[:, :, :, -2:] == -1).all()  # padding is -1 (black)
    np.testing.assert_array_equal(decode_uint8(x), imgs)


def test_labels():
    np.testing.assert_array_equal(default_labels(12), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    assert (default_labels(3, unconditional=True) == 10).all()
    for bad in (-1, 11):
        with pytest.raises(UsageError, match=f"label {bad} is out of range"):
            default_labels(2, label=bad)


def test_timestep_is_passed_as_float(tiny_ckpt):
    # diffusers casts a Python float timestep to int; ours must see t*1000 as a float tensor, so that
    # t = 0.0004 (0.4 after scaling) differs from t = 0 (both would be 0 as integers).
    model, _ = load(tiny_ckpt)
    v = velocity_fn(model)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 10])
    assert not torch.allclose(v(x, 0.0004, y), v(x, 0.0, y))


def test_presets_and_parameter_counts():
    counts = {name: sum(p.numel() for p in build(name).parameters()) for name in ("tiny", "compact")}
    assert counts["tiny"] < 100_000 < counts["compact"] < 2_000_000
    assert PRESETS["ddpm-cifar10-32"]["block_out_channels"] == (128, 256, 256, 256)
    with pytest.raises(UsageError, match="unknown preset 'huge'"):
        build("huge")


def test_class_labels_change_the_output(tiny_ckpt):
    model, _ = load(tiny_ckpt)
    x = torch.zeros(2, 1, 32, 32)
    out = velocity_fn(model)(x, 0.5, torch.tensor([3, 10]))
    assert not torch.allclose(out[0], out[1])


def test_save_load_round_trip_and_determinism(tiny_ckpt, tmp_path):
    model, fm = load(tiny_ckpt)
    assert fm["preset"] == "tiny" and fm["t_scale"] == "1000.0"
    model.save_pretrained(tmp_path / "again", safe_serialization=True)
    again, _ = load(tmp_path / "again")
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 5, 10])
    torch.testing.assert_close(velocity_fn(model)(x, 0.3, y), velocity_fn(again)(x, 0.3, y), rtol=0, atol=0)


def test_generate_is_deterministic_and_uses_the_recommended_sampler(tiny_ckpt):
    b = torch_backend(tiny_ckpt)
    assert b.sampler == SamplerSpec("heun", 3, 1.5, 1.0)
    labels = default_labels(6)
    spec = SamplerSpec("euler", 2, 2.0)
    a = generate(b, labels, spec, seed=3)
    c = generate(b, labels, spec, seed=3, batch_size=4)  # batching does not change results
    assert a.shape == (6, 28, 28) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, generate(b, labels, spec, seed=4))


def test_missing_and_corrupt_checkpoints(tiny_ckpt, tmp_path):
    with pytest.raises(UsageError, match="is not a folder"):
        load(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_ckpt / "config.json").read_text())
    with pytest.raises(UsageError, match="has no diffusion_pytorch_model.safetensors"):
        load(broken)
    data = (tiny_ckpt / "diffusion_pytorch_model.safetensors").read_bytes()
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FmEdgeError, match="could not be loaded"):
        load(broken)


def test_bf16_velocity_stays_float32_and_close(tiny_ckpt):
    import torch

    model, _ = load(tiny_ckpt)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 7, 10])
    v32 = velocity_fn(model)(x, 0.7, y)
    v16 = velocity_fn(model, bf16=True)(x, 0.7, y)
    assert v16.dtype == torch.float32 and v16.shape == v32.shape
    rel = (v16 - v32).norm() / v32.norm()
    assert 0 < rel < 0.05  # bf16 rounding: close, but really not the fp32 computation
