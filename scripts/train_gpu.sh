#!/usr/bin/env bash
# The teacher in one GPU window (15 minutes, no network): set up, train `edge`, evaluate, leave it ready to ship.
#
#   OUT=/some/dir bash scripts/train_gpu.sh            # on the GPU machine, from the repo root
#   OUT=/tmp/smoke bash scripts/train_gpu.sh --smoke   # CPU check: tiny preset, a data slice, a few steps
#
# 1. set-up: when diffusers or datasets is missing, the wheels in .whl/ are installed offline into /tmp/site;
#    the package runs from this checkout (PYTHONPATH, no pip install -e). MNIST is read from data/mnist.
# 2. probe: a short run measures steady images/s; scripts/gpu_plan.py turns TRAIN_SECONDS into steps
# 3. train: cosine LR to zero, bf16, channels_last, a checkpoint about every minute in $OUT/teacher (a
#    timeout keeps them; RESUME_DIR=<a copy of such a teacher folder> continues that run with its plan)
# 4. pick the recommended CFG scale and shift (scripts/pick_sampler.py), then fm-edge sample (EVAL_SAMPLES
#    digits, Euler 4 and 8 steps) and fm-edge evaluate
# 5. distill (DISTILL=1, the default): a one-step student by progressive distillation, evaluated
# One 600-s window fits stages 1-4 (DISTILL=0); a second window distils: TEACHER_DIR=<the teacher's model/>
# skips stages 2-3.
# Every knob below can be set in the environment. $OUT/summary.json holds the results; the last stdout line
# is that JSON.
set -euo pipefail

SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT/logs"
T0=$SECONDS

# --- knobs (GPU defaults; --smoke overrides the sizes) ---
PRESET=${PRESET:-edge}
DATA=${DATA:-data/mnist}
TRAIN_SECONDS=${TRAIN_SECONDS:-300}   # training proper; the whole script takes ~3 minutes more
BATCH=${BATCH:-512}
LR=${LR:-2e-3}
WARMUP=${WARMUP:-500}
SCHEDULE=${SCHEDULE:-cosine}
EMA=${EMA:-0.9995}
TIME_SAMPLING=${TIME_SAMPLING:-uniform}
OT=${OT:-0}                           # 1: --ot-coupling (one host sync + CPU assignment per step)
COMPILE=${COMPILE:-0}                 # 1: --compile (compile time counts against TRAIN_SECONDS)
CHANNELS_LAST=${CHANNELS_LAST:-1}
PROBE_STEPS=${PROBE_STEPS:-150}
MIN_STEPS=${MIN_STEPS:-200}
EVAL_SAMPLES=${EVAL_SAMPLES:-2000}
EVAL_STEPS=${EVAL_STEPS:-"4 8"}
LIMIT=${LIMIT:-}
RESUME_DIR=${RESUME_DIR:-}
PRECISION=(--bf16)
if [[ $SMOKE == 1 ]]; then
    PRESET=tiny BATCH=16 WARMUP=2 PROBE_STEPS=6 MIN_STEPS=8 TRAIN_SECONDS=1 EVAL_SAMPLES=20 LIMIT=256
    DATA=${SMOKE_DATA:-tests/data/mnist_tiny} CHANNELS_LAST=0 PRECISION=()
fi

# --- 1. set-up (offline) ---
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_MININTERVAL=10
export HF_DATASETS_CACHE=${HF_DATASETS_CACHE:-/tmp/fm-edge-hf-datasets}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import diffusers, datasets" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "train_gpu: diffusers/datasets missing and no .whl/ carried" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
FM=(python3 -m fm_edge.cli)
python3 - <<'PY'
import torch
print("train_gpu: torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", flush=True)
PY
echo "train_gpu: set-up done at $((SECONDS - T0)) s"

TRAIN_FLAGS=(--preset "$PRESET" --data "$DATA" --batch-size "$BATCH" --lr "$LR" --warmup-steps "$WARMUP"
    --lr-schedule "$SCHEDULE" --ema-decay "$EMA" --time-sampling "$TIME_SAMPLING" --log-every 100 "${PRECISION[@]}")
