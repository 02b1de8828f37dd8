"""The command line: instant --help without torch, sampling artifacts, the dopri5 reference (bad input: test_bad_input.py)."""

import subprocess
import sys

import numpy as np

from fm_edge.cli import COMMANDS, main
from fm_edge.sampler_spec import SamplerSpec


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from fm_edge.cli import main\n"
        f"for cmd in [[]] + [[c] for c in {sorted(COMMANDS)!r}]:\n"
        "    try:\n"
        "        main(cmd + ['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'gradio', 'diffusers', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "--steps" in r.stdout and "--int8" in r.stdout


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if line.startswith("fm-edge")], err


def test_dataset_path_without_mnist(tmp_path, capsys):
    (tmp_path / "notmnist").mkdir()
    (tmp_path / "notmnist" / "x.csv").write_text("a,b\n1,2\n")
    code, lines, err = run_cli(
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            str(tmp_path / "notmnist"),
            "-o",
            str(tmp_path / "run"),
            "--max-steps",
            "1",
        ],
        capsys,
    )
    assert code == 2 and len(lines) == 1 and "MNIST" in lines[0] and "Traceback" not in "".join(err)


def test_sample_writes_npz_and_png(tiny_ckpt, tmp_path, capsys):
    model = ["sample", "--model", str(tiny_ckpt)]
    first = [*model, "--num-samples", "12", "--steps", "2", "--num-threads", "1"]
    assert main([*first, "-o", str(tmp_path / "s.npz")]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1] == str(tmp_path / "s.npz")  # the artifact path is printed last
    assert "NFE 3" in out.err  # heun (recommended) x 2 steps: its final step is an Euler step
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape == (12, 28, 28) and z["images"].dtype == np.uint8
        assert z["labels"].dtype == np.int64 and list(z["labels"][:11]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    grid = [*model, "--num-samples", "3", "--unconditional", "--steps", "1"]
    assert main([*grid, "-o", str(tmp_path / "s.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size[1] == 28 + 4  # one row of 3 with 2-px borders


def test_reference_distance_shrinks_with_steps(tiny_ckpt):
    from fm_edge.backends import generate, torch_backend
    from fm_edge.convention import default_labels
    from fm_edge.reference import distance_to_reference

    b = torch_backend(tiny_ckpt)
    labels = default_labels(4)
    d = [
        distance_to_reference(b, generate(b, labels, SamplerSpec("euler", n, 1.5), raw=True), labels, 1.5, 0)[
            "rms"
        ]
        for n in (1, 4, 16)
    ]
    assert d[0] > d[1] > d[2]


def test_nfe_curve_command_writes_json_and_png(tiny_ckpt, tmp_path, capsys):
    """The README's ``fm-edge evaluate --nfe-curve`` path end to end (it once passed its settings one slot off)."""
    import json

    out = tmp_path / "eval"
    argv = ["evaluate", "--nfe-curve", "--model", str(tiny_ckpt), "--solvers", "euler,heun", "--steps-list",
            "1,2", "--num-samples", "12", "--reference-samples", "3", "-o", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads((out / "nfe_curve.json").read_text())
    assert [(r["solver"], r["steps"], r["nfe"]) for r in result["rows"]] == [
        ("euler", 1, 1), ("euler", 2, 2), ("heun", 1, 1), ("heun", 2, 3)
    ]  # fmt: skip
    assert result["n"] == 12 and result["reference"]["n"] == 3
    assert all(r["cfg_scale"] == 1.5 for r in result["rows"])  # the checkpoint's recommendation
    assert (out / "nfe_curve.png").stat().st_size > 1000


def test_backend_auto_uses_onnx_when_the_checkpoint_has_its_export(tiny_ckpt, tiny_onnx, tmp_path, capsys):
    import shutil

    from fm_edge.sample import pick_backend

    assert pick_backend("auto", tiny_ckpt) == "torch"  # no onnx/ beside it
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    shutil.copytree(tiny_onnx, ckpt / "onnx")
    assert pick_backend("auto", ckpt) == "onnx"
    assert pick_backend("auto", ckpt, reference=True) == "torch"  # dopri5 runs in torch
    (ckpt / "diffusion_pytorch_model.safetensors").write_bytes(
        (ckpt / "diffusion_pytorch_model.safetensors").read_bytes()[:-8] + b"\0" * 8
    )  # other weights: the export is stale, so auto falls back to torch
    assert pick_backend("auto", ckpt) == "torch"
    for device in ("auto", "cpu"):
        out = tmp_path / f"{device}.npz"
        assert main(["sample", "--model", str(tiny_ckpt), "--num-samples", "3", "--device", device,
                     "-o", str(out)]) == 0  # fmt: skip
        assert out.is_file()
    assert "backend torch (cpu)" in capsys.readouterr().err
