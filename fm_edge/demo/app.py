"""The Gradio page: controls on the left, the fp32 and int8 grids from the same noise side by side, then the
numbers (latency per image, model sizes, PSNR and max |diff|) and a heat map of where int8 deviates.

The one event, ``generate`` (``api_name="generate"``), is also the service API for ``gradio_client``::

    Client(url).predict("cycle", 16, 4, "euler", 2.0, 0, False, api_name="/generate")
    -> (fp32.png, int8.png, torch.png | None, heatmap.png, stats markdown, metrics dict, seed used,
        student.png | None)

The output tuple is the same with and without torch: the PyTorch image is None when there is no reference.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402

from fm_edge.artifacts import mean_flow_steps  # noqa: E402
from fm_edge.demo.compare import compare, heatmap, tile  # noqa: E402
from fm_edge.demo.inputs import DIGITS, MAX_SAMPLES, MAX_SEED, MAX_STEPS, field_errors, parse  # noqa: E402
from fm_edge.demo.models import NAMES, DemoModels, load_models  # noqa: E402
from fm_edge.errors import FmEdgeError, UsageError  # noqa: E402
from fm_edge.solvers import MAX_CFG, SOLVERS, nfe  # noqa: E402

API_NAME = "generate"
QUEUE_SIZE = 32  # requests waiting beyond this get "queue full" at once instead of an ever longer wait
GRADIO_MAJOR = int(gr.__version__.split(".")[0])
#: the grids are already upscaled by whole factors on the server; the browser must not smooth them either
CSS = ".fm-grid img, .fm-grid canvas { image-rendering: pixelated; image-rendering: crisp-edges; }"
DIGIT_CHOICES = [("0-9 in turn", "cycle"), ("any (unconditional)", "any")] + [(d, d) for d in DIGITS[2:]]


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _stats_markdown(models: DemoModels, result, req, heat_top: int) -> str:
    names = list(result.runs)
    head = "| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    rows = [
        "| latency per image | "
        + " | ".join(f"{r.ms_per_image:.1f} ms" for r in result.runs.values())
        + " |",
        "| whole grid | " + " | ".join(f"{1000 * r.seconds:.0f} ms" for r in result.runs.values()) + " |",
        "| model size | "
        + " | ".join(_mb(models.sizes[n]) if n in models.sizes else "-" for n in names)
        + " |",
    ]
    lines = [head + "\n".join(rows), ""]
    for pair, s in result.stats.items():
        psnr = "identical" if s["identical"] else f"PSNR {s['psnr_db']:.1f} dB"
        lines.append(
            f"- **{pair}**: {psnr} · max |diff| {s['max_abs_diff']} / 255 · "
            f"mean |diff| {s['mean_abs_diff']:.2f}"
        )
    seed = f"seed {req.seed}" + (" (randomized)" if req.randomized else "")
    lines.append(
        f"\n{req.num_samples} digits · {req.solver} × {req.steps} step{'' if req.steps == 1 else 's'} = NFE {result.nfe} · "
        f"CFG {req.cfg_scale:g} · {seed} · heat map: brightest = {heat_top} grey levels"
    )
    if models.student is not None:
        s = models.student.sampler
        evals = _evals(models, models.student.name, req)
        lines.append(
            f"\n**{models.student.name}**: {s.describe()}, {evals} network evaluation{'s' if evals != 1 else ''} "
            "per digit (the controls above do not apply to it)"
        )
    if models.reference_note:
        lines.append(f"\n_{models.reference_note}_")
    elif models.reference is not None and models.reference.error:
        lines.append(f"\n_PyTorch reference failed to load: {models.reference.error}_")
    return "\n".join(lines)


def _metrics(models: DemoModels, result, req, heat_top: int) -> dict:
    return {
        "seed": req.seed,
        "randomized": req.randomized,
        "labels": req.labels.tolist(),
        "solver": req.solver,
        "steps": req.steps,
        "nfe": nfe(req.solver, req.steps),
        "cfg_scale": req.cfg_scale,
        "shift": req.shift,
        "backends": {
            name: {
                "ms_per_image": round(r.ms_per_image, 3),
                "total_ms": round(1000 * r.seconds, 3),
                "model_bytes": models.sizes.get(name),
                "network_evals_per_image": _evals(models, name, req),
            }
            for name, r in result.runs.items()
        },
        "diffs": result.stats,
        "heatmap_top_grey_levels": heat_top,
        "reference": None if models.reference_note else NAMES["torch"],
    }


def _evals(models: DemoModels, name: str, req) -> int:
    """Network evaluations per digit: the student's are its own; CFG doubles everyone else's."""
    if models.student is not None and name == models.student.name:
        return models.student.sampler.network_evals()
    return req.spec.network_evals()  # the Python loop skips CFG at 1


def validate_request(digit, num_samples, steps, solver, cfg_scale, seed, randomize):
    """The queue's gate: one gr.validate per control, with the control's one-line message when it is bad."""
    return [
        gr.validate(msg is None, msg or "")
        for msg in field_errors(digit, num_samples, steps, solver, cfg_scale, seed, randomize)
    ]


def make_handler(models: DemoModels):
    """The event function: check the request, run every backend from the same noise, lay out the results."""

    def generate(digit, num_samples, steps, solver, cfg_scale, seed, randomize, progress=gr.Progress()):
        try:
            shift = models.sampler.shift
            req = parse(digit, num_samples, steps, solver, cfg_scale, seed, randomize, shift)
            if models.reference is not None and not models.reference.ready:
                progress(0, desc="loading the PyTorch reference (first request only)")
            backends = models.backends()
            result = compare(
                backends,
                req.labels,
                req.spec,
                req.seed,
                progress=lambda done, total, name: progress((done, total), desc=f"sampling: {name}"),
                own_sampler=[models.student] if models.student is not None else [],
            )
        except FmEdgeError as exc:  # UsageError included: one readable line, shown on the page and to clients
            raise gr.Error(str(exc), print_exception=False) from None  # no traceback per bad request
        fp32, int8 = result.runs[NAMES["fp32"]].images, result.runs[NAMES["int8"]].images
        ref = result.runs.get(NAMES["torch"])
        heat, top = heatmap(fp32, int8)
        return (
            tile(fp32),
            tile(int8),
            tile(ref.images) if ref is not None else None,
            heat,
            _stats_markdown(models, result, req, top),
            _metrics(models, result, req, top),
            req.seed,
            tile(result.runs[NAMES["student"]].images) if models.student is not None else None,
        )

    return generate


def _where(folder: Path) -> str:
    """The model folder as a reader wants it: the shipped files by name, else relative to the cwd if inside."""
    from fm_edge.artifacts import SHIPPED_ONNX

    if folder.resolve() == SHIPPED_ONNX.resolve():
        return f"the shipped {SHIPPED_ONNX.parent.name} ONNX files"
    try:
        return f"`{folder.resolve().relative_to(Path.cwd())}`"
    except ValueError:
        return f"`{folder}`"


def _header(models: DemoModels) -> str:
    sizes = " · ".join(f"{n}: {_mb(b)}" for n, b in models.sizes.items())
    return (
        "# fm-edge: int8 next to fp32, from the same noise\n"
        "Flow-matching MNIST digits in a few ODE steps. Every column starts from the **same noise**; "
        "the heat map shows where the int8 model's digits differ from fp32. "
        f"Models: {_where(models.folder)} ({sizes})."
    )


def _steps_slider(models: DemoModels) -> gr.Slider:
    """The ODE-steps control; fixed at K for a mean-flow student's export, whose step length is baked in."""
    k = mean_flow_steps(models.fp32.velocity.metadata)  # the session's, read when it loaded
    if k:
        label = f"ODE steps (fixed: a mean-flow student exported for {k} steps)"
        return gr.Slider(0, MAX_STEPS, value=k, step=1, label=label, interactive=False)
    value = min(max(models.sampler.steps, 1), MAX_STEPS)
    return gr.Slider(0, MAX_STEPS, value=value, step=1, label="ODE steps")


