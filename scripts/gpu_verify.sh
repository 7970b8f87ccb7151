#!/usr/bin/env bash
# One call on the lent GPU that verifies a tree: build the CUDA extension once, then every test file
# at once in separate processes (a faulting kernel poisons only its own process), optionally the
# sanitizers, then the benchmarks alone on the GPU. Logs under $OUT; a short summary last.
# Usage: bash scripts/gpu_verify.sh [tests] [sanitize] [triton] [cuda] [small]
#   triton: the Triton target table (MS, default "1 16 64"; SHAPES, default the two largest)
#   cuda:   benchmarks/gpu_gemm.py --no-triton (BENCH_ARGS: more arguments)
#   small:  benchmarks/gpu_gemm.py --small (SMALL_ARGS)
# SKIP_BUILD=1 reuses a build already in the tree.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/qk_out}; mkdir -p "$OUT"
nvidia-smi -L
t0=$(date +%s)
if [ -z "${SKIP_BUILD:-}" ]; then
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=16 QUANTKERNELS_BUILD_CUDA=1 \
    python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
fi
python3 -c "from quantkernels import backends; print('cuda backend:', backends.unavailable_reason('cuda') or 'available')"

run_tests() {  # every test file, each group in its own process, all at once
  local pids=() names=()
  python3 -m pytest --collect-only -q tests/test_triton_backend.py 2>/dev/null | grep '::' > "$OUT/triton_ids.txt"
  for i in 0 1 2 3; do
    mapfile -t ids < <(awk -v i=$i 'NR % 4 == i' "$OUT/triton_ids.txt")
    [ ${#ids[@]} -gt 0 ] || continue
    timeout 400 python3 -m pytest -q -p no:cacheprovider "${ids[@]}" > "$OUT/t_triton$i.log" 2>&1 & pids+=($!); names+=("triton$i")
  done
  timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_backend.py > "$OUT/t_cuda.log" 2>&1 & pids+=($!); names+=(cuda)
  timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_wgmma.py > "$OUT/t_wgmma.log" 2>&1 & pids+=($!); names+=(wgmma)
  timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_cpu_backend.py tests/test_quantlinear.py \
    tests/test_api.py tests/test_ops.py > "$OUT/t_core.log" 2>&1 & pids+=($!); names+=(core)
  timeout 400 python3 -m pytest -q -p no:cacheprovider tests --ignore=tests/test_cuda_backend.py \
    --ignore=tests/test_cuda_wgmma.py --ignore=tests/test_triton_backend.py --ignore=tests/test_cpu_backend.py \
    --ignore=tests/test_quantlinear.py --ignore=tests/test_api.py --ignore=tests/test_ops.py \
    > "$OUT/t_rest.log" 2>&1 & pids+=($!); names+=(rest)
  for j in "${!pids[@]}"; do
    wait "${pids[$j]}"; local rc=$?
    echo "tests ${names[$j]} rc=$rc: $(tail -n1 "$OUT/t_${names[$j]}.log" | cut -c1-150)"
  done
  grep -hE "^(FAILED|ERROR)|Segmentation|core dumped" "$OUT"/t_*.log | cut -c1-300 | head -20
}

for step in "$@"; do
  t1=$(date +%s)
  case $step in
    tests) run_tests ;;
    sanitize) timeout 400 bash scripts/sanitize_cuda.sh > "$OUT/sanitize.log" 2>&1; echo "sanitize rc=$?"
              grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitize.log" | sort | uniq -c | head -8 ;;
    triton) mkdir -p "$OUT/triton"
            timeout 400 python3 benchmarks/triton_gemm.py --only table --shapes ${SHAPES:-8192x28672 28672x8192} \
              --ms ${MS:-1 16 64} --out "$OUT/triton" > "$OUT/triton_table.log" 2>&1; echo "triton table rc=$?"
            tail -n 14 "$OUT/triton_table.log" ;;
    cuda) timeout 540 python3 benchmarks/gpu_gemm.py --no-triton ${BENCH_ARGS:-} --out "$OUT" > "$OUT/bench.log" 2>&1
          echo "cuda bench rc=$?"; grep -E "^#" "$OUT/bench.log" | head -5
          cut -d'|' -f2-11 "$OUT/bench.log" | grep -E "^ *[0-9]" | head -120 ;;
    small) timeout 300 python3 benchmarks/gpu_gemm.py --small ${SMALL_ARGS:-} --out "$OUT" > "$OUT/small.log" 2>&1
           echo "small rc=$?"; cut -c1-250 "$OUT/small.log" | tail -40 ;;
  esac
  echo "$step: $(( $(date +%s) - t1 )) s"
done
exit 0
