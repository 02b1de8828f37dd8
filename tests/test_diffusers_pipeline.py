"""FmEdgePipeline: diffusers' FlowMatchEulerDiscreteScheduler on fm-edge's grid gives fm-edge's Euler digits."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from fm_edge.artifacts import FM_CONFIG, SHIPPED  # noqa: E402
from fm_edge.backends import generate, make_noise, torch_backend  # noqa: E402
from fm_edge.diffusers_pipeline import FmEdgePipeline, set_fm_edge_grid  # noqa: E402
from fm_edge.sampler_spec import SamplerSpec  # noqa: E402
from fm_edge.solvers import time_grid  # noqa: E402

LABELS = np.array([0, 3, 7, 10])


def with_sampler(src: Path, dst: Path, **sampler) -> Path:
    """A copy of checkpoint ``src`` whose fm_edge.json recommends ``sampler``."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / FM_CONFIG).read_text())
    cfg["sampler"] = sampler
    (dst / FM_CONFIG).write_text(json.dumps(cfg))
    return dst


def load(folder) -> FmEdgePipeline:
    pipe = FmEdgePipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_uint8(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def euler_ckpt(tiny_ckpt, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("euler") / "model"
    return with_sampler(tiny_ckpt, folder, solver="euler", steps=3, cfg_scale=1.5, shift=2.0)


@pytest.fixture(scope="module")
def pipe(euler_ckpt) -> FmEdgePipeline:
    return load(euler_ckpt)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 16, 50])
@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0, 0.5])
def test_scheduler_grid_is_fm_edge_grid(steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(shift=shift)
    set_fm_edge_grid(s, steps)
    assert torch.equal(s.sigmas, torch.tensor(time_grid(steps, shift), dtype=torch.float32))
    assert s.sigmas[0] == 1.0 and s.sigmas[-1] == 0.0
    assert torch.equal(s.timesteps, s.sigmas[:-1] * 1000.0)  # the UNet's time input: t * 1000, float32
    assert s.shift == shift and s.config.shift == shift  # the scheduler keeps its shift
    s.set_timesteps(sigmas=time_grid(steps, 1.0)[:-1])  # diffusers' own shifting, on the unshifted grid:
    assert (s.sigmas - torch.tensor(time_grid(steps, shift))).abs().max() < 3e-7  # the same grid to float32


@pytest.mark.parametrize("shift", [1.0, 2.0])
@pytest.mark.parametrize("cfg", [1.0, 1.5])
def test_matches_fm_edge_euler(pipe, euler_ckpt, shift, cfg):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=shift)
    noise = make_noise(len(LABELS), seed=1)
    kw = dict(num_inference_steps=3, guidance_scale=cfg, latents=torch.from_numpy(noise))
    got = pipe(LABELS, output_type="latent", **kw).images
    backend = torch_backend(euler_ckpt)
    spec = SamplerSpec("euler", 3, cfg, shift)
    want = generate(backend, LABELS, spec, noise=noise, raw=True)
    assert got.shape == (4, 1, 32, 32) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)
    u8 = as_uint8(pipe(LABELS, **kw).images)
    assert u8.shape == (4, 28, 28) and u8.dtype == np.uint8
    assert np.abs(u8.astype(int) - generate(backend, LABELS, spec, noise=noise)).max() <= 1
    np_out = pipe(LABELS, output_type="np", **kw).images
    assert np_out.shape == (4, 28, 28, 1) and np_out.min() >= 0 and np_out.max() <= 1
    assert np.abs(np.rint(np_out[..., 0] * 255) - u8).max() <= 1


def test_defaults_come_from_fm_edge_json(euler_ckpt):
    fresh = load(euler_ckpt)
    assert fresh.config.sampler == {"solver": "euler", "steps": 3, "cfg_scale": 1.5, "shift": 2.0}
    assert fresh.scheduler.config.shift == 2.0 and fresh.scheduler.config.num_train_timesteps == 1000
    noise = torch.from_numpy(make_noise(2, seed=2))
    default = fresh([4, 9], latents=noise, output_type="latent").images
    want = generate(
        torch_backend(euler_ckpt),
        np.array([4, 9]),
        SamplerSpec("euler", 3, 1.5, 2.0),
        noise=noise.numpy(),
        raw=True,
    )
    np.testing.assert_allclose(default.numpy(), want, atol=1e-5, rtol=0)


