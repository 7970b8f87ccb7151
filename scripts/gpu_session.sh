#!/usr/bin/env bash
# One call on the lent GPU: build the CUDA extension, run the CUDA tests (or every test file), optionally
# the sanitizer and the benchmarks; logs under $OUT. Usage:
#   bash scripts/gpu_session.sh [tests|all] [sanitize] [dequant] [sweep] [small] [mid] [ncu] [bench|quick] [triton]
# tests: tests/test_cuda_backend.py; all: every test file at once, in separate processes (a faulting
# kernel poisons only its own process; the Triton file in 4, its time is compiles on the host CPU);
# triton: the Triton target table (MS, default "1 16 64"; SHAPES, default the two largest).
# (MID_ARGS / SMALL_ARGS / BENCH_ARGS: extra arguments of that step, e.g. "--shapes 8192x28672 --ms 64")
# SKIP_BUILD=1 reuses the extension already built in the tree.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/qk_out}; mkdir -p "$OUT"
nvidia-smi -L
t0=$(date +%s)
if [ -z "${SKIP_BUILD:-}" ]; then
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=16 QUANTKERNELS_BUILD_CUDA=1 \
    python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"; grep -iE "warning|error" "$OUT/build.log" | grep -v "^ninja" | head -5
fi
python3 -c "import quantkernels, torch; from quantkernels import backends; print('cuda backend:', backends.unavailable_reason('cuda') or 'available')"

all_tests() {
  local pids=() names=() core="tests/test_cpu_backend.py tests/test_quantlinear.py tests/test_api.py tests/test_ops.py"
  python3 -m pytest --collect-only -q tests/test_triton_backend.py 2>/dev/null | grep '::' > "$OUT/triton_ids.txt"
  for i in 0 1 2 3; do
    mapfile -t ids < <(awk -v i=$i 'NR % 4 == i' "$OUT/triton_ids.txt")
    [ ${#ids[@]} -gt 0 ] || continue  # (no ids would mean pytest's whole default collection)
    timeout 400 python3 -m pytest -q -p no:cacheprovider "${ids[@]}" > "$OUT/t_triton$i.log" 2>&1 & pids+=($!); names+=("triton$i")
  done
  timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_backend.py > "$OUT/t_cuda.log" 2>&1 & pids+=($!); names+=(cuda)
  timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_wgmma.py > "$OUT/t_wgmma.log" 2>&1 & pids+=($!); names+=(wgmma)
  # shellcheck disable=SC2086
  timeout 400 python3 -m pytest -q -p no:cacheprovider $core > "$OUT/t_core.log" 2>&1 & pids+=($!); names+=(core)
  local skip=""; for f in tests/test_cuda_backend.py tests/test_cuda_wgmma.py tests/test_triton_backend.py $core; do skip+=" --ignore=$f"; done
  # shellcheck disable=SC2086
  timeout 400 python3 -m pytest -q -p no:cacheprovider tests $skip > "$OUT/t_rest.log" 2>&1 & pids+=($!); names+=(rest)
  for j in "${!pids[@]}"; do
    wait "${pids[$j]}"; local rc=$?
    echo "tests ${names[$j]} rc=$rc: $(tail -n1 "$OUT/t_${names[$j]}.log" | cut -c1-150)"
  done
  grep -hE "^(FAILED|ERROR)|Segmentation|core dumped" "$OUT"/t_*.log | cut -c1-300 | head -20
}

for step in "$@"; do
  t0=$(date +%s)
  case $step in
    all) all_tests ;;
    triton) mkdir -p "$OUT/triton"
            timeout 400 python3 benchmarks/triton_gemm.py --only table --shapes ${SHAPES:-8192x28672 28672x8192} \
              --ms ${MS:-1 16 64} --out "$OUT/triton" > "$OUT/triton_table.log" 2>&1; echo "triton table rc=$?"
            tail -n 14 "$OUT/triton_table.log" ;;
    tests) timeout 300 python3 -m pytest -q tests/test_cuda_backend.py > "$OUT/tests.log" 2>&1; echo "tests rc=$?: $(tail -1 "$OUT/tests.log")";
           grep -E "^(FAILED|ERROR)|raised:|Error|assert" "$OUT/tests.log" | head -25 ;;
    sanitize) timeout 400 bash scripts/sanitize_cuda.sh > "$OUT/sanitize.log" 2>&1; echo "sanitize rc=$?"; grep -E "^==|ERROR SUMMARY" "$OUT/sanitize.log" | head -10 ;;
    mid) timeout 400 python3 benchmarks/gpu_gemm.py --mid ${MID_ARGS:-} --out "$OUT" > "$OUT/mid.log" 2>&1; echo "mid rc=$?"; cut -c1-300 "$OUT/mid.log" ;;
    small) timeout 300 python3 benchmarks/gpu_gemm.py --small ${SMALL_ARGS:-} --out "$OUT" > "$OUT/small.log" 2>&1; echo "small rc=$?"; cut -c1-250 "$OUT/small.log" ;;
    quick) timeout 400 python3 benchmarks/gpu_gemm.py --quick --out "$OUT" > "$OUT/bench.log" 2>&1; echo "bench rc=$?" ;;
    sweep) timeout 300 python3 benchmarks/gpu_gemm.py --sweep --out "$OUT" > "$OUT/sweep.log" 2>&1; echo "sweep rc=$?"; grep -E "best=|Error" "$OUT/sweep.log" | cut -c1-220 ;;
    dequant) timeout 300 python3 benchmarks/gpu_gemm.py --dequant --out "$OUT" > "$OUT/dequant.log" 2>&1; echo "dequant rc=$?"; grep -vE "^#|^ " "$OUT/dequant.log" | cut -c1-220; grep "^# device" "$OUT/dequant.log" ;;
    ncu) timeout 240 ncu -k regex:wxa16_gemm_kernel --section SpeedOfLight --section MemoryWorkloadAnalysis \
           --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
           --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" python3 benchmarks/gpu_gemm.py --profile > "$OUT/ncu.txt" 2>&1; echo "ncu rc=$?"
         grep -E "wxa16_gemm_kernel|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Grid Size|Waves Per SM|No Eligible|Issued Warp|cycles being stalled" "$OUT/ncu.txt" | sed 's/  */ /g' | cut -c1-150 | head -60 ;;
    bench) timeout 540 python3 benchmarks/gpu_gemm.py ${BENCH_ARGS:-} --out "$OUT" > "$OUT/bench.log" 2>&1; echo "bench rc=$?" ;;
  esac
  echo "$step: $(( $(date +%s) - t0 )) s"
done
[ -f "$OUT/bench.log" ] && { grep -E "^#" "$OUT/bench.log"; cut -d'|' -f2-11 "$OUT/bench.log" | grep -E "^ *[0-9]" | head -120; }
exit 0
