"""fm-edge distill --method adversarial: a one-step student sharpened by a critic trained on real digits; the
critic's own losses, its checkpoints, exact resume after an interrupt and after SIGKILL, and bad settings."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_student_net import rcfg

from fm_edge.distill import distill
from fm_edge.errors import UsageError


def acfg(out, teacher, init, data, **kw):
    return rcfg(out, teacher, **{"method": "adversarial", "init": init and str(init), "data": data,
                                 "adv_weight": 0.5, **kw})  # fmt: skip


def test_critic_losses_train_only_their_own_side():
    from fm_edge.critic import Critic, critic_loss, generator_loss

    torch.manual_seed(0)
    critic = Critic(width=8)
    gen = torch.nn.Conv2d(1, 1, 3, padding=1)
    real, labels = torch.rand(4, 1, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 3])
    fake = gen(torch.randn(4, 1, 32, 32))
    critic_loss(critic, real, labels, fake, labels, classify=True).backward()
    assert gen.weight.grad is None  # the critic's step sees detached fakes
    assert all(p.grad is not None for p in critic.parameters())
    critic.zero_grad(set_to_none=True)
    sum(generator_loss(critic, fake, labels)).backward()
    assert gen.weight.grad is not None and gen.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())  # the student's step leaves the critic alone
    assert all(p.requires_grad for p in critic.parameters())


def test_critic_learns_to_tell_real_digits_from_noise(tiny_data):
    from fm_edge.critic import Critic, critic_loss
    from fm_edge.data import load_split, model_space

    images, labels = load_split(tiny_data, "train")
    real, y = torch.from_numpy(model_space(images[:32])), torch.from_numpy(labels[:32])
    torch.manual_seed(0)
    critic = Critic(width=8)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.99))
    fake = torch.randn(32, 1, 32, 32).clamp(-1, 1)
    for _ in range(60):
        opt.zero_grad()
        critic_loss(critic, real, y, fake, y).backward()
        opt.step()
    with torch.no_grad():
        assert critic(real, y).mean() > critic(fake, y).mean() + 1.0


def test_class_head_learns_real_labels_and_penalises_the_wrong_class(tiny_data):
    from torch.nn import functional as F

    from fm_edge.critic import Critic, critic_loss, generator_loss
    from fm_edge.data import load_split, model_space

    images, labels = load_split(tiny_data, "train")
    real, y = torch.from_numpy(model_space(images[:64])), torch.from_numpy(labels[:64])
    fake = torch.randn(64, 1, 32, 32).clamp(-1, 1)
    torch.manual_seed(0)
    critic = Critic(width=8).eval()  # eval: spectral norm's power iteration stands still between the calls
    with torch.no_grad():  # without classify the loss is the hinge alone; with it, plus the real digits' CE
        plain = critic_loss(critic, real, y, fake, y)
        assert torch.allclose(
            critic_loss(critic, real, y, fake, y, classify=True),
            plain + F.cross_entropy(critic.heads(real, y)[1], y),
        )
    critic.train()
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.99))
    for _ in range(80):
        opt.zero_grad()
        critic_loss(critic, real, y, fake, y, classify=True).backward()
        opt.step()
    with torch.no_grad():
        assert (critic.heads(real, y)[1].argmax(1) == y).float().mean() > 0.9
        wrong = (y + 1) % 10
        assert generator_loss(critic, real, y)[1] + 1.0 < generator_loss(critic, real, wrong)[1]


def test_the_class_term_changes_the_update_and_is_recorded(distilled_teacher, tiny_data, tmp_path):
    from fm_edge.model import load

    def run(w):
        cfg = acfg(tmp_path / str(w), distilled_teacher, distilled_teacher, tiny_data, max_steps=2)
        cfg.adv_weight, cfg.class_weight = 0.0, w
        return distill(cfg, progress=False)

    runs = [run(0.0), run(1.0)]
    (plain, _), (kept, fm) = load(runs[0]), load(runs[1])
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), kept.parameters()))
    assert fm["distillation"]["settings"]["class_weight"] == 1.0


def test_critic_warmup_trains_only_the_critic_then_the_student(distilled_teacher, tiny_data, tmp_path):
    from safetensors.torch import load_file

    from fm_edge.critic import Critic
    from fm_edge.model import load

    cfg = acfg(tmp_path, distilled_teacher, distilled_teacher, tiny_data, max_steps=3, checkpoint_every=1)
    cfg.critic_warmup, cfg.keep_checkpoints = 2, 3
    folder = distill(cfg, progress=False)
    model0 = load(distilled_teacher)[0]
    init, params = model0.state_dict(), [p.detach() for p in model0.parameters()]
    torch.manual_seed(cfg.seed)
    fresh = Critic().state_dict()
    for step in (1, 2):  # the warm-up: the student and its EMA hold still, the critic learns
        ckpt = tmp_path / f"checkpoint-{step}"
        held = load_file(ckpt / "model.safetensors")
        assert all(torch.equal(held[k], init[k]) for k in init), step
        ema = load_file(ckpt / "ema.safetensors")  # shadow.<i>: the i-th parameter's average
        assert all(torch.equal(ema[f"shadow.{i}"], p) for i, p in enumerate(params)), step
        critic = load_file(ckpt / "critic.safetensors")
        assert any(not torch.equal(critic[k], fresh[k]) for k in fresh if k in critic)
    after = load(folder)[0].state_dict()
    assert any(not torch.equal(after[k], init[k]) for k in init)  # step 3 moves the student
    assert json.loads((folder / "fm_edge.json").read_text())["distillation"]["settings"]["critic_warmup"] == 2


def test_warmup_steps_shrink_the_first_steps_from_trained_weights(distilled_teacher, tiny_data, tmp_path):
    """A run from a trained --init starts with a fresh AdamW, whose first step moves every weight by about
    --lr whatever the gradient's size; --warmup-steps W makes that step lr / W, after the critic's warm-up."""
    from safetensors.torch import load_file

    from fm_edge.model import load

    init = load(distilled_teacher)[0].state_dict()
    moved = {}
    for warmup in (0, 4):
        out = tmp_path / f"w{warmup}"
        c = acfg(out, distilled_teacher, distilled_teacher, tiny_data, max_steps=6, checkpoint_every=1)
        c.critic_warmup, c.warmup_steps, c.lr, c.keep_checkpoints = 1, warmup, 1e-3, 9
        folder = distill(c, progress=False)
        first = load_file(out / "checkpoint-2" / "model.safetensors")  # the student's first step
        moved[warmup] = max((first[k] - init[k]).abs().max().item() for k in init)
        record = json.loads((folder / "fm_edge.json").read_text())["distillation"]["settings"]
        assert record["warmup_steps"] == warmup
    assert 0.5e-3 < moved[0] <= 1.01e-3  # Adam's first step: near lr for the weights it moves most
    assert moved[4] == pytest.approx(moved[0] / 4, rel=0.02)


def test_critic_lr_sets_the_critics_step_only(distilled_teacher, tiny_data, tmp_path):
    from safetensors.torch import load_file

    def critic_after(name, **kw):
        cfg = acfg(tmp_path / name, distilled_teacher, distilled_teacher, tiny_data, max_steps=2, **kw)
        folder = distill(cfg, progress=False)
        return load_file(tmp_path / name / "checkpoint-2" / "critic.safetensors"), folder

    (base, _), (same, _), (fast, folder) = (
        critic_after("a"),
        critic_after("b", critic_lr=3e-4),
        critic_after("c", critic_lr=3e-2),
    )
    assert all(torch.equal(base[k], same[k]) for k in base)  # --critic-lr = --lr (3e-4): the default
    assert any(not torch.equal(base[k], fast[k]) for k in base)
    assert json.loads((folder / "fm_edge.json").read_text())["distillation"]["settings"]["critic_lr"] == 3e-2


def test_adversarial_sharpens_the_init_and_keeps_its_sampler(distilled_teacher, tiny_data, tmp_path):
    from safetensors.torch import load_file

    from fm_edge.artifacts import weights_hash
    from fm_edge.model import load

    folder = distill(acfg(tmp_path, distilled_teacher, distilled_teacher, tiny_data), progress=False)
    model, fm = load(folder)
    init, _ = load(distilled_teacher)
    assert (
        type(model) is type(init) and fm["sampler"]["steps"] == 1 and fm["sampler"]["guidance"] == "distilled"
    )
    assert fm["sampler"]["distilled_cfg_scale"] == 1.5
    rec = fm["distillation"]
    assert rec["method"] == "adversarial" and rec["init_sha256"] == weights_hash(distilled_teacher)
    assert rec["data"] == tiny_data and rec["steps"] == 4
    moved = [not torch.equal(a, b) for a, b in zip(model.parameters(), init.parameters())]
    assert any(moved)
    ckpt = tmp_path / "checkpoint-4"
    critic = load_file(ckpt / "critic.safetensors")
    assert any("label_embedding" in k for k in critic) and (ckpt / "critic_optimizer.safetensors").is_file()
    state = json.loads((ckpt / "state.json").read_text())
    assert len(state["losses"]) == 4 and all(np.isfinite(v) for _, v in state["losses"])


def test_multi_step_grid_times_and_digit_estimate():
    """K steps train on the K Euler grid times, each about equally often; on the straight path, the exact
    velocity x1 - x0 makes the digit estimate x_t - t v the teacher's digit at every time."""
    from fm_edge.distill import path_loss, sample_times

    t = sample_times(4000, 4, 1.0, torch.Generator().manual_seed(0))
    values, counts = torch.unique(t, return_counts=True)
    assert values.tolist() == [0.25, 0.5, 0.75, 1.0] and counts.min() > 900
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)

    class Exact(torch.nn.Module):
        def forward(self, x, t, class_labels=None):
            return SimpleNamespace(sample=x1 - x0)

    loss, digit = path_loss(Exact(), x1, torch.zeros(4, dtype=torch.long), x0, t[:4])
    assert loss.item() == 0.0 and torch.allclose(digit, x0, atol=1e-6)


