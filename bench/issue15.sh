#!/usr/bin/env bash
# Issue 15's arms, each reusing a finished default run's prepared data, teacher and cache (BASE, a clone made by
# bench/pipeline_wall.py) and running the stage scripts directly into bench/work/issue15/<arm>:
#   bash bench/issue15.sh teachers  -> a second teacher (seed 43, cached logits only), the teacher ensemble, and l3
#                                      learning from both teachers (seed 42)
#   bash bench/issue15.sh augment   -> 1 word-edited copy of each labelled train text labelled by the teacher, l3 on it
#   bash bench/issue15.sh transfer  -> the same number of extra rows as plain unlabeled transfer texts, l3 on them
# Metrics land in bench/work/issue15/<arm>/metrics/*.json (read into bench/README.md by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-bench/work/seeds5}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
arm=$1; W=bench/work/issue15/$arm; mkdir -p "$W/metrics" "$W/plots"
params() {  # BASE's params.yaml with `key=value` (YAML values) overrides -> $W/params.yaml
  python - "$BASE/params.yaml" "$W/params.yaml" "$@" <<'PY'
import sys, yaml
raw = yaml.safe_load(open(sys.argv[1]))
for kv in sys.argv[3:]:
    key, value = kv.split("=", 1)
    node = raw
    *path, last = key.split(".")
    for p in path:
        node = node.setdefault(p, {})
    node[last] = yaml.safe_load(value)
yaml.safe_dump(raw, open(sys.argv[2], "w"), sort_keys=False)
PY
}
P=(--params "$W/params.yaml")
student() {  # distill + evaluate one student of $W/params.yaml against cache $1
  python stages/distill.py "${P[@]}" --student "$2" --cache "$1" --caches-root "$W/caches" --teacher "$BASE/artifacts/teacher" \
    --out-root "$W/students" --metrics-root "$W/metrics" --plots-root "$W/plots"
  python stages/evaluate.py "${P[@]}" --model "$W/students/$2" --name "$2" --cache "$1" \
    --teacher-metrics "$BASE/artifacts/metrics/teacher.json" --metrics-root "$W/metrics"
}
L3='{num_layers: 3, hidden_size: 384, init: teacher}'
case $arm in
  teachers)
    params "teachers={t43: {seed: 43}}" "students.l3_t2=$L3" "students.l3_t2.teachers=[teacher, t43]"
    python stages/teacher.py "${P[@]}" --name t43 --prepared "$BASE/data/prepared" --out "$W/teachers/t43" \
      --metrics "$W/metrics/train_teacher-t43.json" --plots "$W/plots/teacher-t43.csv"
    python stages/extract.py "${P[@]}" --name t43 --prepared "$BASE/data/prepared" --transfer "$BASE/data/transfer" \
      --teacher "$W/teachers/t43" --out "$W/caches/t43" --metrics "$W/metrics/extract-t43.json"
    python stages/evaluate.py "${P[@]}" --model "$W/teachers/t43" --name teacher-t43 --cache "$BASE/artifacts/cache" \
      --teacher-metrics "$BASE/artifacts/metrics/teacher.json" --metrics-root "$W/metrics"
    python stages/ensemble.py "${P[@]}" --name teacher-ensemble --teachers teacher t43 --teacher "$BASE/artifacts/teacher" \
      --teachers-root "$W/teachers" --cache "$BASE/artifacts/cache" --teacher-metrics "$BASE/artifacts/metrics/teacher.json" \
      --metrics-root "$W/metrics"
    student "$BASE/artifacts/cache" l3_t2 ;;
  augment|transfer)
    if [ "$arm" = augment ]; then params "data.augment_copies=1"; else params "data.max_transfer_examples=36000"; fi
    python stages/prepare.py "${P[@]}" --out "$W/prepared" --transfer-out "$W/transfer"
    python stages/extract.py "${P[@]}" --prepared "$W/prepared" --transfer "$W/transfer" --teacher "$BASE/artifacts/teacher" \
      --out "$W/cache" --metrics "$W/metrics/extract.json"
    student "$W/cache" l3 ;;
  *) echo "unknown arm: $arm (teachers | augment | transfer)" >&2; exit 2 ;;
esac
