#!/usr/bin/env bash
# The main job, set-up included: install, build, then quantize SmolLM2-135M with GPTQ int4 and
# print the size / perplexity / speed table, a greedy sample from each model, and a plot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
python3 -m quantkernels demo "$@"
