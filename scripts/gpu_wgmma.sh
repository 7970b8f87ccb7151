#!/usr/bin/env bash
# One call on the lent H100 for the Hopper wgmma GEMM (csrc/cuda/wxa16_gemm_sm90.cu): build for
# sm_90a, check that the kernels hold HGMMA, run its tests in their own process, optionally the
# sanitizer and the benchmark; logs under $OUT, a short summary last.
# Usage: bash scripts/gpu_wgmma.sh [tests] [backend] [sanitize] [bench]   (WG_ARGS: extra --wgmma arguments)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/qk_out}; mkdir -p "$OUT"
nvidia-smi -L
t0=$(date +%s)
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=16 QUANTKERNELS_BUILD_CUDA=1 \
  python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -20; tail -20 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s; HGMMA in the extension: $(cuobjdump -sass quantkernels/_C*.so 2>/dev/null | grep -c HGMMA)"
grep -iE "warning|serializ" "$OUT/build.log" | grep -v "^ninja" | head -5
for step in "$@"; do
  t0=$(date +%s)
  case $step in
    tests) timeout 240 python3 -m pytest -q --maxfail=5 tests/test_cuda_wgmma.py > "$OUT/wgmma_tests.log" 2>&1
           echo "wgmma tests rc=$?: $(tail -1 "$OUT/wgmma_tests.log")"; grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/wgmma_tests.log" | cut -c1-300 | head -12 ;;
    backend) timeout 300 python3 -m pytest -q tests/test_cuda_backend.py > "$OUT/backend_tests.log" 2>&1
           echo "backend tests rc=$?: $(tail -1 "$OUT/backend_tests.log")"; grep -E "^(FAILED|ERROR)" "$OUT/backend_tests.log" | head -8 ;;
    sanitize) timeout 300 bash scripts/sanitize_wgmma.sh > "$OUT/sanitize_wgmma.log" 2>&1; echo "sanitize rc=$?"
           grep -E "^==|ERROR SUMMARY|Error" "$OUT/sanitize_wgmma.log" | head -10 ;;
    ncu) timeout 200 ncu -k regex:wxa16_gemm_wgmma_kernel --section SpeedOfLight \
           --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats \
           --metrics "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
           python3 scripts/profile_wgmma.py ${NCU_CASE:-8192 28672 64 0} > "$OUT/ncu.txt" 2>&1; echo "ncu rc=$?"
         grep -E "wgmma_kernel|Duration|Memory Throughput|DRAM Throughput|L2 Cache Throughput|Compute \(SM\)|gmma_cycles|Achieved Occupancy|Registers Per|Grid Size|Block Limit|Dynamic Shared|stalled_.*ratio +[0-9.]*[1-9]" "$OUT/ncu.txt" | sed 's/  */ /g' | cut -c1-140 | head -70
         cuobjdump -sass quantkernels/_C*.so | grep -E "Function :|HGMMA|WARPGROUP|BAR.SYNC|DEPBAR" | grep -A40 "wgmma_kernelILi4E6__halfLi64E" | head -40 > "$OUT/sass_excerpt.txt"; cut -c1-110 "$OUT/sass_excerpt.txt" ;;
    bench) timeout 400 python3 benchmarks/gpu_gemm.py --wgmma ${WG_ARGS:-} --out "$OUT" > "$OUT/wgmma_bench.log" 2>&1
           echo "bench rc=$?"; cut -c1-400 "$OUT/wgmma_bench.log" ;;
  esac
  echo "$step: $(( $(date +%s) - t0 )) s"
done
exit 0
