#!/usr/bin/env bash
# One call on the lent H100 for the Triton backend (pure Python: nothing to build): the whole test
# file in 4 pytest processes at once (its time is Triton compiles on the host CPU; one process took
# 223 s on 2026-11-23), the real-size check, then the target table alone on the GPU. Logs under
# $OUT, a short summary last.
# Usage: bash scripts/gpu_triton.sh [tests] [check] [table] [sweep]
#   CHECK_MS (default "1 5 16 40 64 300"), SHAPES (default the two largest), MS (default "1 16 64").
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/qk_out}; mkdir -p "$OUT"
nvidia-smi -L
SHAPES=${SHAPES:-"8192x28672 28672x8192"}
for step in "$@"; do
  t0=$(date +%s)
  case $step in
    tests) python3 -m pytest --collect-only -q tests/test_triton_backend.py 2>/dev/null | grep '::' > "$OUT/test_ids.txt"
           pids=()
           for i in 0 1 2 3; do
             mapfile -t ids < <(awk -v i=$i 'NR % 4 == i' "$OUT/test_ids.txt")
             [ ${#ids[@]} -gt 0 ] || continue  # (no ids would mean pytest's whole default collection)
             timeout 300 python3 -m pytest -q -p no:cacheprovider "${ids[@]}" > "$OUT/triton_tests$i.log" 2>&1 &
             pids+=($!)
           done
           rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done
           echo "triton tests rc=$rc ($(wc -l < "$OUT/test_ids.txt") cases): $(tail -qn1 "$OUT"/triton_tests?.log | tr '\n' ' ')"
           grep -hE "^(FAILED|ERROR)" "$OUT"/triton_tests?.log | cut -c1-300 | head -12 ;;
    check) timeout 400 python3 benchmarks/triton_gemm.py --only check --check-ms ${CHECK_MS:-1 5 16 40 64 300} \
             --out "$OUT" > "$OUT/check.log" 2>&1; echo "check rc=$?: $(grep -E '^check:' "$OUT/check.log")"
           grep -E "^FAIL" "$OUT/check.log" | cut -c1-300 | head -12 ;;
    table) timeout 400 python3 benchmarks/triton_gemm.py --only table --shapes $SHAPES --ms ${MS:-1 16 64} \
             --out "$OUT" > "$OUT/table.log" 2>&1; echo "table rc=$?"; tail -n 12 "$OUT/table.log" ;;
    sweep) timeout 400 python3 benchmarks/triton_gemm.py --only sweep --shapes $SHAPES --sweep-ms ${MS:-1 16 64} \
             --out "$OUT" > "$OUT/sweep.log" 2>&1; echo "sweep rc=$?"; grep -E "^sweep" "$OUT/sweep.log" ;;
  esac
  echo "$step: $(( $(date +%s) - t0 )) s"
done
exit 0
