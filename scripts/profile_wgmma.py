"""One launch of each forced wgmma config after a warm-up, for Nsight Compute (scripts/gpu_wgmma.sh ncu).

    PYTHONPATH=$PWD python3 scripts/profile_wgmma.py K N m config[,config...]

A config is C or C:KSPLIT (as `benchmarks/gpu_gemm.py --wgmma --configs`: KSPLIT blocks of a cluster a
tile, 0 stream-K); every launch gets a stream-K workspace, as the benchmark gives its forced configs.
"""
import sys

import torch

from quantkernels import QuantConfig
from quantkernels.backends import cuda as qk_cuda
from quantkernels.nn import QuantLinear

k, n, m = (int(v) for v in sys.argv[1:4])
configs = [tuple(int(v) for v in (c.split(":") + ["-1"])[:2]) for c in sys.argv[4].split(",")]
lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.float16)
layer = QuantLinear.from_linear(lin, QuantConfig(bits=4, group_size=128, sym=True))
st = layer._prepared["cuda"]
x = torch.randn(m, k, device="cuda", dtype=torch.float16)
ws = torch.zeros(qk_cuda.wgmma_workspace_floats(m, n, qk_cuda.num_sms(0)), dtype=torch.float32, device="cuda")
for c, ks in configs:
    for _ in range(2):
        torch.ops.quantkernels.cuda_wxa16_gemm_wgmma(
            x, st.qweight, st.scales[x.dtype], None, None, 128, None, 4, ws, c, ks)
torch.cuda.synchronize()
