"""fm-edge distill: the student folder, one UNet call per image, exact resume after a kill, the student's
sampler.onnx (one network evaluation, cfg_scale ignored) and bad settings."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fm_edge.artifacts import FM_CONFIG, onnx_metadata, weights_hash
from fm_edge.distill import DistillConfig, distill
from fm_edge.errors import FmEdgeError, UsageError
from fm_edge.sampler_spec import SamplerSpec


def cfg(tmp_path, teacher, **kw):
    base = dict(
        teacher=str(teacher),
        output_dir=str(tmp_path),
        method="pairs",
        cfg_scale=1.5,
        pairs=24,
        batch_size=8,
        max_steps=4,
        checkpoint_every=2,
        keep_checkpoints=5,
        num_threads=1,
        device="cpu",
    )
    return DistillConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def student(tiny_ckpt, tmp_path_factory):
    return distill(cfg(tmp_path_factory.mktemp("student"), tiny_ckpt), progress=False)


def test_student_folder_is_a_checkpoint_with_the_distilled_sampler(student, tiny_ckpt):
    from fm_edge.model import load

    model, fm = load(student)
    teacher, _ = load(tiny_ckpt)
    same = {k: v for k, v in model.config.items() if k != "_name_or_path"}
    assert same == {k: v for k, v in teacher.config.items() if k != "_name_or_path"}  # the same UNet
    assert fm["preset"] == "tiny"
    assert fm["sampler"] == {
        "solver": "euler",
        "steps": 1,
        "cfg_scale": 1.0,
        "shift": 1.0,
        "guidance": "distilled",
        "distilled_cfg_scale": 1.5,
    }
    d = fm["distillation"]
    assert d["method"] == "pairs" and d["pairs"] == 24 and d["steps"] == 4
    assert d["pairs_backend"] == "torch"  # the tiny teacher has no onnx/ export
    assert d["pairs_quality"] is None  # 24 pairs: too few of each digit for a balanced FD
    assert d["teacher_sha256"] == weights_hash(tiny_ckpt)
    assert d["teacher_sampler"] == {"solver": "heun", "steps": 3, "cfg_scale": 1.5, "shift": 1.0}
    assert (student / "README.md").read_text().startswith("---\n")
    assert sorted(p.name for p in (student.parent / "pairs").iterdir()) == ["chunk-00000.npz"]
    assert not [p for p in student.parent.iterdir() if p.name.startswith(".")]
    # the weights moved away from the teacher's (the student was trained)
    sd, td = model.state_dict(), teacher.state_dict()
    assert any(not torch.equal(sd[k], td[k]) for k in sd)


def test_student_samples_with_one_unet_call_of_batch_size_rows(student):
    from fm_edge.backends import generate, torch_backend

    backend = torch_backend(student, num_threads=1)
    rows = []
    backend.info["module"].register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    images = generate(backend, np.arange(5) % 10, backend.sampler)
    assert images.shape == (5, 28, 28) and images.dtype == np.uint8
    assert rows == [5]  # one call, no doubled CFG batch: 1 network evaluation per image


def test_pairs_are_the_teachers_guided_samples(student, tiny_ckpt):
    from fm_edge.backends import generate, torch_backend

    with np.load(student.parent / "pairs" / "chunk-00000.npz") as z:
        x1, labels, x0 = z["x1"], z["labels"], z["x0"]
    assert set(labels.tolist()) <= set(range(11)) and len(labels) == 24
    ref = generate(torch_backend(tiny_ckpt), labels[:4], SamplerSpec("heun", 3, 1.5), noise=x1[:4], raw=True)
    np.testing.assert_allclose(x0[:4], ref, atol=1e-5)


def test_pairs_come_from_the_teachers_onnx_export_when_it_matches(tiny_ckpt, tmp_path):
    import shutil

    from fm_edge.backends import generate, onnx_backend, torch_backend
    from fm_edge.export.command import export

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_ckpt, teacher)
    export(teacher, teacher / "onnx", num_threads=1, log=io.StringIO())
    folder = distill(cfg(tmp_path / "run", teacher, max_steps=2), progress=False)
    assert json.loads((folder / FM_CONFIG).read_text())["distillation"]["pairs_backend"] == "onnx"
    with np.load(tmp_path / "run" / "pairs" / "chunk-00000.npz") as z:
        x1, labels, x0 = z["x1"][:4], z["labels"][:4], z["x0"][:4]
    spec = SamplerSpec("heun", 3, 1.5)
    ort = generate(onnx_backend(teacher / "onnx" / "velocity.onnx", 1), labels, spec, noise=x1, raw=True)
    np.testing.assert_array_equal(x0, ort)
    ref = generate(torch_backend(tiny_ckpt), labels, spec, noise=x1, raw=True)
    np.testing.assert_allclose(x0, ref, atol=1e-4)  # the same teacher, to float rounding

    # a run that reads these pairs back from its cache still says ORT made them
    shutil.copytree(tmp_path / "run" / "pairs", tmp_path / "again" / "pairs")
    folder = distill(cfg(tmp_path / "again", teacher, max_steps=1), progress=False)
    assert json.loads((folder / FM_CONFIG).read_text())["distillation"]["pairs_backend"] == "onnx"
    # a chunk cached before chunks named their backend is read back and called "unrecorded"
    chunk = tmp_path / "old" / "pairs" / "chunk-00000.npz"
    chunk.parent.mkdir(parents=True)
    with np.load(tmp_path / "run" / "pairs" / "chunk-00000.npz") as z:
        np.savez(chunk, **{k: z[k] for k in z.files if k != "backend"})
    folder = distill(cfg(tmp_path / "old", teacher, max_steps=1), progress=False)
    assert json.loads((folder / FM_CONFIG).read_text())["distillation"]["pairs_backend"] == "unrecorded"
    with np.load(chunk) as z:
        assert "backend" not in z.files  # read back, not made again


def test_progressive_halves_the_teacher_grid(tiny_ckpt, tmp_path):
    c = cfg(tmp_path, tiny_ckpt, method="progressive", teacher_steps=4, teacher_solver="euler", max_steps=4)
    folder = distill(c, progress=False)
    fm = json.loads((folder / FM_CONFIG).read_text())
    assert fm["distillation"]["rounds"] == [4, 2, 1]
    assert fm["sampler"]["steps"] == 1 and fm["sampler"]["guidance"] == "distilled"
    assert (tmp_path / "rounds" / "round-1.safetensors").is_file()  # round 2's teacher, kept for resumes


def test_progressive_interrupted_after_the_round_change_resumes_exactly(tiny_ckpt, tmp_path, monkeypatch):
    from conftest import interrupt_at_call

    import fm_edge.distill as d

    settings = dict(method="progressive", teacher_steps=4, teacher_solver="euler", max_steps=8)
    straight = distill(cfg(tmp_path / "straight", tiny_ckpt, **settings), progress=False)
    # round 2 began at step 5; checkpoint-6 is the last complete one
    real = interrupt_at_call(monkeypatch, d, "progressive_loss", 7)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg(tmp_path / "split", tiny_ckpt, **settings), progress=False)
    monkeypatch.setattr(d, "progressive_loss", real)
    split = distill(cfg(tmp_path / "split", tiny_ckpt, **settings), resume="latest", progress=False)
    _assert_same_run(straight.parent, split.parent, 8)


def _assert_same_run(a, b, step):
    from safetensors.torch import load_file

    sa = json.loads((a / f"checkpoint-{step}" / "state.json").read_text())
    sb = json.loads((b / f"checkpoint-{step}" / "state.json").read_text())
    assert [s for s, _ in sb["losses"]] == list(range(1, step + 1))
    assert sa["losses"] == sb["losses"]
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        wa, wb = load_file(a / f"checkpoint-{step}" / name), load_file(b / f"checkpoint-{step}" / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    ma, mb = (
        load_file(a / "model" / "diffusion_pytorch_model.safetensors"),
        load_file(b / "model" / "diffusion_pytorch_model.safetensors"),
    )
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=0, atol=0)


# `fm-edge distill` that writes a marker file and waits to be SIGKILLed inside step n (as in test_train.py)
KILLABLE = """
import pathlib, sys, time
import fm_edge.distill as d
from fm_edge.cli import main
marker, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
real, steps = d.pairs_loss, []
def loss(*a, **k):
    steps.append(1)
    if len(steps) == n:
        marker.write_text(f"in step {n}")
        time.sleep(600)
    return real(*a, **k)
