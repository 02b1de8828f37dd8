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
