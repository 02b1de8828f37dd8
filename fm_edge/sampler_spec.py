"""The few-step sampler setting as one frozen value: solver, steps, CFG scale, time shift and guidance.

A checkpoint recommends one in ``fm_edge.json`` (its ``"sampler"`` object), every exported ``.onnx`` file
records one in ``metadata_props``, and command-line flags override it. Everything that samples takes the
whole :class:`SamplerSpec`, so two floats cannot trade places on the way.

Guidance is either classifier-free at run time (``v_u + s (v_c - v_u)``: two UNet rows per velocity call) or
distilled into a student's weights, which then samples with ``cfg_scale`` 1 and one row per call; the scale
it learned is kept in ``distilled_cfg_scale``. Imports numpy at most, so the torch-free runtime can use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from fm_edge.errors import FmEdgeError, UsageError

#: metadata keys a sampler.onnx bakes into its graph; they win over the recommended_sampler JSON
_BAKED = {"solver": str, "steps": int, "shift": float, "cfg_scale": float}


@dataclass(frozen=True)
class SamplerSpec:
    solver: str = "euler"
    steps: int = 4
    cfg_scale: float = 2.0
    shift: float = 1.0
    #: a guidance-distilled student: the CFG scale baked into its weights (None: guidance at run time)
    distilled_cfg_scale: float | None = None

    # --- what it costs and how it reads ---

    @property
    def distilled(self) -> bool:
        return self.distilled_cfg_scale is not None

    @property
    def guidance(self) -> str:
        return "distilled" if self.distilled else "cfg"

    @property
    def nfe(self) -> int:
        """Velocity calls per solve (a CFG call batches the conditional and unconditional rows)."""
        from fm_edge.solvers import nfe

        return nfe(self.solver, self.steps)

    def network_evals(self, doubled: bool | None = None) -> int:
        """UNet rows per digit. ``doubled`` (default: CFG at run time with a scale other than 1) says whether
        every call runs two rows; a sampler.onnx graph doubles whenever it is not distilled."""
        if doubled is None:
            doubled = not self.distilled and self.cfg_scale != 1.0
        return self.nfe * (2 if doubled else 1)

    def guidance_text(self) -> str:
        """``CFG 1.25 distilled`` for a student, ``CFG 1.25`` or ``no CFG`` otherwise."""
        if self.distilled:
            return f"CFG {self.distilled_cfg_scale:g} distilled"
        return "no CFG" if self.cfg_scale == 1.0 else f"CFG {self.cfg_scale:g}"

    def describe(self) -> str:
        """E.g. ``euler x 1 step = NFE 1, CFG 1.25 distilled, shift 1``."""
        unit = "step" if self.steps == 1 else "steps"
        return f"{self.solver} x {self.steps} {unit} = NFE {self.nfe}, {self.guidance_text()}, shift {self.shift:g}"

    # --- checked changes ---

    def check(self) -> SamplerSpec:
        """Raise a UsageError for an unknown solver, a step count, CFG scale or shift out of range."""
        from fm_edge.solvers import check_cfg, check_solver, time_grid

        check_solver(self.solver, self.steps)
        check_cfg(self.cfg_scale)
        time_grid(1, self.shift)  # validates the shift
        return self

    def override(self, steps=None, solver=None, cfg_scale=None, shift=None) -> SamplerSpec:
        """This spec with the given values (None keeps the recommendation), checked. A distilled student
        refuses another CFG scale: guiding it again would double the batch and over-guide."""
        if self.distilled and cfg_scale is not None and cfg_scale != self.cfg_scale:
            raise UsageError(
                f"--cfg-scale {cfg_scale}: this student has guidance {self.distilled_cfg_scale:g} distilled into "
                "its weights and runs one pass per step; omit --cfg-scale (guiding it again would double the "
                "batch and over-guide)"
            )
        given = {"steps": steps, "solver": solver, "cfg_scale": cfg_scale, "shift": shift}
        return replace(self, **{k: v for k, v in given.items() if v is not None}).check()

    # --- to and from fm_edge.json and ONNX metadata ---

    @classmethod
    def from_dict(cls, recorded: dict | None) -> SamplerSpec:
        """From fm_edge.json's ``"sampler"`` object; the package default fills what it omits."""
        d = dict(recorded or {})
        base = cls()
        distilled = d.get("guidance") == "distilled"
        return cls(
            solver=str(d.get("solver", base.solver)),
            steps=int(d.get("steps", base.steps)),
            cfg_scale=float(d.get("cfg_scale", base.cfg_scale)),
            shift=float(d.get("shift", base.shift)),
            distilled_cfg_scale=float(d.get("distilled_cfg_scale", 0.0)) if distilled else None,
        )

    def to_dict(self) -> dict:
        """The fm_edge.json ``"sampler"`` object (guidance keys only for a distilled student)."""
        d = {"solver": self.solver, "steps": self.steps, "cfg_scale": self.cfg_scale, "shift": self.shift}
        if self.distilled:
            d.update(guidance="distilled", distilled_cfg_scale=self.distilled_cfg_scale)
        return d

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str = "the file") -> SamplerSpec:
        """From an .onnx file's metadata_props: the keys baked into a sampler graph win over the
        ``recommended_sampler`` JSON that every exported file carries."""
        try:
            d = json.loads(meta.get("recommended_sampler", "{}"))
            if not isinstance(d, dict):
                raise ValueError("recommended_sampler is not a JSON object")
            d.update({k: kind(meta[k]) for k, kind in _BAKED.items() if k in meta})
            return cls.from_dict(d)
        except (ValueError, TypeError) as exc:
            raise FmEdgeError(f"unreadable sampler metadata in {where}: {exc}") from None

    def sampler_metadata(self) -> dict[str, str]:
        """The keys a sampler.onnx records: what its graph runs and what one digit costs."""
        meta = {
            "solver": self.solver,
            "steps": str(self.steps),
            "shift": str(float(self.shift)),
            "nfe": str(self.nfe),
            "guidance": self.guidance,
            # the graph doubles every call for CFG whatever cfg_scale it is given (the scale is an input)
            "network_evals_per_image": str(self.network_evals(doubled=not self.distilled)),
            "cfg_scale": str(float(self.cfg_scale)),
            "recommended_sampler": json.dumps(self.to_dict(), sort_keys=True),
        }
        if self.distilled:
            meta["distilled_cfg_scale"] = str(float(self.distilled_cfg_scale))
        return meta


