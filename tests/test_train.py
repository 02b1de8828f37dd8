"""Training: checkpoints, exact resume, the inference folder, NaN handling, bad data, Accelerate multi-process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fm_edge.errors import FmEdgeError, UsageError
from fm_edge.model import load
from fm_edge.train import TrainConfig, latest_checkpoint, train


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
    import time

    marker = tmp_path / f"marker-{point}-{n}"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(marker), point, str(n), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {point} {n}: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"never reached {point} {n}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
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
