"""fm-edge export: velocity.onnx against PyTorch, sampler.onnx against the Python sampler, metadata, sizes,
and bad input (one-line error, exit != 0, no file left behind)."""

import io
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from fm_edge.artifacts import FM_CONFIG, SHIPPED, WEIGHTS, weights_hash
from fm_edge.cli import main
from fm_edge.convention import CONVENTION, NULL_LABEL
from fm_edge.errors import FmEdgeError, UsageError
from fm_edge.export import validate as V
from fm_edge.export.command import export
from fm_edge.export.sampler_graph import build_sampler
from fm_edge.model import load
from fm_edge.runtime import OnnxSampler, OnnxVelocity
from fm_edge.sampler_spec import SamplerSpec

SOLVER_STEPS = [("euler", 4), ("midpoint", 3), ("heun", 3), ("rk4", 2)]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if line.strip()]


# --- velocity.onnx ---


def test_velocity_matches_torch_at_batch_1_and_37(tiny_onnx, tiny_ckpt):
    model, _ = load(tiny_ckpt)
    checks = V.validate_velocity(tiny_onnx / "velocity.onnx", model, batch_sizes=(1, 37), num_threads=1)
    assert [c.ok for c in checks] == [True, True], [c.line() for c in checks]
    assert all(c.value <= 1e-4 for c in checks)


def test_velocity_inputs_outputs_and_opset(tiny_onnx):
    m = onnx.load(tiny_onnx / "velocity.onnx")
    ops = {n.op_type for n in m.graph.node}
    assert "GroupNormalization" not in ops
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [17]
    v = OnnxVelocity(tiny_onnx / "velocity.onnx", num_threads=1)
    ins = {i.name: (i.type, i.shape) for i in v.session.get_inputs()}
    assert ins == {
        "sample": ("tensor(float)", ["batch", 1, 32, 32]),
        "timestep": ("tensor(float)", ["batch"]),
        "class_labels": ("tensor(int64)", ["batch"]),
    }
    assert [o.name for o in v.session.get_outputs()] == ["velocity"]


def test_velocity_metadata(tiny_onnx, tiny_ckpt):
    meta = OnnxVelocity(tiny_onnx / "velocity.onnx").metadata
    for key, value in CONVENTION.items():
        assert meta[key] == value
    assert meta["preset"] == "tiny"
    assert meta["fm_edge_version"]
    assert meta["checkpoint_sha256"] == weights_hash(tiny_ckpt)
    fm = json.loads((tiny_ckpt / FM_CONFIG).read_text())
    assert json.loads(meta["recommended_sampler"]) == fm["sampler"]


@pytest.mark.parametrize("opset", [20])
def test_other_opsets_run_in_ort(tiny_ckpt, tmp_path, opset):
    from fm_edge.export.velocity import export_velocity

    model, _ = load(tiny_ckpt)
    path = tmp_path / "v.onnx"
    onnx.save(export_velocity(model, opset), path)
    checks = V.validate_velocity(path, model, batch_sizes=(3,), num_threads=1)
    assert checks[0].ok, checks[0].line()


@pytest.mark.parametrize("opset", [16, 21])
def test_opset_outside_17_20_is_refused(tiny_ckpt, tmp_path, capsys, opset):
    code, out, err = run_cli(["export", "--model", tiny_ckpt, "-o", tmp_path / "o", "--opset", opset], capsys)
    assert code == 2 and error_lines(err) == [
        f"fm-edge export: error: opset {opset} is not supported: use 17 to 20"
    ]
    assert not (tmp_path / "o").exists()


# --- sampler.onnx ---


@pytest.mark.parametrize("solver,steps", SOLVER_STEPS)
def test_sampler_matches_python_sampler(tiny_onnx, tmp_path, solver, steps):
    velocity = tiny_onnx / "velocity.onnx"
    path = tmp_path / f"sampler_{solver}.onnx"
    onnx.save(build_sampler(onnx.load(velocity), solver, steps, shift=1.0), path)
    for cfg in (1.0, 2.5):
        spec = SamplerSpec(solver, steps, cfg, 1.0)
        checks = V.validate_sampler(path, velocity, spec, batch_sizes=(1, 13), num_threads=1)
        assert all(c.ok for c in checks), [c.line() for c in checks]
    size = V.check_size(path, velocity)
    assert size.ok and size.value <= 1.2, size.line()


def test_sampler_stores_weights_once(tiny_onnx):
    v = onnx.load(tiny_onnx / "velocity.onnx")
    s = onnx.load(tiny_onnx / "sampler.onnx")
    assert len(s.functions) == 1 and len(s.graph.initializer) == len(v.graph.initializer)
    nbytes = [sum(onnx.numpy_helper.to_array(t).nbytes for t in m.graph.initializer) for m in (s, v)]
    assert nbytes[0] == nbytes[1]
    calls = [n for n in s.graph.node if n.domain == "fm_edge"]
    assert len(calls) == 5  # heun x 3 steps (the final one an Euler step), CFG batched into each call
    assert os.path.getsize(tiny_onnx / "sampler.onnx") <= 1.2 * os.path.getsize(tiny_onnx / "velocity.onnx")


def test_sampler_io_and_metadata(tiny_onnx, tiny_ckpt):
    s = OnnxSampler(tiny_onnx / "sampler.onnx", num_threads=1)
    ins = {i.name: (i.type, i.shape) for i in s.session.get_inputs()}
    assert ins == {
        "noise": ("tensor(float)", ["batch", 1, 32, 32]),
        "class_labels": ("tensor(int64)", ["batch"]),
        "cfg_scale": ("tensor(float)", []),
    }
    out = s.session.get_outputs()[0]
    assert (out.name, out.type, out.shape) == ("images", "tensor(uint8)", ["batch", 28, 28])
    assert (s.solver, s.steps, s.cfg_scale) == ("heun", 3, 1.5)  # the checkpoint's recommended sampler
    assert s.metadata["shift"] == "1.0" and s.metadata["nfe"] == "5"
    assert s.metadata["checkpoint_sha256"] == weights_hash(tiny_ckpt)
    assert s.metadata["null_label"] == str(NULL_LABEL)


