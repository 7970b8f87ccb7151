#!/usr/bin/env bash
# compute-sanitizer memcheck and racecheck over a representative set of the CUDA kernels: every tile
# shape of the fused GEMM (m = 1, 7, 16, 33, 100; the stream-K tiles at m <= 8; the middle-m tiles
# with and without a split over blocks), 4 and 8 bits, fp16 and bf16, symmetric and
# asymmetric, act_order, and the dequantize kernel. Needs a GPU and an extension built with
# QUANTKERNELS_BUILD_CUDA=1. Run from the repository root: `bash scripts/sanitize_cuda.sh`.
# Exits non-zero if either tool reports an error.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
export PYTORCH_NO_CUDA_MEMORY_CACHING=1  # every tensor its own allocation, so overruns are seen
SAN=${COMPUTE_SANITIZER:-compute-sanitizer}
script=$(mktemp --suffix=.py)
trap 'rm -f "$script"' EXIT
cat > "$script" <<'PY'
import torch
from quantkernels import QuantConfig, reference
from quantkernels.nn import QuantLinear

torch.manual_seed(0)
cases = [(4, 128, True, False), (4, 32, False, False), (8, -1, True, False), (8, 64, False, False), (4, 64, True, True)]
for bits, gs, sym, act_order in cases:
    k, n = 384, 48  # 3 n-tiles: partial blocks; 6 or 12 k-chunks, a partial 256-column dequantize tile
    g_idx = None
    if act_order:
        order = torch.randperm(k)
        g_idx = torch.empty(k, dtype=torch.int32)
        g_idx[order] = (torch.arange(k) // gs).to(torch.int32)
        g_idx = g_idx.cuda()
    lin = torch.nn.Linear(k, n, device="cuda")
    layer = QuantLinear.from_linear(lin, QuantConfig(bits=bits, group_size=gs, sym=sym, act_order=act_order), g_idx=g_idx)
    layer.backend = "cuda"
    st = layer._prepared["cuda"]
    for dt in (torch.float16, torch.bfloat16):
        for m in (1, 7, 16, 33, 100):
            x = torch.randn(m, k, device="cuda", dtype=dt)
            out = torch.ops.quantkernels.cuda_wxa16_gemm(
                x if st.perm is None else x.index_select(1, st.perm), st.qweight, st.scales[dt], st.zeros[dt],
                st.kgroup, st.group_size, st.bias[dt], bits)
            torch.cuda.synchronize()
            assert torch.isfinite(out).all()
            ws = torch.zeros(m * n + (n // 16) * ((m + 7) // 8), device="cuda")
            for tile in (0, 2, 4, 5, 12, 13, 15):  # forced tiles (12, 13, 15: staged activations), k split over 2 blocks
                torch.ops.quantkernels.cuda_wxa16_gemm(
                    x if st.perm is None else x.index_select(1, st.perm), st.qweight, st.scales[dt], st.zeros[dt],
                    st.kgroup, st.group_size, st.bias[dt], bits, ws, tile, 2)
            for tile in (10, 11) if m > 16 else ():  # middle-m tiles: split in the block, then over blocks
                for w, ks in ((None, -1), (ws, -1), (ws, 2)):
                    torch.ops.quantkernels.cuda_wxa16_gemm(
                        x if st.perm is None else x.index_select(1, st.perm), st.qweight, st.scales[dt], st.zeros[dt],
                        st.kgroup, st.group_size, st.bias[dt], bits, w, tile, ks)
            for tile in (7, 8, 9, 14) if m <= 8 else ():  # stream-K tiles (14 staged): workspace sums
                torch.ops.quantkernels.cuda_wxa16_gemm(
                    x if st.perm is None else x.index_select(1, st.perm), st.qweight, st.scales[dt], st.zeros[dt],
                    st.kgroup, st.group_size, st.bias[dt], bits, ws, tile)
            torch.cuda.synchronize()
            assert not ws.any()
        w = torch.ops.quantkernels.cuda_wxa16_dequantize(st.qweight, st.scales[dt], st.zeros[dt], st.kgroup,
                                                         st.group_size, bits)
        torch.cuda.synchronize()
print("sanitize workload done")
PY
status=0
for tool in memcheck racecheck; do
  echo "== compute-sanitizer --tool $tool"
  if ! "$SAN" --tool "$tool" --error-exitcode 9 python3 "$script"; then
    echo "== $tool: FAILED"; status=1
  else
    echo "== $tool: clean"
  fi
done
exit $status
