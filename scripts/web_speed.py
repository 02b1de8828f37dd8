"""ms per digit in headless Chromium for several samplers and onnxruntime-web builds, taking turns in one run.

    python scripts/web_speed.py                       # the page's default and the 1-step UNet student
    python scripts/web_speed.py --model A/onnx/sampler.onnx --model B/onnx/sampler.onnx --rounds 6

Each sampler gets two sites (``fm-edge web``: the asyncify WebGPU build the site ships, and ``--no-webgpu``:
the plain WASM build), each open in its own tab with ``?compare=1`` (fp32 and int8 side by side), or as the
page opens by default with ``--default-page`` (int8 alone); every round times ``--calls`` Generates of
``--batch`` digits in every tab, fp32 and int8 columns alike, and prints the median (and best) ms per digit as
a table. Run it on a quiet machine. The browser test (tests/test_web.py) prints the page default's figure too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

UNET = ROOT / "stages" / "compact-mnist-student" / "onnx" / "sampler.onnx"  # the retired 1-step UNet student


def main() -> None:
    from test_demo import CHROMIUM, CHROMIUM_ARGS
    from test_web import GENERATE, _wait_ready, same_noise

    from fm_edge.web.command import DEFAULT_SAMPLER
    from fm_edge.web.preview import start

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", action="append", help="a sampler.onnx (repeatable; default: the page's and UNet's)"
    )
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=3, help="Generates per tab per round")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--default-page", action="store_true", help="open the page as it starts (int8 alone), not ?compare=1"
    )
    args = ap.parse_args()
    models = [Path(m) for m in args.model or [DEFAULT_SAMPLER, UNET]]
    from playwright.sync_api import sync_playwright

    noise, labels = same_noise(args.batch)
    feed = {"labels": labels.tolist(), "noise": noise.ravel().tolist()}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        tabs, servers, times = {}, [], {}
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, "--disable-quic"]
        )
        for i, model in enumerate(models):
            for build, flags in (("webgpu build", []), ("plain WASM", ["--no-webgpu"])):
                out = Path(tmp) / f"{i}-{len(flags)}"
                cmd = ["fm-edge", "web", "--model", str(model), "-o", str(out), *flags]
                subprocess.run(cmd, check=True, capture_output=True)
                server, url = start(out)
                servers.append(server)
                page = browser.new_context().new_page()
                page.set_default_timeout(300_000)
                page.goto(url if args.default_page else url + "?compare=1")  # ?compare=1: both columns
                _wait_ready(page)
                page.evaluate(GENERATE, feed)  # warm-up
                key = (model.parent.parent.name, build)
                tabs[key], times[key] = page, {}
                print(key, page.locator("#runtime").text_content().strip(), file=sys.stderr)
        for _ in range(args.rounds):
            for key, page in tabs.items():
                for _ in range(args.calls):
                    for r in page.evaluate(GENERATE, feed):
                        times[key].setdefault(r["name"], []).append(r["ms"] / args.batch)
        browser.close()
        for server in servers:
            server.shutdown()
    print(f"| sampler | build | ms per digit at batch {args.batch}, median (best) |")
    print("|---|---|---|")
    for (name, build), t in times.items():
        cells = ", ".join(f"{k} {np.median(v):.2f} ({min(v):.2f})" for k, v in t.items())
        print(f"| {name} | {build} | {cells} |")


if __name__ == "__main__":
    main()
