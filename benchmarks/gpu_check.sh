#!/usr/bin/env bash
# GPU checks in one go, at most 8 minutes (each step has its own time guard, and the whole script one):
#   1. the device-relevant tests with the test models on cuda (NORMPROBE_TEST_DEVICE=cuda);
#   2. norms probe / Hugging Face's default-attention forward, bfloat16, T=1024 and T=2048, 1B-class Llama shape;
#   3. a two-process torchrun on two GPUs, when there are two.
# Run from the repository root with the project's environment active (or PYTHON=.venv/bin/python).
# Writes its log and the benchmark's JSON under ${OUT:-benchmarks/results}/.
set -uo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
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
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'GPU(s)', torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee -a "$LOG"
NORMPROBE_TEST_DEVICE=cuda step "tests on cuda" 200 "$PYTHON" -m pytest -q -x -p no:cacheprovider \
  tests/test_norms.py::test_resid_norms_equal_hugging_face tests/test_attention.py::test_norms_run_on_sdpa_unless_patterns_are_read \
  tests/test_updates.py tests/test_precision.py tests/test_massive.py tests/test_probe_cost.py tests/test_model_objective.py \
  tests/test_trace.py::test_steps_match_float64_autograd
PYTHONUNBUFFERED=1 step "benchmark: 1B-class, bfloat16, against HF's default forward" 200 \
  "$PYTHON" benchmarks/bench_scaling.py --shape 1b --device cuda --dtype bfloat16 --only speed --repeats 3 --out "$OUT"
if [ "$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  step "torchrun, two GPUs" 90 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 -m normprobe run demo \
    --probe norms --probe updates --max-docs 64 --no-progress --device cuda --out "$OUT/torchrun-2gpu"
else
  echo "== torchrun, two GPUs: skipped, one GPU" | tee -a "$LOG"
fi
echo "done with $(left) s to spare" | tee -a "$LOG"