d.pairs_loss = loss
sys.exit(main(sys.argv[3:]))
"""


def test_sigkill_then_resume_gives_the_uninterrupted_run(tiny_ckpt, tmp_path):
    from conftest import sigkill_at_marker

    run = tmp_path / "run"
    argv = [
        "distill",
        "--method",
        "pairs",
        "--teacher",
        str(tiny_ckpt),
        "--cfg-scale",
        "1.5",
        "--pairs",
        "24",
        "--batch-size",
        "8",
    ]
    argv += ["--max-steps", "6", "--checkpoint-every", "2", "--num-threads", "1", "--device", "cpu"]
    marker = tmp_path / "marker"
    cmd = [sys.executable, "-c", KILLABLE, str(marker), "5", *argv, "-o", str(run), "--resume", "latest"]
    sigkill_at_marker(cmd, marker, "step 5")
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (run / "model").exists()
    chunk = run / "pairs" / "chunk-00000.npz"
    written = chunk.stat().st_mtime_ns
    r = subprocess.run(
        [sys.executable, "-m", "fm_edge.cli", *argv, "-o", str(run), "--resume", "latest"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr and "checkpoint-4" in r.stderr
    assert chunk.stat().st_mtime_ns == written  # the cached pairs were read back, not regenerated
    straight = distill(cfg(tmp_path / "straight", tiny_ckpt, max_steps=6), progress=False)
    _assert_same_run(straight.parent, run, 6)


def test_exported_student_runs_one_network_evaluation_and_matches_python(student, tmp_path):
    import onnx

    from fm_edge.backends import generate, make_noise, torch_backend
    from fm_edge.export.command import export
    from fm_edge.runtime import OnnxSampler

    paths = export(student, tmp_path / "onnx", num_threads=1, log=io.StringIO())
    meta = onnx_metadata(paths["sampler"])
    assert meta["nfe"] == "1" and meta["network_evals_per_image"] == "1"
    assert meta["guidance"] == "distilled" and meta["distilled_cfg_scale"] == "1.5"
    graph = onnx.load(str(paths["sampler"]))
    assert [n.op_type for n in graph.graph.node].count("velocity") == 1
    assert "Concat" not in {n.op_type for n in graph.graph.node}  # no doubled batch
    noise, labels = make_noise(12, 3), np.arange(12) % 11
    sampler = OnnxSampler(paths["sampler"], num_threads=1)
    out = sampler(noise, labels)
    ref = generate(torch_backend(student), labels, SamplerSpec("euler", 1, 1.0), noise=noise)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    np.testing.assert_array_equal(sampler(noise, labels, 7.0), out)  # cfg_scale is ignored


def test_teacher_sampler_metadata_counts_both_guidance_rows(tiny_onnx):
    meta = onnx_metadata(tiny_onnx / "sampler.onnx")
    assert meta["guidance"] == "cfg"
    assert meta["nfe"] == "5"  # heun x 3: velocity calls (2 + 2 + 1), as before
    assert meta["network_evals_per_image"] == "10"  # each call runs the conditional and unconditional row


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(method="consistency"), "unknown method 'consistency'"),
        (dict(cfg_scale=25.0), "cfg scale 25"),
        (dict(cfg_scale=float("nan")), "cfg scale nan"),
        (dict(pairs=0), "--pairs must be >= 1"),
        (dict(student_steps=3), "--student-steps must be 1 or 2"),
        (dict(lr=-1.0), "--lr"),
        (dict(warmup_steps=-1), "--warmup-steps must be >= 0 and below --max-steps"),
        (dict(warmup_steps=4), "--warmup-steps must be >= 0 and below --max-steps"),
        (dict(device="tpu"), "--device 'tpu' is unknown"),
        (dict(teacher_solver="rk4"), "unknown teacher solver 'rk4'"),
        (dict(method="progressive", teacher_solver="heun", teacher_steps=4), "--teacher-solver euler"),
        (dict(method="progressive", teacher_solver="euler", teacher_steps=3), "power of 2"),
        (dict(method="progressive", teacher_solver="euler", teacher_steps=2, student_steps=2), "power of 2"),
    ],
)
def test_bad_settings_are_one_usage_error_and_write_nothing(kw, match, tiny_ckpt, tmp_path):
    with pytest.raises(UsageError, match=match):
        distill(cfg(tmp_path / "out", tiny_ckpt, **kw), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_student_or_a_non_checkpoint_is_no_teacher(student, tmp_path):
    with pytest.raises(UsageError, match="is itself a distilled student"):
        distill(cfg(tmp_path / "out", student), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        distill(cfg(tmp_path / "out", tmp_path / "empty"), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_fresh_run_into_an_earlier_runs_folder_is_refused(student, tiny_ckpt, capsys):
    """Without --resume it would delete the earlier run's checkpoints as it saved its own."""
    from fm_edge.cli import main

    kept = sorted(p.name for p in student.parent.glob("checkpoint-*"))
    argv = ["distill", "--method", "pairs", "--teacher", str(tiny_ckpt), "--cfg-scale", "1.5"]
    argv += ["--pairs", "24", "--batch-size", "8", "--max-steps", "4", "-o", str(student.parent)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --resume latest to continue it" in err
    assert sorted(p.name for p in student.parent.glob("checkpoint-*")) == kept and kept


def test_resume_with_other_settings_is_refused(student, tiny_ckpt):
    with pytest.raises(UsageError, match="student_steps=1"):
        distill(cfg(student.parent, tiny_ckpt, student_steps=2), resume="latest", progress=False)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tiny_ckpt, tmp_path, monkeypatch):
    import fm_edge.distill as d

    real = d.pairs_loss
    monkeypatch.setattr(d, "pairs_loss", lambda *a: real(*a) * float("nan"))
    with pytest.raises(FmEdgeError, match="loss is nan at step 1"):
        distill(cfg(tmp_path, tiny_ckpt), progress=False)
    assert not (tmp_path / "model").exists()


