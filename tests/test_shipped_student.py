"""The retired UNet students (kept in stages/ with their ONNX files): one network evaluation per digit in every
format the one-step student comes in, and their records."""

import json

import numpy as np
import pytest

from fm_edge.artifacts import SHIPPED, weights_hash
from fm_edge.backends import generate, make_noise, torch_backend
from fm_edge.runtime import OnnxSampler
from fm_edge.sampler_spec import SamplerSpec

STAGES = SHIPPED.parents[2] / "stages"
TEACHER_V11 = STAGES / "compact-mnist-v1.1"  # the retired UNet teacher they come from
STUDENT = STAGES / "compact-mnist-student"
STUDENT_4STEP = STAGES / "compact-mnist-student-4step"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_student_records_its_teacher_and_its_guidance():
    fm = json.loads((STUDENT / "fm_edge.json").read_text())
    assert fm["sampler"]["steps"] == 1 and fm["sampler"]["guidance"] == "distilled"
    # both students regressed (adversarial method) onto teacher v1.1's cached samples
    four = json.loads((STUDENT_4STEP / "fm_edge.json").read_text())
    for rec in (fm["distillation"], four["distillation"]):
        assert rec["method"] == "adversarial" and rec["teacher_sha256"] == weights_hash(TEACHER_V11)
    assert (
        four["sampler"]["steps"] == 4 and four["distillation"]["student_steps"] == 8
    )  # 4-step grid within 8
    assert four["sampler"]["distilled_cfg_scale"] == fm["sampler"]["distilled_cfg_scale"]
    assert (
        fm["sampler"]["distilled_cfg_scale"]
        == json.loads((TEACHER_V11 / "fm_edge.json").read_text())["sampler"]["cfg_scale"]
    )


@pytest.mark.parametrize("name", ["sampler.onnx", "sampler_int8.onnx"])
def test_student_sampler_files_make_a_digit_in_one_evaluation(name):
    s = OnnxSampler(STUDENT / "onnx" / name)
    meta = s.metadata
    assert meta["nfe"] == "1" and meta["network_evals_per_image"] == "1" and meta["guidance"] == "distilled"
    assert meta["checkpoint_sha256"] == weights_hash(STUDENT)
    noise, labels = make_noise(20, 3), np.arange(20) % 10
    onnx_digits = s(noise, labels)
    torch_digits = generate(torch_backend(STUDENT), labels, SamplerSpec("euler", 1, 1.0), noise=noise)
    limit = 1 if name == "sampler.onnx" else 64  # int8 rounds its activations: close, not equal
    assert np.abs(onnx_digits.astype(int) - torch_digits.astype(int)).max() <= limit
    assert np.abs(onnx_digits.astype(int) - torch_digits.astype(int)).mean() < (0.01 if limit == 1 else 2.0)


def test_student_through_the_diffusers_pipeline():
    import torch

    from fm_edge.diffusers_pipeline import FmEdgePipeline

    pipe = FmEdgePipeline.from_pretrained(STUDENT)
    noise, labels = make_noise(10, 0), list(range(10))
    out = pipe(class_labels=labels, latents=torch.from_numpy(noise), output_type="np").images
    ours = generate(torch_backend(STUDENT), np.array(labels), SamplerSpec("euler", 1, 1.0), noise=noise)
    assert np.abs(np.rint(np.asarray(out)[..., 0] * 255).astype(int) - ours.astype(int)).max() <= 1
