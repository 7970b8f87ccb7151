#!/usr/bin/env bash
# The whole test suite, set-up included: install, build, then every check CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# NEON kernels: cross-compiled for aarch64 and run under qemu against the scalar kernels.
if [ -f ci/neon_test.sh ]; then bash ci/neon_test.sh; fi
# AVX-512 / VNNI kernels: their code with emulated intrinsics against the scalar kernels, on any x86 CPU
# (CI's may lack AVX-512; where it has it, the pytest run below also runs the real instructions).
if [ -f ci/avx512_emulated_test.sh ] && [ "$(uname -m)" = x86_64 ]; then bash ci/avx512_emulated_test.sh; fi
# CUDA kernels: CI has no GPU, but every .cu must compile for sm_80 and sm_90a.
if [ -f ci/compile_cuda.sh ] && command -v nvcc >/dev/null 2>&1; then bash ci/compile_cuda.sh; fi
set +e
python3 -m pytest -q -p no:cacheprovider tests
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
