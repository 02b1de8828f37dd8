"""int8 contract tests on the tiny preset: calibration coverage, refusals, atomic writes, SQNR, the recipe JSON.

SQNR bars follow torchao's tests (dB, not exact values); the tiny net is untrained, so the bars are looser
than what the compact checkpoint reaches (docs/int8_findings.md).
"""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fm_edge.errors import FmEdgeError, UsageError  # noqa: E402
from fm_edge.metrics import DB_CAP, psnr_db, sqnr_db  # noqa: E402
from fm_edge.quantize import calibrate, graph, recipe, sqnr  # noqa: E402

SOLVER, STEPS, CFG = "heun", 3, 1.5  # what make_tiny_checkpoint recommends


@pytest.fixture(scope="module")
def onnx_dir(tiny_ckpt, tmp_path_factory):
    """velocity.onnx + sampler.onnx of the tiny checkpoint, made with the export package's own builders."""
    import onnx

    from fm_edge.export.metadata import sampler_metadata, velocity_metadata
    from fm_edge.export.sampler_graph import build_sampler
    from fm_edge.export.velocity import export_velocity
    from fm_edge.model import load
    from fm_edge.sampler_spec import checkpoint_spec

    out = tmp_path_factory.mktemp("onnx")
    model, fm = load(tiny_ckpt)
    v = export_velocity(model, 17, velocity_metadata(tiny_ckpt, fm))
    onnx.save(v, out / "velocity.onnx")
    spec = checkpoint_spec(fm).override(steps=STEPS, solver=SOLVER, shift=1.0)
    meta = sampler_metadata(tiny_ckpt, fm, spec)
    onnx.save(build_sampler(v, SOLVER, STEPS, 1.0, meta), out / "sampler.onnx")
    return out


@pytest.fixture(scope="module")
def traj(onnx_dir):
    from fm_edge.runtime import OnnxVelocity

    return calibrate.collect(OnnxVelocity(onnx_dir / "velocity.onnx"), 11, SOLVER, STEPS, CFG, seed=0)


@pytest.fixture(scope="module")
def int8_path(onnx_dir, traj, tmp_path_factory):
    from fm_edge.quantize.ort_int8 import quantize_velocity

    out = tmp_path_factory.mktemp("int8") / "velocity_int8.onnx"
    quantize_velocity(onnx_dir / "velocity.onnx", out, traj, "default")
    return out


# -- calibration ------------------------------------------------------------------------------------


def test_calibration_covers_every_call_and_label(traj):
    from fm_edge.solvers import nfe as count

    nfe = count(SOLVER, STEPS)  # heun: two velocity calls per step, one in the final step
    assert traj.meta["nfe"] == nfe
    assert sorted(np.unique(traj.call)) == list(range(nfe))
    assert set(np.unique(traj.class_labels)) == set(range(11))  # 0-9 and the null label 10
    assert len(traj) == 11 * 2 * nfe  # CFG: every call sees the doubled batch


def test_calibration_records_what_the_sampler_feeds(traj):
    first = traj.call == 0
    x0 = traj.sample[first]
    n = len(traj.noise)
    np.testing.assert_array_equal(x0[:n], traj.noise)  # CFG batch = [x, x] at the first call
    np.testing.assert_array_equal(x0[n:], traj.noise)
    assert np.all(traj.class_labels[first][n:] == 10)
    assert np.allclose(traj.timestep[first], 1000.0)  # t=1 (noise), scaled like the backends


def test_reader_yields_every_row_and_rewinds(traj):
    r = calibrate.reader(traj, batch_size=50)
    rows = [b for b in iter(r.get_next, None)]
    assert sum(len(b["sample"]) for b in rows) == len(traj)
    assert set(rows[0]) == {"sample", "timestep", "class_labels"}
    assert rows[0]["timestep"].dtype == np.float32 and rows[0]["class_labels"].dtype == np.int64
    r.rewind()
    assert r.get_next() is not None


