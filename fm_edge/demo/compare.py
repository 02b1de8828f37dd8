"""One comparison: every backend from the same noise, timed, and how far int8 lands from fp32 (numpy only).

1. the noise comes from :func:`fm_edge.backends.make_noise` once, and every backend starts from that array;
2. each backend runs :func:`fm_edge.solvers.sample` over its ``velocity(x, t, labels)`` callable, timed;
3. the uint8 digits are compared (PSNR, max and mean |diff| in grey levels of 255) and tiled into grids,
   upscaled with nearest-neighbour only, plus a heat map of |int8 - fp32|.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fm_edge.backends import Backend, generate, make_noise
from fm_edge.images import grid
from fm_edge.metrics import diff_stats
from fm_edge.sampler_spec import SamplerSpec
from fm_edge.solvers import sample

#: grids are upscaled by a whole factor so that they are about this wide (px), 1x to 8x
TARGET_WIDTH = 400
MAX_SCALE = 8
PAD_GREY = 56  # the separator between digits (MNIST's background is black)
#: the heat map's full brightness is at least this many grey levels, so that 1-2 levels of rounding
#: noise stay dark instead of being stretched to white
MIN_HEAT_RANGE = 16
# anchor colours of the heat map (black -> purple -> red -> orange -> pale yellow, like "magma")
_HEAT = np.array(
    [[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float64
)


@dataclass
class Run:
    """One backend's digits and how long it took."""

    name: str
    images: np.ndarray  # uint8 [N, 28, 28]
    seconds: float

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / len(self.images)


@dataclass
class Comparison:
    runs: dict[str, Run]
    nfe: int
    seed: int
    stats: dict[str, dict] = field(default_factory=dict)  # "a vs b" -> diff_stats


def run_backend(
    backend: Backend,
    noise: np.ndarray,
    labels: np.ndarray,
    spec: SamplerSpec,
    callback: Callable[[int, int], None] | None = None,
) -> Run:
    """Sample the digits of one backend from ``noise`` (all at once: at most 64, or 128 rows with CFG)."""
    start = time.perf_counter()
    images = generate(backend, labels, spec, noise=noise, batch_size=len(noise), callback=callback)
    return Run(backend.name, images, time.perf_counter() - start)


def compare(
    backends: list[Backend],
    labels: np.ndarray,
    spec: SamplerSpec,
    seed: int,
    progress: Callable[[int, int, str], None] | None = None,
    own_sampler: list[Backend] = (),
) -> Comparison:
    """Run every backend from the same seeded noise; the first backend is the one the others are compared to.

    ``own_sampler`` backends (a distilled student) start from the same noise too, but with their own
    recommended solver, steps, CFG and shift, and are not diffed against the first. ``progress(done, total,
    name)`` is called after each ODE step of each backend.
    """
    noise = make_noise(len(labels), seed)
    total = spec.steps * len(backends)
    runs: dict[str, Run] = {}
    warm = [(b, spec.cfg_scale) for b in backends] + [(b, b.sampler.cfg_scale) for b in own_sampler]
    for b, cfg in warm:  # one untimed call at this batch size, so no timing includes a cold start
        sample(
            b.velocity, b.to_native(noise), b.to_native(np.asarray(labels, dtype=np.int64)), 1, "euler", cfg
        )
    for i, b in enumerate(backends):
        cb = None
        if progress is not None:
            cb = lambda step, _steps, i=i, name=b.name: progress(i * spec.steps + step, total, name)
        runs[b.name] = run_backend(b, noise, labels, spec, callback=cb)
    for b in own_sampler:
        runs[b.name] = run_backend(b, noise, labels, b.sampler)
    out = Comparison(runs, spec.nfe, seed)
    first = backends[0].name
    for b in backends[1:]:
        out.stats[f"{b.name} vs {first}"] = diff_stats(runs[first].images, runs[b.name].images)
    return out


def grid_scale(n: int, size: int = 28, pad: int = 2) -> int:
    """The whole upscaling factor that makes a grid of n digits about TARGET_WIDTH px wide."""
    nrow = math.ceil(math.sqrt(n))
    width = nrow * (size + pad) + pad
    return max(1, min(MAX_SCALE, TARGET_WIDTH // width))


def tile(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> one grid image (grey separators), upscaled nearest-neighbour by a whole factor."""
    scale = grid_scale(len(images))
    out = grid(images, scale=scale)
    cells = grid(np.full_like(images, 255), scale=scale)
    out[cells == 0] = PAD_GREY
    return out


def heat(values: np.ndarray, top: float) -> np.ndarray:
    """Map values in [0, top] to RGB uint8 through the heat colours."""
    u = np.clip(values.astype(np.float64) / max(top, 1e-12), 0.0, 1.0) * (len(_HEAT) - 1)
    lo = np.floor(u).astype(int).clip(0, len(_HEAT) - 2)
    frac = (u - lo)[..., None]
    return np.rint(_HEAT[lo] * (1 - frac) + _HEAT[lo + 1] * frac).astype(np.uint8)


def heatmap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """RGB grid of |a - b| per pixel (same layout as :func:`tile`) and the grey-level difference at full
    brightness."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    top = max(int(d.max()), MIN_HEAT_RANGE)
    scale = grid_scale(len(a))
    g = grid(d.astype(np.uint8), scale=scale)
    rgb = heat(g, top)
    cells = grid(np.full_like(a, 255), scale=scale)
    rgb[cells == 0] = PAD_GREY
    return np.concatenate([rgb, colour_bar(rgb.shape[1], top)]), top


#: height in px of the numbers under the colour bar
LABEL_HEIGHT = 14


def colour_bar(width: int, top: int, height: int = 14) -> np.ndarray:
    """The heat map's scale under it: a strip from 0 (left, black) to ``top`` grey levels (right), with a
    tick every quarter and its value in grey levels under each tick."""
    ramp = heat(np.linspace(0, top, width)[None, :].repeat(height, 0), top)
    bar = np.full((6 + height + LABEL_HEIGHT, width, 3), PAD_GREY, np.uint8)
    bar[6 : 6 + height] = ramp
    ticks = [min(width - 1, round(q * (width - 1) / 4)) for q in range(5)]
    for x in ticks:
        bar[:6, max(0, x - 1) : x + 1] = 255
    return _label_ticks(bar, ticks, [f"{round(q * top / 4, 1):g}" for q in range(5)], 6 + height)


def _label_ticks(bar: np.ndarray, ticks: list[int], labels: list[str], y: int) -> np.ndarray:
    """Write each label centred under its tick (kept inside the image), white on the grey margin."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(bar)
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=LABEL_HEIGHT - 3)
    except (TypeError, OSError, ImportError):  # an old Pillow or no FreeType: the built-in bitmap font
        font = ImageFont.load_default()
    for x, text in zip(ticks, labels):
        w = draw.textlength(text, font=font)
        left = min(max(0.0, x - w / 2), bar.shape[1] - w)
        draw.text((left, y + 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)
