"""The README and docs/*.md as a newcomer uses them: every Python snippet runs as pasted, every ``fm-edge``
command line in them parses, every image and local link they show exists (images tracked by git), and the
README's main job (sample 1,000, evaluate, export) runs verbatim."""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fm_edge.artifacts import SHIPPED_ONNX
from fm_edge.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
#: markdown links and images: [text](target) and ![alt](target); the target up to a space or ")"
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")


def blocks(lang: str, page: Path = README) -> list[str]:
    return [body for kind, body in BLOCK.findall(page.read_text()) if kind == lang]


def all_blocks(lang: str) -> list[tuple[str, str]]:
    """(``page:index``, body) of every ``lang`` block in the README and docs/*.md."""
    return [(f"{p.relative_to(ROOT)}:{i}", b) for p in PAGES for i, b in enumerate(blocks(lang, p))]


def fm_edge_commands() -> list[str]:
    """Every ``fm-edge ...`` command of the bash blocks of every page (chains split at &&, comments and line
    ends joined)."""
    out = []
    for _, body in all_blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.split("  #")[0].strip()
                if part.startswith("fm-edge "):
                    out.append(part)
    return out


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A newcomer's checkout after the main job, without touching the real one: the package (linked, so paths
    like fm_edge/checkpoints/... resolve as in the repo root) and the export in onnx/ (the shipped files are a
    fresh export of the shipped checkpoint, tested in test_export.py)."""
    (tmp_path / "fm_edge").symlink_to(README.parent / "fm_edge", target_is_directory=True)
    shutil.copytree(SHIPPED_ONNX, tmp_path / "onnx")
    return tmp_path


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(README.parent))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
@pytest.mark.parametrize("where, code", all_blocks("python"), ids=[w for w, _ in all_blocks("python")])
def test_python_snippet_runs_as_pasted(where, code, workdir):
    server = None
    if "127.0.0.1:7860" in code:  # the gradio_client snippet talks to a running demo
        if not _port_free(7860):
            pytest.skip("port 7860 is taken on this machine")
        server = subprocess.Popen([sys.executable, "-m", "fm_edge.cli", "demo", "--no-reference"], cwd=workdir,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.time() + 120
        while _port_free(7860) and time.time() < deadline and server.poll() is None:
            time.sleep(0.5)
    try:
        r = run_python(code, workdir)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    assert r.returncode == 0, f"python block {where} failed:\n{code}\n{r.stderr[-2000:]}"


def test_the_docs_have_python_snippets():
    pages = {w.split(":")[0] for w, _ in all_blocks("python")}
    assert {"README.md", "docs/embedding.md", "docs/diffusers.md", "docs/demo.md"} <= pages


def test_every_fm_edge_command_in_the_docs_parses():
    commands = fm_edge_commands()
    assert len(commands) >= 10  # the extraction found them
    parser = build_parser()
    for cmd in commands:
        try:
            parser.parse_args(shlex.split(cmd)[1:])
        except SystemExit as exc:
            pytest.fail(f"command in the docs does not parse ({exc.code}): {cmd}")


def _local_links(page: Path) -> list[tuple[bool, Path]]:
    """(is an image, resolved path) of every link of ``page`` that points into the repo (anchors dropped)."""
    text = BLOCK.sub("", page.read_text())  # links inside code blocks are code, not links
    out = []
    for bang, target in LINK.findall(text):
        target = target.split("#")[0]
        if target and "://" not in target and not target.startswith("mailto:"):
            out.append((bang == "!", (page.parent / target).resolve()))
    return out


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_image_and_local_link_exists(page):
    missing = [str(path) for _, path in _local_links(page) if not path.exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_anchor_names_a_heading(page):
    bad = []
    for target in LINK.findall(BLOCK.sub("", page.read_text())):
        path, _, anchor = target[1].partition("#")
        if not anchor or "://" in path:
            continue
        dest = (page.parent / path).resolve() if path else page
        if dest.suffix == ".md" and dest.exists():
            headings = re.findall(r"^#+ (.+)$", BLOCK.sub("", dest.read_text()), re.M)
            if anchor not in {_slug(h) for h in headings}:
                bad.append(target[1])
    assert not bad, f"{page.name}: anchors with no heading: {bad}"


def test_every_image_is_tracked_by_git():
    """An image that exists only in the working tree would be missing from a fresh clone."""
    images = sorted({str(path.relative_to(ROOT)) for p in PAGES for img, path in _local_links(p) if img})
    assert "docs/tradeoff_amd.png" in images
    try:
        r = subprocess.run(["git", "ls-files", "--error-unmatch", *images], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if "not a git repository" in r.stderr:
        pytest.skip("not a git checkout")
    assert r.returncode == 0, f"images not in git: {r.stderr.strip()}"


@pytest.mark.slow
def test_the_main_job_runs_verbatim(tmp_path):
    main_job = next(b for b in blocks("bash") if "fm-edge sample --num-samples 1000" in b).strip()
    install, _, rest = main_job.partition(" && ")
    assert install.startswith("pip install")  # CI has installed the package; the rest runs as written
    r = subprocess.run(rest, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "FD vs MNIST test" in r.stdout
    assert {p.name for p in (tmp_path / "onnx").iterdir()} >= {"velocity.onnx", "sampler.onnx"}
    assert (tmp_path / "samples.npz").is_file()