def build_demo(
    model_dir=None,
    checkpoint=None,
    reference: bool | None = None,
    num_threads: int | None = None,
    queue_size: int = QUEUE_SIZE,
    device: str = "cpu",
    student=None,
) -> gr.Blocks:
    """The demo over ``model_dir/velocity.onnx`` and ``velocity_int8.onnx`` (default: the shipped files).

    ``reference``: None adds the PyTorch fp32 column when torch and the matching checkpoint are there,
    False never, True requires it. Returns the queued Blocks; start it with :func:`launch`.
    """
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise UsageError(f"queue size must be a whole number >= 1, got {queue_size!r}")
    models = load_models(model_dir, checkpoint, reference, num_threads, device, student)
    rec = models.sampler
    blocks_kw = {} if GRADIO_MAJOR >= 6 else {"css": CSS}
    with gr.Blocks(
        title="fm-edge demo", analytics_enabled=False, delete_cache=(600, 3600), **blocks_kw
    ) as demo:
        gr.Markdown(_header(models))
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                digit = gr.Dropdown(DIGIT_CHOICES, value="cycle", label="digit", elem_id="digit")
                # the sliders start at 0, not 1: a typed 0 then reaches the validator and is refused in words,
                # where a slider starting at 1 would silently clamp it
                num = gr.Slider(0, MAX_SAMPLES, value=16, step=1, label="number of samples", elem_id="num")
                steps = _steps_slider(models)
                solver = gr.Dropdown(list(SOLVERS), value=rec.solver, label="solver")
                cfg = gr.Slider(0.0, MAX_CFG, value=rec.cfg_scale, step=0.1, label="CFG scale (1 = off)")
                with gr.Row():
                    seed = gr.Number(value=0, label="seed", minimum=0, maximum=MAX_SEED, elem_id="seed")
                    randomize = gr.Checkbox(value=False, label="randomize", elem_id="randomize")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                # titles above the grids, not gradio's label badge and toolbar, which cover the first row
                image = dict(type="numpy", format="png", interactive=False, elem_classes="fm-grid",
                             show_label=False, buttons=[])  # fmt: skip
                with gr.Row(equal_height=True):
                    with gr.Column():
                        gr.Markdown(f"**{NAMES['fp32']}**")
                        out_fp32 = gr.Image(label=NAMES["fp32"], elem_id="grid-fp32", **image)
                    with gr.Column():
                        gr.Markdown(f"**{NAMES['int8']}**")
                        out_int8 = gr.Image(label=NAMES["int8"], elem_id="grid-int8", **image)
                with gr.Row(equal_height=True):
                    with gr.Column(visible=models.reference is not None):
                        gr.Markdown(f"**{NAMES['torch']} (reference)**")
                        out_ref = gr.Image(
                            label=f"{NAMES['torch']} (reference)", elem_id="grid-torch", **image
                        )
                    with gr.Column():
                        gr.Markdown(
                            "**|int8 − fp32| per pixel**, in grey levels of 255 (the scale is under the map)"
                        )
                        out_heat = gr.Image(label="|int8 − fp32| per pixel", elem_id="heatmap", **image)
                with gr.Row(equal_height=True, visible=models.student is not None), gr.Column():
                    gr.Markdown(f"**{NAMES['student']}** (1 network evaluation per digit, same noise)")
                    out_student = gr.Image(label=NAMES["student"], elem_id="grid-student", **image)
                stats = gr.Markdown(models.reference_note and f"_{models.reference_note}_", elem_id="stats")
                with gr.Accordion("all numbers (JSON)", open=False):
                    metrics = gr.JSON(label="metrics")
        button.click(
            make_handler(models),
            inputs=[digit, num, steps, solver, cfg, seed, randomize],
            outputs=[out_fp32, out_int8, out_ref, out_heat, stats, metrics, seed, out_student],
            api_name=API_NAME,
            concurrency_limit=1,
            # the raw values reach our checks: gradio's own would answer first, in words that do not
            # name the control ("Value 0 is less than minimum value 1.", or a multi-line type error)
            preprocess=False,
            # a bad request is refused when it asks to join the queue: it takes no slot and waits for nothing
            validator=validate_request,
        )
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    demo.fm_models = models  # for tests and scripts
    return demo


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Serve the demo (localhost unless ``host`` says otherwise); returns gradio's (app, local_url, share_url).

    gradio itself runs quiet: unasked, it would print a hint to set ``share=True``, which ``fm-edge demo``
    cannot do (it never makes a public link). The address line is printed here instead.
    """
    kw = {"css": CSS} if GRADIO_MAJOR >= 6 else {}
    try:
        out = demo.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            share=False,
            show_error=True,
            ssr_mode=False,
            **kw,
        )
    except OSError as exc:
        if "empty port" in str(exc):  # gradio's words for "in use"
            raise UsageError(f"port {port} on {host} is in use: pass another --port") from None
        raise UsageError(f"cannot serve on {host}:{port}: {str(exc).splitlines()[0]}") from None
    if not quiet:
        print(f"* Running on {out[1]} (stop with Ctrl+C)", flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return out
