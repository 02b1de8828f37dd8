"""Training: checkpoints, exact resume, the inference folder, NaN handling, bad data, Accelerate multi-process."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from fm_edge.checkpoint import latest_checkpoint
from fm_edge.errors import FmEdgeError, UsageError
from fm_edge.model import load
from fm_edge.train import TrainConfig, train


def cfg(tmp_path, tiny_data, **kw):
    base = dict(
        output_dir=str(tmp_path),
        preset="tiny",
        data=tiny_data,
        batch_size=16,
        warmup_steps=2,
        checkpoint_every=2,
        keep_checkpoints=5,
        max_steps=6,
        num_threads=1,
    )
    return TrainConfig(**{**base, **kw})


def test_train_writes_checkpoints_and_inference_folder(tmp_path, tiny_data):
    final = train(cfg(tmp_path, tiny_data), progress=False)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    ]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary folders left behind
    model, fm = load(final)
    assert fm["preset"] == "tiny" and fm["training"]["steps"] == 6
    assert fm["training"]["digit_t_floor"] is None  # a UNet's velocity loss is not capped
    assert fm["training"]["images_seen"] == 6 * 16
    card = (final / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: diffusers" in card
    state = json.loads((tmp_path / "checkpoint-6" / "state.json").read_text())
    assert [s for s, _ in state["losses"]] == [1, 2, 3, 4, 5, 6]


def test_resume_continues_the_same_run(tmp_path, tiny_data):
    straight = tmp_path / "straight"
    train(cfg(straight, tiny_data), progress=False)
    split = tmp_path / "split"
    train(cfg(split, tiny_data, max_steps=4), progress=False)
    train(cfg(split, tiny_data), resume="latest", progress=False)
    a = json.loads((straight / "checkpoint-6" / "state.json").read_text())
    b = json.loads((split / "checkpoint-6" / "state.json").read_text())
    assert a["losses"] == b["losses"]  # same batches, noise, t and dropout after the resume
    from safetensors.torch import load_file

    wa, wb = (
        load_file(straight / "checkpoint-6" / "ema.safetensors"),
        load_file(split / "checkpoint-6" / "ema.safetensors"),
    )
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])


def test_a_fresh_run_into_an_earlier_runs_folder_is_refused_and_keeps_its_checkpoints(tmp_path, tiny_data):
    train(cfg(tmp_path, tiny_data, max_steps=4), progress=False)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("checkpoint-*/*")}
    with pytest.raises(UsageError, match="holds checkpoint-4 of an earlier run: pass --resume latest"):
        train(cfg(tmp_path, tiny_data), progress=False)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("checkpoint-*/*")} == before


def test_latest_checkpoint_ignores_incomplete_folders(tmp_path, tiny_data):
    train(cfg(tmp_path, tiny_data, max_steps=4), progress=False)
    (tmp_path / "checkpoint-8").mkdir()  # a folder without state.json is not a complete checkpoint
    (tmp_path / ".checkpoint-10.abc.tmp").mkdir()
    assert latest_checkpoint(tmp_path).name == "checkpoint-4"


def test_nan_loss_stops_with_the_step(tmp_path, tiny_data, monkeypatch):
    import fm_edge.flow

    real = fm_edge.flow.loss_fn
    calls = []

    def nan_on_third(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(fm_edge.flow, "loss_fn", nan_on_third)
    with pytest.raises(FmEdgeError, match="loss is nan at step 3"):
        train(cfg(tmp_path, tiny_data), progress=False)
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    assert not (tmp_path / "model").exists()


def test_dataset_without_mnist(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no MNIST"):
        train(cfg(tmp_path / "out", str(tmp_path / "empty")), progress=False)


def test_bad_settings(tmp_path, tiny_data):
    with pytest.raises(UsageError, match="batch-size"):
        train(cfg(tmp_path, tiny_data, batch_size=0), progress=False)
    with pytest.raises(UsageError, match="unknown time sampling"):
        train(cfg(tmp_path, tiny_data, time_sampling="cosine"), progress=False)


@pytest.mark.slow
def test_two_process_cpu_run_under_accelerate(tmp_path, tiny_data):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "fm_edge.cli",
        "train",
        "--preset",
        "tiny",
        "--data",
        tiny_data,
        "-o",
        str(tmp_path),
        "--max-steps",
        "3",
        "--checkpoint-every",
        "3",
        "--batch-size",
        "8",
        "--num-threads",
        "1",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 process(es)" in r.stderr
    state = json.loads((tmp_path / "checkpoint-3" / "state.json").read_text())
    assert state["images_seen"] == 3 * 8 * 2  # each step consumed a batch on each of the 2 processes
    load(tmp_path / "model")


# --- crash safety: SIGKILL at several points, then --resume latest ---

# Runs `fm-edge train` and, at the chosen point, writes a marker file and waits to be killed. The hooks
# wrap the real functions (the loss, safetensors' writer); the kill is a real SIGKILL from the test.
KILLABLE = """
import pathlib, sys, time
import safetensors.torch, fm_edge.flow
from fm_edge.cli import main
marker, point, n = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def wait_here(what):
    marker.write_text(what)
    time.sleep(600)
