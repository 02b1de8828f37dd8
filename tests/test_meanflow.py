"""The mean-flow student: the step-length plane, the loss's target, and ``fm-edge distill --method meanflow``."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fm_edge.distill import DistillConfig, distill
from fm_edge.errors import UsageError
from fm_edge.student_net import build, with_step_input


def randomized(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-initialised convs would make every check trivially pass
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return net


@pytest.fixture(scope="module")
def flow_teacher(tmp_path_factory):
    """A tiny '-t' flow net folder with a guided sampler, like one ``fm-edge train --preset ...-digit-t`` writes."""
    from fm_edge.artifacts import FM_CONFIG
    from fm_edge.model import fm_config

    folder = tmp_path_factory.mktemp("flow_teacher")
    torch.manual_seed(0)
    randomized(build("tiny-digit-t")).save_pretrained(folder, safe_serialization=True)
    cfg = fm_config("tiny-digit-t", sampler={"solver": "euler", "steps": 4, "cfg_scale": 1.5, "shift": 1.0})
    (folder / FM_CONFIG).write_text(json.dumps(cfg))
    return folder


def mcfg(out, teacher, data, **kw):
    base = dict(
        teacher=str(teacher), output_dir=str(out), method="meanflow", data=data, student_steps=2, batch_size=8,
        max_steps=4, checkpoint_every=2, keep_checkpoints=5, num_threads=1, device="cpu", mean_share=0.5,
    )  # fmt: skip
    return DistillConfig(**{**base, **kw})


def test_step_plane_starts_as_the_flow_net_and_then_changes_it():
    flow = randomized(build("tiny-digit-t"))
    mean = with_step_input(flow)
    assert mean.config.step_input and mean.config.default_step == 0.0
    x, t, y = torch.randn(3, 1, 32, 32), torch.tensor([900.0, 500.0, 200.0]), torch.tensor([1, 2, 10])
    with torch.no_grad():
        for h in (None, 0.0, 0.5, torch.tensor([0.9, 0.5, 0.1])):  # zero weights: the step length is ignored
            torch.testing.assert_close(mean(x, t, y, step_size=h).sample, flow(x, t, y).sample)
        mean.stem.weight[:, -1].fill_(1.0)  # the step plane is the stem's last input channel
        assert not torch.allclose(mean(x, t, y, step_size=0.5).sample, mean(x, t, y).sample)
        mean.register_to_config(default_step=0.5)  # what a distilled 2-step student stores
        torch.testing.assert_close(mean(x, t, y).sample, mean(x, t, y, step_size=0.5).sample)
    with pytest.raises(UsageError, match="needs time_input"):
        build("tiny-digit", step_input=True)
    for bad in (1.5, 0.3, -0.25):
        with pytest.raises(UsageError, match="default_step must be 0 or 1/K"):
            build("tiny-digit-t", step_input=True, default_step=bad)
    for bad in (build("tiny-digit"), mean):  # no t plane; already has a step plane
        with pytest.raises(UsageError, match="gets a step-length plane"):
            with_step_input(bad)


def test_target_is_the_velocity_minus_h_times_the_derivative_along_the_flow():
    """u = v - h du/dt with du/dt = v . grad_z u + d_t u (h = t - r grows with t): the forward-mode derivative
    matches central differences along that direction, and at h = 0 the target is v itself."""
    from fm_edge.meanflow import mean_velocity_target

    torch.manual_seed(0)
    net = randomized(with_step_input(randomized(build("tiny-digit-t")))).double()
    z, v = torch.randn(3, 1, 32, 32, dtype=torch.float64), torch.randn(3, 1, 32, 32, dtype=torch.float64)
    t, h, y = torch.tensor([0.9, 0.6, 0.4], dtype=torch.float64), torch.tensor([0.5, 0.3, 0.0], dtype=torch.float64), torch.tensor([3, 7, 10])  # fmt: skip
    u, target = mean_velocity_target(net, z, t, h, v, y)
    eps = 1e-5
    with torch.no_grad():
        f = lambda d: net(z + d * v, (t + d) * 1000, class_labels=y, step_size=h + d).sample  # noqa: E731
        dudt = (f(eps) - f(-eps)) / (2 * eps)
        torch.testing.assert_close(u, net(z, t * 1000, class_labels=y, step_size=h).sample)
    torch.testing.assert_close(target, v - h.view(-1, 1, 1, 1) * dudt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target[2], v[2])
    assert not target.requires_grad and u.requires_grad


def test_straight_flow_is_its_own_mean_flow():
    """A net whose drawn digit is a constant c has velocity (z - c) / t: straight paths to c, so its average
    velocity over any step is that velocity and the target equals u at every h. A wrong sign on the t tangent
    would give du/dt = 2 (z - c) / t^2 instead of 0."""
    from fm_edge.meanflow import mean_velocity_target

    net = with_step_input(randomized(build("tiny-digit-t"))).double()
    with torch.no_grad():
        net.conv_out.weight.zero_()
        net.conv_out.bias.fill_(0.3)
        net.stem.weight[:, -2:].normal_()  # t and h reach the features, but not the drawn digit
    z = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    t = torch.tensor([0.95, 0.7, 0.5, 0.3], dtype=torch.float64)
    h = torch.tensor([0.95, 0.2, 0.5, 0.0], dtype=torch.float64)
    v = (z - 0.3) / t.view(-1, 1, 1, 1)
    u, target = mean_velocity_target(net, z, t, h, v, torch.tensor([0, 1, 2, 10]))
    torch.testing.assert_close(u.detach(), v)
    torch.testing.assert_close(target, v)


def test_meanflow_loss_is_zero_for_the_teacher_itself_at_step_zero():
    """Unguided and with every row at r = t, the target is the teacher's velocity: its own copy scores 0. With
    steps of random length the loss is positive and reaches every weight, the step plane's included."""
    from fm_edge.flow import DIGIT_T_FLOOR
    from fm_edge.meanflow import meanflow_loss
    from fm_edge.model import velocity_fn

    teacher = randomized(build("tiny-digit-t")).eval()
    student = with_step_input(teacher)
    x0, y = torch.rand(6, 1, 32, 32) * 2 - 1, torch.arange(6)
    for share, zero in ((0.0, True), (1.0, False)):
        student.zero_grad()
        gen = torch.Generator().manual_seed(1)
        loss = meanflow_loss(student, velocity_fn(teacher), x0, y, gen, share, DIGIT_T_FLOOR)
        assert (loss.item() < 1e-10) == zero
        loss.backward()
        if not zero:
            assert student.stem.weight.grad[:, -1].abs().sum() > 0


