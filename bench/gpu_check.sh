#!/usr/bin/env bash
# The GPU figures of issue 23 in one run, under 8 minutes on one H100-class GPU with 16 cores:
# a 16k pair (dense), a 65k and a 131k pair (sparse; cut at their time budget, the log then shows
# how far they got), the 75 Gemma 2 2B pairs sharing the GPU (projected and measured), the
# evaluation on a randomly initialised Gemma 2 2B, and the steering generations. Prints the
# benchmark tables; writes each step's output to $OUT (or bench-gpu/) as well.
#
#   bash bench/gpu_check.sh            # from the repository root, on the GPU machine
#
# The machine needs torch with CUDA, transformers, numpy, pyarrow, safetensors, scipy and the
# solvers lapjv and lap: Python wheels found in .whl/ are installed into /tmp/site first (this
# project's device machines have all but lapjv and lap; `pip download` them for that Python).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=src:bench${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, lapjv; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1

step() {  # step NAME SECONDS COMMAND...: run with a time budget, keep its output
  local name=$1 budget=$2
  shift 2
  echo "== $name (budget ${budget} s): $*"
  local t0=$SECONDS
  timeout "$budget" "$@" 2>&1 | tee "$OUT/$name.txt" | grep -v "^\[" | grep -E "^\||^Machine|^verdict|^measured|s\)$|sparse:|^The|cut" 
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "   $name: cut at its ${budget} s budget (its log: $OUT/$name.txt)"
  echo "   $name: $((SECONDS - t0)) s, exit $rc"
}

step pair16k 60 $PY bench/bench_pair.py --n-features 16384 --d-model 2304 --device cuda --threads 16
step model75 100 $PY bench/bench_model.py --pairs 75 --cores 16 --device cuda --measure
step evaluate 70 $PY bench/bench_evaluate.py --layers 26 --d-model 2304 --heads 8 --head-dim 256 --vocab 256000 \
  --features 16384 --l0 70 --tokens 16384 --context 1024 --batch 8 --device cuda --dtype bfloat16
step steer 40 $PY bench/bench_steer.py --device cuda
step pair65k 90 $PY bench/bench_pair.py --n-features 65536 --d-model 2304 --device cuda --threads 16
step pair131k 100 $PY bench/bench_pair.py --n-features 131072 --d-model 4096 --device cuda --threads 16