[[ $OT == 1 ]] && TRAIN_FLAGS+=(--ot-coupling)
[[ $COMPILE == 1 ]] && TRAIN_FLAGS+=(--compile)
[[ $CHANNELS_LAST == 1 ]] && TRAIN_FLAGS+=(--channels-last)
[[ -n $LIMIT ]] && TRAIN_FLAGS+=(--limit "$LIMIT")
RUN="$OUT/teacher"

TEACHER_DIR=${TEACHER_DIR:-}   # a trained teacher's model/ folder: skip stages 2-3 (e.g. a second window
                               # that only distils; carry that folder, it is ~15 MB)
train_teacher() {
# --- 2. probe and plan (skipped when continuing a carried run: its plan is reused) ---
if [[ -n $RESUME_DIR && -f $RESUME_DIR/plan.json ]]; then
    mkdir -p "$RUN" && cp -r "$RESUME_DIR"/. "$RUN"/
    echo "train_gpu: continuing $RESUME_DIR"
else
    mkdir -p "$RUN"
    "${FM[@]}" train "${TRAIN_FLAGS[@]}" -o "$OUT/probe" --max-steps "$PROBE_STEPS" \
        --checkpoint-every $((PROBE_STEPS / 3)) 2>"$OUT/logs/probe.err" >/dev/null \
        || { tail -n 20 "$OUT/logs/probe.err" >&2; exit 1; }
    N_TRAIN=$(python3 -c "import sys; print(min(60000, int(sys.argv[1])) if sys.argv[1] else 60000)" "$LIMIT")
    python3 scripts/gpu_plan.py "$OUT/probe" --batch-size "$BATCH" --seconds "$TRAIN_SECONDS" \
        --train-images "$N_TRAIN" --min-steps "$MIN_STEPS" > "$RUN/plan.json"
    rm -rf "$OUT/probe"
fi
STEPS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['steps'])" "$RUN/plan.json")
EVERY=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['checkpoint_every'])" "$RUN/plan.json")
echo "train_gpu: plan $(cat "$RUN/plan.json") at $((SECONDS - T0)) s"

# --- 3. train (a guard stops it 120 s past its budget; the latest checkpoint is then what ships) ---
T_TRAIN=$SECONDS
set +e
timeout --signal=KILL $((TRAIN_SECONDS + 120)) "${FM[@]}" train "${TRAIN_FLAGS[@]}" -o "$RUN" \
    --max-steps "$STEPS" --checkpoint-every "$EVERY" --resume latest 2>"$OUT/logs/train.err" >/dev/null
RC=$?
set -e
tail -n 3 "$OUT/logs/train.err" | tr '\r' '\n' | tail -n 3
if [[ $RC != 0 ]]; then
    LAST=$(ls -d "$RUN"/checkpoint-* 2>/dev/null | sed 's/.*checkpoint-//' | sort -n | tail -n 1)
    [[ -n $LAST ]] || { echo "train_gpu: training failed (rc $RC) before its first checkpoint" >&2; exit 1; }
    echo "train_gpu: training stopped (rc $RC); shipping checkpoint-$LAST"
    "${FM[@]}" train "${TRAIN_FLAGS[@]}" -o "$RUN" --max-steps "$LAST" --checkpoint-every "$EVERY" \
        --resume latest 2>>"$OUT/logs/train.err" >/dev/null
fi
TRAIN_WALL=$((SECONDS - T_TRAIN))
echo "train_gpu: teacher at $RUN/model after $TRAIN_WALL s of training ($((SECONDS - T0)) s in all)"
}
if [[ -n $TEACHER_DIR ]]; then
    mkdir -p "$RUN/model" && cp -r "$TEACHER_DIR"/. "$RUN/model"/
    TRAIN_WALL=0
    echo "train_gpu: teacher $TEACHER_DIR (no training in this window)"
else
    train_teacher
fi

# --- 4. pick the recommended CFG scale and shift (Euler 4, 1,000 digits), then evaluate at 4 and 8 steps ---
python3 scripts/pick_sampler.py "$RUN/model" --num-samples "$((EVAL_SAMPLES < 1000 ? EVAL_SAMPLES : 1000))" \
    2>>"$OUT/logs/eval.err" | tail -n 1
