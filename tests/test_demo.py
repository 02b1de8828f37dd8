"""fm_edge.demo: the Gradio page as a service (gradio_client), in a real browser (Playwright + Debian's
chromium), and in laptop mode (no torch).

The models are the tiny test checkpoint's velocity.onnx and an int8 version of it made here; the PyTorch
reference column uses the checkpoint itself.
"""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'fm-edge[demo]'")

from fm_edge.demo.compare import MIN_HEAT_RANGE, colour_bar, grid_scale, heatmap, tile  # noqa: E402
from fm_edge.demo.inputs import MAX_SAMPLES, MAX_STEPS, parse  # noqa: E402
from fm_edge.demo.models import FP32_FILE, INT8_FILE, model_folder  # noqa: E402
from fm_edge.errors import UsageError  # noqa: E402
from fm_edge.metrics import diff_stats  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: int8 against fp32 on the same noise, the tiny untrained net: measured ~34 dB (37 dB with the plain quantize_static fallback); a broken int8 path (wrong
#: scale, wrong labels, other noise) lands far below.
INT8_MIN_PSNR_DB = 20.0
ARGS = ("cycle", 6, 2, "euler", 1.5, 7, False)  # digit, samples, steps, solver, cfg, seed, randomize


# --- fixtures: the two ONNX files, a served demo ---


def make_int8(fp32_path: Path, out_path: Path, num_noises: int = 11) -> None:
    """velocity_int8.onnx from velocity.onnx, calibrated on the sampler's own trajectories.

    Uses fm-edge's quantize API when this build has it; otherwise ORT's static QDQ directly.
    """
    from fm_edge.runtime import OnnxVelocity

    v = OnnxVelocity(fp32_path, num_threads=1)
    rec = v.sampler.to_dict()
    try:
        from fm_edge.quantize.calibrate import collect
        from fm_edge.quantize.ort_int8 import quantize_velocity
    except ImportError:
        quantize_velocity = None
    if quantize_velocity is not None:
        calib = collect(v, num_noises, rec["solver"], rec["steps"], rec["cfg_scale"], rec["shift"])
        quantize_velocity(fp32_path, out_path, calib, log=io.StringIO())
        return
    _quantize_static(v, fp32_path, out_path, rec, num_noises)


def _quantize_static(v, fp32_path: Path, out_path: Path, rec: dict, num_noises: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from fm_edge.backends import make_noise
    from fm_edge.convention import T_SCALE
    from fm_edge.solvers import sample

    feeds = []

    def recording(x, t, y):
        tt = np.full(len(x), t * T_SCALE, np.float32)
        feeds.append({"sample": x.copy(), "timestep": tt, "class_labels": np.asarray(y, np.int64)})
        return v(x, t, y)

    labels = np.arange(num_noises, dtype=np.int64) % 11
    sample(recording, make_noise(num_noises, 0), labels, rec["steps"], rec["solver"], rec["cfg_scale"])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(fp32_path),
        str(out_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )


@pytest.fixture(scope="session")
def demo_onnx(tiny_onnx, tmp_path_factory) -> Path:
    """A folder with the tiny velocity.onnx and its velocity_int8.onnx."""
    out = tmp_path_factory.mktemp("demo_onnx")
    shutil.copy(tiny_onnx / FP32_FILE, out / FP32_FILE)
    make_int8(out / FP32_FILE, out / INT8_FILE)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(demo_onnx, tiny_ckpt):
    """The demo (with the PyTorch reference) served in this process: (Blocks, url)."""
    from fm_edge.demo.app import launch
    from fm_edge.demo.command import build_demo

    demo = build_demo(demo_onnx, checkpoint=tiny_ckpt, num_threads=1)
    _, url, _ = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[1], verbose=False)


def read_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def predict(client, *args):
    return client.predict(*args, api_name="/generate")


# --- request checks and image helpers (no server) ---


def test_parse_accepts_the_page_values():
    req = parse("3", 4.0, 8, "heun", 2, 11, False)
    assert req.labels.tolist() == [3, 3, 3, 3] and req.steps == 8 and req.seed == 11 and not req.randomized
    assert parse("cycle", 12, 1, "euler", 1.0, 0).labels.tolist() == [*range(10), 0, 1]
    assert set(parse("any", 3, 1, "euler", 1.0, 0).labels.tolist()) == {10}
    r = parse("0", 1, 1, "euler", 1.0, None, randomize=True)
    assert r.randomized and 0 <= r.seed < 2**31


@pytest.mark.parametrize(
    "args, words",
    [
        (("3", MAX_SAMPLES + 1, 4, "euler", 1, 0), ["number of samples", "1 to 64", "65"]),
        (("3", 0, 4, "euler", 1, 0), ["number of samples", "got 0"]),
        (("3", 4, MAX_STEPS + 1, "euler", 1, 0), ["ODE steps", "1 to 64"]),
        (("3", 4, 2.5, "euler", 1, 0), ["ODE steps", "whole number", "2.5"]),
        (("3", 4, 4, "dopri5", 1, 0), ["solver", "euler", "dopri5"]),
        (("3", 4, 4, "euler", 21, 0), ["CFG scale", "0 to 20"]),
        (("3", 4, 4, "euler", float("nan"), 0), ["CFG scale"]),
        (("12", 4, 4, "euler", 1, 0), ["digit", "any", "'12'"]),
        (("3", 4, 4, "euler", 1, -1), ["seed", "0 to"]),
        (("3", 4, 4, "euler", 1, "abc"), ["seed", "'abc'"]),
    ],
)
def test_parse_rejects_with_one_readable_line(args, words):
    with pytest.raises(UsageError) as e:
        parse(*args)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_tile_upscales_nearest_neighbour_only():
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    g = tile(images)
    s = grid_scale(4)
    assert s > 1 and g.dtype == np.uint8
    # every source pixel becomes an s x s block of exactly its value: no interpolated values anywhere
    y0, x0 = 2 * s, 2 * s  # first digit's top-left corner (2 px padding, scaled)
    block = g[y0 : y0 + 28 * s, x0 : x0 + 28 * s]
    np.testing.assert_array_equal(block, images[0].repeat(s, 0).repeat(s, 1))
    assert set(np.unique(g)) <= set(np.unique(images)) | {56}


def test_diff_stats_and_heatmap():
    a = np.zeros((2, 28, 28), np.uint8)
    b = a.copy()
    assert diff_stats(a, b) == {"psnr_db": None, "max_abs_diff": 0, "mean_abs_diff": 0.0, "identical": True}
    b[1, 5, 5] = 40
    s = diff_stats(a, b)
    assert s["max_abs_diff"] == 40 and not s["identical"] and 30 < s["psnr_db"] < 60
    rgb, top = heatmap(a, b)
    assert rgb.shape[-1] == 3 and top == 40
    _, top = heatmap(a, a)
    assert top == MIN_HEAT_RANGE


def test_model_folder_names_what_is_missing(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        model_folder(tmp_path / "nope")
    (tmp_path / FP32_FILE).write_bytes(b"")
    with pytest.raises(UsageError) as e:
        model_folder(tmp_path)
    assert INT8_FILE in str(e.value) and "fm-edge export --int8" in str(e.value)


def test_int8_file_of_other_weights_is_refused(demo_onnx, tmp_path):
    from conftest import set_onnx_metadata

    from fm_edge.demo.models import load_models

    shutil.copytree(demo_onnx, tmp_path / "mixed")
    int8 = tmp_path / "mixed" / INT8_FILE
    set_onnx_metadata(int8, int8, checkpoint_sha256="0" * 64)  # as if quantized from another checkpoint
    with pytest.raises(UsageError, match="quantized from other weights"):
        load_models(tmp_path / "mixed", reference=False)


def test_cli_demo_without_models_is_one_line(tmp_path, capsys):
    from fm_edge.cli import main

    assert main(["demo", "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none" in err


def test_cli_demo_port_in_use_is_one_line(demo_onnx, capsys):
    from fm_edge.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["demo", "--model", str(demo_onnx), "--port", str(port), "--no-reference"])
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and err == f"fm-edge demo: error: port {port} on 127.0.0.1 is in use: pass another --port"
    )


# --- in process, through gradio_client ---


def test_served_on_localhost_queued_without_analytics(served):
    demo, url = served
    assert url.startswith("http://127.0.0.1:")
    assert demo.analytics_enabled is False
    assert demo._queue.max_size == 32
    deps = [d for d in demo.fns.values() if d.api_name == "generate"]
    assert len(deps) == 1 and deps[0].concurrency_limit == 1


def test_same_seed_same_images(client):
    a = predict(client, *ARGS)
    b = predict(client, *ARGS)
    for i in (0, 1, 2, 3):
        np.testing.assert_array_equal(read_png(a[i]), read_png(b[i]))
    assert a[6] == 7 and a[5]["seed"] == 7 and not a[5]["randomized"]
    c = predict(client, *ARGS[:5], 8, False)
    assert not np.array_equal(read_png(a[0]), read_png(c[0]))


def test_int8_close_to_fp32_from_the_same_noise(client):
    fp32, int8, ref, heat, stats, metrics, _, student = predict(client, *ARGS)
    assert student is None  # no distilled model in this folder: no student column
    g32, g8 = read_png(fp32), read_png(int8)
    assert g32.shape == g8.shape == (62 * grid_scale(6), 92 * grid_scale(6))  # 2 rows of 3 digits, upscaled
    d = metrics["diffs"]["ONNX int8 vs ONNX fp32"]
    assert d["identical"] or d["psnr_db"] > INT8_MIN_PSNR_DB, d
    assert int(np.abs(g32.astype(int) - g8.astype(int)).max()) == d["max_abs_diff"]
    # the PyTorch reference: the same net as velocity.onnx, so (nearly) the same digits
    r = metrics["diffs"]["PyTorch fp32 vs ONNX fp32"]
    assert r["max_abs_diff"] <= 2, r
    np.testing.assert_allclose(read_png(ref), g32, atol=2)
    assert set(metrics["backends"]) == {"ONNX fp32", "ONNX int8", "PyTorch fp32"}
    for b in metrics["backends"].values():
        assert b["ms_per_image"] > 0 and b["model_bytes"] > 0
    assert "latency per image" in stats and "max |diff|" in stats and "model size" in stats
    h = read_png(heat)  # the grid's layout, with the colour scale under it
    assert h.shape == (g32.shape[0] + colour_bar(g32.shape[1], 16).shape[0], g32.shape[1])


def test_randomize_reports_the_seed_used(client):
    out = predict(client, "5", 2, 1, "euler", 1.0, 0, True)
    seed = out[6]
    assert out[5]["randomized"] and out[5]["seed"] == seed and f"seed {seed} (randomized)" in out[4]
    again = predict(client, "5", 2, 1, "euler", 1.0, seed, False)
    np.testing.assert_array_equal(read_png(out[0]), read_png(again[0]))


@pytest.mark.parametrize(
    "args, words",
    [
        (("3", 65, 2, "euler", 1.0, 0, False), ["64"]),
        (("3", 2, 65, "euler", 1.0, 0, False), ["64"]),
        (("3", 2, 2.5, "euler", 1.0, 0, False), ["ODE steps", "whole number"]),
        (("3", 2, 2, "rk45", 1.0, 0, False), ["rk45"]),
        (("3", 2, 2, "euler", 50.0, 0, False), ["20"]),
        (("3", 2, 2, "euler", 1.0, 1.5, False), ["seed", "whole number"]),
    ],
)
def test_api_bounds_enforced_with_a_readable_message(client, args, words):
    from gradio_client.exceptions import ValidationError

    with pytest.raises(ValidationError) as e:  # refused by the queue's validator, before joining the queue
        predict(client, *args)
    header, *fields = str(e.value).splitlines()
    assert header == "1 parameter(s) failed validation:" and len(fields) == 1, str(e.value)
    assert all(w in fields[0] for w in words) and "Traceback" not in fields[0], fields


def test_field_errors_flag_only_the_bad_control():
    from fm_edge.demo.inputs import field_errors

    good = ("3", 2, 4, "euler", 1.5, 7, False)
    assert field_errors(*good) == [None] * 7
    for i, bad in enumerate(["11", 0, 2.5, "rk45", float("nan"), -1, "yes"]):
        errors = field_errors(*good[:i], bad, *good[i + 1 :])
        assert [j for j, e in enumerate(errors) if e] == [i], (i, errors)
    assert field_errors("3", 2, 4, "euler", 1.5, -1, True) == [None] * 7  # randomized: the seed is drawn


# --- in a real browser ---


def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (.ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install playwright")
    return sync_playwright


def _browser_models(demo_onnx, tiny_ckpt):
    """(model folder, checkpoint) for the browser test: FM_EDGE_DEMO_MODEL when set; with FM_EDGE_SCREENSHOT
    the shipped files when they exist (a screenshot of real digits); else the tiny test models."""
    from fm_edge.artifacts import SHIPPED_ONNX

    if os.environ.get("FM_EDGE_DEMO_MODEL"):
        return Path(os.environ["FM_EDGE_DEMO_MODEL"]), None
    shipped = all((SHIPPED_ONNX / f).is_file() for f in (FP32_FILE, INT8_FILE))
    if os.environ.get("FM_EDGE_SCREENSHOT") and shipped:
        return SHIPPED_ONNX, None
    return demo_onnx, tiny_ckpt


@pytest.mark.browser
def test_browser_pick_digit_generate_both_grids(demo_onnx, tiny_ckpt, tmp_path):
    sync_playwright = _browser_or_skip()
    from fm_edge.demo.app import launch
    from fm_edge.demo.command import build_demo

    model_dir, ckpt = _browser_models(demo_onnx, tiny_ckpt)
    demo = build_demo(model_dir, checkpoint=ckpt, num_threads=1)
    _, url, _ = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    shot = REPO / "docs" / "demo.png" if os.environ.get("FM_EDGE_SCREENSHOT") else tmp_path / "demo.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(240_000)
            page.goto(url)
            # pick a digit
            page.locator("#digit input").click()
            page.get_by_role("option", name="7", exact=True).click()
            assert page.locator("#digit input").input_value() == "7"
            page.locator("#generate").click()
            # wait for both grids (and the numbers under them)
            for sel in ("#grid-fp32 img", "#grid-int8 img", "#heatmap img"):
                page.wait_for_selector(sel, state="visible")
            page.wait_for_function(
                "() => ['#grid-fp32 img', '#grid-int8 img'].every(s => {"
                " const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; })"
            )
            page.locator("#stats").get_by_text("ONNX int8 vs ONNX fp32").wait_for()
            sizes = [page.locator(f"{s} img").evaluate("i => [i.naturalWidth, i.naturalHeight]") for s in
                     ("#grid-fp32", "#grid-int8")]  # fmt: skip
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    finally:
        demo.close()
    assert sizes[0] == sizes[1] and sizes[0][0] > 100, sizes
    assert shot.stat().st_size > 10_000


# --- laptop mode: fm-edge demo without torch ---


def test_laptop_mode_cli_serves_without_torch(demo_onnx, tmp_path):
    from gradio_client import Client
    from test_runtime import _torch_free_env

    env = _torch_free_env(tmp_path)
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "hidden by the torch-free test" in probe.stderr
    port = free_port()
    cmd = [sys.executable, "-m", "fm_edge.cli", "demo", "--model", str(demo_onnx), "--port", str(port)]
    log = open(tmp_path / "demo.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen([*cmd, "--num-threads", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "fm-edge demo did not serve a page in 300 s"
            time.sleep(0.5)
        out = Client(url, verbose=False).predict("4", 3, 2, "euler", 1.0, 1, False, api_name="/generate")
        fp32, int8, ref, _, stats, metrics, seed, _student = out
        assert ref is None and "torch is not installed" in stats and seed == 1
        assert set(metrics["backends"]) == {"ONNX fp32", "ONNX int8"}
        assert read_png(fp32).shape == read_png(int8).shape
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_mean_flow_export_locks_the_steps_slider_at_its_step_count(demo_onnx, tmp_path):
    """A mean-flow student's export runs only the step count baked into it: the slider shows that, locked."""
    import gradio as gr
    from conftest import set_onnx_metadata

    from fm_edge.artifacts import MEAN_FLOW_STEP
    from fm_edge.demo.command import build_demo

    def steps_slider(folder):
        demo = build_demo(folder, reference=False, num_threads=1)
        (s,) = [
            c for c in demo.blocks.values() if isinstance(c, gr.Slider) and c.label.startswith("ODE steps")
        ]
        return s

    for name in (FP32_FILE, INT8_FILE):
        set_onnx_metadata(demo_onnx / name, tmp_path / name, **{MEAN_FLOW_STEP: repr(1 / 2)})
    locked, free = steps_slider(tmp_path), steps_slider(demo_onnx)
    assert (locked.value, locked.interactive) == (2, False) and "exported for 2 steps" in locked.label
    assert free.interactive is not False and free.label == "ODE steps"


# --- the one-step student column ---


def test_student_column_samples_the_same_noise_in_one_evaluation(demo_onnx, tiny_onnx, tmp_path):
    """A distilled model beside the teacher: its own 1-step sampler, the same noise, 1 evaluation per digit."""
    import json as _json

    from conftest import set_onnx_metadata

    from fm_edge.demo.app import make_handler
    from fm_edge.demo.models import load_models

    student = tmp_path / "student"
    student.mkdir()
    rec = {"solver": "euler", "steps": 1, "cfg_scale": 1.0, "shift": 1.0, "guidance": "distilled",
           "distilled_cfg_scale": 1.5}  # fmt: skip
    set_onnx_metadata(tiny_onnx / FP32_FILE, student / FP32_FILE, recommended_sampler=_json.dumps(rec))
    models = load_models(demo_onnx, reference=False, student=student, num_threads=1)
    out = make_handler(models)("cycle", 4, 2, "euler", 2.0, 3, False, progress=lambda *a, **k: None)
    metrics, grid = out[5], out[7]
    assert grid is not None and grid.shape == tile(np.zeros((4, 28, 28), np.uint8)).shape
    backends = metrics["backends"]
    assert backends["one-step student"]["network_evals_per_image"] == 1
    assert backends["ONNX fp32"]["network_evals_per_image"] == 4  # 2 Euler steps x CFG
    assert "one-step student" not in " ".join(metrics["diffs"])  # another model: no quantization diff
    assert "1 network evaluation per digit" in out[4]
    with pytest.raises(UsageError, match="not a distilled model"):  # the teacher itself is no student
        load_models(demo_onnx, reference=False, student=demo_onnx, num_threads=1)