real_loss, real_save, steps = fm_edge.flow.loss_fn, safetensors.torch.save_file, []
def loss_fn(*a, **k):
    steps.append(1)
    if point == "step" and len(steps) == n:
        wait_here(f"in step {n}")
    return real_loss(*a, **k)
def save_file(tensors, filename, *a, **k):
    real_save(tensors, filename, *a, **k)
    if point in str(filename):  # e.g. "checkpoint-8.": inside that checkpoint's temporary folder
        wait_here(f"after writing {filename}")
fm_edge.flow.loss_fn, safetensors.torch.save_file = loss_fn, save_file
sys.exit(main(sys.argv[4:]))
"""


def kill_at(point: str, n: int, argv: list[str], tmp_path) -> str:
    import signal

    from conftest import sigkill_at_marker

    marker = tmp_path / f"marker-{point}-{n}"
    cmd = [sys.executable, "-c", KILLABLE, str(marker), point, str(n), *argv]
    proc = sigkill_at_marker(cmd, marker, f"{point} {n}")
    assert proc.returncode == -signal.SIGKILL
    return marker.read_text()


def test_sigkill_at_any_point_then_resume_continues_the_run(tmp_path, tiny_data):
    from safetensors.torch import load_file

    settings = ["--preset", "tiny", "--data", tiny_data, "--limit", "64", "--batch-size", "8"]
    settings += ["--max-steps", "12", "--checkpoint-every", "4", "--num-threads", "1"]
    run = tmp_path / "run"
    argv = ["train", *settings, "-o", str(run), "--resume", "latest"]

    def complete():
        return sorted(
            int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if (p / "state.json").exists()
        )

    # 1. killed inside step 7: checkpoint-4 is the last complete one (steps 5-6 are lost)
    kill_at("step", 7, argv, tmp_path)
    assert complete() == [4]
    # 2. resumed, then killed while checkpoint-8 is half written (its model weights on disk, nothing else)
    where = kill_at("checkpoint-8.", 0, argv, tmp_path)
    assert "model.safetensors" in where
    assert complete() == [4] and list(run.glob(".checkpoint-8.*.tmp")), "the half checkpoint stays hidden"
    # 3. resumed, then killed while the final inference folder is being written
    kill_at(".model.", 0, argv, tmp_path)
    assert complete() == [8, 12] and not (run / "model").exists()
    # 4. resumed to the end: the leftovers are gone and the inference folder is complete
    r = subprocess.run(
        [sys.executable, "-m", "fm_edge.cli", *argv], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    assert (run / "model" / "diffusion_pytorch_model.safetensors").is_file()

    # the interrupted run is the straight run: same loss at every step, same weights, EMA and optimizer
    straight = tmp_path / "straight"
    r = subprocess.run(
        [sys.executable, "-m", "fm_edge.cli", "train", *settings, "-o", str(straight)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    a = json.loads((straight / "checkpoint-12" / "state.json").read_text())
    b = json.loads((run / "checkpoint-12" / "state.json").read_text())
    assert [s for s, _ in b["losses"]] == list(range(1, 13))
    assert a["losses"] == b["losses"]
    assert a["step"] == b["step"] == 12 and a["images_seen"] == b["images_seen"]
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        wa, wb = load_file(straight / "checkpoint-12" / name), load_file(run / "checkpoint-12" / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


# --- the GPU-ready loop: LR schedules, minibatch OT, device RNG, deferred loss fetches, the edge preset ---


def test_lr_schedules_warm_up_then_reach_zero_at_the_last_step():
    from fm_edge.train import lr_factor

    total, warm = 100, 10
    for sched in ("constant", "cosine", "linear"):
        f = [lr_factor(s, total, warm, sched) for s in range(total)]
        assert f[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])  # linear warm-up to 1
        assert max(f) == pytest.approx(1.0)
        if sched == "constant":
            assert f[warm:] == [1.0] * (total - warm)
        else:
            assert f[-1] == 0.0 and f[-2] > 0  # zero exactly at the last step, not before
            assert all(a >= b for a, b in zip(f[warm - 1 :], f[warm:]))  # never rises after warm-up
    mid = warm - 1 + (total - warm + 1) // 2  # the decay's half-way point
    assert lr_factor(mid, total, warm, "linear") == pytest.approx(0.5, abs=0.02)
    assert lr_factor(mid, total, warm, "cosine") == pytest.approx(0.5, abs=0.03)
    # a warm-up longer than the run still ends at zero; no warm-up starts at full rate
    assert lr_factor(4, 5, 500, "cosine") == 0.0
    assert lr_factor(0, 100, 0, "linear") == pytest.approx(0.99)


def test_ot_pairing_is_a_deterministic_permutation_that_shortens_the_pairs():
    from fm_edge.flow import ot_pairing

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(200, 1, 8, 8, generator=g)  # 200 rows: two groups (128 + 72)
    x1 = torch.randn(200, 1, 8, 8, generator=g)
    j = ot_pairing(x0, x1)
    assert torch.equal(j, ot_pairing(x0, x1))
    assert sorted(j[:128].tolist()) == list(range(128)) and sorted(j[128:].tolist()) == list(range(128, 200))

    def mean_sq(a, b):
        return (a - b).pow(2).flatten(1).sum(1).mean().item()

    assert mean_sq(x0, x1[j]) < 0.95 * mean_sq(x0, x1)
    # the exact optimum: no swap of two partners lowers the cost
    d = torch.cdist(x0[:128].flatten(1), x1[:128].flatten(1)).pow(2)
    jj = j[:128]
    for a, b in [(0, 1), (5, 77), (30, 127)]:
        assert d[a, jj[a]] + d[b, jj[b]] <= d[a, jj[b]] + d[b, jj[a]] + 1e-4


def test_loss_draws_on_the_generator_device_in_the_old_order():
    """CPU runs keep the stream of earlier versions: noise, then t, then the label-dropout draws."""
    from fm_edge.flow import loss_fn

    seen = {}

    def model(xt, t, class_labels):
        seen.update(xt=xt, t=t, labels=class_labels)
        return type("Out", (), {"sample": torch.zeros_like(xt)})()

    x0 = torch.zeros(4, 1, 8, 8)
    loss_fn(model, x0, torch.arange(4), torch.Generator().manual_seed(3), "uniform", 0.5)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.rand(4, generator=g)
    drop = torch.rand(4, generator=g) < 0.5
    torch.testing.assert_close(seen["t"], t * 1000)
    torch.testing.assert_close(seen["xt"], t.view(-1, 1, 1, 1) * noise)
    assert torch.equal(seen["labels"], torch.where(drop, 10, torch.arange(4)))


def test_resume_is_bit_exact_with_schedule_ot_and_deferred_loss_fetches(tmp_path, tiny_data):
    from safetensors.torch import load_file

    kw = dict(
        max_steps=6, checkpoint_every=3, log_every=4, lr_schedule="cosine", ot_coupling=True, batch_size=8
    )
    straight = tmp_path / "straight"
    train(cfg(straight, tiny_data, **kw), progress=False)
    split = tmp_path / "split"
    train(cfg(split, tiny_data, **{**kw, "max_steps": 3}), progress=False)  # a shorter run: other schedule
    # resuming with the full length from checkpoint-3 of a run with the same settings is the straight run
    partial = tmp_path / "partial"
    shutil.copytree(straight / "checkpoint-3", partial / "checkpoint-3")
    train(cfg(partial, tiny_data, **kw), resume="latest", progress=False)
    a = json.loads((straight / "checkpoint-6" / "state.json").read_text())
    b = json.loads((partial / "checkpoint-6" / "state.json").read_text())
    assert [s for s, _ in a["losses"]] == [1, 2, 3, 4, 5, 6]  # every step logged despite log_every=4
    assert a["losses"] == b["losses"] and a["loss_ema"] == b["loss_ema"]
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        wa, wb = load_file(straight / "checkpoint-6" / name), load_file(partial / "checkpoint-6" / name)
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    # the schedule is wired in: after 3 of 6 cosine steps (warm-up 2) the rate is between 0 and the peak,
    # and it is 0 after the last step; the 3-step run decayed to 0 at its own end
    from fm_edge.checkpoint import optimizer_state

    lr_mid = optimizer_state(straight / "checkpoint-3")["param_groups"][0]["lr"]
    assert 0 < lr_mid < 2e-3
    assert lr_mid == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert optimizer_state(straight / "checkpoint-6")["param_groups"][0]["lr"] == 0.0
    assert optimizer_state(split / "checkpoint-3")["param_groups"][0]["lr"] == 0.0


def test_ot_coupling_changes_the_pairs_but_not_the_draws(tmp_path, tiny_data):
    base = dict(max_steps=2, checkpoint_every=2, batch_size=16)
    plain = json.loads(
        (
            train(cfg(tmp_path / "a", tiny_data, **base), progress=False).parent
            / "checkpoint-2"
            / "state.json"
        ).read_text()
    )
    ot = json.loads(
        (
            train(cfg(tmp_path / "b", tiny_data, **base, ot_coupling=True), progress=False).parent
            / "checkpoint-2"
            / "state.json"
        ).read_text()
    )
    assert plain["losses"][0][1] != ot["losses"][0][1]
    fm = json.loads((tmp_path / "b" / "model" / "fm_edge.json").read_text())
    assert fm["training"]["ot_coupling"] is True and fm["training"]["lr_schedule"] == "constant"


def test_digit_nets_loss_caps_the_weight_of_small_t():
    """A digit-drawing net's velocity error is its digit error / t; below t_floor the loss stops growing."""
    from fm_edge.flow import loss_fn

    def zero_velocity(xt, t, class_labels):
        return type("Out", (), {"sample": torch.zeros_like(xt)})()

    x0 = torch.zeros(64, 1, 4, 4)  # so the target velocity is the noise itself
    labels = torch.arange(64) % 10
    plain = loss_fn(zero_velocity, x0, labels, torch.Generator().manual_seed(5), "uniform", 0.0)
    floored = loss_fn(
        zero_velocity, x0, labels, torch.Generator().manual_seed(5), "uniform", 0.0, t_floor=0.5
    )
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(64, 1, 4, 4, generator=g)
    t = torch.rand(64, generator=g)
    torch.testing.assert_close(plain, noise.square().mean())
    scale = torch.where(t < 0.5, t / 0.5, torch.ones_like(t)).view(-1, 1, 1, 1)
    torch.testing.assert_close(floored, (noise * scale).square().mean())
    assert floored < plain and (t < 0.5).any() and (t >= 0.5).any()


