"""Every shipped checkpoint folder is complete and its files belong to its weights; the int8-built teacher
samples in every format it ships in."""

import json

import numpy as np
import pytest

from fm_edge.artifacts import SHIPPED, onnx_metadata, weights_hash
from fm_edge.backends import generate, make_noise, torch_backend
from fm_edge.model import is_student_net
from fm_edge.quantize.pipeline import default_recipe_for
from fm_edge.quantize.recipe import get as get_recipe
from fm_edge.runtime import OnnxSampler
from fm_edge.sampler_spec import checkpoint_spec

FOLDERS = sorted(p for p in SHIPPED.parent.iterdir() if (p / "config.json").is_file())
TEACHER_T = SHIPPED.parent / "teacher-mnist-digit-t"
FILES = ("sampler.onnx", "sampler_int8.onnx", "velocity.onnx", "velocity_int8.onnx")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_shipped_folder_has_its_card_samples_quality_and_current_exports(folder):
    for name in ("README.md", "samples.png", "fm_edge.json", "diffusion_pytorch_model.safetensors"):
        assert (folder / name).is_file(), f"{folder.name} lacks {name}"
    fm = json.loads((folder / "fm_edge.json").read_text())
    history = fm.get("training") or fm.get("distillation")
    assert history and history.get("cpu") and history.get("command"), "its record says how it was made"
    sha = weights_hash(folder)
    recipe = json.loads((folder / "onnx" / "quantization.json").read_text())["recipe"]["name"]
    for name in FILES:
        meta = onnx_metadata(folder / "onnx" / name)
        assert meta["checkpoint_sha256"] == sha, f"{name} was exported from other weights"
        if "int8" in name:
            assert json.loads(meta["int8_recipe"])["name"] == recipe
    if is_student_net(folder):  # a plain `fm-edge export --int8` remakes the int8 file this folder ships
        assert get_recipe(default_recipe_for(folder)).name == recipe
    if folder == SHIPPED:  # ... also with no --model: the default is this folder
        assert get_recipe(default_recipe_for(None)).name == recipe


def test_int8_built_teacher_is_in_the_shipped_set():
    assert TEACHER_T in FOLDERS
    cfg = json.loads((TEACHER_T / "config.json").read_text())
    fm = json.loads((TEACHER_T / "fm_edge.json").read_text())
    assert cfg["time_input"] and not cfg.get("step_input"), "a flow teacher: t in, no step length"
    assert fm["sampler"]["cfg_scale"] > 1 and "guidance" not in fm["sampler"], (
        "it guides with CFG at run time"
    )
    assert {"euler4", "euler8"} <= set(fm["quality"]) and fm["quality"]["n"] == 5000
    assert "init_from" in fm["training"] and fm["training"]["parent"]


@pytest.mark.parametrize("name", ["sampler.onnx", "sampler_int8.onnx"])
def test_int8_built_teacher_sampler_files_match_its_torch_sampler(name):
    s = OnnxSampler(TEACHER_T / "onnx" / name)
    spec = s.sampler
    assert s.metadata["network_evals_per_image"] == str(2 * spec.steps), "CFG: two evaluations a step"
    noise, labels = make_noise(20, 5), np.arange(20) % 10
    onnx_digits = s(noise, labels)
    torch_digits = generate(torch_backend(TEACHER_T), labels, spec, noise=noise)
    diff = np.abs(onnx_digits.astype(int) - torch_digits.astype(int))
    if name == "sampler.onnx":
        assert diff.max() <= 1 and diff.mean() < 0.01
    else:  # int8 rounds its activations through 8 guided evaluations: a few stroke-edge pixels move
        assert np.percentile(diff, 99) <= 32 and diff.mean() < 3.0


def test_int8_built_teacher_runs_8_steps_and_they_differ_from_4():
    """The teacher is a flow net: any step count runs, and more steps change the digits (its 8-step figure)."""
    fn = torch_backend(TEACHER_T)
    spec = checkpoint_spec(json.loads((TEACHER_T / "fm_edge.json").read_text()))  # its recommended setting
    noise, labels = make_noise(10, 1), np.arange(10)
    four = generate(fn, labels, spec.override(steps=4), noise=noise).astype(int)
    eight = generate(fn, labels, spec.override(steps=8), noise=noise).astype(int)
    assert four.shape == eight.shape == (10, 28, 28)
    assert 1 < np.abs(four - eight).mean() < 40, "8 steps refine the 4-step digits, they do not replace them"
