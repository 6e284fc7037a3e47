#!/usr/bin/env bash
# Side-by-side speed against the public InternVLA-A1 reference: one observation -> action chunk with
# every frame encoded, the reference and each of our backends run as alternating processes (pinned
# with taskset, one backend a process), each process timing ITERS chunks; the ratio of each round's
# reference median to our median is the measurement.
#
#   scripts/bench_vs_reference.sh REF_VENV REF_SRC [ROUNDS] [THREADS...]
#
# REF_VENV: the reference's virtualenv, REF_SRC: its source (both made by
# tools/reference_bench/setup.sh, which this script does not run). Defaults: 3 rounds, 1 and 2 threads.
# Environment: CASE (fixture case, default case_a), ITERS (default 20), OUT (results, default
# ./bench_vs_reference), BENCH_REF (bench_ref.py), DTYPES (ours, default "float32 bfloat16"; a "+compile"
# suffix, e.g. bfloat16+compile, times the torch backend under torch.compile).
# Prints one line per process with `uptime`, then the ratios (reference median / our median).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 REF_VENV REF_SRC [ROUNDS] [THREADS...]" >&2; exit 2; }
REF_VENV=$1 REF_SRC=$2 ROUNDS=${3:-3}
shift $(( $# >= 3 ? 3 : 2 ))
THREADS=("${@:-1 2}")
[[ ${#THREADS[@]} -eq 1 ]] && read -r -a THREADS <<< "${THREADS[0]}"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CASE=${CASE:-$ROOT/test/fixtures/internvla_a1_reference/case_a}
ITERS=${ITERS:-20}
OUT=${OUT:-$PWD/bench_vs_reference}
BENCH_REF=${BENCH_REF:-$ROOT/../shared/tools/reference_bench/bench_ref.py}
DTYPES=${DTYPES:-float32 bfloat16}
INTERNVLA=${INTERNVLA:-$ROOT/.venv/bin/internvla}
[[ -x $REF_VENV/bin/python ]] || { echo "no python in REF_VENV=$REF_VENV" >&2; exit 2; }
[[ -f $BENCH_REF ]] || { echo "bench_ref.py not found at $BENCH_REF; set BENCH_REF" >&2; exit 2; }
[[ -x $INTERNVLA ]] || { echo "no internvla at $INTERNVLA; set INTERNVLA" >&2; exit 2; }
mkdir -p "$OUT"
for t in "${THREADS[@]}"; do
  cpus=0-$((t - 1))
  for r in $(seq 1 "$ROUNDS"); do
    echo "T$t R$r reference  $(uptime)"
    A1_SRC=$REF_SRC taskset -c "$cpus" "$REF_VENV/bin/python" "$BENCH_REF" --case "$CASE" --iters "$ITERS" \
      --warmup 3 --threads "$t" 2> "$OUT/ref_T${t}_R$r.log" | tail -n 1 > "$OUT/ref_T${t}_R$r.json" \
      || { echo "the reference failed: see $OUT/ref_T${t}_R$r.log" >&2; exit 1; }
    for d in $DTYPES; do
      backends="torch onnxruntime" flags=()
      [[ $d == float32 ]] || backends=torch
      [[ $d == *+compile ]] && backends=torch flags=(--compile)
      for b in $backends; do
        name=ours_${d}_${b}_T${t}_R$r
        echo "T$t R$r ours $b $d  $(uptime)"
        taskset -c "$cpus" "$INTERNVLA" bench model --model "$CASE" --backend "$b" --dtype "${d%+compile}" \
          --threads "$t" "${flags[@]}" --repeats "$ITERS" --warmup 3 --cache "$OUT/exports" \
          --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1 \
          || { echo "ours ($b $d) failed: see $OUT/$name.txt" >&2; exit 1; }
      done
    done
  done
done
"$ROOT/.venv/bin/python" - "$OUT" <<'EOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
ratios: dict[tuple[int, str], list[float]] = {}
for ref_file in sorted(out.glob("ref_T*_R*.json")):
    t, r = ref_file.stem.split("_")[1:]
    ref = json.loads(ref_file.read_text())["ms_median"]
    for ours_file in sorted(out.glob(f"ours_*_{t}_{r}.json")):
        dtype = ours_file.stem.split("_")[1]
        for name, b in json.loads(ours_file.read_text())["backends"].items():
            ratios.setdefault((int(t[1:]), f"{name} {dtype}"), []).append(ref / b["median_ms"]["total (both frames encoded)"])
print("threads  ours                    reference median / our median, per round -> median")
for (t, name), values in sorted(ratios.items()):
    print(f"{t:>7}  {name:<22}  {' '.join(f'{v:.2f}' for v in values)} -> x {statistics.median(values):.2f}")
EOF