def test_rollout_starts_rows_from_the_students_own_euler_steps():
    """--rollout: a row at grid index k starts from the student's own state after k Euler steps from its
    noise, and its target is the straight line from there to the teacher's digit. A student whose digit is
    the teacher's stays on the teacher path (loss 0 either way); any other student's own states leave it."""
    from fm_edge.distill import own_states, reflow_loss
    from fm_edge.student_net import build

    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 1, 32, 32, generator=g), torch.randn(64, 1, 32, 32, generator=g)
    labels = torch.arange(64) % 10

    class Oracle(torch.nn.Module):  # draws row i's teacher digit from any state (its "label" is i)
        def forward(self, x, t, class_labels=None):
            return SimpleNamespace(sample=(x - x0[class_labels]) / (t / 1000).view(-1, 1, 1, 1))

    for rollout in (0.0, 1.0):
        rows = torch.arange(64)
        loss, digit = reflow_loss(Oracle(), x1, rows, x0, 4, torch.Generator().manual_seed(1), rollout)
        assert loss.item() < 1e-10 and torch.allclose(digit, x0, atol=1e-5)
    net = build("tiny-digit-t").eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    k = torch.tensor([0, 1, 2, 3])
    got = own_states(net, x1[:4], labels[:4], k, 4)
    with torch.no_grad():
        for i in range(4):
            x = x1[i : i + 1]
            for j in range(int(k[i])):
                x = (
                    x
                    - net(x, torch.tensor([(1 - j / 4) * 1000.0]), class_labels=labels[i : i + 1]).sample / 4
                )
            torch.testing.assert_close(got[i : i + 1], x)
    assert torch.equal(got[0], x1[0]) and not torch.allclose(got[3], x1[3])
    plain = reflow_loss(net, x1, labels, x0, 4, torch.Generator().manual_seed(1))[0]
    own = reflow_loss(net, x1, labels, x0, 4, torch.Generator().manual_seed(1), 1.0)[0]
    assert not torch.isclose(plain, own)