def test_meanflow_loss_in_bf16_follows_the_float32_loss():
    """Under bf16 autocast the forward-mode pass runs, the loss stays within bf16 rounding of the float32 one
    and the weights' gradients point the same way (they are float32: autocast keeps the weights)."""
    from fm_edge.meanflow import meanflow_loss
    from fm_edge.model import velocity_fn

    teacher = randomized(build("tiny-digit-t")).eval()
    student = randomized(with_step_input(teacher), seed=1)
    x0, y = torch.rand(8, 1, 32, 32) * 2 - 1, torch.arange(8)
    runs = []
    for bf16 in (False, True):
        student.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = meanflow_loss(
                student, velocity_fn(teacher), x0, y, torch.Generator().manual_seed(3), 0.75, None
            )
        loss.backward()
        assert loss.dtype == torch.float32
        runs.append((loss.item(), torch.cat([p.grad.flatten() for p in student.parameters()])))
    (l32, g32), (l16, g16) = runs
    assert l16 != l32 and abs(l16 - l32) < 0.05 * l32  # rounded, really computed in bf16
    assert g16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.95


def test_rollout_digits_are_the_k_step_sampler_and_only_the_last_step_learns():
    """The critic judges what the sampler draws: rollout_digits equals ``fm-edge sample``'s Euler loop on the
    student (its default step 1/K), and its gradient is the last step's alone."""
    from fm_edge.convention import T_SCALE
    from fm_edge.meanflow import rollout_digits
    from fm_edge.model import velocity_fn
    from fm_edge.solvers import sample

    student = randomized(with_step_input(build("tiny-digit-t")))
    noise, y = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 4, 9])
    for k in (1, 2, 4):
        student.register_to_config(default_step=1.0 / k)
        torch.testing.assert_close(
            rollout_digits(student, noise, y, k).detach(), sample(velocity_fn(student), noise, y, k)
        )
    grads = []
    for last_only in (False, True):
        student.zero_grad()
        if last_only:  # the same digits, with the first of the two steps taken outside the graph
            with torch.no_grad():
                z = noise - 0.5 * student(noise, torch.full((3,), T_SCALE), y, step_size=0.5).sample
            out = z - 0.5 * student(z, torch.full((3,), 0.5 * T_SCALE), y, step_size=0.5).sample
        else:
            out = rollout_digits(student, noise, y, 2)
        out.square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_grid_rows_take_the_steps_of_the_k_step_samplers(monkeypatch):
    """With grid step counts every step row is one step of a K-step Euler sampler (t on its grid, h = 1/K); the
    other rows have h = 0; without a grid, steps have random length below t."""
    import fm_edge.meanflow as mf

    seen = []

    def capture(student, z, t, h, v, labels):
        seen.append((t.clone(), h.clone()))
        return v.requires_grad_(), v

    monkeypatch.setattr(mf, "mean_velocity_target", capture)
    x0, y = torch.zeros(400, 1, 32, 32), torch.zeros(400, dtype=torch.long)
    teacher = lambda z, t, labels: z  # noqa: E731
    mf.meanflow_loss(None, teacher, x0, y, torch.Generator().manual_seed(0), 0.5, None, grid=(1, 2, 4))
    t, h = seen[-1]
    step = h > 0
    assert 150 < int(step.sum()) < 250 and set(h[step].tolist()) == {1.0, 0.5, 0.25}
    k = 1 / h[step]
    assert torch.allclose(t[step] * k, torch.round(t[step] * k)) and bool((t[step] >= h[step]).all())
    mf.meanflow_loss(None, teacher, x0, y, torch.Generator().manual_seed(0), 1.0, None)
    t, h = seen[-1]
    assert bool((h > 0).all() and (h <= t).all()) and len(set(h.tolist())) == 400