def test_too_small_calibration_is_a_usage_error(onnx_dir, traj, tmp_path):
    from fm_edge.quantize.ort_int8 import quantize_velocity
    from fm_edge.runtime import OnnxVelocity

    with pytest.raises(UsageError, match="calibration set too small"):
        calibrate.collect(OnnxVelocity(onnx_dir / "velocity.onnx"), 5, SOLVER, STEPS, CFG)
    with pytest.raises(UsageError, match="calibration set too small"):
        quantize_velocity(onnx_dir / "velocity.onnx", tmp_path / "q.onnx", traj.subset(len(traj)), "default")
    assert not (tmp_path / "q.onnx").exists()


# -- ORT int8 -------------------------------------------------------------------------------------------


def test_int8_model_runs_and_keeps_sqnr(onnx_dir, int8_path, traj):
    from fm_edge.runtime import OnnxVelocity

    assert graph.quantized_ops(int8_path)  # really quantized
    v8 = OnnxVelocity(int8_path)
    x = traj.sample[:4]
    assert v8(x, 0.5, np.array([0, 3, 9, 10])).shape == x.shape
    held = calibrate.collect(OnnxVelocity(onnx_dir / "velocity.onnx"), 11, SOLVER, STEPS, CFG, seed=7)
    assert sqnr.output_sqnr(onnx_dir / "velocity.onnx", int8_path, held.feeds()) > 15
    layers = sqnr.layer_sqnr(onnx_dir / "velocity.onnx", int8_path, held.feeds())
    assert layers and any(r["int8"] for r in layers)
    assert all(r["sqnr_db"] > 10 for r in layers)


def test_refuses_an_already_quantized_model(int8_path, traj, tmp_path):
    from fm_edge.quantize.ort_int8 import quantize_velocity

    with pytest.raises(UsageError, match="already quantized"):
        quantize_velocity(int8_path, tmp_path / "again.onnx", traj, "default")
    assert list(tmp_path.iterdir()) == []


def test_failed_quantization_leaves_no_file(onnx_dir, traj, tmp_path, monkeypatch):
    from fm_edge.quantize import ort_int8

    def boom(*a, **k):
        raise RuntimeError("simulated ORT failure")

    monkeypatch.setattr(ort_int8, "_quantize_static", boom)
    with pytest.raises(FmEdgeError, match="static quantization failed"):
        ort_int8.quantize_velocity(onnx_dir / "velocity.onnx", tmp_path / "q.onnx", traj, "default")
    assert list(tmp_path.iterdir()) == []


def test_roles_are_found_from_the_structure(onnx_dir):
    import onnx

    m = onnx.load(onnx_dir / "velocity.onnx")
    ops = {n.name: n.op_type for n in m.graph.node}
    r = graph.roles(m)
    assert len(r["first_conv"]) == 1 and len(r["last_conv"]) == 1
    assert r["first_conv"] != r["last_conv"]
    cond_ops = {ops[n] for n in r["conditioning"]}
    assert {"Sin", "Cos", "Gemm"} <= cond_ops  # the time embedding never sees the image
    assert "Conv" not in cond_ops
    assert {ops[n] for n in r["norm_chain"]} >= {"InstanceNormalization", "Sigmoid"}


def test_recipe_json_round_trip_and_bad_keys():
    r = recipe.get("default")
    assert recipe.Recipe.from_dict(json.loads(r.to_json())) == r
    with pytest.raises(UsageError, match="unknown keys"):
        recipe.Recipe.from_dict({"nmae": "x"})
    with pytest.raises(UsageError, match="activation_type"):
        recipe.Recipe(activation_type="QInt4")
    with pytest.raises(UsageError, match="unknown int8 recipe"):
        recipe.get("fastest")


