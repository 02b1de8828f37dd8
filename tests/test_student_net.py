"""The one-step student net (fm_edge.student_net.OneStepNet): diffusers contract on a tiny config, ONNX and
int8 export, the checkpoint loaders, the one-step refusals, and ``fm-edge distill --method regress``."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fm_edge.distill import DistillConfig, distill
from fm_edge.errors import UsageError
from fm_edge.student_net import ARCHS, OneStepNet, build

TINY = dict(ARCHS["tiny"])


def inputs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 32, 32, generator=g)
    return x, torch.full((b,), 1000.0), torch.arange(b) % 11


def randomized(model, seed=0):
    """Random weights everywhere (the zero-initialised block convs too), so every layer matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def test_shapes_labels_and_ignored_timestep():
    model = randomized(OneStepNet(**TINY))
    x, t, y = inputs()
    with torch.no_grad():
        v = model(x, t, class_labels=y).sample
        assert v.shape == (3, 1, 32, 32) and v.dtype == torch.float32
        torch.testing.assert_close(model(x, t * 0.3, class_labels=y).sample, v, rtol=0, atol=0)
        assert not torch.equal(model(x, t, class_labels=(y + 1) % 11).sample, v)  # labels condition it
        torch.testing.assert_close(model(x, class_labels=torch.full((3,), 10)).sample, model(x).sample)
        p1 = randomized(
            OneStepNet(**dict(TINY, patch_size=1, block_out_channels=(8, 16, 16), layers_per_block=1))
        )
        assert p1(x, t, class_labels=y).sample.shape == (3, 1, 32, 32)
        assert model(x, t, class_labels=y, return_dict=False)[0].shape == (3, 1, 32, 32)


def test_blocks_start_as_the_identity():
    model = OneStepNet(**TINY)
    h = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.down_blocks[0](h), h, rtol=0, atol=0)


def test_digit_prediction_passes_the_noise_through_exactly():
    """prediction="digit": the last conv draws the digit and the velocity is noise - digit, so a net whose
    last conv outputs nothing has velocity = the noise (a velocity net would give 0); same weights otherwise."""
    x, t, y = inputs()
    vel = randomized(OneStepNet(**TINY))
    dig = OneStepNet(**TINY, prediction="digit")
    dig.load_state_dict(vel.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(dig(x, t, class_labels=y).sample, x - vel(x, t, class_labels=y).sample)
        for m in (vel, dig):
            m.conv_out.weight.zero_()
            m.conv_out.bias.zero_()
        assert torch.equal(dig(x, t, class_labels=y).sample, x)
        assert not vel(x, t, class_labels=y).sample.any()


def test_time_input_net_takes_t_and_its_euler_step_lands_on_its_digit():
    """A '-t' net: t is one more input plane, so the velocity depends on it; the digit head's velocity is
    (x_t - digit) / t, so one Euler step of size t from x_t lands exactly on the digit it draws."""
    model = randomized(build("tiny-digit-t"))
    assert not model.one_step_only and build("tiny-digit").one_step_only
    assert model.stem.in_channels == build("tiny-digit").stem.in_channels + 1
    x, t, y = inputs()
    with torch.no_grad():
        v1, v_half = model(x, t, class_labels=y).sample, model(x, t * 0.5, class_labels=y).sample
        assert not torch.allclose(v1, v_half)
        torch.testing.assert_close(model(x, 500.0, class_labels=y).sample, v_half, rtol=0, atol=0)
        model.conv_out.weight.zero_()
        model.conv_out.bias.zero_()  # the net now draws the digit 0 everywhere
        for scale in (1.0, 0.5, 0.25):
            v = model(x, t * scale, class_labels=y).sample
            torch.testing.assert_close(v, x / scale)
            assert float((x - scale * v).abs().max()) < 1e-6
    with pytest.raises(UsageError, match="takes a time input"):
        model(x, None, class_labels=y)


def test_with_time_input_starts_as_the_time_free_net_at_t_1():
    """A time-free digit net given its t plane (zero weights) is the same net at t = 1, and a '-t' size."""
    from fm_edge.student_net import with_time_input

    flat = randomized(build("tiny-digit"))
    timed = with_time_input(flat)
    assert timed.config.time_input and not timed.one_step_only
    public = lambda net: {k: v for k, v in net.config.items() if not k.startswith("_")}  # noqa: E731
    assert {**public(timed), "time_input": False} == public(flat)
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(timed(x, t, class_labels=y).sample, flat(x, t, class_labels=y).sample)
        timed.stem.weight[:, -1].fill_(1.0)  # the t plane is the stem's last input channel
        assert not torch.allclose(
            timed(x, t, class_labels=y).sample, timed(x, t * 0.5, class_labels=y).sample
        )
    for bad in (build("tiny"), build("tiny-digit-t")):  # velocity head; already has t
        with pytest.raises(UsageError, match="only a time-free '-digit' OneStepNet"):
            with_time_input(bad)


def test_seeded_construction_is_deterministic():
    torch.manual_seed(5)
    a = build("tiny")
    torch.manual_seed(5)
    b = build("tiny")
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka


def test_save_pretrained_round_trip_and_fm_edge_load(tmp_path):
    from fm_edge.model import fm_config, load, model_class

    model = randomized(OneStepNet(**TINY))
    model.save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "fm_edge.json").write_text(json.dumps(fm_config("tiny")))
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "OneStepNet"
    assert model_class(tmp_path) is OneStepNet
    again = OneStepNet.from_pretrained(tmp_path)
    loaded, fm = load(tmp_path)
    assert isinstance(loaded, OneStepNet) and fm["preset"] == "tiny" and not loaded.training
    x, t, y = inputs()
    with torch.no_grad():
        ref = model(x, t, class_labels=y).sample
        torch.testing.assert_close(again(x, t, class_labels=y).sample, ref, rtol=0, atol=0)
        torch.testing.assert_close(loaded(x, t, class_labels=y).sample, ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(patch_size=3), "patch_size must be 1 or 2"),
        (dict(block_out_channels=(8, 0)), "block_out_channels must be positive"),
        (dict(layers_per_block=(1, 1, 1)), "layers_per_block must be one int"),
        (dict(sample_size=30), "not divisible"),
        (dict(label_channels=0), "label_channels must be >= 1"),
        (dict(prediction="noise"), "prediction must be one of velocity, digit"),
    ],
)
def test_bad_configs_are_one_usage_error(kw, match):
    with pytest.raises(UsageError, match=match):
        OneStepNet(**{**TINY, **kw})


