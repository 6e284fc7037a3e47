#!/usr/bin/env bash
# Success against added inference delay for each execution mode, on the sorting task (real-time chunking).
#   scripts/rtc_sweep.sh                                  # models/sorting, 10 episodes per cell
#   EPISODES=3 DELAYS="0 300" scripts/rtc_sweep.sh        # a quick look
#   RTC_MODEL=out/sorting/train_rtc scripts/rtc_sweep.sh  # also a model trained with --rtc-max-delay
#   NOISE_SCALE=0 scripts/rtc_sweep.sh                    # chunks sampled from the noise's mean
#   DELAYS="0 200 400 100 300" scripts/rtc_sweep.sh       # the ends first; run again to finish a stopped sweep
# Cells run delay by delay, every mode at one delay before the next delay, so a machine that slows down
# during the sweep weighs on every mode alike. Each cell is an `internvla eval --json` report in OUT; the
# table (markdown) and the plot come from `internvla eval-table`. A cell whose report is already in OUT is
# kept, so a sweep that was stopped continues where it was.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
BIN="${ROOT}/.venv/bin"
MODEL="${MODEL:-models/sorting}"
RTC_MODEL="${RTC_MODEL:-}"           # evaluated with --execution rtc (the clean prefix it was trained with)
MODES="${MODES:-delay_compensated rtc}"
DELAYS="${DELAYS:-0 100 200 300 400}"
EPISODES="${EPISODES:-10}"
SEED="${SEED:-1000000}"
NOISE_SCALE="${NOISE_SCALE:-}"       # empty: the node's default (1, as trained)
OUT="${OUT:-out/rtc_sweep}"

[[ -x "${BIN}/internvla" ]] || { echo "rtc_sweep: ERROR: ${BIN}/internvla not found; run scripts/setup.sh" >&2; exit 2; }
for model in "${MODEL}" ${RTC_MODEL}; do
  [[ -f "${model}/model.safetensors" ]] || { echo "rtc_sweep: ERROR: no model in ${model}" >&2; exit 2; }
done
mkdir -p "${OUT}"

cell() {  # model mode delay name
  local start=${SECONDS}
  if [[ -f "${OUT}/$4_$3ms.json" ]]; then  # a sweep stopped part way resumes: delete a report to re-run its cell
    echo "rtc_sweep: $4 at +$3 ms: kept ${OUT}/$4_$3ms.json" >&2
    return
  fi
  "${BIN}/internvla" eval --cell conveyor_sorting --model "$1" --execution "$2" --added-latency-ms "$3" \
    --episodes "${EPISODES}" --seed "${SEED}" ${NOISE_SCALE:+--noise-scale "${NOISE_SCALE}"} --json "${OUT}/$4_$3ms.json" --logs "${OUT}/logs/$4_$3ms" \
    | tail -n 2
  echo "rtc_sweep: $4 at +$3 ms took $((SECONDS - start)) s" >&2
}

for delay in ${DELAYS}; do
  for mode in ${MODES}; do
    cell "${MODEL}" "${mode}" "${delay}" "${mode}"
  done
  if [[ -n "${RTC_MODEL}" ]]; then
    cell "${RTC_MODEL}" rtc "${delay}" rtc_trained
  fi
done
"${BIN}/internvla" eval-table "${OUT}"/*.json --png "${OUT}/success_vs_delay.png" --markdown "${OUT}/table.md"