def test_rollout_run_records_it(distilled_teacher, tiny_data, tmp_path):
    folder = distill(acfg(tmp_path, distilled_teacher, distilled_teacher, tiny_data, student_steps=2, rollout=0.5,
                          adv_weight=0.0, max_steps=2), progress=False)  # fmt: skip
    assert json.loads((folder / "fm_edge.json").read_text())["distillation"]["settings"]["rollout"] == 0.5


def test_multi_step_student_from_a_unet_init(distilled_teacher, tiny_data, tmp_path):
    """--student-steps 4 from a one-step UNet: the result samples in 4 Euler steps, its critic trained."""
    from fm_edge.backends import torch_backend

    folder = distill(acfg(tmp_path, distilled_teacher, distilled_teacher, tiny_data, student_steps=4),
                     progress=False)  # fmt: skip
    backend = torch_backend(folder, num_threads=1)
    assert backend.sampler.steps == 4 and backend.sampler.cfg_scale == 1.0
    assert json.loads((folder / "fm_edge.json").read_text())["distillation"]["student_steps"] == 4
    assert (tmp_path / "checkpoint-4" / "critic.safetensors").is_file()


def test_multi_step_student_from_its_guided_teacher(tiny_ckpt, tiny_data, tmp_path):
    """--student-steps 2 may start from the guided teacher's own weights (reflow), with the critic on: the
    student starts at the teacher's weights and samples in 2 steps without CFG, the teacher's scale folded in;
    one step from a guided init stays an error (below)."""
    from fm_edge.artifacts import weights_hash
    from fm_edge.backends import torch_backend
    from fm_edge.model import load, read_fm_config

    # a learning rate too small to move the weights: the student is where it started, with the critic's term on
    folder = distill(acfg(tmp_path, tiny_ckpt, tiny_ckpt, tiny_data, student_steps=2, max_steps=2, lr=1e-12),
                     progress=False)  # fmt: skip
    fm = read_fm_config(folder)
    assert fm["distillation"]["init_sha256"] == weights_hash(tiny_ckpt)
    teacher, student = load(tiny_ckpt)[0].state_dict(), load(folder)[0].state_dict()
    assert teacher.keys() == student.keys()
    assert all(torch.allclose(teacher[k], student[k], atol=1e-6) for k in teacher)
    assert fm["sampler"]["distilled_cfg_scale"] == read_fm_config(tiny_ckpt)["sampler"]["cfg_scale"]
    sampler = torch_backend(folder, num_threads=1).sampler
    assert sampler.steps == 2 and sampler.cfg_scale == 1.0


