#!/usr/bin/env bash
# compute-sanitizer memcheck and racecheck over the Hopper wgmma GEMM (csrc/cuda/wxa16_gemm_sm90.cu):
# every config, 4 and 8 bits, fp16 and bf16, symmetric and asymmetric, act_order, m = 1, 17, 100,
# with one block a tile and with a split of K over the blocks of a cluster and stream-K, and the
# warp-specialized configs with more tiles than SMs (blocks that run several tiles; whole tiles and
# stream-K). Needs a Hopper GPU and an extension built for sm_90a. Run from the repository root:
# `bash scripts/sanitize_wgmma.sh`. Exits non-zero on an error.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
export PYTORCH_NO_CUDA_MEMORY_CACHING=1  # every tensor its own allocation, so overruns are seen
SAN=${COMPUTE_SANITIZER:-compute-sanitizer}
script=$(mktemp --suffix=.py)
trap 'rm -f "$script"' EXIT
cat > "$script" <<'PY'
import torch
from quantkernels import QuantConfig
from quantkernels.backends import cuda as qc
from quantkernels.nn import QuantLinear

torch.manual_seed(0)
NUM_CONFIGS = 8  # kConfigs in csrc/cuda/wxa16_gemm_sm90.cu
for bits, gs, sym, act_order in [(4, 128, True, False), (4, 32, False, False), (8, -1, True, False), (4, 64, True, True)]:
    k, n = 384, 48  # 6 stages; 3 n-tiles: partial blocks
    g_idx = None
    if act_order:
        order = torch.randperm(k)
        g_idx = torch.empty(k, dtype=torch.int32)
        g_idx[order] = (torch.arange(k) // gs).to(torch.int32)
        g_idx = g_idx.cuda()
    lin = torch.nn.Linear(k, n, device="cuda")
    layer = QuantLinear.from_linear(lin, QuantConfig(bits=bits, group_size=gs, sym=sym, act_order=act_order), g_idx=g_idx)
    st = layer._prepared["cuda"]
    assert st.wgmma
    for dt in (torch.float16, torch.bfloat16):
        for m in (1, 17, 100):
            x = torch.randn(m, k, device="cuda", dtype=dt)
            xs = x if st.perm is None else x.index_select(1, st.perm)
            ws = torch.zeros(qc.wgmma_workspace_floats(m, n, qc.num_sms(0)), device="cuda")
            for config in range(NUM_CONFIGS):
                # one block a tile; 6 (or 3) stages over a cluster of 4 blocks (uneven shares); stream-K
                for w, ks in ((None, 1), (None, 4), (ws, 0)):
                    out = torch.ops.quantkernels.cuda_wxa16_gemm_wgmma(
                        xs, st.qweight, st.scales[dt], st.zeros[dt], st.kgroup, st.group_size, st.bias[dt], bits,
                        w, config, ks)
            torch.cuda.synchronize()
            assert torch.isfinite(out).all() and not ws.any()
# The warp-specialized configs (6 and 7) with more tiles than SMs: blocks run several tiles, slots
# wrap; whole tiles, and stream-K in lanes of m-blocks (tiles cut between blocks, parts summed). K =
# 1152: 9 stages a tile, so that a block's stages wrap its 4 (3) slots in both.
lin = torch.nn.Linear(1152, 4112, device="cuda")
layer = QuantLinear.from_linear(lin, QuantConfig(bits=4, group_size=64, sym=False))
st = layer._prepared["cuda"]
x = torch.randn(1100, 1152, device="cuda", dtype=torch.float16)
ws = torch.zeros(qc.wgmma_workspace_floats(1100, 4112, qc.num_sms(0)), device="cuda")
for config in (6, 7):
    for w, ks in ((None, -1), (ws, 0)):
        out = torch.ops.quantkernels.cuda_wxa16_gemm_wgmma(
            x, st.qweight, st.scales[x.dtype], st.zeros[x.dtype], None, 64, st.bias[x.dtype], 4, w, config, ks)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all() and not ws.any()
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