def test_distill_meanflow_writes_a_k_step_student_that_samples_and_exports(flow_teacher, tiny_data, tmp_path):
    from fm_edge.artifacts import onnx_metadata
    from fm_edge.backends import generate, onnx_backend, torch_backend
    from fm_edge.cli import main
    from fm_edge.convention import decode_uint8
    from fm_edge.model import check_steps_for, load
    from fm_edge.runtime import OnnxSampler
    from fm_edge.sample import pick_backend
    from fm_edge.sampler_spec import SamplerSpec

    folder = distill(mcfg(tmp_path / "run", flow_teacher, tiny_data, mean_grid=(1, 2)), progress=False)
    model, fm = load(folder)
    assert fm["distillation"]["mean_grid"] == [1, 2]
    assert model.config.step_input and model.config.default_step == 0.5
    assert fm["sampler"]["steps"] == 2 and fm["sampler"]["guidance"] == "distilled"
    assert fm["sampler"]["distilled_cfg_scale"] == 1.5 and fm["distillation"]["method"] == "meanflow"
    assert fm["distillation"]["mean_share"] == 0.5 and fm["distillation"]["data"] == tiny_data
    assert "mean-flow `OneStepNet`" in (folder / "README.md").read_text()
    for bad in (1, 3):
        with pytest.raises(UsageError, match=f"--steps {bad}: .* runs 2 steps or a multiple of 2"):
            check_steps_for(folder, bad)
    check_steps_for(folder, 4)  # each step split in two
    from fm_edge.diffusers_pipeline import FmEdgePipeline

    with pytest.raises(UsageError, match="num_inference_steps 3: this mean-flow student .* a multiple of 2"):
        FmEdgePipeline.from_pretrained(folder)(class_labels=[1], num_inference_steps=3)
    labels = np.arange(4)
    noise = np.random.default_rng(3).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with pytest.raises(UsageError, match="use solver euler and shift 1"):
        check_steps_for(folder, 2, solver="heun")
    with torch.no_grad():  # a step plane that matters (after 4 tiny steps its weights are still near 0)
        model.stem.weight[:, -1].fill_(0.05)
    model.save_pretrained(folder, safe_serialization=True)
    flow = tmp_path / "flow"  # the same weights as a flow net (step length 0)
    model.register_to_config(default_step=0.0)
    model.save_pretrained(flow, safe_serialization=True)
    (flow / "fm_edge.json").write_text((folder / "fm_edge.json").read_text())
    spec = SamplerSpec("euler", 2, 1.0)
    digits = generate(torch_backend(folder, num_threads=1), labels, spec, noise=noise)
    assert not np.array_equal(digits, generate(torch_backend(flow, num_threads=1), labels, spec, noise=noise))
    out = tmp_path / "onnx"
    assert main(["export", "--model", str(folder), "-o", str(out)]) == 0
    onnx_digits = OnnxSampler(out / "sampler.onnx", num_threads=1)(noise, labels)
    assert int(np.abs(onnx_digits.astype(int) - digits.astype(int)).max()) <= 1  # the step length is baked in
    assert onnx_metadata(out / "velocity.onnx")["mean_flow_step"] == "0.5"
    # 4 steps: each step of 1/2 split in two, the net told h = 1/4 (torch, pipeline and a 4-step export agree)
    four = SamplerSpec("euler", 4, 1.0)
    digits4 = generate(torch_backend(folder, num_threads=1), labels, four, noise=noise)
    by_hand = torch.from_numpy(noise)
    with torch.no_grad():
        for t in (1.0, 0.75, 0.5, 0.25):
            tt = torch.full((4,), t * 1000)
            by_hand = by_hand - 0.25 * model(by_hand, tt, torch.from_numpy(labels), step_size=0.25).sample
    assert np.array_equal(digits4, decode_uint8(by_hand.numpy()))
    assert not np.array_equal(digits4, digits)
    pipe = FmEdgePipeline.from_pretrained(folder)
    latents = torch.from_numpy(noise)
    x = pipe(
        class_labels=labels.tolist(), num_inference_steps=4, latents=latents, output_type="latent"
    ).images
    assert int(np.abs(decode_uint8(x.numpy()).astype(int) - digits4.astype(int)).max()) <= 1
    with pytest.raises(
        UsageError, match="--steps 4: this velocity.onnx is a mean-flow student exported for 2"
    ):
        generate(onnx_backend(out / "velocity.onnx", num_threads=1), labels, four, noise=noise)
    (folder / "onnx").mkdir()
    for name in ("velocity.onnx", "sampler.onnx"):
        shutil.copy(out / name, folder / "onnx" / name)
    assert pick_backend("auto", folder, steps=2) == "onnx" and pick_backend("auto", folder) == "onnx"
    assert pick_backend("auto", folder, steps=4) == "torch"  # its export runs 2 steps only
    # as a teacher: pairs at its own 2 steps come from that export, 4-step pairs from torch (not an error)
    from fm_edge.distill import teacher_pairs

    for steps, backend in ((2, "onnx"), (4, "torch")):
        record = {}
        pairs_cfg = mcfg(tmp_path / f"pairs{steps}", folder, tiny_data, method="regress", pairs=4)
        x1, y, x0 = teacher_pairs(pairs_cfg, folder, SamplerSpec("euler", steps, 1.0), "cpu", False, record)
        assert record["pairs_backend"] == backend
        ref = generate(
            torch_backend(folder, num_threads=1), y, SamplerSpec("euler", steps, 1.0), noise=x1, raw=True
        )
        np.testing.assert_allclose(x0, ref, atol=1e-4)
    out4 = tmp_path / "onnx4"
    assert main(["export", "--model", str(folder), "--sampler-steps", "4", "-o", str(out4)]) == 0
    assert onnx_metadata(out4 / "velocity.onnx")["mean_flow_step"] == "0.25"
    digits4_ort = OnnxSampler(out4 / "sampler.onnx", num_threads=1)(noise, labels)
    assert int(np.abs(digits4_ort.astype(int) - digits4.astype(int)).max()) <= 1