def test_multi_step_student_from_a_time_free_digit_net(distilled_teacher, tiny_data, tmp_path):
    """--student-steps 2 from a time-free '-digit' net: the student starts as its '-t' size (equal at t = 1),
    and the result samples in 2 steps; a time-free velocity net is still refused (test below)."""
    from fm_edge.backends import torch_backend
    from fm_edge.model import load

    flat = distill(rcfg(tmp_path / "flat", distilled_teacher, max_steps=1, student_arch="tiny-digit"),
                   progress=False)  # fmt: skip
    folder = distill(acfg(tmp_path / "run", distilled_teacher, flat, tiny_data, student_steps=2, max_steps=2),
                     progress=False)  # fmt: skip
    model, fm = load(folder)
    assert model.config.time_input and fm["preset"] == "tiny-digit-t" and fm["sampler"]["steps"] == 2
    assert "zero weights" in fm["distillation"]["init_t_plane"]
    assert torch_backend(folder, num_threads=1).sampler.steps == 2


def test_the_critic_term_changes_the_update(distilled_teacher, tiny_data, tmp_path):
    """adv_weight 0 is plain regression from the init; any weight > 0 moves the student elsewhere."""
    from fm_edge.model import load

    plain, _ = load(distill(acfg(tmp_path / "a", distilled_teacher, distilled_teacher, tiny_data, adv_weight=0.0, max_steps=2),
                            progress=False))  # fmt: skip
    sharp, _ = load(
        distill(
            acfg(tmp_path / "b", distilled_teacher, distilled_teacher, tiny_data, max_steps=2), progress=False
        )
    )
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), sharp.parameters()))


def test_with_both_weights_zero_the_critic_does_no_work(distilled_teacher, tiny_data, tmp_path):
    """Plain regression (adv and class weight 0) leaves the critic as it was made: no steps, no updates,
    and no real digits read (the --data folder here does not exist)."""
    from safetensors.torch import load_file

    from fm_edge.critic import Critic

    no_data = str(tmp_path / "no-such-mnist")
    cfg = acfg(tmp_path, distilled_teacher, distilled_teacher, no_data, adv_weight=0.0, max_steps=2)
    folder = distill(cfg, progress=False)
    assert json.loads((folder / "fm_edge.json").read_text())["distillation"]["data"] is None
    torch.manual_seed(cfg.seed)
    fresh = Critic().state_dict()
    saved = load_file(tmp_path / "checkpoint-2" / "critic.safetensors")
    assert saved.keys() == fresh.keys() and all(torch.equal(saved[k], fresh[k]) for k in fresh)
    cfg = acfg(tmp_path / "b", distilled_teacher, distilled_teacher, tiny_data, class_weight=0.5, adv_weight=0.0,
               max_steps=2)  # fmt: skip
    distill(cfg, progress=False)
    moved = load_file(tmp_path / "b" / "checkpoint-2" / "critic.safetensors")
    assert any(not torch.equal(moved[k], fresh[k]) for k in fresh)


