"""The int8 recipe: every choice that shapes ``velocity_int8.onnx``, as one dataclass stored as JSON.

The defaults are the recipe that measured best on this project's 2-core AVX2 CPU (no VNNI); the numbers
behind each choice, including the variants that did not pay, are in ``docs/int8_findings.md``. In short:

- static QDQ (``quantize_dynamic`` would emit ConvInteger, slow on CPU); uint8 activations x int8 weights
  (S8S8 ran 1.0-1.25x where U8S8 ran 1.25-1.55x); per-channel weights (same speed and velocity SQNR as
  per-tensor here, a better worst image); 7-bit weights (``reduce_range``): without VNNI the uint8 x int8
  kernel adds pairs of products in saturating int16, and full-range weights lost 6 dB of worst-image PSNR
  to that saturation at the same speed (the fake-quant SQNR, which cannot saturate, was the same);
- every op type ORT runs in int8 is quantized, so the residual adds, skip concats and upsampling between
  convs stay uint8 instead of bouncing through float (conv-only: 1.40x instead of 1.54x at batch 128);
- kept in float: the conditioning path (time/class embedding: a quantized timestep destroys the sinusoidal
  embedding, PSNR 7 dB), the norm chains (GroupNorm has no int8 kernel; its affine + SiLU run fused in
  float; int8 there cost 2 dB of SQNR for a mixed speed result), attention (QLinearSoftmax is slower than
  float Softmax), the first and last conv (1 input / 1 output channel: the int8 kernel is 0.3-0.8x of float
  there, and int8 cost 2.5 dB SQNR);
- after quantization, Shapes read the quantized tensors directly (no full-tensor DQ just to read a shape),
  and tensors get short names (the file is 0.32x of fp32 instead of 0.38x).

On a CPU with VNNI/AMX (an Intel Xeon) the int8 convs gain ~3x, so width decides: see
``scripts/int8_speed.py`` and the 2026-11-30 section of the findings. ``"vnni"`` is the recipe measured
there: 8-bit weights (VNNI's ``vpdpbusd`` accumulates in int32, so nothing saturates) and the ResNets'
time-embedding adds kept in float (role ``conditioning_add``: their output feeds only the float GroupNorm).
A file made with it must not be run on an AVX2 CPU without VNNI (int16 saturation, see above).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from fm_edge.errors import UsageError

ROLES = (
    "first_conv", "last_conv", "embedding", "conditioning", "conditioning_add", "attention", "norm", "norm_chain",
)  # fmt: skip
PASSES = ("shapes_from_quantized", "drop_dead_nodes", "strip_value_info", "short_tensor_names")
FORMATS = ("QDQ", "QOperator")
QTYPES = ("QUInt8", "QInt8")
METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")
ALL_OPS = (
    "Conv", "Add", "Mul", "Concat", "Resize", "Reshape", "MatMul", "Gemm", "Sigmoid", "Transpose",
    "Unsqueeze", "Gather", "Softmax", "InstanceNormalization",
)  # fmt: skip


@dataclass
class Recipe:
    name: str = "fm-edge-qdq-u8s8"
    quant_format: str = "QDQ"
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    reduce_range: bool = True
    calibrate_method: str = "MinMax"
    op_types: tuple[str, ...] = ALL_OPS
    exclude_roles: tuple[str, ...] = ("conditioning", "norm_chain", "attention", "first_conv", "last_conv")
    exclude_nodes: tuple[str, ...] = ()
    passes: tuple[str, ...] = PASSES
    #: ORT graph optimizers a runtime should switch off for this file (recorded in its metadata)
    disabled_optimizers: tuple[str, ...] = ()
    extra_options: dict = field(default_factory=dict)

    def __post_init__(self):
        for key in ("op_types", "exclude_roles", "exclude_nodes", "passes", "disabled_optimizers"):
            setattr(self, key, tuple(getattr(self, key)))
        checks = [
            ("quant_format", self.quant_format, FORMATS),
            ("activation_type", self.activation_type, QTYPES),
            ("weight_type", self.weight_type, QTYPES),
            ("calibrate_method", self.calibrate_method, METHODS),
        ]
        for key, val, allowed in checks:
            if val not in allowed:
                raise UsageError(f"recipe {key}={val!r} is not supported: choose one of {', '.join(allowed)}")
        for role in self.exclude_roles:
            if role not in ROLES:
                raise UsageError(f"recipe exclude role {role!r} is unknown: choose from {', '.join(ROLES)}")
        for p in self.passes:
            if p not in PASSES:
                raise UsageError(f"recipe pass {p!r} is unknown: choose from {', '.join(PASSES)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"recipe has unknown keys {unknown}: allowed are {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


#: Named recipes (what ``--int8-recipe NAME`` could pick); "default" is the one that won.
#: what stays float when the time-embedding adds do too (the roles are found in fm_edge.quantize.graph)
FLOAT_COND_ADD = ("conditioning", "conditioning_add", "norm_chain", "attention", "first_conv", "last_conv")

RECIPES = {
    "default": Recipe(),
    # Each is the default with one choice flipped: what docs/int8_findings.md compares against.
    "naive": Recipe(
        name="naive-qdq-all",
        per_channel=False,
        exclude_roles=(),
        passes=(),
    ),
    "conv-only": Recipe(name="qdq-conv-only", op_types=("Conv",)),
    "s8s8": Recipe(name="qdq-s8s8", activation_type="QInt8"),
    "full-range": Recipe(name="qdq-u8s8-full-range", reduce_range=False),
    # For CPUs with VNNI or AMX (docs/int8_findings.md, 2025 section): 8-bit weights (no int16 saturation
    # there) and the time-embedding adds in float (their output only feeds the float GroupNorm).
    "vnni": Recipe(
        name="fm-edge-qdq-u8s8-vnni",
        reduce_range=False,
        exclude_roles=FLOAT_COND_ADD,
    ),
    # Candidates for VNNI/AMX CPUs (scripts/int8_speed.py compares them).
    "float-cond-add": Recipe(
        name="qdq-float-cond-add",
        exclude_roles=FLOAT_COND_ADD,
    ),
    "norm-int8": Recipe(
        name="qdq-norm-int8", exclude_roles=("conditioning", "attention", "first_conv", "last_conv")
    ),
    "nchw": Recipe(name="qdq-nchw", disabled_optimizers=("NhwcTransformer",)),
    # The time-free, norm-free one-step student (fm_edge.student_net): only the label embedding stays in
    # float; its first conv sees 1 + label channels and its last conv 4 outputs (space-to-depth), so both
    # run in int8 too (scripts/int8_student_arch.py). Relu is quantized too: then ORT folds it into the conv
    # before it (otherwise each conv output is dequantized and requantized with the Relu's range, a DQ -> Q
    # float round trip per conv). 8-bit weights: on the AVX2-only CPU (no VNNI, where int16 saturation is
    # possible) they took the shipped digit net's int8 FD from +12% of fp32 to -4%, at the same speed; uint8
    # weights (no saturation) scored the same FD but ran 1.4-1.7x slower (docs/int8.md, 2026-12-03).
    "student": Recipe(
        name="fm-edge-qdq-student-w8",
        op_types=(*ALL_OPS, "Relu"),
        exclude_roles=("conditioning",),
        reduce_range=False,
    ),
    "student-w7": Recipe(
        name="fm-edge-qdq-student", op_types=(*ALL_OPS, "Relu"), exclude_roles=("conditioning",)
    ),
    "student-float-ends": Recipe(
        name="qdq-student-float-ends",
        op_types=(*ALL_OPS, "Relu"),
        exclude_roles=("conditioning", "first_conv", "last_conv"),
    ),
    "student-no-relu": Recipe(name="qdq-student-no-relu", exclude_roles=("conditioning",)),
}


def get(name_or_recipe) -> Recipe:
    if isinstance(name_or_recipe, Recipe):
        return name_or_recipe
    if isinstance(name_or_recipe, dict):
        return Recipe.from_dict(name_or_recipe)
    if name_or_recipe not in RECIPES:
        raise UsageError(f"unknown int8 recipe {name_or_recipe!r}: choose one of {', '.join(RECIPES)}")
    return RECIPES[name_or_recipe]
