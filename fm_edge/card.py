"""The model card (README.md with YAML front matter) written into every inference folder."""

from __future__ import annotations

import json
from pathlib import Path

from fm_edge.artifacts import SHIPPED, steps_of_length
from fm_edge.sampler_spec import SamplerSpec

#: The Hub's front matter: library and task, and diffusers' ``diffusers:<pipeline class>`` tag.
TAGS = ["flow-matching", "mnist", "class-conditional", "fm-edge", "diffusers:FmEdgePipeline"]


def _where(folder: Path) -> str:
    """How the usage snippet names the folder: a shipped one by its repo path, any other by a placeholder."""
    try:
        path = Path(folder).resolve()
        if path.parent == SHIPPED.parent.resolve():
            return f"fm_edge/checkpoints/{path.name}"
    except OSError:
        pass
    return "path/to/this/folder"


def _what(folder: Path, config: dict) -> tuple[str, str]:
    """The title's noun and one sentence on the model class named in config.json (``config``: fm_edge.json's
    content, which says whether the net was distilled)."""
    path = Path(folder) / "config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    name = cfg.get("_class_name")
    if name != "OneStepNet":
        return (
            "UNet",
            "A class-conditional diffusers `UNet2DModel` trained with the flow-matching (velocity) objective.",
        )
    if cfg.get("step_input"):
        k = steps_of_length(cfg.get("default_step"))
        runs = (
            f"runs {k} Euler step{'s' if k != 1 else ''} of length 1/{k} (or a multiple of {k}, each step split)"
            if k
            else "takes steps of any length"
        )
        return "OneStepNet", (
            "A class-conditional mean-flow `OneStepNet` with t and the step length as input planes "
            "(fm_edge.student_net: a norm-free conv-ReLU net built for int8) that gives the average velocity over "
            f"a step, so it {runs}, distilled from a flow teacher's guided flow (fm_edge.meanflow)."
        )
    if cfg.get("time_input"):
        distilled = "distillation" in config
        how = "distilled from a teacher sampler" if distilled else "trained by flow matching from data"
        return "OneStepNet", (
            "A class-conditional `OneStepNet` with t as an input plane (fm_edge.student_net: a norm-free conv-ReLU"
            f" net built for int8) that draws a digit in a few Euler steps, {how}."
        )
    return "OneStepNet", (
        "A class-conditional, time-free `OneStepNet` (fm_edge.student_net: a norm-free conv-ReLU net built"
        " for int8) that maps noise to a digit in one network evaluation, distilled from a teacher sampler."
    )


def write_card(folder: Path, config: dict, quality: dict | None = None) -> None:
    """Render README.md for a checkpoint from its fm_edge config and (optionally) measured quality."""
    tr = config.get("training", {})
    s = SamplerSpec.from_dict(config.get("sampler"))
    noun, what = _what(folder, config)
    lines = [
        "---",
        "library_name: diffusers",
        "license: mit",
        "tags:",
        *[f"- {t}" for t in TAGS],
        "datasets: [ylecun/mnist]",
        "pipeline_tag: unconditional-image-generation",
        "---",
        "",
        f"# fm-edge {config.get('preset', '?')} MNIST flow-matching {noun}",
        "",
        what,
        "These are the EMA weights.",
        "",
        "## Convention",
        "",
        f"- {config.get('time_convention', '')}",
        f"- timestep input: float32 [B] = t * {config.get('t_scale')}",
        f"- labels 0-9, null label {config.get('null_label')} (classifier-free guidance)",
        f"- images: {config.get('normalization')}, padded 28->32 ({config.get('padding')})",
        "",
        "## Recommended sampler",
        "",
        f"`{s.solver}`, {s.steps} step{'' if s.steps == 1 else 's'}, {s.guidance_text()}, time shift {s.shift:g}."
        + (" One forward pass per step, no CFG batch." if s.distilled else ""),
        "",
        "## Use with diffusers",
        "",
        "`FmEdgePipeline` (in the `fm-edge` package) runs diffusers' `FlowMatchEulerDiscreteScheduler` on fm-edge's",
        "time grid, with the recommended sampler as its defaults:",
        "",
        "```python",
        "from fm_edge.diffusers_pipeline import FmEdgePipeline",
        "",
        f'pipe = FmEdgePipeline.from_pretrained("{_where(folder)}")',
        "images = pipe(class_labels=[3, 7]).images  # two 28x28 PIL images",
        "```",
        "",
        "`pipe.save_pretrained(out)` writes the standard pipeline folder (model_index.json, unet/, scheduler/).",
        "",
        "## Training recipe",
        "",
        "```json",
        json.dumps(tr, indent=1),
        "```",
        "",
    ]
    if tr.get("train_seconds"):
        lines += [f"Training time: {tr['train_seconds'] / 60:.1f} min ({tr.get('images_seen')} images).", ""]
    quality = quality or config.get("quality")
    if quality:
        lines += [
            "## Measured quality (fm-edge evaluator)",
            "",
            "```json",
            json.dumps(quality, indent=1),
            "```",
            "",
        ]
        if (folder / "samples.png").exists():
            lines += ["![10x10 samples](samples.png)", ""]
    (folder / "README.md").write_text("\n".join(lines))