def flow_net_folder(folder, preset, seed=0):
    """A '-t' flow net folder of ``preset`` (a size other than the teacher's), as fm-edge train writes it."""
    from fm_edge.artifacts import FM_CONFIG
    from fm_edge.model import fm_config

    torch.manual_seed(seed)
    randomized(build(preset), seed).save_pretrained(folder, safe_serialization=True)
    cfg = fm_config(preset, sampler={"solver": "euler", "steps": 4, "cfg_scale": 1.5, "shift": 1.0})
    (folder / FM_CONFIG).write_text(json.dumps(cfg))
    return folder


def test_meanflow_init_starts_a_wider_student_and_a_next_stage(
    flow_teacher, tiny_data, tmp_path, monkeypatch
):
    """--init: the student is that net (another size than the teacher, its step plane added), not the teacher;
    a mean-flow student as --init goes on as it is (the next stage of a run)."""
    from fm_edge.artifacts import weights_hash
    from fm_edge.distill import MeanFlow
    from fm_edge.model import load

    init = flow_net_folder(tmp_path / "init", "s2-32-64-digit-t")
    stage1 = distill(
        mcfg(tmp_path / "s1", flow_teacher, tiny_data, init=str(init), mean_grid=(2,)), progress=False
    )
    model, fm = load(stage1)
    assert tuple(model.config.block_out_channels) == (32, 64) and model.config.step_input
    assert fm["preset"] == "s2-32-64-digit-t" and fm["distillation"]["init_sha256"] == weights_hash(init)
    assert fm["distillation"]["teacher_sha256"] == weights_hash(flow_teacher)
    first, student = {}, MeanFlow.student

    def keep_first(method):  # the student as it starts, before its first step
        net = student(method)
        first["state"] = {k: v.clone() for k, v in net.state_dict().items()}
        return net

    monkeypatch.setattr(MeanFlow, "student", keep_first)
    distill(mcfg(tmp_path / "s2", flow_teacher, tiny_data, init=str(stage1), mean_grid=(2,)), progress=False)
    for k, v in model.state_dict().items():  # stage 2 starts exactly where stage 1 ended, step plane included
        torch.testing.assert_close(first["state"][k], v)


