"""scripts/tradeoff.py on the tiny sampler: each int8 file is paired with the fp32 file beside it, quality
columns carry over from an earlier output by file hash, and the plot has one panel per batch size."""

import json
import shutil

import pytest
from conftest import load_script, set_onnx_metadata
from PIL import Image


@pytest.fixture()
def pair(tiny_onnx, tmp_path):
    """A folder with sampler.onnx and a sampler_int8.onnx beside it (the same network with another metadata
    tag, so another sha256: only the pairing and the plumbing are under test), and a lone file elsewhere as
    the baseline."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_onnx / "sampler.onnx", folder / "sampler.onnx")
    set_onnx_metadata(tiny_onnx / "sampler.onnx", folder / "sampler_int8.onnx", tag="int8")  # another sha256
    base = set_onnx_metadata(tiny_onnx / "sampler.onnx", tmp_path / "first_release.onnx", tag="base")
    return base, folder


def test_pairs_int8_with_its_fp32_file_and_plots_from_earlier_quality(pair, tmp_path):
    tradeoff = load_script("tradeoff")
    base, folder = pair
    files = [f"base={base}", f"m={folder / 'sampler.onnx'}", f"m8={folder / 'sampler_int8.onnx'}"]
    timed = tmp_path / "timed.json"
    common = ["--rounds", "1", "--batch-sizes", "1,2", "--num-threads", "1"]
    assert tradeoff.main([*files, "-o", str(timed), "--quality-samples", "0", *common]) == 0
    rows = {r["name"]: r for r in json.loads(timed.read_text())["rows"]}
    assert rows["m8"]["fp32_sibling"] == "m"
    assert {"int8_over_fp32_b1", "int8_over_fp32_b2"} <= rows["m8"].keys()
    assert "fp32_sibling" not in rows["m"] and "fp32_sibling" not in rows["base"]
    assert rows["m8"]["speedup_vs_base_b1"] > 0 and len({r["sha256"] for r in rows.values()}) == 3

    # quality measured elsewhere (here: written in), carried over by sha256, then the plot
    earlier = json.loads(timed.read_text())
    for i, r in enumerate(earlier["rows"]):
        r.update(fd=10.0 + i, fd_floor=2.0, label_accuracy=0.99)
    earlier["rows"].reverse()  # matched by file hash, not by position
    for r in earlier["rows"]:
        r["name"] = "renamed " + r["name"]  # nor by name
    earlier["quality_samples"] = 1000
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    out, png = tmp_path / "out.json", tmp_path / "plot.png"
    argv = [*files, "-o", str(out), "--plot", str(png), "--quality-from", str(tmp_path / "earlier.json")]
    assert tradeoff.main([*argv, *common]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert [rows[n]["fd"] for n in ("base", "m", "m8")] == [10.0, 11.0, 12.0]
    assert rows["m8"]["fd_floor"] == 2.0
    assert tradeoff.int8_pairs(list(rows.values())) == {"m8": "m"}
    assert Image.open(png).size[0] > Image.open(png).size[1] * 2  # two panels side by side and a legend

    one = json.loads(out.read_text())
    for r in one["rows"]:
        del r["ms_per_image_b2"], r["images_per_s_b2"]
    tradeoff.plot(one, tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").size[0] < Image.open(png).size[0]  # a batch-1 run: one panel


def test_quality_from_an_output_without_the_file_is_one_line(pair, tmp_path):
    tradeoff = load_script("tradeoff")
    base, folder = pair
    (tmp_path / "earlier.json").write_text(json.dumps({"rows": [], "quality_samples": 10}))
    argv = [f"base={base}", f"m={folder / 'sampler.onnx'}", "-o", str(tmp_path / "o.json"), "--rounds", "1",
            "--batch-sizes", "1", "--num-threads", "1", "--quality-from", str(tmp_path / "earlier.json")]  # fmt: skip
    with pytest.raises(SystemExit, match="no quality for base, m"):
        tradeoff.main(argv)
    assert not (tmp_path / "o.json").exists()
    with pytest.raises(SystemExit):  # no file, no --shipped: argparse's usage line
        tradeoff.main(["-o", str(tmp_path / "o.json")])
    assert not (tmp_path / "o.json").exists()


def test_shipped_names_both_files_of_every_model_folder(pair, tmp_path):
    tradeoff = load_script("tradeoff")
    _, folder = pair
    (folder / "onnx").mkdir()
    for f in ("sampler.onnx", "sampler_int8.onnx"):
        (folder / f).rename(folder / "onnx" / f)
    (tmp_path / "fp32_only" / "onnx").mkdir(parents=True)
    shutil.copy(folder / "onnx" / "sampler.onnx", tmp_path / "fp32_only" / "onnx" / "sampler.onnx")
    (tmp_path / "no_export").mkdir()
    specs = tradeoff.shipped_files(tmp_path)
    assert [s.partition("=")[0] for s in specs] == ["fp32_only", "model", "model int8"]
    assert specs[2].endswith("model/onnx/sampler_int8.onnx")
    shipped = [s.partition("=")[0] for s in tradeoff.shipped_files(tradeoff.CHECKPOINTS)]
    assert "teacher-mnist-digit-t" in shipped and "onestep-mnist-digit int8" in shipped


def test_first_release_comes_from_git_history_or_one_line(tmp_path, monkeypatch):
    tradeoff = load_script("tradeoff")
    monkeypatch.setattr(tradeoff.tempfile, "gettempdir", lambda: str(tmp_path))
    with pytest.raises(SystemExit, match=r"needs fm-edge's git history \(0000000:no/such.onnx\)"):
        tradeoff.first_release("0000000:no/such.onnx")
    assert list(tmp_path.iterdir()) == []
    if not (tradeoff.CHECKPOINTS.parents[1] / ".git").exists():
        pytest.skip("not a git checkout: the first release is in git history only")
    committed = json.loads(
        (tradeoff.CHECKPOINTS.parents[1] / "docs/results/tradeoff_avx2_shipped.json").read_text()
    )
    timed = {r["name"]: r["sha256"] for r in committed["rows"]}["first release"]  # the README's baseline
    assert tradeoff.sha256(tradeoff.first_release()) == timed


def test_process_each_times_every_file_in_a_process_of_its_own(pair, tmp_path, monkeypatch):
    tradeoff = load_script("tradeoff")
    started = []
    real = tradeoff.Worker

    class Spy(real):
        def __init__(self, path, num_threads):
            super().__init__(path, num_threads)
            started.append(self)

    monkeypatch.setattr(tradeoff, "Worker", Spy)
    base, folder = pair
    files = [f"base={base}", f"m={folder / 'sampler.onnx'}", f"m8={folder / 'sampler_int8.onnx'}"]
    out = tmp_path / "o.json"
    argv = [*files, "-o", str(out), "--rounds", "2", "--batch-sizes", "1,2", "--quality-samples", "0"]
    assert tradeoff.main([*argv, "--num-threads", "1", "--process-each"]) == 0
    table = json.loads(out.read_text())
    rows = {r["name"]: r for r in table["rows"]}
    assert table["process_each"] is True and rows["m8"]["int8_over_fp32_b2"] > 0
    assert all(rows[n]["ms_per_image_b1"] > 0 for n in rows)
    assert len({w.proc.pid for w in started}) == 3  # one process per file, each gone when the run ends
    assert all(w.proc.poll() == 0 for w in started)