def test_isa_is_read_from_cpuinfo(tmp_path):
    from fm_edge.quantize.cpu import isa_seen

    f = tmp_path / "cpuinfo"
    f.write_text("model name\t: Test CPU\nflags\t\t: fpu avx2 fma avx512f avx512_vnni\n")
    isa = isa_seen(str(f))
    assert isa["vnni"] and not isa["amx"] and "avx512_vnni" in isa["flags"] and isa["model"] == "Test CPU"
    assert not isa["bf16"]
    f.write_text("flags\t\t: avx2 avx512f avx512_bf16\n")
    assert isa_seen(str(f))["bf16"] and not isa_seen(str(f))["vnni"]
    assert isa_seen(str(tmp_path / "missing"))["flags"] == []


def test_bf16_on_a_cpu_without_native_bf16_warns_in_one_line(capsys):
    from fm_edge.quantize.cpu import warn_emulated_bf16

    amd_avx2 = {"model": "AVX2 CPU", "flags": ["avx2", "fma"], "bf16": False}
    assert warn_emulated_bf16("cpu", amd_avx2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "emulated" in err[0] and "AVX2 CPU" in err[0]
    assert not warn_emulated_bf16("cpu", {**amd_avx2, "flags": ["avx512_bf16"], "bf16": True})
    assert not warn_emulated_bf16(
        "cpu", {"model": "unknown", "flags": [], "bf16": False}
    )  # no cpuinfo: no guess
    assert not warn_emulated_bf16("cuda", amd_avx2)  # bf16 autocast on a GPU is native
    assert capsys.readouterr().err == ""


def test_psnr_and_sqnr_basics():
    a = np.zeros((2, 28, 28), np.uint8)
    b = a.copy()
    b[1, 0, 0] = 255
    ps = psnr_db(a, b)
    assert ps[0] == DB_CAP and abs(ps[1] - 10 * np.log10(28 * 28)) < 1e-9  # one pixel off by 255
    x = np.ones(100)
    assert abs(sqnr_db(x, x * 1.01) - 40.0) < 1e-6


# -- export --int8 ----------------------------------------------------------------------------------------


def test_quantize_export_writes_three_files_with_the_recipe(onnx_dir, tmp_path):
    import shutil

    from fm_edge.quantize.pipeline import quantize_export
    from fm_edge.runtime import OnnxSampler

    out = tmp_path / "out"
    shutil.copytree(onnx_dir, out)
    s = quantize_export(out, calib_samples=11, quality_samples=20, measure_latency=False, fd=False)
    for name in ("velocity_int8.onnx", "sampler_int8.onnx", "quantization.json"):
        assert (out / name).is_file()
    q = json.loads((out / "quantization.json").read_text())
    assert q == json.loads(json.dumps(s))
    for key in (
        "method",
        "recipe",
        "calibration",
        "excluded_nodes",
        "versions",
        "isa",
        "int8_fraction",
        "quality",
    ):
        assert key in q
    cal = q["calibration"]
    assert (cal["solver"], cal["steps"], cal["num_noises"], cal["seeds"]) == (SOLVER, STEPS, 11, [0])
    assert cal["labels"] == list(range(11))
    assert q["versions"]["onnxruntime"] and "vnni" in q["isa"]
    assert 0 < q["int8_fraction"]["macs"] <= 1 and 0 < q["int8_fraction"]["weights"] <= 1
    assert q["excluded_nodes"]["first_conv"] and q["excluded_nodes"]["conditioning"]
    assert q["quality"]["psnr_db_mean"] >= 25 and q["tolerance"]["passed"]
    sampler = OnnxSampler(out / "sampler_int8.onnx")
    assert sampler.metadata["precision"] == "int8" and sampler.steps == STEPS
    imgs = sampler(np.random.default_rng(0).standard_normal((2, 1, 32, 32), dtype=np.float32), [1, 10])
    assert imgs.shape == (2, 28, 28) and imgs.dtype == np.uint8


def test_quality_outside_tolerance_fails_and_writes_nothing(onnx_dir, tmp_path):
    import shutil

    from fm_edge.quantize.pipeline import Tolerance, quantize_export

    out = tmp_path / "out"
    shutil.copytree(onnx_dir, out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FmEdgeError, match="outside the tolerance"):
        quantize_export(out, calib_samples=11, quality_samples=10, measure_latency=False, fd=False,
                        tolerance=Tolerance(min_psnr_db=120.0))  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == before


# -- torchao ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pt2e", "linear-int8-weight-only"])
def test_torchao_backend_is_close_to_fp32(tiny_ckpt, method):
    from fm_edge.quantize import torchao_backend as tb

    ok, why = tb.available(method)
    if not ok:
        pytest.skip(why)
    import torch

    # compile=False keeps the test fast: the converted graph runs its int8 q/dq arithmetic in PyTorch
    rec = tb.TorchaoRecipe(
        method=method, compile=False, calib_noises=11, solver="euler", steps=2, cfg_scale=CFG
    )
    v = tb.build_velocity(tiny_ckpt, rec)
    assert v.report["velocity_sqnr_db"] > 15
    assert v.report["int8_weights"]  # it reports what it quantized
    if method != "pt2e":
        assert all("Linear" in n for n in v.report["int8_weights"])  # quantize_ touches only nn.Linear
    out = v(torch.randn(1, 1, 32, 32), 0.5, torch.tensor([10]))  # batch 1 works (padded for PT2E)
    assert out.shape == (1, 1, 32, 32) and torch.isfinite(out).all()
    again = tb.TorchaoRecipe.from_json(rec.to_json())
    assert again == rec


# -- the shipped int8 files ---------------------------------------------------------------------------


def test_shipped_int8_files_are_a_fresh_int8_export(tmp_path):
    """Quantizing the shipped fp32 files again reproduces the shipped int8 files (within tolerance)."""
    import io
    import shutil

    import onnx
    from onnx import numpy_helper

    from fm_edge.artifacts import SHIPPED
    from fm_edge.quantize.pipeline import quantize_export
    from fm_edge.runtime import OnnxSampler, OnnxVelocity

    shipped = SHIPPED / "onnx"
    for name in ("velocity.onnx", "sampler.onnx"):
        shutil.copy(shipped / name, tmp_path / name)
    recorded = json.loads((shipped / "quantization.json").read_text())
    name = next(k for k, r in recipe.RECIPES.items() if r.name == recorded["recipe"]["name"])  # as shipped
    fresh = quantize_export(tmp_path, measure_latency=False, quality_samples=50, num_threads=2, fd=False,
                            recipe=name, log=io.StringIO())  # fmt: skip
    assert fresh["recipe"] == recorded["recipe"] and fresh["excluded_nodes"] == recorded["excluded_nodes"]
    assert fresh["calibration"]["rows_used"] == recorded["calibration"]["rows_used"]
    assert fresh["int8_fraction"] == pytest.approx(recorded["int8_fraction"])
    # the same noise through the shipped and the fresh int8 sampler gives the same digits
    noise = np.random.default_rng(7).standard_normal((32, 1, 32, 32), dtype=np.float32)
    labels = np.arange(32) % 11
    # the quantized graphs match: same nodes, int8 weights bit for bit, float scales to float rounding. The
    # fp32 calibration runs on this CPU's kernels (AVX2 or AVX512/AMX round differently), so a range may move
    # by an ulp; a checkpoint with other weights or another recipe changes the int8 weights outright.
    ga, gb = onnx.load(shipped / "velocity_int8.onnx").graph, onnx.load(tmp_path / "velocity_int8.onnx").graph
    assert [(n.op_type, list(n.input)) for n in ga.node] == [(n.op_type, list(n.input)) for n in gb.node]
    wa = {i.name: numpy_helper.to_array(i) for i in ga.initializer}
    wb = {i.name: numpy_helper.to_array(i) for i in gb.initializer}
    assert wa.keys() == wb.keys()
    for name, w in wa.items():
        if w.dtype in (np.int8, np.uint8, np.int32, np.int64):
            assert np.array_equal(w, wb[name]), name
        else:
            np.testing.assert_allclose(wb[name], w, rtol=1e-5, atol=1e-7, err_msg=name)
    # so the same noise gives the same digits, up to rounding flips that 4 ODE steps carry along (seen: min
    # PSNR 31.8 dB of 32 digits on a Xeon with AMX for files made on an AVX2 EPYC)
    a = OnnxSampler(shipped / "sampler_int8.onnx", num_threads=2)(noise, labels)
    b = OnnxSampler(tmp_path / "sampler_int8.onnx", num_threads=2)(noise, labels)
    ps = psnr_db(a, b)
    assert np.median(ps) >= 40 and ps.min() >= 25
    x = noise[:8]
    va = OnnxVelocity(shipped / "velocity_int8.onnx")(x, 0.5, labels[:8])
    vb = OnnxVelocity(tmp_path / "velocity_int8.onnx")(x, 0.5, labels[:8])
    assert sqnr_db(va, vb) >= 30


# -- the VNNI/AMX recipe --------------------------------------------------------------------------------


def test_conditioning_adds_are_the_time_embedding_adds(onnx_dir):
    import onnx

    m = onnx.load(onnx_dir / "velocity.onnx")
    r = graph.roles(m)
    ops = {n.name: n.op_type for n in m.graph.node}
    n_resnets = sum("time_emb_proj" in n for n in ops if ops[n] == "Gemm")
    assert n_resnets > 0 and len(r["conditioning_add"]) == n_resnets
    assert {ops[n] for n in r["conditioning_add"]} == {"Add"}
    assert not set(r["conditioning_add"]) & set(r["conditioning"])  # they do see the image


def test_vnni_recipe_keeps_conditioning_adds_in_float(onnx_dir, int8_path, traj, tmp_path):
    import collections

    import onnx

    from fm_edge.quantize.ort_int8 import quantize_velocity

    fp32 = onnx_dir / "velocity.onnx"
    out = tmp_path / "velocity_int8_vnni.onnx"
    facts = quantize_velocity(fp32, out, traj, "vnni")
    r = recipe.get("vnni")
    assert not r.reduce_range and "conditioning_add" in r.exclude_roles
    cond_adds = set(graph.roles(onnx.load(fp32))["conditioning_add"])
    assert set(facts["excluded_nodes"]["conditioning_add"]) == cond_adds
    q = onnx.load(out)
    consumers = collections.defaultdict(list)
    for n in q.graph.node:
        for i in n.input:
            consumers[i].append(n.op_type)
    for n in q.graph.node:
        if n.name in cond_adds:  # a float Add whose output is not re-quantized
            assert n.op_type == "Add" and "QuantizeLinear" not in consumers[n.output[0]]
    # one Q/DQ pair fewer per conditioning add than the default recipe (which runs them as QLinearAdd)
    count = collections.Counter(n.op_type for n in q.graph.node)
    base = collections.Counter(n.op_type for n in onnx.load(int8_path).graph.node)
    assert count["QuantizeLinear"] < base["QuantizeLinear"]
    from fm_edge.runtime import OnnxVelocity

    held = calibrate.collect(OnnxVelocity(fp32), 11, SOLVER, STEPS, CFG, seed=7)
    assert sqnr.output_sqnr(fp32, out, held.feeds()) > 15


def test_export_int8_says_whether_int8_pays_here():
    from fm_edge.quantize.pipeline import int8_verdict

    s = {"isa": {"int8_path": "VNNI (vpdpbusd)"}, "size_ratio": 0.32}
    assert int8_verdict(s) == ""  # nothing timed, nothing claimed
    s["latency_ms_per_call"] = {"batch 2": {"speedup": 1.6}, "batch 128": {"speedup": 0.99}}
    line = int8_verdict(s)
    assert line.startswith("warning: int8 is not faster than fp32 here at batch 128") and "VNNI" in line
    assert "1.60x / 0.99x" in line and "\n" not in line
    s["latency_ms_per_call"] = {"batch 2": {"speedup": 1.29}, "batch 128": {"speedup": 1.14}}
    faster = int8_verdict(s)  # no warning when int8 was faster everywhere
    assert faster.startswith("✓ int8 is 1.29x / 1.14x faster than fp32 here")
