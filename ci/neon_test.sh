#!/usr/bin/env bash
# Cross-compiles the NEON and i8mm kernels (csrc/cpu/qlinear_neon.cpp, qlinear_i8mm.cpp) and the torch-free harness
# (tests/cpu_harness/qlinear_harness.cpp) for aarch64 and runs them under qemu-aarch64 against the
# scalar kernels. Installs Debian's g++-aarch64-linux-gnu and qemu-user when missing.
# Usage: bash ci/neon_test.sh   (from anywhere; about 1 minute plus the apt install)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++-aarch64-linux-gnu qemu-user >/dev/null
fi

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
CXX=aarch64-linux-gnu-g++
FLAGS=(-O2 -std=c++17 -Wall -Werror -Icsrc)
NEON_FLAGS=(-march=armv8.2-a+dotprod+fp16)  # as setup.py's CPU_ISA_FLAGS["neon"]
I8MM_FLAGS=(-march=armv8.6-a+dotprod+i8mm+fp16)  # CPU_ISA_FLAGS["i8mm"]

for src in cpu_features qlinear_common qlinear_scalar; do
  "$CXX" "${FLAGS[@]}" -c "csrc/cpu/$src.cpp" -o "$build/$src.o" &
done
"$CXX" "${FLAGS[@]}" "${NEON_FLAGS[@]}" -c csrc/cpu/qlinear_neon.cpp -o "$build/qlinear_neon.o" &
"$CXX" "${FLAGS[@]}" "${I8MM_FLAGS[@]}" -c csrc/cpu/qlinear_i8mm.cpp -o "$build/qlinear_i8mm.o" &
wait
"$CXX" "${FLAGS[@]}" -static tests/cpu_harness/qlinear_harness.cpp "$build"/*.o -o "$build/qlinear_harness"

# qemu's default CPU model ("max") has ASIMD, dotprod and i8mm, reported through hwcaps as on hardware.
bash ci/check_harness.sh 'neon|i8mm' qemu-aarch64 "$build/qlinear_harness"
