"""The model card (README.md with YAML front matter) written into every inference folder."""

from __future__ import annotations

import json
from pathlib import Path


def write_card(folder: Path, config: dict, quality: dict | None = None) -> None:
    """Render README.md for a checkpoint from its fm_edge config and (optionally) measured quality."""
    tr = config.get("training", {})
    s = config.get("sampler", {})
    lines = [
        "---",
        "library_name: diffusers",
        "license: mit",
        "tags: [flow-matching, mnist, unconditional-image-generation, fm-edge]",
        "datasets: [ylecun/mnist]",
        "pipeline_tag: unconditional-image-generation",
        "---",
        "",
        f"# fm-edge {config.get('preset', '?')} MNIST flow-matching UNet",
        "",
        "A class-conditional diffusers `UNet2DModel` trained with the flow-matching (velocity) objective.",
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
        f"`{s.get('solver')}`, {s.get('steps')} steps, CFG scale {s.get('cfg_scale')}, "
        f"time shift {s.get('shift', 1.0)}.",
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
