"""The command line: instant --help without torch, one-line errors with exit 2, no partial files."""

import subprocess
import sys

import numpy as np
import pytest

from fm_edge.cli import COMMANDS, main


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


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sample", "--solver", "dopri"], "unknown solver 'dopri'"),
        (["sample", "--steps", "0"], "steps=0"),
        (["sample", "--steps", "-1"], "steps=-1"),
        (["sample", "--label", "11"], "label 11 is out of range"),
        (["sample", "--label", "-1"], "label -1 is out of range"),
        (["sample", "--backend", "tensorflow"], "unknown backend 'tensorflow'"),
        (["sample", "--cfg-scale", "nan"], "cfg scale nan"),
        (["sample", "--num-samples", "0"], "--num-samples must be >= 1"),
        (["sample", "-o", "out.jpg"], "must end in .npz or .png"),
        (["train", "--preset", "huge"], "unknown preset 'huge'"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args, needle, tiny_ckpt, tmp_path, capsys):
    if args[0] == "sample":
        args = args + ["--model", str(tiny_ckpt)] + ([] if "-o" in args else ["-o", str(tmp_path / "s.npz")])
    else:
        args = args + ["-o", str(tmp_path / "run")]
    code, lines, err = run_cli(args, capsys)
    assert code == 2
    assert len(err) == 1 and needle in err[0], err
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_and_corrupt_checkpoint(tmp_path, tiny_ckpt, capsys):
    code, _, err = run_cli(
        ["sample", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "s.npz")], capsys
    )
    assert code == 2 and "is not a folder" in err[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_ckpt.iterdir():
        (bad / f.name).write_bytes(f.read_bytes()[:100] if f.suffix == ".safetensors" else f.read_bytes())
    code, _, err = run_cli(["sample", "--model", str(bad), "-o", str(tmp_path / "s.npz")], capsys)
    assert code == 1 and len(err) == 1 and "could not be loaded" in err[0]
    assert not (tmp_path / "s.npz").exists()


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
    assert (
        main(
            [
                "sample",
                "--model",
                str(tiny_ckpt),
                "--num-samples",
                "12",
                "-o",
                str(tmp_path / "s.npz"),
                "--steps",
                "2",
                "--num-threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1] == str(tmp_path / "s.npz")  # the artifact path is printed last
    assert "NFE 4" in out.err  # heun (recommended) x 2 steps
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape == (12, 28, 28) and z["images"].dtype == np.uint8
        assert z["labels"].dtype == np.int64 and list(z["labels"][:11]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert (
        main(
            [
                "sample",
                "--model",
                str(tiny_ckpt),
                "--num-samples",
                "3",
                "--unconditional",
                "-o",
                str(tmp_path / "s.png"),
                "--steps",
                "1",
            ]
        )
        == 0
    )
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size[1] == 28 + 4  # one row of 3 with 2-px borders


def test_reference_distance_shrinks_with_steps(tiny_ckpt):
    from fm_edge.convention import default_labels
    from fm_edge.reference import distance_to_reference
    from fm_edge.sample import generate, torch_backend

    b = torch_backend(tiny_ckpt)
    labels = default_labels(4)
    d = [
        distance_to_reference(b, generate(b, labels, n, "euler", 1.5, raw=True), labels, 1.5, 0)["rms"]
        for n in (1, 4, 16)
    ]
    assert d[0] > d[1] > d[2]