def test_an_int8_built_net_trains_by_flow_matching_and_resumes(tmp_path, tiny_data):
    """``--preset tiny-digit-t``: the OneStepNet with a t plane learns the velocity field from data; the run
    resumes exactly, and its folder samples at any step count."""
    from safetensors.torch import load_file

    from fm_edge.backends import generate, torch_backend
    from fm_edge.flow import DIGIT_T_FLOOR

    straight = train(cfg(tmp_path / "straight", tiny_data, preset="tiny-digit-t"), progress=False)
    split = tmp_path / "split"
    train(cfg(split, tiny_data, preset="tiny-digit-t", max_steps=4), progress=False)
    train(cfg(split, tiny_data, preset="tiny-digit-t"), resume="latest", progress=False)
    a = json.loads((tmp_path / "straight" / "checkpoint-6" / "state.json").read_text())
    b = json.loads((split / "checkpoint-6" / "state.json").read_text())
    assert a["losses"] == b["losses"]
    wa, wb = (load_file(r / "checkpoint-6" / "ema.safetensors") for r in (tmp_path / "straight", split))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])
    model, fm = load(straight)
    assert type(model).__name__ == "OneStepNet" and model.config.time_input
    assert model.config.prediction == "digit" and fm["preset"] == "tiny-digit-t"
    assert fm["training"]["digit_t_floor"] == DIGIT_T_FLOOR
    assert "trained by flow matching from data" in (straight / "README.md").read_text()
    x, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 10])
    with torch.no_grad():
        assert not torch.allclose(model(x, 900.0, y).sample, model(x, 400.0, y).sample)  # t is an input
    backend = torch_backend(straight, num_threads=1)
    for steps in (1, 2, 4):
        images = generate(backend, [0, 7], dataclasses.replace(backend.sampler, steps=steps))
        assert images.shape == (2, 28, 28) and images.dtype == "uint8"