def export_spec(folder: str | os.PathLike) -> SamplerSpec:
    """The sampler an export folder runs: sampler.onnx's baked-in settings, else velocity.onnx's advice."""
    from fm_edge.artifacts import SAMPLER_FILE, VELOCITY_FILE, onnx_metadata

    out = Path(folder)
    path = out / SAMPLER_FILE if (out / SAMPLER_FILE).is_file() else out / VELOCITY_FILE
    return SamplerSpec.from_metadata(onnx_metadata(path), str(path))


def checkpoint_spec(fm: dict) -> SamplerSpec:
    """The sampler a checkpoint's fm_edge.json recommends."""
    return SamplerSpec.from_dict(fm.get("sampler"))


def shipped_teacher_spec() -> SamplerSpec:
    """The shipped teacher's recommendation (read from JSON only: cheap enough for ``--help``)."""
    from fm_edge.artifacts import FM_CONFIG, SHIPPED

    try:
        return checkpoint_spec(json.loads((SHIPPED / FM_CONFIG).read_text()))
    except (OSError, ValueError):
        return SamplerSpec()


def check_net_steps(
    config, steps: int, flag: str = "--steps", solver: str = "euler", shift: float = 1.0
) -> None:
    """The step counts a OneStepNet (its config) runs: a time-free one exactly 1 step from t=1; a mean-flow
    student (trained for steps of its ``default_step`` = 1/K) K Euler steps on the plain grid, or a multiple
    mK (each step split in m, of length 1/(mK): between the trained lengths 0 and 1/K); a '-t' flow net any."""
    if not config.get("time_input") and steps != 1:
        raise UsageError(
            f"{flag} {steps}: this one-step student (OneStepNet, no time input) runs exactly 1 step"
        )
    from fm_edge.artifacts import steps_of_length

    step = config.get("default_step")
    k = steps_of_length(step)
    if k and steps % k:
        raise UsageError(
            f"{flag} {steps}: this mean-flow student learned steps of length 1/{k} and runs {k} steps or a "
            f"multiple of {k} (distill it with --student-steps {steps} for {steps})"
        )
    if step and (solver != "euler" or shift != 1):
        raise UsageError(
            f"this mean-flow student takes Euler steps of length {step:g} on the plain grid: use solver euler "
            f"and shift 1, not {solver} with shift {shift:g}"
        )
