#!/usr/bin/env bash
# The README's main command: the closed-loop demo (after `make setup`). Extra arguments go to `internvla demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
exec "${ROOT}/.venv/bin/internvla" demo "$@"