def test_edge_preset_is_attention_free():
    from fm_edge.model import PRESETS, build

    model = build("edge")
    names = {type(m).__name__ for m in model.modules()}
    assert "Attention" not in names and "Conv2d" in names
    assert PRESETS["edge"]["block_out_channels"] == (32, 64, 128)
    out = model(torch.zeros(2, 1, 32, 32), torch.tensor([0.0, 500.0]), class_labels=torch.tensor([3, 10]))
    assert out.sample.shape == (2, 1, 32, 32)


def test_train_speed_times_the_update_of_the_training_loop():
    """scripts/train_speed.py's step is fm-edge train's loss plus TrainingLoop.update: weights and EMA move."""
    import torch
    from conftest import load_script

    step = load_script("train_speed").make_step("tiny", "fp32", 4)
    before = [p.detach().clone() for p in step.model.parameters()]
    shadow = [s.clone() for s in step.ema.shadow_params]
    step()
    assert any(not torch.equal(a, p) for a, p in zip(before, step.model.parameters()))
    assert any(not torch.equal(a, s) for a, s in zip(shadow, step.ema.shadow_params))
    assert all(p.grad is None for p in step.model.parameters())  # the loop's zero_grad ran


def test_gpu_plan_sizes_the_run_from_the_probe_steady_rate(tmp_path):
    """scripts/gpu_plan.py (used by scripts/train_gpu.sh) reads the probe's last two checkpoints."""
    from conftest import load_script

    mod = load_script("gpu_plan")
    for step, secs in [(50, 9.0), (100, 10.0), (150, 12.0)]:  # slow first interval (autotuning) is ignored
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "state.json").write_text(json.dumps({"train_seconds": secs}))
    p = mod.plan(tmp_path, batch_size=512, seconds=300, train_images=60000, checkpoint_s=60, min_steps=200)
    assert p["images_per_s"] == 50 * 512 / 2  # 12,800 images/s between checkpoints 100 and 150
    assert p["steps"] == 300 * 25 and p["checkpoint_every"] == 60 * 25 and p["epochs"] == 64.0
    assert mod.plan(tmp_path, 512, 1, 60000, 60, min_steps=200)["steps"] == 200


