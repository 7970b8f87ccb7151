#!/usr/bin/env bash
# The main job, set-up included: install, build, then quantize a model end to end and print the
# size / error table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
python3 benchmarks/size_table.py "$@"
