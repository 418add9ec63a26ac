#!/usr/bin/env bash
# The prepared single-GPU session: issue 6's speed suite and issue 5's training check.
#
# One call on the device, from the repository root, with the pure-Python wheels the
# GPU image lacks carried in .whl/ (segment-anything for the official figures,
# ml_collections for configs/):
#
#   pip download --no-deps --only-binary=:all: -d .whl segment-anything==1.0 ml_collections
#   bash benchmarks/gpu_session.sh          # results under $OUT, else benchmarks/results/
#
# Every part has its own time limit (about 8 minutes in all) and writes its JSON
# lines as they come, so a part that runs out of time or memory still leaves its
# figures and the other parts run. tensorflow is not needed.
#
# SMOKE=1 PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh  checks the script
# on a CPU with the tiny configs (one iteration each).
set -u
py=${PYTHON:-python3}
tiny=(); train_tiny=()
if [ "${SMOKE:-0}" = 1 ]; then tiny=(--tiny --iters 1); train_tiny=(--tiny --max-batch 2); fi
out=${OUT:-benchmarks/results/gpu-$(date -u +%F)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__,
'torch', torch.__version__, jax.devices())"; } > "$out/machine.txt" 2>&1

part() {  # part NAME SECONDS COMMAND...: run with a limit, keep stdout as NAME.jsonl
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" > "$out/$name.jsonl" 2> "$out/$name.err"
  echo "$name: exit $?, $(grep -c '^{' "$out/$name.jsonl") JSON lines"
}
part encoder 200 "$py" -m benchmarks.run --parts encoder --variants vit_h,vit_b \
  --batches 8,1 --dtypes bfloat16 --impls auto,xla "${tiny[@]}"
part decoder_amg 100 "$py" -m benchmarks.run --parts decoder,amg --variants vit_h \
  --dtypes bfloat16 "${tiny[@]}"
part train 180 "$py" -m benchmarks.gpu_check --variants vit_b,vit_h "${train_tiny[@]}"
cat "$out/machine.txt"