def test_sampler_graph_follows_the_guidance_in_the_metadata(tiny_onnx):
    """The int8 pipeline rebuilds sampler_int8.onnx from sampler.onnx's metadata: guidance travels with it."""
    import onnx

    from fm_edge.export.sampler_graph import build_sampler

    velocity = onnx.load(str(tiny_onnx / "velocity.onnx"))
    student = build_sampler(velocity, "euler", 2, 1.0, {"guidance": "distilled"})
    teacher = build_sampler(velocity, "euler", 2, 1.0, {})
    ops = [n.op_type for n in student.graph.node]
    assert ops.count("velocity") == 2 and "Concat" not in ops
    assert "Concat" in [n.op_type for n in teacher.graph.node]
    with pytest.raises(UsageError, match="unknown guidance 'cfg2'"):
        build_sampler(velocity, "euler", 2, 1.0, {}, guidance="cfg2")


def test_two_step_times_put_mass_on_the_student_grid():
    from fm_edge.distill import sample_times

    t = sample_times(4000, 2, 0.5, torch.Generator().manual_seed(0))
    assert 0.2 < (t == 1.0).float().mean() < 0.3 and 0.2 < (t == 0.5).float().mean() < 0.3
    assert ((t > 0) & (t <= 1)).all()


def test_two_step_student_runs_two_unet_calls(tiny_ckpt, tmp_path):
    from fm_edge.backends import generate, torch_backend

    folder = distill(cfg(tmp_path, tiny_ckpt, student_steps=2, max_steps=2), progress=False)
    backend = torch_backend(folder, num_threads=1)
    assert backend.sampler.steps == 2 and backend.sampler.cfg_scale == 1.0
    rows = []
    backend.info["module"].register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    generate(backend, np.arange(3), backend.sampler)
    assert rows == [3, 3]