def test_adversarial_interrupted_resumes_exactly(distilled_teacher, tiny_data, tmp_path, monkeypatch):
    from conftest import interrupt_at_call
    from safetensors.torch import load_file
    from test_distill import _assert_same_run

    import fm_edge.critic as c

    straight = distill(
        acfg(tmp_path / "straight", distilled_teacher, distilled_teacher, tiny_data, max_steps=6),
        progress=False,
    )
    real = interrupt_at_call(monkeypatch, c, "critic_loss", 5)
    with pytest.raises(KeyboardInterrupt):
        distill(
            acfg(tmp_path / "split", distilled_teacher, distilled_teacher, tiny_data, max_steps=6),
            progress=False,
        )
    monkeypatch.setattr(c, "critic_loss", real)
    split = distill(
        acfg(tmp_path / "split", distilled_teacher, distilled_teacher, tiny_data, max_steps=6),
        resume="latest",
        progress=False,
    )
    _assert_same_run(straight.parent, split.parent, 6)
    for name in ("critic.safetensors", "critic_optimizer.safetensors"):
        a, b = (load_file(p.parent / "checkpoint-6" / name) for p in (straight, split))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adversarial_sigkill_then_resume(distilled_teacher, tiny_data, tmp_path):
    from conftest import sigkill_at_marker
    from test_distill import KILLABLE

    run, marker = tmp_path / "run", tmp_path / "marker"
    argv = ["distill", "--method", "adversarial", "--teacher", str(distilled_teacher), "--init", str(distilled_teacher),
            "--data", tiny_data, "--pairs", "24", "--batch-size", "8", "--max-steps", "4",
            "--checkpoint-every", "2", "--num-threads", "1", "--device", "cpu", "-o", str(run)]  # fmt: skip
    killable = KILLABLE.replace("d.pairs_loss", "d.regress_loss")  # hang inside an adversarial step
    sigkill_at_marker(
        [sys.executable, "-c", killable, str(marker), "3", *argv], marker, "step 3", timeout=900
    )
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (run / "model").exists()
    r = subprocess.run([sys.executable, "-m", "fm_edge.cli", *argv, "--resume", "latest"],
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "checkpoint-2" in r.stderr
    fm = json.loads((run / "model" / "fm_edge.json").read_text())
    assert fm["distillation"]["method"] == "adversarial" and fm["distillation"]["steps"] == 4


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(init=None), "pass --init DIR"),
        (dict(adv_weight=-1.0), "--adv-weight must be a finite number >= 0"),
        (dict(adv_weight=float("nan")), "--adv-weight must be a finite number >= 0"),
        (dict(class_weight=-0.5), "--class-weight must be a finite number >= 0"),
        (dict(class_weight=float("inf")), "--class-weight must be a finite number >= 0"),
        (dict(student_steps=3), "--student-steps must be 1, 2, 4 or 8"),
        (dict(critic_warmup=-1), "--critic-warmup must be >= 0 and below --max-steps"),
        (dict(critic_warmup=4), "--critic-warmup must be >= 0 and below --max-steps"),
        (dict(critic_warmup=2, adv_weight=0.0), "--critic-warmup warms the critic"),
        (dict(critic_lr=0.0), "--critic-lr must be a finite number > 0"),
        (dict(rollout=1.5), "--rollout must be in \\[0, 1\\]"),
        (dict(rollout=0.5), "--rollout starts rows from the student's own Euler steps"),
        (dict(critic_lr=float("nan")), "--critic-lr must be a finite number > 0"),
    ],
)
def test_adversarial_bad_settings_are_one_usage_error(kw, match, distilled_teacher, tiny_data, tmp_path):
    with pytest.raises(UsageError, match=match):
        distill(
            acfg(tmp_path / "out", distilled_teacher, kw.pop("init", distilled_teacher), tiny_data, **kw),
            progress=False,
        )
    assert not (tmp_path / "out").exists()


