"""fm-edge web: the site the CLI writes, its bad input, the documented JS snippet run in Node, and the page in
headless Chromium against Python onnxruntime on the same noise and labels."""

import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from test_bad_input import error_lines, snapshot

from fm_edge.cli import main
from fm_edge.web import command as web

ROOT = Path(__file__).resolve().parents[1]
SNIPPET = ROOT / "fm_edge" / "web" / "static" / "fm-edge-sampler.js"
EMBED = re.compile(r"// --- embed: start ---\n(.*?)// --- embed: end ---\n", re.S)
BATCH = 16
#: int8 against fp32 from the same noise, the shipped one-step student: ~35 dB measured; other noise or labels, or a
#: broken int8 path, land far below
INT8_MIN_PSNR_DB = 30.0


def ort_dist_or_skip() -> Path:
    try:
        return web.find_ort_dist(None)
    except Exception as exc:
        pytest.skip(f"onnxruntime-web is not installed ({exc}); run: npm ci --prefix web (.ci/run does)")


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node: install Node 20+ to run the embedding snippet")
    return node


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def python_digits(model: Path, noise: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from fm_edge.runtime import OnnxSampler

    return OnnxSampler(model, num_threads=1)(noise, labels)


def same_noise(n: int, seed: int = 20) -> tuple[np.ndarray, np.ndarray]:
    noise = np.random.default_rng(seed).standard_normal((n, 1, 32, 32), dtype=np.float32)
    return noise, np.arange(n, dtype=np.int64) % 10


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    ort_dist_or_skip()
    out = tmp_path_factory.mktemp("web") / "site"
    assert main(["web", "-o", str(out)]) == 0
    return out


# --- the command ---


def test_site_has_the_page_the_samplers_and_only_the_runtime_files_it_loads(site, capsys):
    info = json.loads((site / "site.json").read_text())
    assert info["generator"] == "fm-edge web" and info["max_count"] == web.MAX_COUNT
    fp32, int8 = (site / info["models"][k] for k in ("fp32", "int8"))
    assert fp32.read_bytes() == web.DEFAULT_SAMPLER.read_bytes()
    assert int8.read_bytes() == web.DEFAULT_SAMPLER.with_name(web.INT8_NAME).read_bytes()
    assert info["ort"] == {"module": f"ort/{web.ORT_WEBGPU[0]}", "webgpu": True}
    assert sorted(p.name for p in (site / "ort").iterdir()) == sorted(web.ORT_WEBGPU)
    for name in web.PAGE_FILES:
        assert (site / name).read_bytes() == (web.STATIC / name).read_bytes()
    headers = (site / "_headers").read_text()
    assert "Cross-Origin-Opener-Policy: same-origin" in headers
    assert "Cross-Origin-Embedder-Policy: require-corp" in headers
    total = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    assert total <= web.SITE_BUDGET_BYTES, total
    listed = set(info["offline"]) - {"./"}
    assert listed <= {str(p.relative_to(site)) for p in site.rglob("*")}
    assert not any(".tmp" in p.name or ".old" in p.name for p in site.parent.iterdir())


def test_rebuild_replaces_an_earlier_site_and_no_webgpu_drops_that_build(site, tmp_path):
    out = tmp_path / "site"
    shutil.copytree(site, out)
    (out / "stale.txt").write_text("from an earlier build")
    assert main(["web", "-o", str(out), "--no-webgpu", "--no-int8"]) == 0
    info = json.loads((out / "site.json").read_text())
    assert info["ort"] == {"module": f"ort/{web.ORT_WASM[0]}", "webgpu": False}
    assert list(info["models"]) == ["fp32"]
    assert sorted(p.name for p in (out / "ort").iterdir()) == sorted(web.ORT_WASM)
    assert not (out / "stale.txt").exists()


def test_a_dist_with_only_the_plain_build_serves_no_webgpu_and_names_what_is_missing(tmp_path, capsys):
    plain = tmp_path / "dist"
    plain.mkdir()
    for name in web.ORT_WASM:
        shutil.copyfile(ort_dist_or_skip() / name, plain / name)
    assert main(["web", "-o", str(tmp_path / "a"), "--ort-dist", str(plain), "--no-webgpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "a" / "ort").iterdir()) == sorted(web.ORT_WASM)
    capsys.readouterr()
    assert main(["web", "-o", str(tmp_path / "b"), "--ort-dist", str(plain)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onnxruntime-web's files are missing" in err, err
    assert not (tmp_path / "b").exists()


TEACHER = web.DEFAULT_SAMPLER.parents[2] / "teacher-mnist-digit-t" / "onnx"


def _bad_inputs(root: Path) -> None:
    """Bad files and folders (the shipped teacher's velocity.onnx is a real ONNX file but no sampler)."""
    bad = root / "bad"
    bad.mkdir()
    (bad / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    shutil.copy(TEACHER / "velocity.onnx", bad / "velocity.onnx")
    (root / "a_file").write_text("not a folder")
    (root / "busy").mkdir()
    (root / "busy" / "notes.txt").write_text("someone's work")
    (root / "fake_dist").mkdir()


BAD = [
    ("model-missing", ["--model", "{ws}/nope.onnx"], ["--model", "nope.onnx", "not a file"]),
    ("model-random", ["--model", "{ws}/bad/random.onnx"], ["--model", "random.onnx", "not an ONNX file"]),
    ("model-velocity", ["--model", "{ws}/bad/velocity.onnx"], ["velocity.onnx", "not an fm-edge sampler"]),
    (
        "int8-other-weights",
        [
            "--model",
            f"{TEACHER}/sampler.onnx",
            "--int8-model",
            str(web.DEFAULT_SAMPLER.with_name(web.INT8_NAME)),
        ],
        ["sampler_int8.onnx", "other weights"],
    ),
    ("int8-missing", ["--int8-model", "{ws}/nope.onnx"], ["--int8-model", "not a file"]),
    ("output-is-a-file", ["-o", "{ws}/a_file"], ["a_file", "is a file"]),
    ("output-not-a-site", ["-o", "{ws}/busy"], ["busy", "new or empty folder"]),
    ("ort-dist-missing", ["--ort-dist", "{ws}/fake_dist"], ["onnxruntime-web", "fake_dist", "--ort-dist"]),
]


@pytest.mark.parametrize("argv, words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_and_writes_nothing(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FM_EDGE_DEBUG", raising=False)
    _bad_inputs(tmp_path)
    argv = [a.format(ws=tmp_path) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out")]
    before = snapshot(tmp_path)
    rc = main(["web", *argv])
    out, err = capsys.readouterr()
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("fm-edge web: error: "), err
    assert all(w in lines[0] for w in words), (words, lines[0])
    assert rc == 2 and out == ""
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_missing_runtime_names_the_npm_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(web, "HERE", tmp_path / "pkg" / "web")  # as if installed outside a checkout
    assert main(["web", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "npm ci --prefix web" in err
    assert not (tmp_path / "out").exists()


def test_a_failed_copy_leaves_no_folder(tmp_path, capsys, monkeypatch):
    dist = ort_dist_or_skip()
    calls = []
    real_copy = shutil.copyfile

    def failing_copy(src, dst):
        calls.append(src)
        if len(calls) == 6:
            raise OSError(28, "No space left on device", str(dst))
        return real_copy(src, dst)

    monkeypatch.setattr(web.shutil, "copyfile", failing_copy)
    rc = main(["web", "-o", str(tmp_path / "out"), "--ort-dist", str(dist)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "No space left" in err, err
    assert list(tmp_path.iterdir()) == []


# --- the embedding snippet, run in Node ---

NODE_RUN = """
import { readFileSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
const [ortFile, snippet, model, noiseFile, labelText, outFile] = process.argv.slice(2);
const ort = await import(pathToFileURL(ortFile).href);
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = pathToFileURL(ortFile).href.replace(/[^/]*$/, "");
const { loadSampler, sampleDigits, readMetadata, gaussianNoise } = await import(pathToFileURL(snippet).href);
const bytes = new Uint8Array(readFileSync(model));
const meta = readMetadata(bytes);
const session = await loadSampler(ort, bytes);
const noise = new Float32Array(new Uint8Array(readFileSync(noiseFile)).buffer);
const digits = await sampleDigits(ort, session, noise, labelText.split(",").map(Number), Number(meta.cfg_scale));
writeFileSync(outFile, digits);
const g = gaussianNoise(64, 7);
const mean = g.reduce((a, b) => a + b, 0) / g.length;
const std = Math.sqrt(g.reduce((a, b) => a + (b - mean) ** 2, 0) / g.length);
const again = gaussianNoise(64, 7).every((v, i) => v === g[i]);
const other = gaussianNoise(64, 8).some((v, i) => v !== g[i]);
const junk = readMetadata(new Uint8Array(4096).map((_, i) => (i * 131 + 7) % 256));
console.log(JSON.stringify({ meta, mean, std, again, other, junk }));
process.exit(0);
"""


def test_docs_show_the_snippet_the_page_runs():
    block = EMBED.search(SNIPPET.read_text()).group(1)
    docs = (ROOT / "docs" / "web.md").read_text()
    assert f"```js\n{block}```" in docs


def node_report(cmd: list[str], stderr: Path, timeout: float = 600.0) -> str:
    """The one line run.mjs prints when its work is done. Node is not trusted to exit after it: in one CI run it
    printed the line and then hung in process.exit for the whole timeout, so it gets 30 s and is then killed."""
    with stderr.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            line = proc.stdout.readline()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            watchdog.cancel()
            proc.stdout.close()
    assert line.startswith("{"), (
        f"node exited {proc.returncode} without its report: {stderr.read_text()[-3000:]}"
    )
    return line


def test_snippet_in_node_gives_python_onnxruntimes_digits(tmp_path):
    from fm_edge.artifacts import onnx_metadata

    node = node_or_skip()
    dist = ort_dist_or_skip()
    n = 4
    noise, labels = same_noise(n)
    noise.tofile(tmp_path / "noise.bin")
    shutil.copy(SNIPPET, tmp_path / "snippet.mjs")  # Node reads ES modules by their .mjs name
    (tmp_path / "run.mjs").write_text(NODE_RUN)
    model = web.DEFAULT_SAMPLER
    args = [
        str(dist / web.ORT_WASM[0]),
        str(tmp_path / "snippet.mjs"),
        str(model),
        str(tmp_path / "noise.bin"),
    ]
    cmd = [node, str(tmp_path / "run.mjs"), *args, ",".join(map(str, labels)), str(tmp_path / "out.bin")]
    report = json.loads(node_report(cmd, tmp_path / "node.stderr"))
    js = np.fromfile(tmp_path / "out.bin", dtype=np.uint8).reshape(n, 28, 28)
    py = python_digits(model, noise, labels)
    assert int(np.abs(js.astype(int) - py.astype(int)).max()) <= 1
    assert report["meta"] == onnx_metadata(model)  # the page's protobuf reader sees what onnx sees
    assert report["junk"] in (None, {})
    assert report["again"] and report["other"]
    assert abs(report["mean"]) < 0.05 and abs(report["std"] - 1) < 0.05  # 65,536 draws


# --- the page in headless Chromium ---


def _wait_ready(page):
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('Ready')"
        " || !document.querySelector('#message').hidden"
    )
    message = page.locator("#message")
    assert message.is_hidden(), message.text_content()


GENERATE = """async ({ labels, noise }) => {
  const results = await window.fmEdge.generate(labels, Float32Array.from(noise));
  return results.map((r, i) => ({
    name: r.name, ms: r.ms, images: Array.from(r.images),
    drawn: Array.from(window.fmEdge.readCanvas(i, labels.length)),
  }));
}"""


#: the names of the columns the page shows, in order
COLUMNS = "() => Array.from(document.querySelectorAll('.column h2'), (h) => h.textContent)"


def _tick(page, on: bool) -> list[str]:
    """Click the real "compare with fp32" box, wait until its load is done (the box is disabled while the page is
    busy) and return the columns' names."""
    box = page.locator("#compare-fp32")
    box.check() if on else box.uncheck()
    page.wait_for_function("() => !document.querySelector('#compare-fp32').disabled")
    message = page.locator("#message")
    assert message.is_hidden(), message.text_content()
    return page.evaluate(COLUMNS)


def _arrays(run: list[dict], n: int) -> tuple[dict, dict]:
    """name -> the digits generate returned, name -> the digits the canvas shows."""
    shape = (n, 28, 28)
    got = {r["name"]: np.array(r["images"], np.uint8).reshape(shape) for r in run}
    drawn = {r["name"]: np.array(r["drawn"], np.uint8).reshape(shape) for r in run}
    return got, drawn


def _within_one(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


@pytest.mark.browser
def test_page_draws_python_onnxruntimes_digits_and_says_what_is_wrong(site, tmp_path):
    from test_demo import CHROMIUM, CHROMIUM_ARGS, _browser_or_skip

    sync_playwright = _browser_or_skip()
    from fm_edge.web.preview import start

    info = json.loads((site / "site.json").read_text())
    noise, labels = same_noise(BATCH)
    feed = {"labels": labels.tolist(), "noise": noise.ravel().tolist()}
    one = {"labels": labels[:1].tolist(), "noise": noise[:1].ravel().tolist()}
    fp32_site = tmp_path / "fp32-site"
    assert main(["web", "-o", str(fp32_site), "--no-int8"]) == 0
    server, url = start(site)
    fp32_server, fp32_url = start(fp32_site)
    errors = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, "--disable-quic"]
            )
            context = browser.new_context()
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(300_000)
            page.goto(url)
            _wait_ready(page)
            runtime = page.locator("#runtime").text_content()
            assert "cross-origin isolated" in runtime and "not cross-origin" not in runtime, runtime
            # the default: the int8 sampler alone, the compare box shown and unchecked
            default_columns = page.evaluate(COLUMNS)
            box = page.locator("#compare-fp32")
            box_default = box.is_visible(), box.is_checked()
            # the same noise and labels as Python: the digits, and the canvas that shows them
            alone = [page.evaluate(GENERATE, feed) for _ in range(4)]
            # the box: the fp32 column loads and comes first; the same noise through both
            compare_columns = _tick(page, True)
            compared = page.evaluate(GENERATE, feed)
            compare_line = page.locator("#compare").text_content()
            # unticked: int8 alone again; ticked again: fp32's old digits are gone
            untick_columns = _tick(page, False)
            retick_columns = _tick(page, True)
            stale = page.evaluate("() => document.querySelector('.stats').textContent")
            # the form's own path: its seeded noise, and one sentence for a bad count
            page.fill("#count", str(BATCH))
            page.click("#generate")
            page.wait_for_function(
                "() => document.querySelector('.stats').textContent.includes('ms per digit')"
            )
            page.fill("#count", str(info["max_count"] + 1))
            page.click("#generate")
            bad_count = page.locator("#message").text_content()
            # a file that is not an fm-edge sampler: one sentence, the columns stay
            page.fill("#count", "4")
            page.set_input_files("#file", str(TEACHER / "velocity.onnx"))
            page.wait_for_function("() => !document.querySelector('#message').hidden")
            not_sampler = page.locator("#message").text_content()
            columns = page.evaluate(COLUMNS)
            # a picked sampler is shown alone, and the box goes
            page.set_input_files("#file", str(site / info["models"]["int8"]))
            page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Using')")
            picked = page.evaluate(COLUMNS), box.is_visible()
            # offline after one visit, fp32 too (?compare=1: both columns at start)
            page.wait_for_function(
                "() => document.querySelector('#offline').textContent.startsWith('Works offline')"
            )
            context.set_offline(True)
            page.goto(url + "?compare=1")
            _wait_ready(page)
            offline = page.evaluate(GENERATE, one)
            # a site without int8 (--no-int8): fp32 alone, no box
            plain = browser.new_context().new_page()
            plain.on("pageerror", lambda e: errors.append(str(e)))
            plain.set_default_timeout(300_000)
            plain.goto(fp32_url)
            _wait_ready(plain)
            fp32_alone = plain.evaluate(COLUMNS), plain.locator("#compare-fp32").is_visible()
            fp32_run = plain.evaluate(GENERATE, one)
            browser.close()
    finally:
        server.shutdown()
        fp32_server.shutdown()
    times = sorted(run[0]["ms"] / BATCH for run in alone[1:])
    print(f"\nfm-edge web, the page's default (int8 alone), batch {BATCH}: {times[len(times) // 2]:.2f} ms per "
          f"digit (median of {len(times)}; {runtime.strip()})")  # fmt: skip
    both = ", ".join(f"{r['name']} {r['ms'] / BATCH:.2f}" for r in compared)
    print(f"  with the compare box ticked, one call: {both} ms per digit")
    assert not errors, errors
    models = {k: site / v for k, v in info["models"].items()}
    py = {k: python_digits(m, noise, labels) for k, m in models.items()}
    assert default_columns == ["int8"] and box_default == (True, False)
    for run in alone:
        got, drawn = _arrays(run, BATCH)
        assert list(got) == ["int8"]
        assert psnr(got["int8"], py["int8"]) > INT8_MIN_PSNR_DB
        np.testing.assert_array_equal(drawn["int8"], got["int8"])
    assert compare_columns == ["fp32", "int8"] and [r["name"] for r in compared] == compare_columns
    got, drawn = _arrays(compared, BATCH)
    assert _within_one(got["fp32"], py["fp32"])
    assert psnr(got["int8"], py["int8"]) > INT8_MIN_PSNR_DB
    for name in got:
        np.testing.assert_array_equal(drawn[name], got[name])
    assert compare_line.startswith("int8 vs fp32: max |diff| ") and "PSNR" in compare_line, compare_line
    assert untick_columns == ["int8"] and retick_columns == ["fp32", "int8"] and stale == ""
    assert (
        bad_count
        == f'The count must be a whole number from 1 to {info["max_count"]}; got "{info["max_count"] + 1}".'
    )
    assert not_sampler.startswith("That file is not an fm-edge sampler.onnx") and columns == ["fp32", "int8"]
    assert picked == ([Path(info["models"]["int8"]).name], False)
    assert [r["name"] for r in offline] == ["fp32", "int8"]
    assert _within_one(np.array(offline[0]["images"]), py["fp32"][:1].ravel())
    assert fp32_alone == (["fp32"], False) and [r["name"] for r in fp32_run] == ["fp32"]
    assert _within_one(np.array(fp32_run[0]["images"]), py["fp32"][:1].ravel())