for S in $EVAL_STEPS; do
    "${FM[@]}" sample --model "$RUN/model" --backend torch --device auto --solver euler --steps "$S" \
        --num-samples "$EVAL_SAMPLES" --batch-size 1000 -o "$OUT/euler$S.npz" 2>>"$OUT/logs/eval.err" >/dev/null
    "${FM[@]}" evaluate "$OUT/euler$S.npz" --json "$OUT/euler$S.json" 2>>"$OUT/logs/eval.err" >/dev/null
done

# --- 5. distillation hook ----------------------------------------------------------------------
# The student stage: $OUT/student (its run folder and model/), its evaluation in $OUT/distill.json (merged below).
DISTILL=${DISTILL:-1}
distill() {  # progressive distillation won on the CPU at equal compute (docs/results/distill_prototype.json)
    local teacher=$1 out=$2 s=$2/student t=$SECONDS
    local steps=${DISTILL_STEPS:-3000} batch=${DISTILL_BATCH:-256}
    if [[ $SMOKE == 1 ]]; then steps=6 batch=8; fi
    "${FM[@]}" distill --teacher "$teacher" -o "$s" --method "${DISTILL_METHOD:-progressive}" \
        --teacher-solver euler --teacher-steps "${DISTILL_TEACHER_STEPS:-8}" --batch-size "$batch" \
        --lr "${DISTILL_LR:-3e-4}" --max-steps "$steps" --checkpoint-every 500 --device auto \
        "${PRECISION[@]}" --resume latest 2>>"$OUT/logs/distill.err" >/dev/null
    "${FM[@]}" sample --model "$s/model" --backend torch --device auto --num-samples "$EVAL_SAMPLES" \
        --batch-size 1000 -o "$out/student.npz" 2>>"$OUT/logs/eval.err" >/dev/null
    "${FM[@]}" evaluate "$out/student.npz" --json "$out/student.json" 2>>"$OUT/logs/eval.err" >/dev/null
    python3 - "$out" "$s" $((SECONDS - t)) <<'PY'
import json, sys
from pathlib import Path

out, s, wall = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
r = json.loads((out / "student.json").read_text())
fm = json.loads((s / "model" / "fm_edge.json").read_text())
(out / "distill.json").write_text(json.dumps({
    "model": str(s / "model"), "sampler": fm["sampler"], "distillation": fm["distillation"], "wall_s": wall,
    "n": r["n"], "fd": r["fd"], "fd_floor": r["fd_floor"],
    "fd_over_floor": r["fd"] / r["fd_floor"] if r["fd_floor"] else None, "label_accuracy": r["label_accuracy"],
}))
PY
}
[[ $DISTILL == 1 ]] && distill "$RUN/model" "$OUT"
# -------------------------------------------------------------------------------------------------

python3 - "$OUT" "$RUN" "$TRAIN_WALL" "$((SECONDS - T0))" "$EVAL_STEPS" <<'PY'
import json, sys
from pathlib import Path

out, run, train_wall, total, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
fm = json.loads((run / "model" / "fm_edge.json").read_text())
tr = fm["training"]
summary = {
    "preset": fm["preset"],
    "plan": json.loads((run / "plan.json").read_text()) if (run / "plan.json").is_file() else None,
    "steps": tr["steps"],
    "images_seen": tr["images_seen"],
    "train_seconds": tr["train_seconds"],
    "train_images_per_s": round(tr["images_seen"] / max(tr["train_seconds"], 1e-9), 1),
    "final_loss_ema": tr["final_loss_ema"],
    "train_wall_s": train_wall,
    "script_s": total,
    "sampler": fm["sampler"],
    "eval": {},
    "model": str(run / "model"),
}
for s in steps.split():
    r = json.loads((out / f"euler{s}.json").read_text())
    ratio = r["fd"] / r["fd_floor"] if r["fd"] is not None and r["fd_floor"] else None
    summary["eval"][f"euler{s}"] = {
        "n": r["n"], "fd": r["fd"], "fd_floor": r["fd_floor"], "fd_over_floor": ratio,
        "label_accuracy": r["label_accuracy"],
    }
if (out / "distill.json").is_file():
    summary["distill"] = json.loads((out / "distill.json").read_text())
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary))
PY