@pytest.fixture
def tiny_wide(monkeypatch):
    """A wider twin of tiny-digit-t in ARCHS: the same levels and blocks, more channels."""
    from fm_edge.student_net import ARCHS

    monkeypatch.setitem(ARCHS, "tiny-wide-digit-t", dict(ARCHS["tiny-digit-t"], block_out_channels=(12, 24)))
    return "tiny-wide-digit-t"


def test_grown_net_draws_the_same_and_its_new_channels_learn(tiny_wide):
    from fm_edge.student_net import check_growable, grown

    small = with_step_input(randomized(build("tiny-digit-t")))
    wide = grown(small, tiny_wide)
    assert tuple(wide.config.block_out_channels) == (12, 24) and wide.config.step_input
    x, t, y = torch.randn(3, 1, 32, 32), torch.tensor([900.0, 500.0, 200.0]), torch.tensor([1, 2, 10])
    with torch.no_grad():
        torch.testing.assert_close(
            wide(x, t, y, step_size=0.25).sample, small(x, t, y, step_size=0.25).sample
        )
    wide(x, t, y).sample.square().mean().backward()
    assert wide.conv_out.weight.grad[:, 8:].abs().sum() > 0  # the zero weights that read new channels move
    for arch, match in (("s2-32-64-digit-t", "do not grow into"), ("tiny-digit", "is not a '-t' size")):
        with pytest.raises(UsageError, match=match):
            check_growable(dict(wide.config), arch)  # fewer channels; no t input


def test_meanflow_grow_to_widens_the_start_net(flow_teacher, tiny_data, tmp_path, tiny_wide):
    from fm_edge.model import load

    folder = distill(mcfg(tmp_path / "run", flow_teacher, tiny_data, grow_to=tiny_wide), progress=False)
    model, fm = load(folder)
    assert tuple(model.config.block_out_channels) == (12, 24) and model.config.label_channels == 4
    assert fm["preset"] == tiny_wide and fm["distillation"]["grown_to"] == tiny_wide


