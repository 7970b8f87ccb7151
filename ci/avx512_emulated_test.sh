#!/usr/bin/env bash
# The AVX-512, AVX-512-VNNI and AVX-VNNI kernels (csrc/cpu/qlinear_avx512*.cpp, qlinear_avxvnni.cpp) on an
# x86 CPU without those instructions:
# each file is compiled against scalar definitions of the intrinsics it uses
# (tests/cpu_harness/avx512_emulation.h) and the torch-free harness (tests/cpu_harness/qlinear_harness.cpp)
# runs them against the scalar kernels. This checks their logic (layouts, tails, epilogues, the
# integer identities), not their speed; on a CPU with AVX-512 / AVX-VNNI, tests/test_cpu_backend.py runs
# the real instructions as well.
# Usage: bash ci/avx512_emulated_test.sh   (from anywhere; under a minute)
set -euo pipefail
cd "$(dirname "$0")/.."

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
CXX=${CXX:-g++}
FLAGS=(-O2 -std=c++17 -Wall -Werror -Icsrc)
AVX2_FLAGS=(-mavx2 -mfma -mf16c)  # as setup.py's CPU_ISA_FLAGS["avx2"]

for src in cpu_features qlinear_common qlinear_scalar; do
  "$CXX" "${FLAGS[@]}" -c "csrc/cpu/$src.cpp" -o "$build/$src.o" &
done
"$CXX" "${FLAGS[@]}" "${AVX2_FLAGS[@]}" -c csrc/cpu/qlinear_avx2.cpp -o "$build/qlinear_avx2.o" &
for isa in avx512 avx512vnni avxvnni; do
  # -Wno-psabi: 512-bit vectors passed by value between the inline emulation functions (no ABI boundary).
  "$CXX" "${FLAGS[@]}" "${AVX2_FLAGS[@]}" -Wno-psabi -Itests/cpu_harness \
    -DQK_EMULATED_SOURCE="\"cpu/qlinear_$isa.cpp\"" -c tests/cpu_harness/avx512_emulated.cpp -o "$build/qlinear_$isa.o" &
done
wait
"$CXX" "${FLAGS[@]}" -DQK_HARNESS_EMULATED_AVX512 tests/cpu_harness/qlinear_harness.cpp "$build"/*.o -o "$build/qlinear_harness"

bash ci/check_harness.sh 'avx512|avx512_vnni|avx_vnni' "$build/qlinear_harness"
