#!/usr/bin/env bash
# Issue 15's arms, each reusing a finished default run's prepared data, teacher and cache (BASE, a clone made by
# bench/pipeline_wall.py) and running the stage scripts directly into bench/work/issue15/<arm>:
#   bash bench/issue15.sh teachers  -> a second teacher (seed 43, cached logits only), the teacher ensemble, and l3
#                                      learning from both teachers (seed 42)
#   bash bench/issue15.sh ensemble  -> teachers t43..t46 (TEACHER_SEEDS), the 5-teacher ensemble on val and dev, and
#                                      l3 learning from all five (SEEDS seeds; SRC= another arm's rows, see the arm)
#   bash bench/issue15.sh variants NAME 'key=value ...' ...
#                                   -> one-seed screens of student variants (l2 shape unless SHAPE=) learning from the
#                                      ensemble arm's teachers, scored on the tuning split only
#   bash bench/issue15.sh augment   -> 1 word-edited copy of each labelled train text labelled by the teacher, l3 on it
#   bash bench/issue15.sh transfer  -> the same number of extra rows as plain unlabeled transfer texts, l3 on them
#                                      (TRANSFER=36000 rows; SEEDS=5 trains l3 under 5 seeds, either arm; STUDENTS=
#                                      prepares and caches only, as SRC for the ensemble and variants arms)
#   bash bench/issue15.sh seeds [STUDENT SEED ...]
#                                   -> train one student under one seed per pair (default: l3_hard and l3 under seeds
#                                      43..46, then l3_t2, the two-teacher l3, under 42..46), each into runs/<name>/<seed>;
#                                      then assemble students/<student> from every seed on disk (seed 42 of l3 and
#                                      l3_hard from BASE) and evaluate them and run the report: the paired KD - baseline
#                                      interval over >= 5 seeds (needs the teachers arm first, for the t43 cache)
# SET="key=value ..." adds params overrides to every arm (e.g. SET="students.l2.epochs=3" bash bench/issue15.sh seeds l2 42).
# Metrics land in bench/work/issue15/<arm>/metrics/*.json (read into bench/README.md by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-bench/work/seeds5}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
OUT=${OUT:-bench/work/issue15}  # one directory per BASE: OUT=bench/work/issue15-sentences BASE=... for another run
arm=$1; W=$OUT/$arm; mkdir -p "$W/metrics" "$W/plots"
read -ra SETS <<< "${SET:-}"
params() {  # BASE's params.yaml with `key=value` (YAML values) overrides, then SET's -> $W/params.yaml
  python - "$BASE/params.yaml" "$W/params.yaml" "$@" "${SETS[@]}" <<'PY'
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
L2='{num_layers: 2, hidden_size: 384, init: teacher}'
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
  ensemble)
    # TEACHER_SEEDS="43 44 45 46": one extra teacher per seed (t<seed>, fine-tuned on SRC's labelled rows, skipped when
    # already trained), each cached over SRC's prepared + transfer rows (SRC: BASE, or an augment/transfer arm's directory
    # with the SET= its params need, e.g. SRC=$OUT/transfer SET="data.max_transfer_examples=36000"); the ensemble of the
    # default teacher and all of them scored on val and dev; then l3_t<N> (and l2_t<N>: SHAPES="l3 l2") learning from all
    # N teachers under SEEDS seeds.
    SRC=${SRC:-$BASE}; read -ra TS <<< "${TEACHER_SEEDS:-43 44 45 46}"
    SRC_CACHE=$SRC/cache; [ -d "$SRC_CACHE" ] || SRC_CACHE=$SRC/artifacts/cache
    SRC_PREP=$SRC/prepared; [ -d "$SRC_PREP" ] || SRC_PREP=$SRC/data/prepared
    SRC_TRANSFER=$SRC/transfer; [ -d "$SRC_TRANSFER" ] || SRC_TRANSFER=$SRC/data/transfer
    N=$(( ${#TS[@]} + 1 )); T_MAP=""; T_LIST="teacher"
    for s in "${TS[@]}"; do T_MAP="$T_MAP t$s: {seed: $s},"; T_LIST="$T_LIST, t$s"; done
    params "teachers={${T_MAP%,} }" "students.l3_t$N=$L3" "students.l3_t$N.teachers=[$T_LIST]" \
      "students.l2_t$N=$L2" "students.l2_t$N.teachers=[$T_LIST]" "distill.seeds=${SEEDS:-1}"
    for s in "${TS[@]}"; do
      [ -f "$W/teachers/t$s/config.json" ] || python stages/teacher.py "${P[@]}" --name "t$s" --prepared "$SRC_PREP" \
        --out "$W/teachers/t$s" --metrics "$W/metrics/train_teacher-t$s.json" --plots "$W/plots/teacher-t$s.csv"
      [ -f "$W/caches/t$s/manifest.json" ] || python stages/extract.py "${P[@]}" --name "t$s" --prepared "$SRC_PREP" \
        --transfer "$SRC_TRANSFER" --teacher "$W/teachers/t$s" --out "$W/caches/t$s" --metrics "$W/metrics/extract-t$s.json"
      [ -f "$W/metrics/teacher-t$s.json" ] || python stages/evaluate.py "${P[@]}" --model "$W/teachers/t$s" \
        --name "teacher-t$s" --cache "$SRC_CACHE" --teacher-metrics "$BASE/artifacts/metrics/teacher.json" --metrics-root "$W/metrics"
    done
    [ -f "$W/metrics/teacher-ensemble$N.json" ] || python stages/ensemble.py "${P[@]}" --name "teacher-ensemble$N" \
      --teachers teacher "${TS[@]/#/t}" --teacher "$BASE/artifacts/teacher" --teachers-root "$W/teachers" \
      --cache "$SRC_CACHE" --teacher-metrics "$BASE/artifacts/metrics/teacher.json" --metrics-root "$W/metrics"
    for shape in ${SHAPES-l3}; do student "$SRC_CACHE" "${shape}_t$N"; done ;;  # SHAPES="l3 l2"; SHAPES= for none
  variants)
    # NAME 'key=value ...' pairs: screens of student variants learning from the ensemble arm's five teachers (same SRC
    # and SET as that arm), one seed each (SEEDS= for more), scored on the tuning split only: distill's per-epoch val
    # accuracy, printed as a table; dev is left alone for the final pick (evaluate the winner with the ensemble arm).
    # e.g. bash bench/issue15.sh variants l2_b12 "init_layers=[1,2]" l2_lr2 "learning_rate=2.0e-4"
    SRC=${SRC:-$BASE}; SRC_CACHE=$SRC/cache; [ -d "$SRC_CACHE" ] || SRC_CACHE=$SRC/artifacts/cache
    E=$OUT/ensemble; T_MAP=""; T_LIST="teacher"
    for c in "$E"/caches/t*; do t=${c##*/}; T_MAP="$T_MAP $t: {seed: ${t#t}},"; T_LIST="$T_LIST, $t"; done
    shift
    while [ $# -ge 2 ]; do
      name=$1; read -ra KV <<< "$2"; shift 2
      [ -f "$W/students/$name/distill.json" ] && continue
      sets=("teachers={${T_MAP%,} }" "students.$name=${SHAPE:-$L2}" "students.$name.teachers=[$T_LIST]"
        "distill.seeds=${SEEDS:-1}")
      for kv in "${KV[@]}"; do sets+=("students.$name.$kv"); done
      params "${sets[@]}"
      cp "$W/params.yaml" "$W/params-$name.yaml"
      python stages/distill.py --params "$W/params-$name.yaml" --student "$name" --cache "$SRC_CACHE" \
        --caches-root "$E/caches" --teacher "$BASE/artifacts/teacher" --out-root "$W/students" \
        --metrics-root "$W/metrics" --plots-root "$W/plots"
    done
    python - "$W" <<'PY'
import json, statistics, sys
from pathlib import Path
for f in sorted(Path(sys.argv[1], "metrics").glob("train_*.json")):
    m = json.loads(f.read_text())
    runs = m.get("seed_runs") or [m]
    val = [100 * r["eval_accuracy_per_epoch"][-1] for r in runs]
    spread = f" +- {statistics.stdev(val):.2f}" if len(val) > 1 else ""
    print(f"{f.stem[6:]:<16} val {statistics.mean(val):.2f}{spread}  ({len(val)} seed(s); {m['seconds']:.0f} s)")
PY
    # GATHER="NAME=V1 V2 ...": the chosen variant's one-seed runs (seed= overrides) become one student with seeds/,
    # scored once on val and dev by evaluate (the pick is made before, on val)
    if [ -n "${GATHER:-}" ]; then
      name=${GATHER%%=*}; read -ra VS <<< "${GATHER#*=}"
      pairs=(); for v in "${VS[@]}"; do pairs+=("$W/students/$v=$W/metrics/train_$v.json"); done
      python bench/seedjoin.py "$W/students/$name" "$W/metrics/train_$name.json" "${pairs[@]}"
      python stages/evaluate.py --params "$W/params-${VS[0]}.yaml" --model "$W/students/$name" --name "$name" \
        --cache "$SRC_CACHE" --teacher-metrics "$BASE/artifacts/metrics/teacher.json" --metrics-root "$W/metrics"
    fi ;;
  augment|transfer)
    # SEEDS=5: the student under seeds 42.. (distill.seeds), for a paired comparison with the seeds arm's l3_hard
    if [ "$arm" = augment ]; then params "data.augment_copies=1" "distill.seeds=${SEEDS:-1}"
    else params "data.max_transfer_examples=${TRANSFER:-36000}" "distill.seeds=${SEEDS:-1}"; fi
    python stages/prepare.py "${P[@]}" --out "$W/prepared" --transfer-out "$W/transfer"
    python stages/extract.py "${P[@]}" --prepared "$W/prepared" --transfer "$W/transfer" --teacher "$BASE/artifacts/teacher" \
      --out "$W/cache" --metrics "$W/metrics/extract.json"
    for s in ${STUDENTS-l3}; do student "$W/cache" "$s"; done ;;  # STUDENTS= to only prepare and cache (for SRC=)
  seeds)
    T=$OUT/teachers
    TWO=()  # the two-teacher students, when the teachers arm has cached t43 for this BASE
    if [ -d "$T/caches/t43" ]; then
      TWO=("teachers={t43: {seed: 43}}" "students.l3_t2=$L3" "students.l3_t2.teachers=[teacher, t43]"
        "students.l2_t2=$L2" "students.l2_t2.teachers=[teacher, t43]")
    fi
    params "${TWO[@]}"
    shift
    pairs=("$@")
    if [ ${#pairs[@]} -eq 0 ]; then
      for s in 43 44 45 46; do pairs+=(l3_hard $s l3 $s); done
      if [ ${#TWO[@]} -gt 0 ]; then for s in 42 43 44 45 46; do pairs+=(l3_t2 $s); done; fi
    fi
    set -- "${pairs[@]}"
    while [ $# -ge 2 ]; do  # one seed per call: whatever finished is usable if the run is stopped
      name=$1 seed=$2; shift 2
      R=$W/runs/$name/$seed
      [ -f "$R/$name/distill.json" ] && continue
      params "${TWO[@]}" "students.$name.seed=$seed" "distill.seeds=1"
      python stages/distill.py "${P[@]}" --student "$name" --cache "$BASE/artifacts/cache" --caches-root "$T/caches" \
        --teacher "$BASE/artifacts/teacher" --out-root "$R" --metrics-root "$R" --plots-root "$R"
    done
    params "${TWO[@]}"
    for name in $(ls "$W/runs" 2>/dev/null); do  # every finished seed (seed 42 of l3_hard, l3, l2 from BASE)
      pairs=()
      for r in $(ls "$W/runs/$name" | sort -n); do
        R=$W/runs/$name/$r; [ -f "$R/$name/distill.json" ] && pairs+=("$R/$name=$R/train_$name.json")
      done
      [ ${#pairs[@]} -gt 0 ] || continue
      case $name in l3_hard|l3|l2) [ -d "$W/runs/$name/42" ] || \
        pairs=("$BASE/artifacts/students/$name=$BASE/artifacts/metrics/train_$name.json" "${pairs[@]}") ;; esac
      python bench/seedjoin.py "$W/students/$name" "$W/metrics/train_$name.json" "${pairs[@]}"
    done
    cp "$BASE/artifacts/metrics/teacher.json" "$W/metrics/"
    if [ ${#TWO[@]} -gt 0 ]; then cp "$T/metrics/teacher-t43.json" "$T/metrics/teacher-ensemble.json" "$W/metrics/"; fi
    for name in l2 l3_l2; do  # single-seed figures of the default run, unless seed runs replace them below
      [ -f "$W/metrics/$name.json" ] || cp "$BASE/artifacts/metrics/$name.json" "$W/metrics/"
      if [ ! -f "$W/metrics/train_$name.json" ] && [ -f "$BASE/artifacts/metrics/train_$name.json" ]; then
        cp "$BASE/artifacts/metrics/train_$name.json" "$W/metrics/"
      fi
    done
    for name in $(ls "$W/students"); do
      python stages/evaluate.py "${P[@]}" --model "$W/students/$name" --name "$name" --cache "$BASE/artifacts/cache" \
        --teacher-metrics "$BASE/artifacts/metrics/teacher.json" --metrics-root "$W/metrics"
    done
    python stages/report.py "${P[@]}" --metrics "$W/metrics" --plots "$W/plots" --out "$W/report" ;;
  *) echo "unknown arm: $arm (teachers | ensemble | variants | augment | transfer | seeds)" >&2; exit 2 ;;
esac