def test_train_curve_refuses_bad_input_before_it_writes(tmp_path, tiny_ckpt, capsys):
    """scripts/train_curve.py: a folder that is not a finished run, a curve folder without ema-<step> copies, or
    -n 0 ends with a one-line error before any curve file is written."""
    from conftest import load_script

    from fm_edge.artifacts import FM_CONFIG

    mod = load_script("train_curve")
    name = "test-never-written"
    written = mod.ROOT / "docs" / "results" / f"{name}_curve.json"
    run, curve = tmp_path / "run", tmp_path / "curve"
    curve.mkdir()
    (curve / "ema-final.safetensors").write_bytes(b"")  # not an ema-<step> copy
    shutil.copytree(tiny_ckpt, run / "model")
    args = [str(run), "--curve", str(curve), "--name", name]
    with pytest.raises(SystemExit):
        mod.main(args)
    assert "not a finished train run" in capsys.readouterr().err  # the tiny checkpoint has no training record
    fm = json.loads((run / "model" / FM_CONFIG).read_text())
    fm["training"] = {"steps": 10, "images_seen": 40}
    (run / "model" / FM_CONFIG).write_text(json.dumps(fm))
    with pytest.raises(SystemExit, match="holds no ema-<step>.safetensors copies"):
        mod.main(args)
    with pytest.raises(SystemExit):
        mod.main([*args, "-n", "0"])
    assert "must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main([str(run), str(run), *args[1:]])
    assert "--curve needs one folder per run" in capsys.readouterr().err
    assert not written.exists()