def test_unknown_arch_and_unknown_class_are_refused(tmp_path):
    from fm_edge.model import model_class

    with pytest.raises(UsageError, match="unknown student arch 'huge'"):
        build("huge")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(UsageError, match="UNet2DConditionModel"):
        model_class(tmp_path)


@pytest.mark.parametrize("prediction", ["velocity", "digit"])
def test_onnx_export_equals_torch_and_has_no_time_path(prediction, tmp_path):
    import onnxruntime as ort

    from fm_edge.export.velocity import INPUTS, export_velocity

    model = randomized(OneStepNet(**TINY, prediction=prediction))
    proto = export_velocity(model)
    assert tuple(i.name for i in proto.graph.input) == INPUTS  # the unused timestep is kept as an input
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Sin", "Cos", "Exp", "Gemm", "MatMul", "InstanceNormalization", "Sigmoid"}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x, t, y = inputs(5)
    out = sess.run(None, {"sample": x.numpy(), "timestep": t.numpy(), "class_labels": y.numpy()})[0]
    with torch.no_grad():
        ref = model(x, t, class_labels=y).sample.numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", ["velocity", "digit"])
def test_int8_student_recipe_keeps_the_net_in_int8(prediction, tmp_path):
    import onnx

    from fm_edge.export.velocity import export_velocity
    from fm_edge.quantize.calibrate import Trajectories
    from fm_edge.quantize.graph import int8_nodes
    from fm_edge.quantize.ort_int8 import quantize_velocity
    from fm_edge.quantize.sqnr import output_sqnr

    model = randomized(OneStepNet(**TINY, prediction=prediction))
    with torch.no_grad():  # tame the random net so activations stay in a sane range
        for name, p in model.named_parameters():
            if "conv2" in name:
                p.mul_(0.2)
    fp32 = tmp_path / "v.onnx"
    onnx.save(export_velocity(model), str(fp32))
    rng = np.random.default_rng(0)
    n = 64
    x = rng.standard_normal((n, 1, 32, 32)).astype(np.float32)
    y = (np.arange(n) % 11).astype(np.int64)
    calib = Trajectories(x, np.full(n, 1000.0, np.float32), y, np.zeros(n, np.int32), x[:11], x[:11], y[:11])
    q = tmp_path / "v8.onnx"
    facts = quantize_velocity(fp32, q, calib, "student", log=io.StringIO())
    qm = onnx.load(str(q))
    convs = [node for node in onnx.load(str(fp32)).graph.node if node.op_type == "Conv"]
    assert len(int8_nodes(qm)) == len(convs)  # every conv, the first and the last included
    assert facts["macs_int8_fraction"] == 1.0
    # Relu quantized too: the quantizer folds it into the conv's output range (no DQ -> Relu -> Q)
    assert "Relu" not in {node.op_type for node in qm.graph.node}
    # 8-bit weights (no reduce_range): each conv's per-channel scales put its largest weight at +-127
    int8 = [t for t in qm.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    weights = [onnx.numpy_helper.to_array(t) for t in int8]
    assert len(weights) == len(convs) and all(np.abs(w).max() == 127 for w in weights)
    held = {"sample": x[:16], "timestep": np.full(16, 1000.0, np.float32), "class_labels": y[:16]}
    assert output_sqnr(fp32, q, held) > 20


@pytest.fixture(scope="module")
def one_step_ckpt(tmp_path_factory):
    from fm_edge.model import fm_config

    folder = tmp_path_factory.mktemp("onestep") / "model"
    randomized(OneStepNet(**TINY)).save_pretrained(folder, safe_serialization=True)
    sampler = {"solver": "euler", "steps": 1, "cfg_scale": 1.0, "shift": 1.0, "guidance": "distilled",
               "distilled_cfg_scale": 1.5}  # fmt: skip
    (folder / "fm_edge.json").write_text(json.dumps(fm_config("tiny", sampler=sampler)))
    return folder


def test_one_step_only_samplers_refuse_other_step_counts(one_step_ckpt, tmp_path):
    from fm_edge.backends import generate, torch_backend
    from fm_edge.diffusers_pipeline import FmEdgePipeline
    from fm_edge.export.command import export
    from fm_edge.model import check_steps_for
    from fm_edge.sampler_spec import SamplerSpec

    backend = torch_backend(one_step_ckpt, num_threads=1)
    images = generate(backend, np.arange(4), SamplerSpec("euler", 1, 1.0))
    assert images.shape == (4, 28, 28)
    with pytest.raises(UsageError, match="evaluated only at t=1"):
        generate(backend, np.arange(4), SamplerSpec("euler", 2, 1.0))
    with pytest.raises(UsageError, match="--steps 4: this one-step student"):
        check_steps_for(one_step_ckpt, 4)
    check_steps_for(one_step_ckpt, 1)
    with pytest.raises(UsageError, match="--sampler-steps 2"):
        export(one_step_ckpt, tmp_path / "onnx", steps=2, log=io.StringIO())
    assert not (tmp_path / "onnx").exists()
    pipe = FmEdgePipeline.from_pretrained(one_step_ckpt)
    assert isinstance(pipe.unet, OneStepNet)
    out = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (2, 28, 28, 1)
    with pytest.raises(UsageError, match="num_inference_steps 3"):
        pipe([1], num_inference_steps=3)


def test_fm_edge_sample_on_a_one_step_checkpoint(one_step_ckpt, tmp_path):
    from fm_edge.cli import main

    out = tmp_path / "s.npz"
    base = ["sample", "--model", str(one_step_ckpt), "--num-samples", "6", "--num-threads", "1"]
    assert main([*base, "-o", str(out), "--backend", "torch"]) == 0
    assert np.load(out)["images"].shape == (6, 28, 28)
    assert main([*base, "-o", str(out), "--steps", "4"]) == 2


# --- fm-edge distill --method regress ---


def rcfg(out, teacher, **kw):
    base = dict(
        teacher=str(teacher), output_dir=str(out), method="regress", student_arch="tiny", pairs=24,
        batch_size=8, max_steps=4, checkpoint_every=2, keep_checkpoints=5, num_threads=1, device="cpu",
    )  # fmt: skip
    return DistillConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", ["tiny", "tiny-digit"])
def test_regress_trains_a_one_step_net_from_a_distilled_teacher(arch, distilled_teacher, tmp_path):
    from fm_edge.model import load

    folder = distill(rcfg(tmp_path, distilled_teacher, max_steps=6, student_arch=arch), progress=False)
    model, fm = load(folder)
    assert isinstance(model, OneStepNet) and model.config.block_out_channels == [8, 16]
    assert model.config.prediction == ("digit" if arch.endswith("digit") else "velocity")
    assert fm["preset"] == arch and fm["distillation"]["student_arch"] == arch
    assert fm["sampler"]["steps"] == 1 and fm["sampler"]["guidance"] == "distilled"
    assert fm["sampler"]["distilled_cfg_scale"] == 1.5  # the teacher's baked-in guidance carries over
    state = json.loads((tmp_path / "checkpoint-6" / "state.json").read_text())
    assert len(state["losses"]) == 6 and all(np.isfinite(v) for _, v in state["losses"])


def test_regress_trains_a_few_step_net_that_samples_exports_and_quantizes(distilled_teacher, tmp_path):
    """A '-t' net regressed at the 4 grid times: its folder says 4 Euler steps, and it samples at 4, 2 and 1
    (divisors of 4) in torch, in its exported sampler.onnx (equal to torch) and in int8 (recipe student)."""
    from fm_edge.backends import generate, torch_backend
    from fm_edge.cli import main
    from fm_edge.model import check_steps_for, load
    from fm_edge.runtime import OnnxSampler
    from fm_edge.sampler_spec import SamplerSpec

    folder = distill(
        rcfg(tmp_path / "run", distilled_teacher, max_steps=6, student_arch="tiny-digit-t", student_steps=4),
        progress=False,
    )
    model, fm = load(folder)
    assert model.config.time_input and fm["sampler"]["steps"] == 4
    card = (folder / "README.md").read_text()
    assert fm["distillation"]["student_steps"] == 4 and "few Euler steps" in card
    assert "MNIST flow-matching OneStepNet" in card and "flow-matching UNet" not in card
    check_steps_for(folder, 2)  # no one-step refusal
    backend = torch_backend(folder, num_threads=1)
    labels = np.arange(4)
    noise = np.random.default_rng(3).standard_normal((4, 1, 32, 32)).astype(np.float32)
    by_steps = {k: generate(backend, labels, SamplerSpec("euler", k, 1.0), noise=noise) for k in (1, 2, 4)}
    assert by_steps[1].shape == (4, 28, 28) and not np.array_equal(by_steps[1], by_steps[4])
    out = tmp_path / "onnx"
    assert main(["export", "--model", str(folder), "-o", str(out), "--int8", "--calib-samples", "11"]) == 0
    assert json.loads((out / "quantization.json").read_text())["recipe"]["name"] == "fm-edge-qdq-student-w8"
    onnx_digits = OnnxSampler(out / "sampler.onnx", num_threads=1)(noise, labels)
    assert int(np.abs(onnx_digits.astype(int) - by_steps[4].astype(int)).max()) <= 1
    assert OnnxSampler(out / "sampler_int8.onnx", num_threads=1)(noise, labels).shape == (4, 28, 28)


def test_regress_interrupted_resumes_exactly(tiny_ckpt, tmp_path, monkeypatch):
    from conftest import interrupt_at_call
    from test_distill import _assert_same_run

    import fm_edge.distill as d

    straight = distill(rcfg(tmp_path / "straight", tiny_ckpt, cfg_scale=1.5, max_steps=6), progress=False)
    real = interrupt_at_call(monkeypatch, d, "regress_loss", 5)
    with pytest.raises(KeyboardInterrupt):
        distill(rcfg(tmp_path / "split", tiny_ckpt, cfg_scale=1.5, max_steps=6), progress=False)
    monkeypatch.setattr(d, "regress_loss", real)
    split = distill(
        rcfg(tmp_path / "split", tiny_ckpt, cfg_scale=1.5, max_steps=6), resume="latest", progress=False
    )
    _assert_same_run(straight.parent, split.parent, 6)
    with pytest.raises(UsageError, match="student_arch"):
        distill(rcfg(tmp_path / "split", tiny_ckpt, cfg_scale=1.5, student_arch="s2-32-64"), resume="latest")


def test_regress_sigkill_then_resume(tiny_ckpt, tmp_path):
    from conftest import sigkill_at_marker
    from test_distill import KILLABLE

    run, marker = tmp_path / "run", tmp_path / "marker"
    argv = ["distill", "--method", "regress", "--student-arch", "tiny", "--teacher", str(tiny_ckpt),
            "--cfg-scale", "1.5", "--pairs", "24", "--batch-size", "8", "--max-steps", "4",
            "--checkpoint-every", "2", "--num-threads", "1", "--device", "cpu", "-o", str(run)]  # fmt: skip
    killable = KILLABLE.replace("d.pairs_loss", "d.regress_loss")  # hang inside a regress step
    assert "d.regress_loss = loss" in killable
    sigkill_at_marker(
        [sys.executable, "-c", killable, str(marker), "3", *argv], marker, "step 3", timeout=900
    )
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    r = subprocess.run([sys.executable, "-m", "fm_edge.cli", *argv, "--resume", "latest"],
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "checkpoint-2" in r.stderr
    fm = json.loads((run / "model" / "fm_edge.json").read_text())
    assert fm["distillation"]["method"] == "regress" and fm["distillation"]["steps"] == 4


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(student_arch="huge"), "unknown --student-arch 'huge'"),
        (dict(student_steps=2), "--student-steps 2: --student-arch tiny has no time input"),
        (dict(student_steps=3, student_arch="tiny-digit-t"), "--student-steps must be 1, 2, 4 or 8, got 3"),
        (dict(batch_size=0), "--batch-size must be >= 1"),
    ],
)
def test_regress_bad_settings_are_one_usage_error(kw, match, tiny_ckpt, tmp_path):
    with pytest.raises(UsageError, match=match):
        distill(rcfg(tmp_path / "out", tiny_ckpt, **kw), progress=False)
    assert not (tmp_path / "out").exists()


