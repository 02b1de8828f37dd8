"""Training state on disk: ``checkpoint-<step>/`` folders, shared by train and distill.

A checkpoint holds only safetensors and JSON: the weights, the EMA weights, the optimizer moments (tensors in
``optimizer.safetensors``, its settings as JSON metadata), ``state.json`` (step, loss log, anything the run
keeps) and any extra modules or optimizers the run trains beside the model (``<name>.safetensors``). It is written to a hidden temporary folder and renamed into place, so a run killed at any moment
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


def refuse_other_run(output_dir: Path, resume: str | None) -> None:
    """A fresh run (no ``--resume``) into a folder that holds an earlier run's checkpoints would delete them as it
    saves its own: a UsageError instead."""
    latest = latest_checkpoint(output_dir) if resume is None else None
    if latest is not None:
        raise UsageError(
            f"{str(output_dir)!r} holds {latest.name} of an earlier run: pass --resume latest to continue it, "
            "or write this run to another output dir"
        )


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


def optimizer_state(path: Path, name: str = "optimizer") -> dict:
    """An optimizer state_dict from ``<name>.safetensors`` (or a legacy optimizer.pt, weights only)."""
    import torch
    from safetensors import safe_open

    if not (path / f"{name}.safetensors").is_file() and (path / f"{name}.pt").is_file():
        return torch.load(path / f"{name}.pt", weights_only=True)
    state: dict = {}
    with safe_open(str(path / f"{name}.safetensors"), framework="pt") as f:
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


def _is_optimizer(obj) -> bool:
    import torch

    return isinstance(obj, torch.optim.Optimizer)


def save_checkpoint(
    out: Path, step: int, model, ema, optimizer, state: dict, keep: int, extras: dict | None = None
) -> Path:
    """Write ``out/checkpoint-<step>/`` atomically and keep only the newest ``keep`` checkpoints; ``extras``
    maps a file name to a module or optimizer that the run trains beside the model."""
    from safetensors.torch import save_file

    final = out / f"checkpoint-{step}"
    with atomic_dir(final) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        ema_sd = {f"shadow.{i}": p.detach().contiguous() for i, p in enumerate(ema.shadow_params)}
        save_file(ema_sd, tmp / "ema.safetensors")
        tensors, meta = optimizer_tensors(optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors", metadata=meta)
        for name, obj in (extras or {}).items():
            if _is_optimizer(obj):
                tensors, meta = optimizer_tensors(obj.state_dict())
            else:
                tensors, meta = {k: v.detach().contiguous() for k, v in obj.state_dict().items()}, None
            save_file(tensors, tmp / f"{name}.safetensors", metadata=meta)
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


def load_checkpoint(path: Path, model, ema, optimizer, extras: dict | None = None) -> dict:
    """Load a checkpoint folder into model, EMA, optimizer and ``extras`` (as saved); its state.json."""
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(path / "model.safetensors"))
        shadow = load_file(path / "ema.safetensors")
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(shadow[f"shadow.{i}"])
        optimizer.load_state_dict(optimizer_state(path))
        for name, obj in (extras or {}).items():
            if _is_optimizer(obj):
                obj.load_state_dict(optimizer_state(path, name))
            else:
                obj.load_state_dict(load_file(path / f"{name}.safetensors"))
        state = json.loads((path / "state.json").read_text())
    except Exception as exc:
        raise FmEdgeError(f"checkpoint {str(path)!r} could not be resumed: {exc}") from None
    ema.optimization_step = state.get("ema_optimization_step", state["step"])
    return state


def resume_checkpoint(
    out: Path, resume: str, model, ema, optimizer, log=print, extras: dict | None = None
) -> dict | None:
    """Load ``--resume`` ('latest' or a checkpoint folder) into model, EMA and optimizer: its saved state, or
    None when 'latest' finds no checkpoint yet (the run then starts from step 0)."""
    path = latest_checkpoint(out) if resume == "latest" else Path(resume)
    if path is None:
        log(f"no checkpoint in {out}: starting from step 0", file=sys.stderr)
        return None
    if not (path / "state.json").is_file():
        raise UsageError(f"--resume {resume!r}: {str(path)!r} is not a complete checkpoint folder")
    state = load_checkpoint(path, model, ema, optimizer, extras)
    log(f"resumed from {path} at step {state['step']}", file=sys.stderr)
    return state