def test_average_weights_script_interpolates_and_records_both_parents(tiny_ckpt, tmp_path):
    """scripts/average_weights.py: (1 - w) A + w B per parameter, B's folder and record plus both hashes and
    A's record; another architecture, a weight outside [0, 1] or an existing output folder are refused."""
    import shutil

    from conftest import load_script
    from safetensors.torch import load_file, save_file

    from fm_edge.artifacts import WEIGHTS

    mod = load_script("average_weights")
    b = tmp_path / "b"
    shutil.copytree(tiny_ckpt, b)
    fm = json.loads((b / "fm_edge.json").read_text())
    fm["training"] = {"seed": 7}
    (b / "fm_edge.json").write_text(json.dumps(fm))
    fm["training"] = {"seed": 3}
    a = tmp_path / "a"
    shutil.copytree(tiny_ckpt, a)
    (a / "fm_edge.json").write_text(json.dumps(fm))
    wa = load_file(tiny_ckpt / WEIGHTS)
    save_file({k: v + 1.0 for k, v in wa.items()}, b / WEIGHTS)
    out = mod.average(a, b, 0.25, tmp_path / "soup")
    soup = load_file(out / WEIGHTS)
    assert all(torch.allclose(soup[k], wa[k] + 0.25) for k in wa)
    training = json.loads((out / "fm_edge.json").read_text())["training"]
    rec = training["weight_average"]
    assert rec["a_sha256"] == weights_hash(tiny_ckpt) and rec["b_sha256"] == weights_hash(b)
    assert rec["b_weight"] == 0.25
    assert training["seed"] == 7 and rec["a_record"] == {"seed": 3}  # B's record, and A's beside it
    fm["training"] = {}  # an empty record is still the record: the average goes into it, not to the top level
    (b / "fm_edge.json").write_text(json.dumps(fm))
    empty = json.loads((mod.average(a, b, 0.5, tmp_path / "soup2") / "fm_edge.json").read_text())
    assert "weight_average" in empty["training"] and "weight_average" not in empty
    with pytest.raises(UsageError, match="exists"):
        mod.average(tiny_ckpt, b, 0.25, tmp_path / "soup")
    with pytest.raises(UsageError, match="not in"):
        mod.average(tiny_ckpt, b, 1.5, tmp_path / "x")
    config = json.loads((b / "config.json").read_text())
    config["layers_per_block"] = 2
    (b / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="different config.json"):
        mod.average(tiny_ckpt, b, 0.5, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    (b / "config.json").write_text((tiny_ckpt / "config.json").read_text())
    # a config.json written before a key existed: the class default fills it in, so the pair still averages
    config = json.loads((tiny_ckpt / "config.json").read_text())
    dropped = next(k for k in ("act_fn", "norm_eps", "time_embedding_type") if k in config)
    del config[dropped]
    (b / "config.json").write_text(json.dumps(config))
    assert (mod.average(tiny_ckpt, b, 0.5, tmp_path / "older") / WEIGHTS).is_file()
    (b / "config.json").write_text((tiny_ckpt / "config.json").read_text())
    (b / "fm_edge.json").unlink()
    with pytest.raises(UsageError, match="no fm_edge.json"):
        mod.average(tiny_ckpt, b, 0.5, tmp_path / "z")
    assert not (tmp_path / "z").exists() and not list(tmp_path.glob(".z*"))


def test_pairs_quality_scores_a_class_balanced_subset(tiny_data):
    """The pairs' own quality, before a run trains on them: real digits read as real digits on the evaluator
    (FD of a balanced subset, label accuracy near 1), noise reads far worse, and too few pairs of any digit
    give nothing rather than a figure from an unbalanced set."""
    from fm_edge.convention import encode_uint8
    from fm_edge.data import load_split
    from fm_edge.distill import pairs_quality
    from fm_edge.evaluate import evaluate_images

    images, labels = load_split(tiny_data, "train")
    k = int(np.bincount(labels, minlength=10).min())
    real = pairs_quality(labels, encode_uint8(images), per_class=k, min_per_class=k)
    idx = np.concatenate([np.flatnonzero(labels == d)[:k] for d in range(10)])
    want = evaluate_images(images[idx], labels[idx])
    assert real["n"] == 10 * k and real["fd"] == pytest.approx(want["fd"], abs=1e-3)
    assert real["label_accuracy"] > 0.9
    noise = np.random.default_rng(0).uniform(-1, 1, (len(labels), 1, 32, 32)).astype(np.float32)
    assert pairs_quality(labels, noise, per_class=k, min_per_class=k)["fd"] > 5 * real["fd"]
    assert pairs_quality(labels, encode_uint8(images), min_per_class=k + 1) is None
    assert pairs_quality(np.where(labels == 3, 10, labels), encode_uint8(images), min_per_class=1) is None