def test_distilled_teacher_only_for_regress(distilled_teacher, tmp_path):
    with pytest.raises(UsageError, match="is itself a distilled student"):
        distill(rcfg(tmp_path / "a", distilled_teacher, method="pairs"), progress=False)
    with pytest.raises(UsageError, match="omit --cfg-scale"):
        distill(rcfg(tmp_path / "b", distilled_teacher, cfg_scale=3.0), progress=False)


def test_export_int8_keeps_a_flow_teachers_first_and_last_conv_in_float(tmp_path):
    """``--int8`` with the default recipe on a '-t' OneStepNet that samples with CFG at run time (a flow
    teacher, as ``fm-edge train --preset ...-digit-t`` writes) picks the student recipe with float ends: every
    conv in int8 but the first and the last, and quantization.json says so."""
    import onnx

    from fm_edge.artifacts import FM_CONFIG
    from fm_edge.cli import main
    from fm_edge.model import fm_config
    from fm_edge.quantize.graph import int8_nodes

    teacher = tmp_path / "teacher"
    torch.manual_seed(0)
    model = build("tiny-digit-t")  # default init (every block starts as the identity): int8 passes the gate
    model.save_pretrained(teacher, safe_serialization=True)
    sampler = {"solver": "euler", "steps": 2, "cfg_scale": 1.5, "shift": 1.0}
    (teacher / FM_CONFIG).write_text(json.dumps(fm_config("tiny-digit-t", sampler=sampler)))
    out = tmp_path / "onnx"
    args = ["export", "--model", str(teacher), "-o", str(out), "--int8", "--calib-samples", "11"]
    assert main(args) == 0
    recipe = json.loads((out / "quantization.json").read_text())["recipe"]
    assert recipe["name"] == "qdq-student-float-ends"
    assert {"first_conv", "last_conv"} <= set(recipe["exclude_roles"])
    convs = [n for n in onnx.load(str(out / "velocity.onnx")).graph.node if n.op_type == "Conv"]
    assert len(int8_nodes(onnx.load(str(out / "velocity_int8.onnx")))) == len(convs) - 2


def test_a_folder_can_name_its_int8_recipe(tmp_path):
    """fm_edge.json's ``int8_recipe`` (the recipe a shipped int8 file was measured best with) is what
    ``--int8-recipe default`` means for that folder; without it the choice goes by the kind of net."""
    from fm_edge.artifacts import FM_CONFIG
    from fm_edge.model import fm_config
    from fm_edge.quantize.pipeline import default_recipe_for

    net = tmp_path / "net"
    build("tiny-digit").save_pretrained(net, safe_serialization=True)
    (net / FM_CONFIG).write_text(json.dumps(fm_config("tiny-digit")))
    assert default_recipe_for(net) == "student"
    (net / FM_CONFIG).write_text(json.dumps(fm_config("tiny-digit", int8_recipe="student-float-ends")))
    assert default_recipe_for(net) == "student-float-ends"