def test_cli_export_flags_and_report(tiny_ckpt, tmp_path, capsys):
    out_dir = tmp_path / "onnx"
    args = ["export", "--model", tiny_ckpt, "-o", out_dir, "--solver", "rk4", "--sampler-steps", 2]
    code, out, err = run_cli([*args, "--opset", 18, "--num-threads", 1], capsys)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(out_dir)
    assert err.count("✓") == 5 and "✗" not in err
    s = OnnxSampler(out_dir / "sampler.onnx")
    assert (s.solver, s.steps) == ("rk4", 2)
    assert sorted(p.name for p in out_dir.iterdir()) == ["sampler.onnx", "velocity.onnx"]  # no temp files
    for f in out_dir.iterdir():  # the mode of a normally created file, not mkstemp's 0600
        assert f.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# --- bad input: one line, exit != 0, nothing left behind ---


def test_checkpoint_missing_weights(tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "ckpt"
    bad.mkdir()
    for f in tiny_ckpt.iterdir():
        if f.name != WEIGHTS:
            (bad / f.name).write_bytes(f.read_bytes())
    code, out, err = run_cli(["export", "--model", bad, "-o", tmp_path / "o"], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and WEIGHTS in err and out == ""
    assert not (tmp_path / "o").exists()


def test_output_dir_is_a_file(tiny_ckpt, tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    for target in (f, f / "sub"):
        code, out, err = run_cli(["export", "--model", tiny_ckpt, "-o", target], capsys)
        assert code == 2 and len(error_lines(err)) == 1 and str(f) in err, err
    assert f.read_text() == "x"


def _failing(name):
    return lambda *a, **k: [V.Check(name, False, 1.0, 1e-4, "max |diff| 1.00e+00 (atol 1e-04)")]


@pytest.mark.parametrize("which", ["validate_velocity", "validate_sampler"])
def test_failed_validation_leaves_no_file(tiny_ckpt, tmp_path, monkeypatch, capsys, which):
    monkeypatch.setattr(V, which, _failing(which))
    fresh = tmp_path / "fresh"
    code, out, err = run_cli(["export", "--model", tiny_ckpt, "-o", fresh, "--num-threads", 1], capsys)
    assert code == 1 and "✗" in err and "failed validation" in err.strip().splitlines()[-1]
    assert not fresh.exists()  # not even the folder this run created
    # an existing good export survives a failed one untouched
    old = tmp_path / "old"
    old.mkdir()
    (old / "velocity.onnx").write_bytes(b"good")
    with pytest.raises(FmEdgeError, match="failed validation"):
        export(tiny_ckpt, old, num_threads=1, log=io.StringIO())
    assert sorted(p.name for p in old.iterdir()) == ["velocity.onnx"]
    assert (old / "velocity.onnx").read_bytes() == b"good"


def test_bad_solver_and_steps(tiny_ckpt, tmp_path):
    with pytest.raises(UsageError, match="unknown solver"):
        export(tiny_ckpt, tmp_path / "o", solver="dopri5")
    with pytest.raises(UsageError, match="steps=0"):
        export(tiny_ckpt, tmp_path / "o", steps=0)
    assert not (tmp_path / "o").exists()


# --- the shipped files ---

SHIPPED_ONNX = Path(SHIPPED) / "onnx"


@pytest.mark.skipif(not (SHIPPED_ONNX / "velocity.onnx").is_file(), reason="no shipped ONNX files yet")
def test_shipped_onnx_is_a_fresh_export_of_the_shipped_checkpoint(tmp_path):
    paths = export(SHIPPED, tmp_path / "fresh", num_threads=1, log=io.StringIO())
    for name, path in paths.items():
        shipped = onnx.load(SHIPPED_ONNX / path.name)
        fresh = onnx.load(path)
        meta = [
            {p.key: p.value for p in m.metadata_props if p.key != "fm_edge_version"} for m in (shipped, fresh)
        ]
        assert meta[0] == meta[1], name
        assert [t.SerializeToString() for t in shipped.graph.initializer] == [
            t.SerializeToString() for t in fresh.graph.initializer
        ], name
    # and they compute the same thing
    noise = np.random.default_rng(0).standard_normal((4, 1, 32, 32), dtype=np.float32)
    labels = np.array([0, 3, 7, 10])
    a = OnnxSampler(SHIPPED_ONNX / "sampler.onnx")(noise, labels)
    b = OnnxSampler(paths["sampler"])(noise, labels)
    np.testing.assert_array_equal(a, b)
    assert OnnxVelocity(SHIPPED_ONNX / "velocity.onnx").metadata["checkpoint_sha256"] == weights_hash(SHIPPED)


def test_plain_export_warns_about_int8_files_of_other_weights(tiny_ckpt, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "onnx"
    out.mkdir()
    from conftest import set_onnx_metadata

    # an int8 file quantized from another checkpoint
    set_onnx_metadata(tiny_onnx / "velocity.onnx", out / "velocity_int8.onnx", checkpoint_sha256="0" * 64)
    assert main(["export", "--model", str(tiny_ckpt), "-o", str(out)]) == 0
    assert "velocity_int8.onnx was quantized from other weights" in capsys.readouterr().err
    assert main(["export", "--model", str(tiny_ckpt), "-o", str(tmp_path / "clean")]) == 0
    assert "warning" not in capsys.readouterr().err
