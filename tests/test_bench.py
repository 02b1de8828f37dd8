"""``fm-edge bench`` on the tiny checkpoint: every cell timed in its own backend process, quality columns,
the JSON/PNG/table artifacts, and skipped backends named with the reason."""

import json

import numpy as np

from fm_edge.cli import main


def test_bench_rows_quality_and_artifacts(tiny_ckpt, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--model", str(tiny_ckpt), "--onnx-dir", str(tiny_onnx), "-o", str(out)]
    argv += [
        "--backends",
        "torch-fp32,ort-fp32,sampler-fp32,ort-int8",
        "--batch-sizes",
        "1,3",
        "--nfe",
        "1,2",
    ]
    argv += ["--repeats", "2", "--quality-samples", "40", "--num-threads", "1"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads((out / "bench.json").read_text())
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {(r["backend"], r["batch"], r["nfe"]): r for r in result["rows"]}
    assert set(rows) == {(b, n, k) for b in ("torch-fp32", "ort-fp32") for n in (1, 3) for k in (1, 2)}
    # the tiny sampler.onnx bakes in heun, and the tiny export has no int8 files: both skipped, with why
    assert "heun" in result["skipped"]["sampler-fp32"]
    assert "velocity_int8.onnx" in result["skipped"]["ort-int8"]
    for r in rows.values():
        assert r["ms_per_image"] > 0 and r["peak_rss_mb"] > 0 and r["model_bytes"] > 0
        assert 0 <= r["label_accuracy"] <= 1 and r["fd"] > 0
    # same noise, same net: torch and ORT fp32 give the same quality
    for nfe in (1, 2):
        a, b = rows[("torch-fp32", 1, nfe)], rows[("ort-fp32", 1, nfe)]
        assert np.isclose(a["fd"], b["fd"], rtol=0.02) and a["label_accuracy"] == b["label_accuracy"]
    assert "| torch-fp32 | 3 | 2 |" in stdout and stdout.rstrip().endswith(str(out / "bench.json"))


def test_sampler_runner_runs_the_whole_sampler_graph_at_its_baked_steps(tiny_ckpt, tmp_path):
    """The sampler-fp32 runner on a tiny Euler export: the fixed step count, the file size, and the digits of
    the Python loop over the same ORT velocity model from the same noise."""
    import io

    from fm_edge.backends import generate, make_noise, onnx_backend
    from fm_edge.bench import make_runner
    from fm_edge.export.command import export
    from fm_edge.sampler_spec import SamplerSpec

    out = tmp_path / "onnx"
    export(tiny_ckpt, out, solver="euler", steps=2, num_threads=1, log=io.StringIO())
    run, size, steps = make_runner("sampler-fp32", tiny_ckpt, out, 1, cfg_scale=1.5, shift=1.0)
    assert steps == 2 and size == (out / "sampler.onnx").stat().st_size
    noise, labels = make_noise(5, 3), np.arange(5, dtype=np.int64)
    images = run(noise, labels, steps)
    want = generate(onnx_backend(out / "velocity.onnx", 1), labels, SamplerSpec("euler", 2, 1.5), noise=noise)
    assert images.shape == (5, 28, 28) and images.dtype == np.uint8
    assert np.abs(images.astype(int) - want.astype(int)).max() <= 1
