#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu with plain nvcc (no torch, no GPU needed) for sm_80 and sm_90a,
# failing on the first error. CI runs it when nvcc is present: `bash ci/compile_cuda.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
shopt -s nullglob
srcs=(csrc/cuda/*.cu)
if [ ${#srcs[@]} -eq 0 ]; then echo "compile_cuda: no .cu files"; exit 1; fi
for arch in "arch=compute_80,code=sm_80" "arch=compute_90a,code=sm_90a"; do
  for src in "${srcs[@]}"; do
    echo "nvcc -gencode=$arch $src"
    "$NVCC" -c -O3 -std=c++17 --expt-relaxed-constexpr -Xptxas=-warn-spills -Icsrc \
      -gencode="$arch" "$src" -o "$out/$(basename "$src").o"
  done
done
echo "compile_cuda: OK (${#srcs[@]} files x 2 targets)"
