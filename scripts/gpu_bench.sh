#!/usr/bin/env bash
# Per-stage latency of InternVLA-A1-3B (random weights of the released shapes, bfloat16) on a CUDA GPU:
# torch eager, CUDA graphs and torch.compile, within 8 minutes, into one JSON file (out/gpu_bench.json).
# Arguments go to `internvla bench gpu` (--help lists them); `--device cpu --tiny` is the CPU smoke run.
# Python: $PYTHON, else the first of .venv/bin/python and python3 whose torch sees a CUDA device (else the
# first that exists). Exit status: 0 done; 1 a variant failed (the others are in the JSON); 2 no CUDA
# device or bad arguments; 124 the 8-minute limit ($GPU_BENCH_LIMIT_S) was reached.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
if [[ -z "${PYTHON:-}" ]]; then
  for candidate in "${ROOT}/.venv/bin/python" python3; do
    command -v "${candidate}" >/dev/null || continue
    PYTHON="${PYTHON:-${candidate}}"
    if "${candidate}" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
      PYTHON="${candidate}"
      break
    fi
  done
fi
if [[ -z "${PYTHON:-}" ]]; then
  echo "ERROR: no python3 found; set PYTHON to an interpreter with torch" >&2
  exit 2
fi
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
exec timeout --signal=INT --kill-after=20 "${GPU_BENCH_LIMIT_S:-480}" "${PYTHON}" -m internvla_ros.cli.gpu_bench "$@"
