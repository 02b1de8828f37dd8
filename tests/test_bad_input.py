"""The bad-input suite: every case is a real CLI call with one bad value.

Each case must give exactly one ``fm-edge CMD: error: ...`` line naming the bad value, the documented exit
code (2 for usage, 1 for failed work), no traceback, and must leave every file in the workspace (good
artifacts the command would overwrite, and the bad inputs themselves) byte-identical, with no temporary
file left behind.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fm_edge.cli import main


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (hidden temporaries included)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_ckpt, tiny_onnx, tiny_data):
    """A workspace of good artifacts (which failed commands target) and bad inputs."""
    root = tmp_path_factory.mktemp("ws")
    shutil.copytree(tiny_ckpt, root / "ckpt")
    shutil.copytree(tiny_onnx, root / "onnx")
    args = ["--model", str(root / "ckpt"), "--num-samples", "8", "--seed", "1"]
    assert main(["sample", *args, "-o", str(root / "out" / "samples.npz")]) == 0
    assert main(["sample", *args, "-o", str(root / "out" / "samples.png")]) == 0
    run = ["--preset", "tiny", "--data", tiny_data, "--limit", "32", "--batch-size", "8"]
    assert main(["train", *run, "-o", str(root / "run"), "--max-steps", "2", "--checkpoint-every", "1"]) == 0

    bad = root / "bad"
    bad.mkdir()
    # checkpoints: truncated weights, corrupt config.json
    for name, broken in (("truncated", "diffusion_pytorch_model.safetensors"), ("badconfig", "config.json")):
        shutil.copytree(tiny_ckpt, bad / name)
        (bad / name / broken).write_bytes(
            (tiny_ckpt / broken).read_bytes()[: 200 if "safe" in broken else 30]
        )
    # a checkpoint whose weights file holds other names (an EMA copy from a training checkpoint, say)
    from safetensors.numpy import load_file, save_file

    shutil.copytree(tiny_ckpt, bad / "foreign")
    weights = bad / "foreign" / "diffusion_pytorch_model.safetensors"
    save_file({f"shadow.{i}": v for i, v in enumerate(load_file(weights).values())}, weights)
    # a training checkpoint whose EMA file is cut short
    shutil.copytree(root / "run" / "checkpoint-2", bad / "checkpoint-2")
    ema = bad / "checkpoint-2" / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:100])
    # ONNX files: truncated, random bytes, empty
    velocity = (tiny_onnx / "velocity.onnx").read_bytes()
    (bad / "truncated.onnx").write_bytes(velocity[: len(velocity) // 2])
    (bad / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (bad / "empty.onnx").write_bytes(b"")
    # samples: not an npz, wrong shape, labels out of range, float images with NaN
    (bad / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    for name, images, labels in (
        ("shape.npz", np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.int64)),
        ("labels.npz", np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 11])),
        ("nan.npz", np.full((4, 28, 28), np.nan, np.float32), np.zeros(4, np.int64)),
    ):
        np.savez(bad / name, images=images, labels=labels)
    # a dataset folder in the hub layout, but with the wrong columns
    import datasets

    (bad / "columns" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"pixels": [[0] * 4] * 3, "digit": [1, 2, 3]}).to_parquet(
        str(bad / "columns" / "data" / "train-00000-of-00001.parquet")
    )
    (bad / "a_file").write_text("not a folder")
    # a distilled student (its fm_edge.json says so), which is no teacher for fm-edge distill
    shutil.copytree(tiny_ckpt, bad / "student")
    fm = json.loads((bad / "student" / "fm_edge.json").read_text())
    fm["sampler"].update(cfg_scale=1.0, guidance="distilled", distilled_cfg_scale=1.5)
    (bad / "student" / "fm_edge.json").write_text(json.dumps(fm))
    return root


SAMPLE = ["sample", "--model", "{ws}/ckpt", "-o", "{ws}/out/samples.npz", "--num-samples", "4"]
ONNX_SAMPLE = ["sample", "--backend", "onnx", "-o", "{ws}/out/samples.npz", "--num-samples", "4"]
EXPORT = ["export", "--model", "{ws}/ckpt", "-o", "{ws}/onnx"]
TRAIN = [
    "train",
    "--preset",
    "tiny",
    "--data",
    "{data}",
    "--limit",
    "32",
    "--batch-size",
    "8",
    "-o",
    "{ws}/run",
]
BENCH = ["bench", "--model", "{ws}/ckpt", "--onnx-dir", "{ws}/onnx", "-o", "{ws}/out"]
DISTILL = ["distill", "--teacher", "{ws}/ckpt", "-o", "{ws}/run", "--pairs", "8", "--max-steps", "1"]

# (id, argv, exit code, words the error line must contain)
CASES = [
    # sampling settings
    ("steps-0", SAMPLE + ["--steps", "0"], 2, ["steps=0"]),
    ("steps-negative", SAMPLE + ["--steps", "-1"], 2, ["steps=-1"]),
    ("steps-million", SAMPLE + ["--steps", "1000000"], 2, ["steps=1000000", "1024"]),
    ("label-negative", SAMPLE + ["--label", "-1"], 2, ["label -1", "0-9"]),
    ("label-11", SAMPLE + ["--label", "11"], 2, ["label 11", "0-9"]),
    ("cfg-nan", SAMPLE + ["--cfg-scale", "nan"], 2, ["cfg scale nan", "20"]),
    ("cfg-inf", SAMPLE + ["--cfg-scale", "inf"], 2, ["cfg scale inf", "20"]),
    ("cfg-huge", SAMPLE + ["--cfg-scale", "1e9"], 2, ["1000000000", "20"]),
    ("shift-0", SAMPLE + ["--shift", "0"], 2, ["shift", "0"]),
    ("solver-unknown", SAMPLE + ["--solver", "rk5"], 2, ["'rk5'", "euler"]),
    ("backend-unknown", SAMPLE + ["--backend", "tensorrt"], 2, ["'tensorrt'", "onnx"]),
    ("num-samples-0", SAMPLE + ["--num-samples", "0"], 2, ["--num-samples", ">= 1"]),
    ("batch-size-0", SAMPLE + ["--batch-size", "0"], 2, ["batch size", ">= 1"]),
    (
        "output-suffix",
        ["sample", "--model", "{ws}/ckpt", "-o", "{ws}/out/samples.jpg"],
        2,
        ["samples.jpg", ".npz"],
    ),
    ("output-under-a-file", ["sample", "--model", "{ws}/ckpt", "-o", "{ws}/bad/a_file/s.npz"], 2, ["a_file"]),
    # checkpoints and ONNX files
    (
        "checkpoint-missing",
        ["sample", "--model", "{ws}/nope", "-o", "{ws}/out/samples.npz"],
        2,
        ["nope", "folder"],
    ),
    (
        "safetensors-truncated",
        ["sample", "--model", "{ws}/bad/truncated", "-o", "{ws}/out/samples.npz"],
        1,
        ["truncated", "could not be loaded"],
    ),  # fmt: skip
    (
        "safetensors-foreign-names",
        ["sample", "--model", "{ws}/bad/foreign", "-o", "{ws}/out/samples.npz"],
        1,
        ["foreign", "no weights for", "conv_in"],
    ),  # fmt: skip
    (
        "config-corrupt",
        ["sample", "--model", "{ws}/bad/badconfig", "-o", "{ws}/out/samples.npz"],
        1,
        ["badconfig", "could not be loaded"],
    ),  # fmt: skip
    (
        "onnx-truncated",
        ONNX_SAMPLE + ["--model", "{ws}/bad/truncated.onnx"],
        1,
        ["truncated.onnx", "not a valid ONNX"],
    ),
    (
        "onnx-random-bytes",
        ONNX_SAMPLE + ["--model", "{ws}/bad/random.onnx"],
        1,
        ["random.onnx", "not a valid ONNX"],
    ),
    ("onnx-empty", ONNX_SAMPLE + ["--model", "{ws}/bad/empty.onnx"], 1, ["empty.onnx", "not a valid ONNX"]),
    ("onnx-wrong-inputs", ONNX_SAMPLE + ["--model", "{ws}/onnx/sampler.onnx"], 2, ["sampler.onnx", "inputs"]),
    ("onnx-missing", ONNX_SAMPLE + ["--model", "{ws}/nope.onnx"], 2, ["nope.onnx", "not a file"]),
    # export
    ("export-opset-21", EXPORT + ["--opset", "21"], 2, ["opset 21", "17"]),
    ("export-sampler-steps-0", EXPORT + ["--sampler-steps", "0"], 2, ["steps=0"]),
    ("export-solver-unknown", EXPORT + ["--solver", "dopri5"], 2, ["'dopri5'"]),
    (
        "export-checkpoint-truncated",
        ["export", "--model", "{ws}/bad/truncated", "-o", "{ws}/onnx"],
        1,
        ["truncated", "could not be loaded"],
    ),  # fmt: skip
    ("export-int8-calibration-too-small", EXPORT + ["--int8", "--calib-samples", "1"], 2, ["calib", "1"]),
    ("export-int8-recipe-unknown", EXPORT + ["--int8", "--int8-recipe", "int4"], 2, ["'int4'", "vnni"]),
    ("export-int8-tolerance-negative", EXPORT + ["--int8", "--tolerance", "-0.5"], 2, ["tolerance", "-0.5"]),
    # training
    ("train-data-wrong-columns", TRAIN + ["--data", "{ws}/bad/columns"], 2, ["columns", "image", "label"]),
    ("train-data-missing", TRAIN + ["--data", "{ws}/bad/nothing_here"], 2, ["nothing_here", "not a folder"]),
    ("train-preset-unknown", TRAIN + ["--preset", "huge"], 2, ["'huge'", "compact"]),
    ("train-preset-no-time", TRAIN + ["--preset", "s2-32-64-digit"], 2, ["time input", "s2-32-64-digit-t"]),
    ("train-lr-nan", TRAIN + ["--lr", "nan"], 2, ["--lr", "nan"]),
    ("train-batch-size-0", TRAIN + ["--batch-size", "0"], 2, ["--batch-size", "0"]),
    ("train-label-dropout", TRAIN + ["--label-dropout", "1.5"], 2, ["--label-dropout", "1.5"]),
    ("train-time-sampling", TRAIN + ["--time-sampling", "beta"], 2, ["'beta'", "uniform"]),
    ("train-lr-schedule", TRAIN + ["--lr-schedule", "step"], 2, ["'step'", "cosine"]),
    ("train-log-every-0", TRAIN + ["--log-every", "0"], 2, ["--log-every", "0"]),
    ("train-warmup-negative", TRAIN + ["--warmup-steps", "-1"], 2, ["--warmup-steps", "-1"]),
    ("train-ema-decay", TRAIN + ["--ema-decay", "1.5"], 2, ["--ema-decay", "1.5"]),
    ("train-resume-missing", TRAIN + ["--resume", "{ws}/run/checkpoint-99"], 2, ["checkpoint-99"]),
    (
        "train-resume-corrupt",
        TRAIN + ["--resume", "{ws}/bad/checkpoint-2", "--max-steps", "3"],
        1,
        ["checkpoint-2", "could not be resumed"],
    ),  # fmt: skip
    # evaluate
    ("evaluate-missing", ["evaluate", "{ws}/out/nope.npz"], 2, ["nope.npz"]),
    ("evaluate-not-npz", ["evaluate", "{ws}/bad/garbage.npz"], 2, ["garbage.npz"]),
    ("evaluate-wrong-shape", ["evaluate", "{ws}/bad/shape.npz"], 2, ["32, 32", "28"]),
    ("evaluate-labels-11", ["evaluate", "{ws}/bad/labels.npz"], 2, ["11"]),
    (
        "evaluate-nan-images",
        ["evaluate", "{ws}/bad/nan.npz", "--json", "{ws}/out/report.json"],
        2,
        ["float32"],
    ),
    # bench
    ("bench-backend-unknown", BENCH + ["--backends", "torch-fp32,tpu"], 2, ["'tpu'", "ort-fp32"]),
    ("bench-nfe-0", BENCH + ["--nfe", "0"], 2, ["--nfe", "'0'", ">= 1"]),
    ("bench-batch-sizes-text", BENCH + ["--batch-sizes", "one"], 2, ["--batch-sizes", "'one'"]),
    # --device (CI has no CUDA: asking for it is refused in one line that names CUDA)
    (
        "sample-student-cfg",
        ["sample", "--model", "{ws}/bad/student", "-o", "{ws}/out/samples.npz", "--cfg-scale", "2"],
        2,
        ["--cfg-scale 2", "distilled"],
    ),
    ("sample-device-unknown", SAMPLE + ["--device", "tpu"], 2, ["--device 'tpu'", "cuda"]),
    ("sample-device-cuda", SAMPLE + ["--device", "cuda"], 2, ["--device cuda", "CUDA"]),
    ("sample-onnx-on-a-folder", SAMPLE + ["--backend", "onnx"], 2, ["ckpt", "onnx/", "fm-edge export"]),
    ("evaluate-device-cuda", ["evaluate", "{ws}/out/samples.npz", "--device", "cuda"], 2, ["CUDA"]),
    ("evaluate-a-grid", ["evaluate", "{ws}/out/samples.png"], 2, ["samples.png", "grid", ".npz"]),
    ("bench-device-cuda", BENCH + ["--device", "cuda"], 2, ["--device cuda", "CUDA"]),
    ("demo-device-unknown", ["demo", "--model", "{ws}/onnx", "--device", "gpu"], 2, ["--device 'gpu'"]),
    # demo (the server is never started)
    ("demo-queue-size-0", ["demo", "--model", "{ws}/onnx", "--queue-size", "0"], 2, ["queue size", "got 0"]),
    ("demo-port-out-of-range", ["demo", "--model", "{ws}/onnx", "--port", "70000"], 2, ["--port", "70000"]),
    ("demo-model-missing", ["demo", "--model", "{ws}/bad/nothing_here"], 2, ["nothing_here"]),
    (
        "demo-student-missing",
        ["demo", "--model", "{ws}/onnx", "--student", "{ws}/bad/nothing_here"],
        2,
        ["--student", "nothing_here"],
    ),
    # distill
    ("distill-method-unknown", DISTILL + ["--method", "consistency"], 2, ["'consistency'", "pairs"]),
    ("distill-cfg-out-of-range", DISTILL + ["--cfg-scale", "25"], 2, ["cfg scale 25", "20"]),
    ("distill-pairs-0", DISTILL + ["--pairs", "0"], 2, ["--pairs", ">= 1"]),
    ("distill-student-steps-4", DISTILL + ["--student-steps", "4"], 2, ["--student-steps", "1 or 2", "4"]),
    ("distill-device-unknown", DISTILL + ["--device", "tpu"], 2, ["'tpu'", "cuda"]),
    ("distill-teacher-a-file", DISTILL + ["--teacher", "{ws}/bad/a_file"], 2, ["a_file", "not a folder"]),
    ("distill-teacher-not-a-checkpoint", DISTILL + ["--teacher", "{ws}/onnx"], 2, ["onnx", "config.json"]),
    (
        "distill-teacher-is-a-student",
        DISTILL + ["--teacher", "{ws}/bad/student"],
        2,
        ["student", "distilled"],
    ),
    (
        "distill-progressive-steps",
        DISTILL + ["--method", "progressive", "--teacher-solver", "euler", "--teacher-steps", "3"],
        2,
        ["--teacher-steps 3", "power of 2"],
    ),
]


def fill(argv, ws, data):
    return [a.format(ws=ws, data=data) for a in argv]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line.lower() or "Traceback" in line]


@pytest.mark.parametrize("argv, code, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(argv, code, words, ws, tiny_data, capsys, monkeypatch):
    monkeypatch.delenv("FM_EDGE_DEBUG", raising=False)
    if "cuda" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA: --device cuda is not bad input here")
    before = snapshot(ws)
    rc = main(fill(argv, ws, tiny_data))
    out, err = capsys.readouterr()
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fm-edge {argv[0]}: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert rc == code, (rc, lines[0])
    assert out == ""  # no artifact path printed
    assert snapshot(ws) == before  # nothing written, overwritten or left half-done


def test_the_suite_is_broad():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)
    assert {c[1][0] for c in CASES} >= {"sample", "export", "train", "evaluate", "bench", "demo"}


def test_debug_shows_the_traceback(ws, tiny_data, monkeypatch):
    from fm_edge.errors import UsageError

    monkeypatch.setenv("FM_EDGE_DEBUG", "1")
    with pytest.raises(UsageError, match="steps=0"):
        main(fill(SAMPLE + ["--steps", "0"], ws, tiny_data))


def _read_only_runner():
    """How to run a command for which a chmod 555 folder is really read-only (root ignores modes)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    caps = "-dac_override,-dac_read_search"  # root without these capabilities obeys file modes
    return [setpriv, "--inh-caps", caps, "--bounding-set", caps]


@pytest.mark.parametrize("command", ["sample", "export", "train"])
def test_read_only_output_folder(command, ws, tiny_data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("existing")
    ro.chmod(0o555)
    if command == "train":
        argv = ["train", "--preset", "tiny", "--data", tiny_data, "--max-steps", "1", "-o", str(ro)]
    else:
        target = ["-o", str(ro / "s.npz")] if command == "sample" else ["-o", str(ro)]
        argv = [command, "--model", str(ws / "ckpt"), *target]
    try:
        r = subprocess.run(
            [*_read_only_runner(), sys.executable, "-m", "fm_edge.cli", *argv],
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if k != "FM_EDGE_DEBUG"},
        )
        assert r.returncode == 2, r.stderr
        lines = error_lines(r.stderr)
        assert len(lines) == 1 and "not writable" in lines[0] and str(ro) in lines[0], r.stderr
        assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"]
    finally:
        ro.chmod(0o755)
