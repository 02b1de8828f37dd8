"""Shared fixtures: the shipped tiny MNIST slice, a tiny (untrained) checkpoint folder and its one-step student."""

import json
from pathlib import Path

import pytest

TINY_DATA = Path(__file__).parent / "data" / "mnist_tiny"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads each run far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_data() -> str:
    return str(TINY_DATA)


def make_tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A save_pretrained folder of the ``tiny`` preset with an fm_edge.json, like a trained one."""
    import torch

    from fm_edge.artifacts import FM_CONFIG
    from fm_edge.model import build, fm_config

    torch.manual_seed(seed)
    model = build("tiny")
    with torch.no_grad():  # diffusers zero-initialises the output conv; make the net depend on its input
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.05)
    model.save_pretrained(folder, safe_serialization=True)
    cfg = fm_config("tiny", sampler={"solver": "heun", "steps": 3, "cfg_scale": 1.5, "shift": 1.0})
    (Path(folder) / FM_CONFIG).write_text(json.dumps(cfg))
    return Path(folder)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_ckpt, tmp_path_factory) -> Path:
    """A folder with velocity.onnx and sampler.onnx exported (and validated) from ``tiny_ckpt``."""
    import io

    from fm_edge.export.command import export

    out = tmp_path_factory.mktemp("tiny_onnx") / "onnx"
    export(tiny_ckpt, out, num_threads=1, log=io.StringIO())
    return out


def set_onnx_metadata(src: Path, dst: Path, **values: str) -> Path:
    """Copy an .onnx file with some metadata_props changed or added (e.g. another checkpoint_sha256)."""
    import onnx

    m = onnx.load(str(src))
    props = {**{p.key: p.value for p in m.metadata_props}, **values}
    onnx.helper.set_model_props(m, props)
    onnx.save(m, str(dst))
    return dst


def load_script(name: str):
    """``scripts/<name>.py`` as a module, for tests of the scripts' functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).parent.parent / "scripts" / f"{name}.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def interrupt_at_call(monkeypatch, module, name: str, n: int):
    """Make ``module.name`` raise KeyboardInterrupt on its n-th call (Ctrl-C inside that training step);
    returns the real function, to put back before the resume."""
    real, calls = getattr(module, name), []

    def interrupting(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, name, interrupting)
    return real


def sigkill_at_marker(cmd: list[str], marker: Path, what: str, timeout: float = 240):
    """Start ``cmd``, wait until it writes ``marker``, then SIGKILL it; the ended process (for its stderr)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"never reached {what}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return proc


@pytest.fixture(scope="session")
def distilled_teacher(tiny_ckpt, tmp_path_factory):
    """A tiny one-step UNet student (pairs distillation, CFG 1.5 folded in): the teacher the regress method
    is made for, and the init the adversarial method sharpens."""
    from fm_edge.distill import DistillConfig, distill

    out = tmp_path_factory.mktemp("pairs_student")
    return distill(
        DistillConfig(teacher=str(tiny_ckpt), output_dir=str(out), method="pairs", cfg_scale=1.5, pairs=16,
                      batch_size=8, max_steps=1, num_threads=1, device="cpu"),
        progress=False,
    )  # fmt: skip