def test_meanflow_distill_in_bf16_and_channels_last_records_it(flow_teacher, tiny_data, tmp_path):
    from fm_edge.model import load

    folder = distill(
        mcfg(tmp_path / "run", flow_teacher, tiny_data, bf16=True, channels_last=True), progress=False
    )
    model, fm = load(folder)
    settings = fm["distillation"]["settings"]
    assert settings["bf16"] and settings["channels_last"]
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    assert model.config.default_step == 0.5


def test_meanflow_critic_scores_the_students_digits_and_resumes_exactly(
    flow_teacher, tiny_data, tmp_path, monkeypatch
):
    """--mean-critic adds the critic's terms (the student moves differently), the run records it, and its
    checkpoints carry the critic and its optimizer, so an interrupted run resumes to the same weights."""
    from conftest import interrupt_at_call
    from safetensors.torch import load_file
    from test_distill import _assert_same_run

    import fm_edge.critic as c

    kw = dict(mean_critic=0.5, class_weight=0.1, mean_grid=(2,))
    plain = distill(mcfg(tmp_path / "plain", flow_teacher, tiny_data, mean_grid=(2,)), progress=False)
    straight = distill(mcfg(tmp_path / "straight", flow_teacher, tiny_data, **kw), progress=False)
    settings = json.loads((straight / "fm_edge.json").read_text())["distillation"]
    assert settings["mean_critic"] == 0.5 and settings["settings"]["class_weight"] == 0.1
    wp, ws = (load_file(f / "diffusion_pytorch_model.safetensors") for f in (plain, straight))
    assert any(not torch.equal(wp[k], ws[k]) for k in wp)
    assert not (plain.parent / "checkpoint-4" / "critic.safetensors").exists()
    real = interrupt_at_call(monkeypatch, c, "critic_loss", 3)
    with pytest.raises(KeyboardInterrupt):
        distill(mcfg(tmp_path / "split", flow_teacher, tiny_data, **kw), progress=False)
    monkeypatch.setattr(c, "critic_loss", real)
    split = distill(mcfg(tmp_path / "split", flow_teacher, tiny_data, **kw), resume="latest", progress=False)
    _assert_same_run(straight.parent, split.parent, 4)
    for name in ("critic.safetensors", "critic_optimizer.safetensors"):
        a, b = (load_file(p.parent / "checkpoint-4" / name) for p in (straight, split))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UsageError, match="mean_critic=0.5, not 0.0"):  # a resume keeps the run's critic
        distill(
            mcfg(tmp_path / "split", flow_teacher, tiny_data, mean_grid=(2,)), resume="latest", progress=False
        )


def test_critic_steps_choose_the_samplers_the_critic_scores(flow_teacher, tiny_data, tmp_path, monkeypatch):
    """The critic scores the --student-steps sampler by default, else one of --critic-steps per step."""
    import fm_edge.meanflow as mf

    real, seen = mf.rollout_digits, []

    def spy(student, noise, labels, steps):
        seen.append(steps)
        return real(student, noise, labels, steps)

    monkeypatch.setattr(mf, "rollout_digits", spy)
    for steps, expect in (((), {2}), ((4,), {4}), ((2, 4), {2, 4})):
        seen.clear()
        folder = distill(
            mcfg(tmp_path / f"run{len(steps)}", flow_teacher, tiny_data, mean_critic=0.5, critic_steps=steps,
                 max_steps=12, checkpoint_every=6),
            progress=False,
        )  # fmt: skip
        assert set(seen) == expect and len(seen) == 12
        assert json.loads((folder / "fm_edge.json").read_text())["distillation"]["critic_steps"] == list(
            steps
        )


