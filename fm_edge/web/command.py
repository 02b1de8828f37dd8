"""``fm-edge web``: write a static site that samples digits in the browser with onnxruntime-web.

1. check the flags, the sampler files and onnxruntime-web's files (before anything is written);
2. build the site in a temporary folder beside the output: the page, its JS modules, the samplers, the
   runtime's JS/WASM files, ``site.json`` (what the page loads) and ``_headers`` (cross-origin isolation);
3. only then move it to the output folder (:mod:`fm_edge.atomic`), so a failed run leaves nothing half-done.

Node is needed only once, to fetch onnxruntime-web (``npm ci --prefix web``); fm-edge itself just copies
the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from fm_edge.artifacts import sha256
from fm_edge.errors import FmEdgeError, UsageError

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
#: the fp32 sampler the site ships by default (the time-free one-step student). Its int8 sibling,
#: sampler_int8.onnx beside it, is what the page runs by default, about twice as fast in WASM; fp32 is
#: behind the compare box.
DEFAULT_SAMPLER = HERE.parent / "checkpoints" / "onestep-mnist-digit" / "onnx" / "sampler.onnx"
INT8_NAME = "sampler_int8.onnx"
#: where ``npm ci --prefix web`` puts onnxruntime-web, relative to the working folder or the checkout
ORT_DIST = Path("web", "node_modules", "onnxruntime-web", "dist")
#: onnxruntime-web's build the site ships, one of two: by default the asyncify WebGPU build, which runs
#: WebGPU where the browser offers an adapter and WASM everywhere else (as fast as the plain build on the
#: CPU, measured: docs/web.md); with --no-webgpu the plain WASM build, 12.5 MB smaller
ORT_WEBGPU = (
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)
ORT_WASM = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = ("index.html", "app.js", "fm-edge-sampler.js", "sw.js")
#: digits per Generate on the page
MAX_COUNT = 64
#: the issue's bound on the whole site (the WebGPU build alone is about 17 MB)
SITE_BUDGET_BYTES = 35_000_000
HEADERS = """/*
  Cross-Origin-Opener-Policy: same-origin
  Cross-Origin-Embedder-Policy: require-corp
"""
SITE_MARKER = "site.json"


def add_arguments(p) -> None:
    """``fm-edge web``'s flags."""
    p.add_argument("-o", "--output-dir", default="site", help="folder to write the site to (replaced whole)")
    p.add_argument(
        "--model",
        default=None,
        help="the fp32 sampler.onnx the site ships (default: the shipped one-step student's)",
    )
    p.add_argument(
        "--int8-model",
        default=None,
        help="its int8 file, which the page runs by default, fp32 beside it on request "
        f"(default: {INT8_NAME} beside --model, if any)",
    )
    p.add_argument("--no-int8", action="store_true", help="ship the fp32 sampler alone, with no comparison")
    p.add_argument(
        "--ort-dist",
        default=None,
        help=f"onnxruntime-web's dist folder (default: {ORT_DIST} here or in the fm-edge checkout, "
        "written by npm ci --prefix web)",
    )
    p.add_argument(
        "--no-webgpu",
        action="store_true",
        help="ship the plain WASM build, which cannot use WebGPU (site 12.5 MB smaller)",
    )


def check_sampler(path: str | os.PathLike, flag: str) -> dict[str, str]:
    """The metadata of an fm-edge ``sampler.onnx``; a UsageError naming ``flag`` for anything else."""
    import onnx

    from fm_edge.convention import SAMPLER_INPUTS

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag} {str(path)!r} is not a file: pass a sampler.onnx written by fm-edge export")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # DecodeError and friends
        raise UsageError(f"{flag} {str(path)!r} is not an ONNX file: pass an fm-edge sampler.onnx") from None
    name = onnx.TensorProto.DataType.Name
    inputs = {i.name: f"tensor({name(i.type.tensor_type.elem_type).lower()})" for i in model.graph.input}
    meta = {p.key: p.value for p in model.metadata_props}
    if inputs != SAMPLER_INPUTS or meta.get("model") != "sampler":
        raise UsageError(
            f"{flag} {str(path)!r} is not an fm-edge sampler (it needs inputs noise, class_labels, cfg_scale "
            "and metadata model=sampler): pass a sampler.onnx written by fm-edge export"
        )
    return meta


def runtime_build(args) -> tuple[str, ...]:
    """The onnxruntime-web files the site ships: the WebGPU build, or the plain one with --no-webgpu."""
    return ORT_WASM if args.no_webgpu else ORT_WEBGPU


def find_ort_dist(given: str | None, build: tuple[str, ...] = ORT_WEBGPU) -> Path:
    """onnxruntime-web's dist folder with the build's files, or a one-line error naming the fix."""
    candidates = [Path(given)] if given is not None else [Path.cwd() / ORT_DIST, HERE.parents[1] / ORT_DIST]
    for folder in candidates:
        if all((folder / name).is_file() for name in build):
            return folder
    where = str(candidates[0])
    fix = (
        "pass the dist folder of onnxruntime-web"
        if given
        else "run npm ci --prefix web in the fm-edge checkout"
    )
    raise UsageError(f"onnxruntime-web's files are missing from {where!r}: {fix} (or pass --ort-dist DIR)")


def ort_version(dist: Path) -> str | None:
    try:
        return json.loads((dist.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _check_output(out: Path) -> None:
    """Refuse a file, or a folder with other things in it: the whole folder is replaced."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output dir {str(out)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).is_file():
        raise UsageError(
            f"output dir {str(out)!r} is not empty and holds no fm-edge site ({SITE_MARKER}): "
            "pass a new or empty folder (it is replaced whole)"
        )


def _models(args) -> dict[str, Path]:
    """name -> sampler file, checked: fp32 always, int8 when asked for or found beside --model."""
    fp32 = Path(args.model) if args.model else DEFAULT_SAMPLER
    meta = check_sampler(fp32, "--model")
    models = {"fp32": fp32}
    if args.no_int8:
        return models
    int8 = Path(args.int8_model) if args.int8_model else fp32.with_name(INT8_NAME)
    if args.int8_model is None and not int8.is_file():
        return models
    other = check_sampler(int8, "--int8-model")
    a, b = meta.get("checkpoint_sha256"), other.get("checkpoint_sha256")
    if a and b and a != b:  # two different nets side by side would mislead
        raise UsageError(
            f"--int8-model {str(int8)!r} was quantized from other weights than {str(fp32)!r}: pass its pair"
        )
    models["int8"] = int8
    return models


def build_site(args, out: Path, dist: Path, models: dict[str, Path]) -> int:
    """Write the site into ``out`` (an empty folder); returns its size in bytes."""
    for name in PAGE_FILES:
        shutil.copyfile(STATIC / name, out / name)
    (out / "models").mkdir()
    (out / "ort").mkdir()
    entries = {}
    for key, src in models.items():
        dst = f"models/{src.name}"
        if dst in entries.values():  # two files of one name: keep both
            dst = f"models/{key}-{src.name}"
        shutil.copyfile(src, out / dst)
        entries[key] = dst
    runtime = runtime_build(args)
    for name in runtime:
        shutil.copyfile(dist / name, out / "ort" / name)
    (out / "_headers").write_text(HEADERS)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "_headers")
    size = sum((out / f).stat().st_size for f in files)
    build = hashlib.sha256()
    for f in files:
        build.update(f.encode() + b"\0" + sha256(out / f).encode())
    site = {
        "generator": "fm-edge web",
        "ort_version": ort_version(dist),
        "models": entries,
        "ort": {"module": f"ort/{runtime[0]}", "webgpu": runtime == ORT_WEBGPU},
        "max_count": MAX_COUNT,
        # what the service worker copies for offline use at install
        "offline": ["./", SITE_MARKER, *files],
        "bytes": size,
        "build": build.hexdigest()[:16],
    }
    (out / SITE_MARKER).write_text(json.dumps(site, indent=1))
    return size + (out / SITE_MARKER).stat().st_size + len(HEADERS)


def main(args):
    """``fm-edge web``: checks, then the site written atomically; returns its folder."""
    from fm_edge.atomic import atomic_dir

    out = Path(args.output_dir)
    _check_output(out)
    models = _models(args)
    dist = find_ort_dist(args.ort_dist, runtime_build(args))
    try:
        with atomic_dir(out) as tmp:
            size = build_site(args, tmp, dist, models)
    except OSError as exc:  # a full disk, a file that vanished: nothing is left under the output name
        where = f" ({exc.filename})" if exc.filename else ""
        raise FmEdgeError(f"could not write the site to {str(out)!r}: {exc.strerror or exc}{where}") from None
    mb = size / 1e6
    note = "" if size <= SITE_BUDGET_BYTES else f" (over the {SITE_BUDGET_BYTES / 1e6:.0f} MB budget)"
    print(
        f"fm-edge web: {len(models)} sampler(s), onnxruntime-web {ort_version(dist)}, {mb:.1f} MB{note}; "
        f"serve it with COOP/COEP headers, e.g. python -m fm_edge.web.preview {out}",
        file=sys.stderr,
    )
    return out
