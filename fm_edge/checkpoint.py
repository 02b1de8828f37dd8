"""Training state on disk: ``checkpoint-<step>/`` folders, shared by train and distill.

A checkpoint holds only safetensors and JSON: the weights, the EMA weights, the optimizer moments (tensors in
``optimizer.safetensors``, its settings as JSON metadata) and ``state.json`` (step, loss log, anything the run
keeps). It is written to a hidden temporary folder and renamed into place, so a run killed at any moment
(SIGKILL included) resumes from its last complete checkpoint, losing at most one interval.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from fm_edge.atomic import atomic_dir
from fm_edge.errors import FmEdgeError, UsageError

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-<step>/ in output_dir, by step (temporary folders excluded)."""
    return sorted(
        (int(m.group(1)), p) for p in output_dir.glob("checkpoint-*") if (m := CKPT_RE.match(p.name))
    )


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint-<step>/ with the highest step (temporary folders are ignored)."""
    found = [(s, p) for s, p in checkpoints(output_dir) if (p / "state.json").is_file()]
    return found[-1][1] if found else None


def optimizer_tensors(sd: dict) -> tuple[dict, dict]:
    """An optimizer state_dict as safetensors tensors + string metadata (no pickle)."""
    import torch

    tensors, scalars = {}, {}
    for pid, entry in sd["state"].items():
        for key, val in entry.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = val.detach().contiguous()
            else:
                scalars[f"{pid}.{key}"] = val
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, meta


def optimizer_state(path: Path) -> dict:
    """The optimizer state_dict from optimizer.safetensors (or a legacy optimizer.pt, weights only)."""
    import torch
    from safetensors import safe_open

    if not (path / "optimizer.safetensors").is_file() and (path / "optimizer.pt").is_file():
        return torch.load(path / "optimizer.pt", weights_only=True)
    state: dict = {}
    with safe_open(str(path / "optimizer.safetensors"), framework="pt") as f:
        meta = f.metadata()
        for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = f.get_tensor(name)
    for name, val in json.loads(meta["scalars"]).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    groups = json.loads(meta["param_groups"])
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def save_checkpoint(out: Path, step: int, model, ema, optimizer, state: dict, keep: int) -> Path:
    """Write ``out/checkpoint-<step>/`` atomically and keep only the newest ``keep`` checkpoints."""
    from safetensors.torch import save_file

    final = out / f"checkpoint-{step}"
    with atomic_dir(final) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        ema_sd = {f"shadow.{i}": p.detach().contiguous() for i, p in enumerate(ema.shadow_params)}
        save_file(ema_sd, tmp / "ema.safetensors")
        tensors, meta = optimizer_tensors(optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors", metadata=meta)
        state = dict(state, ema_optimization_step=ema.optimization_step)
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    for _, p in checkpoints(out)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def named_ema_weights(ema_file: Path, model) -> dict:
    """A checkpoint's ``ema.safetensors`` (``shadow.i`` in parameter order) under the model's parameter names,
    ready for ``model.load_state_dict`` or a ``save_pretrained``-style weights file."""
    from safetensors.torch import load_file

    shadow = load_file(ema_file)
    return {name: shadow[f"shadow.{i}"] for i, (name, _) in enumerate(model.named_parameters())}


def load_checkpoint(path: Path, model, ema, optimizer) -> dict:
    """Load a checkpoint folder into model, EMA and optimizer; its state.json."""
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(path / "model.safetensors"))
        shadow = load_file(path / "ema.safetensors")
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(shadow[f"shadow.{i}"])
        optimizer.load_state_dict(optimizer_state(path))
        state = json.loads((path / "state.json").read_text())
    except Exception as exc:
        raise FmEdgeError(f"checkpoint {str(path)!r} could not be resumed: {exc}") from None
    ema.optimization_step = state.get("ema_optimization_step", state["step"])
    return state


def resume_checkpoint(out: Path, resume: str, model, ema, optimizer, log=print) -> dict | None:
    """Load ``--resume`` ('latest' or a checkpoint folder) into model, EMA and optimizer: its saved state, or
    None when 'latest' finds no checkpoint yet (the run then starts from step 0)."""
    path = latest_checkpoint(out) if resume == "latest" else Path(resume)
    if path is None:
        log(f"no checkpoint in {out}: starting from step 0", file=sys.stderr)
        return None
    if not (path / "state.json").is_file():
        raise UsageError(f"--resume {resume!r}: {str(path)!r} is not a complete checkpoint folder")
    state = load_checkpoint(path, model, ema, optimizer)
    log(f"resumed from {path} at step {state['step']}", file=sys.stderr)
    return state
