#!/usr/bin/env bash
# The GPU sampler in one command (about 5 minutes on one GPU, no network): the CUDA tests, fm-edge bench
# --device cuda for the torch backends (CUDA graphs, eager, bf16) and the ONNX files, capped at 10 GB, and
# one JSON with it all.
#
#   OUT=/some/dir bash scripts/gpu_check.sh [CHECKPOINT]      # default: teacher v1.1 (the UNet)
#
# Set-up as in scripts/train_gpu.sh: wheels carried in .whl/ are installed offline into /tmp/site when the
# image lacks diffusers (or pytest); the package runs from this checkout. ONNX rows use ORT's CUDA provider
# when onnxruntime-gpu is installed, else the CPU provider (the JSON says which).
set -euo pipefail
: "${OUT:?set OUT to the output folder}"
MODEL=${1:-stages/compact-mnist-v1.1}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import diffusers, pytest" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
FM=(python3 -m fm_edge.cli)
T0=$SECONDS

# 1. the CUDA tests (graphed == eager, GPU == CPU within a grey level, bf16 close, sample/bench on cuda)
set +e
timeout 180 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py >"$OUT/cuda_tests.log" 2>&1
TESTS_RC=$?
set -e
tail -n 3 "$OUT/cuda_tests.log"

# 2. bench at the shipped setting: batch 1, 64 and 1000, NFE 4 (CFG: each call runs 2B), 10 GB cap
timeout 300 "${FM[@]}" bench --model "$MODEL" --device cuda --memory-cap-gb 10 \
    --backends torch-fp32,torch-eager,torch-bf16,sampler-fp32,sampler-int8 \
    --batch-sizes 1,64,1000 --nfe 4 --repeats 10 --quality-samples 2000 -o "$OUT/bench" 2>"$OUT/bench.err" \
    | tee "$OUT/bench.md" || { tail -n 20 "$OUT/bench.err" >&2; exit 1; }

# 3. one JSON
python3 - "$OUT" "$TESTS_RC" "$((SECONDS - T0))" <<'PY'
import json, sys
from pathlib import Path

out, rc, secs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
bench = json.loads((out / "bench" / "bench.json").read_text())
log = (out / "cuda_tests.log").read_text().strip().splitlines()
summary = {"cuda_tests": {"exit_code": rc, "summary": log[-1] if log else ""}, "seconds": secs,
           "bench": bench}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({"cuda_tests": summary["cuda_tests"], "seconds": secs}))
PY
