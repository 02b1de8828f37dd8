"""The GPU sampler (run by scripts/gpu_check.sh on a lent GPU; skipped cleanly where torch sees no CUDA)."""

import json

import numpy as np
import pytest
import torch

from fm_edge.backends import generate, make_noise, torch_backend
from fm_edge.cli import main
from fm_edge.convention import default_labels
from fm_edge.sampler_spec import SamplerSpec

cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"
)
pytestmark = pytest.mark.cuda


@cuda
def test_graphed_solve_equals_eager_and_is_reused(tiny_ckpt):
    graphed = torch_backend(tiny_ckpt, device="cuda")
    eager = torch_backend(tiny_ckpt, device="cuda", cuda_graphs=False)
    assert graphed.solve is not None and eager.solve is None
    labels = default_labels(16)
    for seed in (0, 1):  # the second batch replays the graph captured for the first
        noise = make_noise(16, seed)
        spec = SamplerSpec("euler", 4, 1.5, 2.0)
        a = generate(graphed, labels, spec, noise=noise, raw=True)
        b = generate(eager, labels, spec, noise=noise, raw=True)
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert len(graphed.solve) == 1


@cuda
def test_cuda_matches_cpu_and_bf16_is_close(tiny_ckpt):
    noise, labels = make_noise(8, 0), default_labels(8)
    spec = SamplerSpec("heun", 4, 1.5)
    cpu = generate(torch_backend(tiny_ckpt, device="cpu"), labels, spec, noise=noise)
    gpu = generate(torch_backend(tiny_ckpt, device="cuda"), labels, spec, noise=noise)
    bf16 = generate(torch_backend(tiny_ckpt, device="cuda", bf16=True), labels, spec, noise=noise)
    assert np.abs(cpu.astype(int) - gpu.astype(int)).max() <= 1
    assert np.abs(cpu.astype(int) - bf16.astype(int)).mean() < 2.0


@cuda
def test_sample_and_bench_on_cuda(tiny_ckpt, tmp_path, capsys):
    assert (
        main(["sample", "--model", str(tiny_ckpt), "--num-samples", "20", "-o", str(tmp_path / "s.npz")]) == 0
    )
    assert "(cuda)" in capsys.readouterr().err  # auto picks the GPU
    argv = ["bench", "--model", str(tiny_ckpt), "--backends", "torch-fp32", "--batch-sizes", "1,64", "--nfe", "4",
            "--repeats", "3", "--quality-samples", "0", "--device", "cuda", "--memory-cap-gb", "10",
            "-o", str(tmp_path / "bench")]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert len(rows) == 2 and all(0 < r["peak_gpu_mb"] < 10 * 1024 for r in rows)


@cuda
def test_train_with_fused_adamw_bf16_and_channels_last(tmp_path, tiny_data):
    from fm_edge.model import load
    from fm_edge.train import TrainConfig, train

    cfg = TrainConfig(
        output_dir=str(tmp_path), preset="tiny", data=tiny_data, batch_size=16, warmup_steps=2, max_steps=6,
        checkpoint_every=2, log_every=4, lr_schedule="linear", bf16=True, channels_last=True,
    )  # fmt: skip
    final = train(cfg, progress=False)
    state = json.loads((tmp_path / "checkpoint-6" / "state.json").read_text())
    assert [s for s, _ in state["losses"]] == [1, 2, 3, 4, 5, 6]
    load(final)


@cuda
def test_distill_on_cuda(tiny_ckpt, tmp_path):
    from fm_edge.artifacts import FM_CONFIG
    from fm_edge.distill import DistillConfig, distill

    cfg = DistillConfig(
        teacher=str(tiny_ckpt), output_dir=str(tmp_path), method="pairs", cfg_scale=1.5, pairs=24, batch_size=8,
        max_steps=4, checkpoint_every=2, device="cuda", bf16=True,
    )  # fmt: skip
    folder = distill(cfg, progress=False)
    assert json.loads((folder / FM_CONFIG).read_text())["sampler"]["guidance"] == "distilled"


@cuda
def test_diffusers_pipeline_follows_the_unet_to_cuda(tiny_ckpt):
    from fm_edge.diffusers_pipeline import FmEdgePipeline

    sampler = {"solver": "euler", "steps": 3, "cfg_scale": 1.5, "shift": 1.0}
    pipe = FmEdgePipeline.from_fm_edge_checkpoint(tiny_ckpt, sampler=sampler)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.from_numpy(make_noise(2, seed=5))
    cpu = pipe([3, 7], latents=noise, output_type="latent").images
    pipe.to("cuda")
    gpu = pipe([3, 7], latents=noise, output_type="latent").images
    gen = pipe([3, 7], generator=torch.Generator("cuda").manual_seed(0), output_type="latent").images
    assert gpu.device.type == "cuda" and gen.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=0)