def test_save_pretrained_round_trip(euler_ckpt, tmp_path):
    pipe = load(euler_ckpt)  # the one-line conversion: from an fm-edge folder, save as a pipeline
    pipe.save_pretrained(tmp_path / "pipe")
    files = sorted(p.relative_to(tmp_path / "pipe").as_posix() for p in (tmp_path / "pipe").rglob("*"))
    assert "model_index.json" in files and "scheduler/scheduler_config.json" in files
    assert "unet/diffusion_pytorch_model.safetensors" in files and not [
        f for f in files if f.endswith(".bin")
    ]
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "FmEdgePipeline" and index["sampler"]["steps"] == 3
    back = load(tmp_path / "pipe")
    assert isinstance(back, FmEdgePipeline) and back.config.sampler == pipe.config.sampler
    assert back.scheduler.config.shift == 2.0
    noise = torch.from_numpy(make_noise(3, seed=3))
    a = pipe([1, 2, 10], latents=noise, output_type="latent").images
    b = back([1, 2, 10], latents=noise, output_type="latent").images
    assert torch.equal(a, b)
    assert (
        as_uint8(pipe([5], latents=noise[:1]).images) == as_uint8(back([5], latents=noise[:1]).images)
    ).all()


def test_generator_determinism(pipe):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return pipe([1, 2], num_inference_steps=2, generator=g, output_type="latent").images

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor((2, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        run(0), pipe([1, 2], num_inference_steps=2, latents=noise, output_type="latent").images
    )


def count_unet_calls(pipe, **kwargs):
    batches = []
    handle = pipe.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        out = pipe(**kwargs, output_type="latent").images
    finally:
        handle.remove()
    return batches, out


def test_cfg_batches_cond_and_uncond(pipe):
    assert count_unet_calls(pipe, class_labels=[1, 2, 3], num_inference_steps=2)[0] == [6, 6]
    assert count_unet_calls(pipe, class_labels=[1, 2, 3], num_inference_steps=2, guidance_scale=1.0)[0] == [
        3,
        3,
    ]


def test_distilled_guidance_one_pass_per_step(tiny_ckpt, tmp_path):
    sampler = dict(
        solver="euler", steps=2, cfg_scale=1.0, shift=1.0, guidance="distilled", distilled_cfg_scale=2.0
    )
    folder = with_sampler(tiny_ckpt, tmp_path / "student", **sampler)
    pipe = load(folder)
    noise = torch.from_numpy(make_noise(3, seed=4))
    batches, got = count_unet_calls(pipe, class_labels=[1, 2, 10], latents=noise)
    assert batches == [3, 3]  # no doubled batch
    want = generate(
        torch_backend(folder),
        np.array([1, 2, 10]),
        SamplerSpec("euler", 2, 1.0),
        noise=noise.numpy(),
        raw=True,
    )
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)
    batches, same = count_unet_calls(pipe, class_labels=[1, 2, 10], latents=noise, guidance_scale=2.0)
    assert batches == [3, 3] and torch.equal(same, got)
    assert count_unet_calls(pipe, class_labels=[1], num_inference_steps=1)[0] == [1]
    for bad in (1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="guidance_scale"):
            pipe([1], guidance_scale=bad)
    pipe.save_pretrained(tmp_path / "pipe")  # the flag survives save/load
    assert load(tmp_path / "pipe").config.sampler == SamplerSpec.from_dict(sampler).to_dict()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(class_labels=[11]), "label 11"),
        (dict(class_labels=[-1]), "label -1"),
        (dict(class_labels=[1.5]), "integers"),
        (dict(class_labels=[]), "class_labels"),
        (dict(class_labels=[[1, 2]]), "class_labels"),
        (dict(class_labels=[1], num_inference_steps=0), "num_inference_steps"),
        (dict(class_labels=[1], num_inference_steps=2.0), "num_inference_steps"),
        (dict(class_labels=[1], guidance_scale=float("nan")), "guidance_scale"),
        (dict(class_labels=[1], guidance_scale=float("inf")), "guidance_scale"),
        (dict(class_labels=[1], guidance_scale=-1.0), "guidance_scale"),
        (dict(class_labels=[1], guidance_scale="2"), "guidance_scale"),
        (dict(class_labels=[1], latents=torch.zeros(2, 1, 32, 32)), r"latents has shape \[2, 1, 32, 32\]"),
        (dict(class_labels=[1], latents=torch.zeros(1, 1, 28, 28)), r"latents has shape \[1, 1, 28, 28\]"),
        (dict(class_labels=[1], latents=torch.zeros(1, 1, 32, 32, dtype=torch.int64)), "dtype"),
        (dict(class_labels=[1], latents=torch.full((1, 1, 32, 32), float("nan"))), "NaN"),
        (dict(class_labels=[1], latents=[0.0]), "torch.Tensor"),
        (dict(class_labels=[1], output_type="pt"), "output_type"),
    ],
)
def test_bad_input_raises_value_error(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(**kwargs)


@pytest.mark.parametrize(
    "option", [dict(use_karras_sigmas=True), dict(invert_sigmas=True), dict(num_train_timesteps=10)]
)
def test_refuses_a_scheduler_off_the_grid(euler_ckpt, option):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = load(euler_ckpt)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **option)
    with pytest.raises(ValueError, match="scheduler"):
        pipe([1])


