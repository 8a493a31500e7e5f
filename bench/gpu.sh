#!/usr/bin/env bash
# Everything this project measures or checks on a GPU, in one go (the lent GPU machine runs it; CI never does):
#   bash bench/gpu.sh tests   -> GPU tests (tests/test_gpu.py) and the fast suite with CUDA visible
#   bash bench/gpu.sh p1      -> P1 extraction overhead on the GPU: MiniLM- and BERT-base-shaped teachers, all of SST-2
#   bash bench/gpu.sh p1g     -> P1g BERT-base forward throughput and MFU (eager, compiled, bf16 weights)
#   bash bench/gpu.sh autotune-> P1g under torch.compile max-autotune (minutes of compile time)
# Needs: a tokenizer dir in $KD_TOKENIZER when the MiniLM
# package is not installed. Results land in bench/results/*.json, logs in $LOGS (default bench/work).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
LOGS=${LOGS:-bench/work}
mkdir -p "$LOGS"
tok=(); [ -n "${KD_TOKENIZER:-}" ] && tok=(--tokenizer "$KD_TOKENIZER")
for what in "$@"; do
  case $what in
    tests)
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu_env.txt"
      python -m pytest -q -rs tests/test_gpu.py 2>&1 | tee "$LOGS/gpu_tests.log"
      python -m pytest -q -m "not slow" -p no:cacheprovider 2>&1 | tail -15 | tee "$LOGS/gpu_fast_suite.log" ;;
    p1)
      python bench/p1_extract_overhead.py --device cuda --teacher minilm --rows 0 --batch-size 256 "${tok[@]}" 2>&1 | grep -v Warning
      python bench/p1_extract_overhead.py --device cuda --teacher bert-base --rows 0 --batch-size 256 "${tok[@]}" 2>&1 | grep -v Warning
      python bench/p1_extract_overhead.py --device cuda --teacher bert-base --rows 0 --batch-size 256 --dtype int8 "${tok[@]}" 2>&1 | grep -v Warning ;;
    p1g)
      python bench/p1g_gpu_mfu.py --shapes 512x128,128x512 --variants eager,compiled,compiled-bf16w 2>&1 | grep -v Warning ;;
    autotune)
      timeout "${AUTOTUNE_TIMEOUT:-600}" python bench/p1g_gpu_mfu.py --shapes 512x128 --variants autotune-bf16w \
        --name p1g_gpu_mfu_autotune 2>&1 | grep -v Warning ;;
    *) echo "unknown: $what (tests | p1 | p1g | autotune)" >&2; exit 2 ;;
  esac
done