def test_adversarial_bad_files_write_nothing(distilled_teacher, tiny_ckpt, tiny_data, tmp_path):
    with pytest.raises(UsageError, match="samples with classifier-free guidance.*--student-steps 2 or more"):
        distill(acfg(tmp_path / "out", distilled_teacher, tiny_ckpt, tiny_data), progress=False)
    one_step = distill(rcfg(tmp_path / "regress", distilled_teacher, max_steps=1), progress=False)
    with pytest.raises(UsageError, match="--student-steps 2: this one-step student .* runs exactly 1 step"):
        distill(
            acfg(tmp_path / "out", distilled_teacher, one_step, tiny_data, student_steps=2), progress=False
        )
    with pytest.raises(UsageError, match="holds no MNIST 'train' split"):
        distill(acfg(tmp_path / "out", distilled_teacher, distilled_teacher, str(tmp_path)), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        distill(acfg(tmp_path / "out", distilled_teacher, tmp_path / "empty", tiny_data), progress=False)
    assert not (tmp_path / "out").exists()


def test_adversarial_cli_errors_are_one_line(distilled_teacher, tmp_path):
    argv = [sys.executable, "-m", "fm_edge.cli", "distill", "--method", "adversarial", "--teacher",
            str(distilled_teacher), "-o", str(tmp_path / "out"), "--adv-weight", "-2", "--init", str(distilled_teacher)]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--adv-weight" in r.stderr
    assert not (tmp_path / "out").exists()
    r = subprocess.run(
        [*argv[:-4], "--class-weight", "nan", *argv[-2:]], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--class-weight" in r.stderr
    assert not (tmp_path / "out").exists()
    r = subprocess.run(
        [*argv[:-4], "--critic-warmup", "5000", *argv[-2:]], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--critic-warmup" in r.stderr
    assert not (tmp_path / "out").exists()
    r = subprocess.run(
        [*argv[:-4], "--warmup-steps", "-3", *argv[-2:]], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--warmup-steps" in r.stderr
    assert not (tmp_path / "out").exists()


def test_channels_last_runs_the_student_and_critic_convs_in_it(
    distilled_teacher, tiny_data, tmp_path, monkeypatch
):
    """--channels-last: every conv trained in the steps (student and critic) has channels_last weights, the
    checkpoints hold contiguous copies, and the run lands where the plain one does."""
    from safetensors.torch import load_file

    from fm_edge.loop import TrainingLoop
    from fm_edge.model import load

    seen, run_steps = [], TrainingLoop.run

    def note(m, _):  # a weight with one input channel or a 1x1 kernel is in both formats: left out
        trained = isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad
        if trained and min(m.weight.shape[1:]) > 1:
            seen.append(m.weight.is_contiguous(memory_format=torch.channels_last))

    def watched(self, *a, **k):  # only the training steps, not the checks before and after them
        hook = torch.nn.modules.module.register_module_forward_pre_hook(note)
        try:
            return run_steps(self, *a, **k)
        finally:
            hook.remove()

    monkeypatch.setattr(TrainingLoop, "run", watched)

    def run(name, **kw):
        seen.clear()
        cfg = acfg(tmp_path / name, distilled_teacher, distilled_teacher, tiny_data, max_steps=2, **kw)
        folder = distill(cfg, progress=False)
        critic = load_file(tmp_path / name / "checkpoint-2" / "critic.safetensors")
        return load(folder)[0], critic, list(seen), folder

    plain, plain_critic, seen_plain, _ = run("plain")
    cl, cl_critic, seen_cl, folder = run("cl", channels_last=True)
    assert seen_cl and all(seen_cl) and not any(seen_plain)
    for a, b in zip(plain.parameters(), cl.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=0)
    assert cl_critic.keys() == plain_critic.keys() and all(v.is_contiguous() for v in cl_critic.values())
    assert (
        json.loads((folder / "fm_edge.json").read_text())["distillation"]["settings"]["channels_last"] is True
    )