def test_safetensors_only(euler_ckpt):
    with pytest.raises(ValueError, match="safetensors"):
        FmEdgePipeline.from_pretrained(euler_ckpt, use_safetensors=False)


def test_shipped_checkpoint_matches_fm_edge_sample():
    """The bar: the shipped folder, same noise, recommended setting -> fm-edge sample's digits within 1 grey level."""
    pipe = load(SHIPPED)
    rec = pipe.config.sampler
    assert rec["solver"] == "euler"
    labels = np.arange(20) % 10
    noise = make_noise(len(labels), seed=0)
    got = as_uint8(pipe(labels, latents=torch.from_numpy(noise)).images)
    want = generate(torch_backend(SHIPPED), labels, SamplerSpec.from_dict(rec), noise=noise)
    assert np.abs(got.astype(int) - want).max() <= 1


def test_card_front_matter_and_usage(tmp_path):
    import yaml

    from fm_edge.card import write_card

    cfg = json.loads((SHIPPED / FM_CONFIG).read_text())
    for folder, where in (
        (tmp_path, "path/to/this/folder"),
        (SHIPPED, f"fm_edge/checkpoints/{SHIPPED.name}"),
    ):
        text = (folder / "README.md").read_text() if folder == SHIPPED else None
        if text is None:
            write_card(folder, cfg)
            text = (folder / "README.md").read_text()
        meta = yaml.safe_load(text.split("---")[1])
        assert (
            meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "unconditional-image-generation"
        )
        assert {"flow-matching", "mnist", "fm-edge", "diffusers:FmEdgePipeline"} <= set(meta["tags"])
        assert "## Use with diffusers" in text and f'FmEdgePipeline.from_pretrained("{where}")' in text
        config = folder / "config.json"  # the title names the class (none in tmp_path: a UNet by default)
        noun = json.loads(config.read_text())["_class_name"] if config.is_file() else "UNet"
        noun = "UNet" if noun == "UNet2DModel" else noun
        assert "## Measured quality" in text and f"MNIST flow-matching {noun}\n" in text


def test_importing_fm_edge_does_not_import_the_pipeline():
    code = (
        "import sys, fm_edge.card, fm_edge.cli, fm_edge.backends, fm_edge.model;"
        "assert 'fm_edge.diffusers_pipeline' not in sys.modules and 'diffusers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
