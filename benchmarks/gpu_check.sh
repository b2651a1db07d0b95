#!/usr/bin/env bash
# GPU checks in one go, at most 8 minutes (each step has its own time guard, and the whole script one):
#   1. the whole test suite with the test models and their inputs on cuda (NORMPROBE_TEST_DEVICE=cuda),
#      in parallel workers where pytest-xdist is installed;
#   2. benchmarks/bench_throughput.py: Llama-3.2-1B shape, bfloat16, 2,097,152 tokens in 2048-token windows at
#      the automatic batch size; tokens/s of HF's default forward, norms, norms with random-init baselines,
#      updates against a logit readout of every layer, trace of 64 texts; fixed costs; peak memory;
#   3. on two GPUs, torchrun's tables against the single-GPU run's (tests/test_scale.py on cuda); on one, it says so.
# Run from the repository root (docs/development.md has the one device call that carries the wheels):
#   bash benchmarks/gpu_check.sh          # PYTHON=... picks the interpreter, OUT=... the folder
# Writes gpu_check.log, tests.log, bench_throughput.{json,md} under ${OUT:-benchmarks/results}/;
# `python scripts/docs_figures.py --gpu-check DIR` turns them into docs/generated/gpu-check.md.
set -uo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
TOKENS=${GPU_CHECK_TOKENS:-2097152}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
deadline=$(( $(date +%s) + 470 ))
left() { echo $(( deadline - $(date +%s) )); }
step() {  # step NAME SECONDS COMMAND...: run with a guard that never passes the overall deadline
  local name=$1 limit=$2; shift 2
  local budget; budget=$(left)
  (( budget < limit )) && limit=$budget
  if (( limit < 20 )); then echo "== $name: skipped, under 20 s left" | tee -a "$LOG"; return; fi
  echo "== $name (limit ${limit}s)" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}
: > "$LOG"
echo "date $(date -u '+%Y-%m-%d %H:%M UTC')" | tee -a "$LOG"
"$PYTHON" - <<'PY' 2>&1 | tee -a "$LOG"
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.device_count(), "GPU(s)",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
print("packages", ", ".join(f"{p} {md.version(p)}" for p in ("transformers", "transformer-lens", "accelerate", "datasets", "pandas", "pyarrow")))
PY
gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
workers=()
if "$PYTHON" -c 'import xdist' 2>/dev/null; then workers=(-n "${GPU_CHECK_WORKERS:-8}" --dist loadfile); fi
# the whole suite; the summary lists every failure with its reason (no -x: all of them, in one go)
NORMPROBE_TEST_DEVICE=cuda step "tests on cuda" 200 "$PYTHON" -m pytest -q -p no:cacheprovider "${workers[@]}" \
  -rfE --tb=short tests/
# baselines over a quarter of the corpus: four passes each, and three random models built per run
PYTHONUNBUFFERED=1 step "throughput: Llama-3.2-1B shape, bfloat16, $TOKENS tokens" 250 \
  "$PYTHON" benchmarks/bench_throughput.py --shape 1b --device cuda --dtype bfloat16 --tokens "$TOKENS" \
  --baseline-tokens $(( TOKENS / 4 )) --out "$OUT"
if [ "$gpus" -ge 2 ]; then
  NORMPROBE_TEST_DEVICE=cuda step "torchrun on two GPUs against one GPU" 60 "$PYTHON" -m pytest -q -p no:cacheprovider \
    -rfE --tb=short tests/test_scale.py -k torchrun
else
  echo "== torchrun on two GPUs: skipped, this machine has $gpus GPU(s)" | tee -a "$LOG"
fi
echo "done with $(left) s to spare" | tee -a "$LOG"