def test_critic_init_starts_the_critic_from_an_earlier_runs_critic(
    flow_teacher, tiny_data, tmp_path, monkeypatch
):
    """--critic-init: the critic's first round sees the earlier run's critic (not fresh weights), and the run
    records which file it started from."""
    from safetensors.torch import load_file

    import fm_edge.critic as c
    from fm_edge.artifacts import sha256

    kw = dict(mean_critic=0.5, mean_grid=(2,))
    distill(mcfg(tmp_path / "first", flow_teacher, tiny_data, **kw), progress=False)
    earlier = tmp_path / "first" / "checkpoint-4"
    real, first_seen = c.critic_loss, []

    def spy(critic, *a, **k):
        if not first_seen:
            first_seen.append({n: v.detach().clone() for n, v in critic.state_dict().items()})
        return real(critic, *a, **k)

    monkeypatch.setattr(c, "critic_loss", spy)
    warm = distill(
        mcfg(tmp_path / "warm", flow_teacher, tiny_data, critic_init=str(earlier), **kw), progress=False
    )
    want = load_file(earlier / "critic.safetensors")
    assert first_seen[0].keys() == want.keys() and all(torch.equal(first_seen[0][k], want[k]) for k in want)
    rec = json.loads((warm / "fm_edge.json").read_text())["distillation"]
    assert rec["critic_init_sha256"] == sha256(earlier / "critic.safetensors")
    first_seen.clear()
    distill(mcfg(tmp_path / "fresh", flow_teacher, tiny_data, **kw), progress=False)
    assert any(not torch.equal(first_seen[0][k], want[k]) for k in want)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(mean_share=1.5), "--mean-share must be in \\[0, 1\\]"),
        (dict(mean_critic=-0.1), "--mean-critic takes a finite weight >= 0 of --method meanflow"),
        (dict(mean_critic=float("nan")), "--mean-critic takes a finite weight"),
        (dict(method="regress", mean_critic=0.1), "--mean-critic takes .* of --method meanflow"),
        (dict(class_weight=0.1), "--class-weight of --method meanflow .* add --mean-critic"),
        (dict(class_weight=-1.0, mean_critic=0.1), "--class-weight must be a finite number >= 0"),
        (dict(critic_steps=(4,)), "--critic-steps takes .* with --mean-critic"),
        (dict(critic_steps=(3,), mean_critic=0.1), "--critic-steps takes step counts 1, 2, 4 or 8"),
        (dict(critic_steps=(1,), mean_critic=0.1), "multiples of --student-steps \\(2\\)"),
        (dict(student_steps=3), "--student-steps must be 1, 2, 4 or 8"),
        (dict(critic_init="MISSING"), "--critic-init warm-starts the critic of .* with --mean-critic"),
        (dict(critic_init="MISSING", mean_critic=0.1), "--critic-init: no critic weights at .*missing"),
        (dict(critic_init="GARBAGE", mean_critic=0.1), "--critic-init: .* is not a critic's weights"),
        (dict(teacher="UNET"), "needs a '-t' OneStepNet flow teacher"),
        (dict(data="NODATA"), "holds no MNIST 'train' split"),
        (dict(mean_grid=(1, 3)), "--mean-grid takes step counts 1, 2, 4 or 8"),
        (dict(method="regress", mean_grid=(2,)), "--mean-grid takes step counts .* of --method meanflow"),
        (dict(init="TIMEFREE"), "--init .* must be a '-t' OneStepNet that predicts what the teacher does"),
        (dict(init="NOFOLDER"), "is not a folder"),
        (dict(method="pairs", init="TIMEFREE"), "--init is for --method adversarial or meanflow, not pairs"),
        (dict(grow_to="s2-32-64-digit-t"), "--grow-to s2-32-64-digit-t: a net grows only to"),
        (dict(grow_to="tiny-digit"), "--grow-to 'tiny-digit' is not a '-t' size"),
        (
            dict(method="regress", grow_to="tiny-digit-t"),
            "--grow-to widens the start net of --method meanflow",
        ),
    ],
)
def test_meanflow_bad_settings_are_one_usage_error(kw, match, flow_teacher, tiny_ckpt, tiny_data, tmp_path):
    kw = dict(kw)
    teacher = tiny_ckpt if kw.pop("teacher", None) == "UNET" else flow_teacher  # a UNet teacher
    data = str(tmp_path) if kw.pop("data", None) == "NODATA" else tiny_data  # a folder with no MNIST
    if kw.get("init") == "TIMEFREE":
        kw["init"] = str(flow_net_folder(tmp_path / "timefree", "tiny-digit"))
    elif kw.get("init") == "NOFOLDER":
        kw["init"] = str(tmp_path / "missing")
    if kw.get("critic_init") == "MISSING":
        kw["critic_init"] = str(tmp_path / "missing")
    elif kw.get("critic_init") == "GARBAGE":
        (tmp_path / "critic.safetensors").write_bytes(b"not weights")
        kw["critic_init"] = str(tmp_path)
    with pytest.raises(UsageError, match=match):
        distill(mcfg(tmp_path / "out", teacher, data, **kw), progress=False)
    assert not (tmp_path / "out").exists()


def test_meanflow_sigkill_then_resume_gives_the_uninterrupted_run(flow_teacher, tiny_data, tmp_path):
    from conftest import sigkill_at_marker
    from test_distill import KILLABLE, _assert_same_run

    straight = distill(mcfg(tmp_path / "straight", flow_teacher, tiny_data, mean_grid=(1, 2)), progress=False)
    run, marker = tmp_path / "run", tmp_path / "marker"
    argv = ["distill", "--method", "meanflow", "--teacher", str(flow_teacher), "--data", tiny_data,
            "--student-steps", "2", "--batch-size", "8", "--max-steps", "4", "--checkpoint-every", "2",
            "--num-threads", "1", "--device", "cpu", "--mean-grid", "1", "2", "-o", str(run)]  # fmt: skip
    killable = KILLABLE.replace("fm_edge.distill as d", "fm_edge.meanflow as d").replace(
        "pairs_loss", "meanflow_loss"
    )
    sigkill_at_marker(
        [sys.executable, "-c", killable, str(marker), "3", *argv], marker, "step 3", timeout=600
    )
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (run / "model").exists()
    r = subprocess.run([sys.executable, "-m", "fm_edge.cli", *argv, "--resume", "latest"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_run(straight.parent, run, 4)


def test_adaptive_weighting_evens_out_the_rows_pull(monkeypatch):
    """p = 0 is the plain mean squared error; with p = 0.5 each row's gradient has the same size whatever its
    error (a row 100x further off pulls as hard as one close by, not 10x harder)."""
    import fm_edge.meanflow as mf

    off = torch.tensor([0.1, 1.0, 10.0, 10.0]).view(4, 1, 1, 1)
    grads = {}

    def fixed_error(student, z, t, h, v, labels):
        u = (v + off * torch.ones_like(v)).requires_grad_()
        grads["u"] = u
        return u, v

    monkeypatch.setattr(mf, "mean_velocity_target", fixed_error)
    x0, y = torch.zeros(4, 1, 32, 32), torch.zeros(4, dtype=torch.long)
    teacher = lambda z, t, labels: torch.zeros_like(z)  # noqa: E731
    for p in (0.0, 0.5):
        loss = mf.meanflow_loss(
            None, teacher, x0, y, torch.Generator().manual_seed(0), 0.5, None, weight_power=p
        )
        if p == 0:
            torch.testing.assert_close(loss, off.square().mean())
        loss.backward()
        norms = grads["u"].grad.flatten(1).norm(dim=1)
        ratio = float(norms[2] / norms[0])
        assert (abs(ratio - 100) < 1) if p == 0 else (abs(ratio - 1) < 0.01), (p, ratio)


def test_adaptive_weighting_is_a_meanflow_setting_in_its_range(flow_teacher, tiny_data, tmp_path):
    for kw, match in (
        (dict(mean_weight_power=-0.5), r"--mean-weight-power takes a power in \[0, 2\]"),
        (dict(method="regress", mean_weight_power=1.0), "of --method meanflow"),
    ):
        with pytest.raises(UsageError, match=match):
            distill(mcfg(tmp_path / "out", flow_teacher, tiny_data, **kw), progress=False)
        assert not (tmp_path / "out").exists()
