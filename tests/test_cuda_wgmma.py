"""The Hopper wgmma GEMM (csrc/cuda/wxa16_gemm_sm90.cu) against quantkernels.reference.

Needs a Hopper GPU (sm_90) and the extension built for sm_90a with QUANTKERNELS_BUILD_CUDA=1; skips
(with the reason) elsewhere.

Error bound (||out - ref|| / ||ref||, ref = the fp32 reference on the same inputs): the kernel rounds
each dequantized weight (q - z) * s once to the activation dtype (as the mma.sync kernels do, with
the same code), multiplies on the tensor cores with fp32 accumulation and rounds the output once.
Two independent roundings with unit roundoff u give a relative norm error of about sqrt(2/3) u on
random data: fp16 (u = 2**-11) about 4e-4, bound 1e-3; bf16 (u = 2**-8) about 3e-3, bound 8e-3.
A wrong descriptor, k order or row mapping gives errors of order 1, far above either bound.
"""

from __future__ import annotations

import pytest
import torch

from quantkernels import QuantConfig, backends, reference
from quantkernels.backends import cuda as cuda_backend
from quantkernels.nn import QuantLinear

BOUND = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
NUM_CONFIGS = 8  # kConfigs in csrc/cuda/wxa16_gemm_sm90.cu


def _reason():
    reason = backends.unavailable_reason("cuda")
    if reason is not None:
        return f"CUDA backend unavailable: {reason}"
    probe = torch.zeros(1, 1, 32, 4, dtype=torch.int32, device="cuda")
    if not cuda_backend._wgmma_available(probe):
        return "no wgmma GEMM here (needs a Hopper GPU and an extension built for sm_90a)"
    return None


_REASON = _reason()
needs_wgmma = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))


def _layer(k, n, bits, group_size, sym, dtype, act_order=False, bias=True):
    # Fresh data every run: tests/conftest.py seeds each test from os.urandom.
    lin = torch.nn.Linear(k, n, bias=bias, device="cuda", dtype=torch.float32)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05)
        if bias:
            lin.bias.normal_(0, 0.1)
    g_idx = None
    if act_order:
        order = torch.randperm(k)
        g_idx = torch.empty(k, dtype=torch.int32)
        g_idx[order] = (torch.arange(k) // group_size).to(torch.int32)
        g_idx = g_idx.cuda()
    cfg = QuantConfig(bits=bits, group_size=group_size, sym=sym, act_order=act_order, scale_dtype=dtype)
    layer = QuantLinear.from_linear(lin, cfg, g_idx=g_idx)
    if bias:
        layer.bias = layer.bias.to(dtype)
    layer.backend = "cuda"
    portable = {key: v.clone() for key, v in layer.portable_tensors().items()}
    return layer, portable


def _ref(portable, x, bits):
    t = portable
    return reference.linear(x.float(), t["qweight"], t["qzeros"], t["scales"], t["g_idx"], t.get("bias"), bits).float()


def _rel(out, ref):
    assert torch.isfinite(out).all(), "output has NaN/Inf: some element was not written"
    return ((out.float() - ref).norm() / ref.norm()).item()


def _wgmma(layer, x, dtype, workspace=None, config=-1, ksplit=-1):
    """The op on x (act_order: columns sorted as the backend does), output block poisoned with NaN."""
    st = layer._prepared["cuda"]
    xs = x if st.perm is None else x.index_select(1, st.perm)
    poison = torch.full((x.shape[0], layer.out_features), float("nan"), dtype=dtype, device="cuda")
    del poison
    return torch.ops.quantkernels.cuda_wxa16_gemm_wgmma(
        xs, st.qweight, st.scales[dtype], st.zeros[dtype], st.kgroup, st.group_size, st.bias[dtype],
        layer.config.bits, workspace, config, ksplit,
    )


@needs_wgmma
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [4, 8])
def test_tiny_shapes(bits, dtype):
    """One stage (K = 64), one or two n-tiles: a wrong descriptor or row mapping shows up here first."""
    for k, n in ((64, 16), (64, 32), (128, 48)):
        layer, portable = _layer(k, n, bits, 64, True, dtype)
        for m in (1, 5, 8, 16, 17, 64):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            ref = _ref(portable, x, bits)
            for config in range(NUM_CONFIGS):
                err = _rel(_wgmma(layer, x, dtype, config=config), ref)
                assert err < BOUND[dtype], f"K={k} N={n} m={m} config={config}: {err:.2e}"


@needs_wgmma
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(
    "group_size,sym,act_order",
    [(32, False, False), (48, True, False), (64, True, False), (128, True, False), (128, False, False),
     (-1, True, False), (-1, False, False), (64, False, True)],
)
def test_every_format_config_and_split(group_size, sym, act_order, bits, dtype):
    """Every config at odd and round m: the automatic split of K without a workspace (a cluster or
    none) and with one (stream-K as well), one block a tile, forced splits over 3 and 8 blocks of a
    cluster (18 or 9 stages: uneven shares; with 8 parts and 9 stages ranks of one and two stages),
    and forced stream-K with a full workspace and with one too small for a wave (fewer blocks). Each
    split runs twice, bit-equal (the parts are summed in a fixed order), and the workspace comes back
    all zeros. 1152 x 336: 21 n-tiles (partial blocks of 4 or 8); act_order through the group table;
    group size 48 through the kernel's division (the others take a shift)."""
    k, n = 1152, 336
    layer, portable = _layer(k, n, bits, group_size, sym, dtype, act_order=act_order)
    assert (layer._prepared["cuda"].kgroup is not None) == act_order
    ws = torch.zeros(cuda_backend.wgmma_workspace_floats(255, n, cuda_backend.num_sms(0)), dtype=torch.float32,
                     device="cuda")
    small = torch.zeros(cuda_backend.workspace_floats(255, n), dtype=torch.float32, device="cuda")
    for m in (17, 33, 64, 100, 255):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        ref = _ref(portable, x, bits)
        for config in (-1, *range(NUM_CONFIGS)):
            for w, ksplit in ((None, -1), (ws, -1), (None, 1), (None, 3), (None, 8), (ws, 0), (small, 0)):
                out = _wgmma(layer, x, dtype, w, config, ksplit)
                err = _rel(out, ref)
                assert err < BOUND[dtype], f"m={m} config={config} ws={w is not None} ksplit={ksplit}: {err:.2e}"
                if ksplit != 1:  # the parts of a split tile are summed in a fixed order
                    again = _wgmma(layer, x, dtype, w, config, ksplit)
                    assert torch.equal(out, again), f"m={m} config={config} ksplit={ksplit}: not deterministic"
        assert not ws.any() and not small.any(), "the workspace must be all zeros after a launch"


@needs_wgmma
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,group_size,sym", [(4, 64, False), (4, 128, True), (8, -1, True), (8, 32, False)])
@pytest.mark.parametrize("config", [6, 7])
def test_warp_specialized_persistent(bits, group_size, sym, dtype, config):
    """The warp-specialized configs with more tiles than SMs, so that blocks run several tiles and
    their slots wrap across tiles. Config 6 (256 channels x 128 rows): 4112 channels (17 blocks, the
    last with one n-tile), 1100 rows (9 blocks, the last partial); 153 tiles. K = 384 (3 stages: no
    more than its slots) and 1152 (9). Whole tiles a block, and forced stream-K in 9 lanes of 14
    blocks: at K = 384 all of it (shares of 3-4 stages that start and end inside tiles, so most tiles
    are cut in two), at K = 1152 after a full wave of whole tiles (126), the other 27 tiles shared out
    (shares of 1-2 of a lane's 27 stages). Config 7 (128 channels x 256 rows; 8-bit weights run as
    config 6): 33 n-blocks (the last with one n-tile) x 5 m-blocks (the last of 76 rows), 165 tiles;
    stream-K in 5 lanes of 26 blocks. Each twice, bit-equal, and the workspace left all zeros."""
    n, m = 4112, 1100
    assert (n // 256 + 1) * ((m + 127) // 128) > cuda_backend.num_sms(0)
    assert (n // 128 + 1) * ((m + 255) // 256) > cuda_backend.num_sms(0)
    for k in (384, 1152):
        layer, portable = _layer(k, n, bits, group_size, sym, dtype)
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        ref = _ref(portable, x, bits)
        ws = torch.zeros(cuda_backend.wgmma_workspace_floats(m, n, cuda_backend.num_sms(0)), dtype=torch.float32,
                         device="cuda")
        for w, ksplit in ((None, -1), (ws, 0)):
            out = _wgmma(layer, x, dtype, w, config=config, ksplit=ksplit)
            err = _rel(out, ref)
            assert err < BOUND[dtype], f"K={k} ksplit={ksplit}: {err:.2e}"
            again = _wgmma(layer, x, dtype, w, config=config, ksplit=ksplit)
            assert torch.equal(out, again), f"K={k} ksplit={ksplit}: not deterministic"
            assert not ws.any(), "the workspace must be all zeros after a launch"


@needs_wgmma
@pytest.mark.parametrize("k,n,ms", [(4096, 4096, (64, 256, 1000)), (4096, 14336, (128,)), (14336, 4096, (33, 256)),
                                    (512, 1024, (4096,)), (8192, 28672, (4096,))])
def test_real_layer_shapes(k, n, ms):
    """LLaMA-3-8B / Mistral-7B projections (int4 g128 fp16, the benchmark format) and a large m (8192x28672 at
    4096 rows: the wgmma cell of the widest layers), the automatic config without a workspace and with one
    (as the backend gives it up to WGMMA_SPLIT_MAX_M rows: 14336x4096 at m = 256 runs the warp-specialized
    config's stream-K)."""
    layer, portable = _layer(k, n, 4, 128, True, torch.float16)
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        ref = _ref(portable, x, 4)
        ws = torch.zeros(cuda_backend.wgmma_workspace_floats(m, n, cuda_backend.num_sms(0)), dtype=torch.float32,
                         device="cuda")
        for w in (None, ws):
            err = _rel(_wgmma(layer, x, torch.float16, w), ref)
            assert err < BOUND[torch.float16], f"{k}x{n} m={m} ws={w is not None}: {err:.2e}"
            assert not ws.any(), "the workspace must be all zeros after a launch"


def test_wgmma_cells():
    """The routing table (runs anywhere): the cells measured faster on an H100, and no others."""
    serves = cuda_backend._wgmma_serves  # (m, N, K)
    assert not serves(16, 28672, 8192) and serves(17, 28672, 8192) and serves(32, 8192, 28672)
    assert serves(32, 8192, 8192) and serves(32, 4096, 14336) and serves(17, 14336, 4096)
    assert not serves(32, 4096, 4096) and not serves(17, 4096, 4096)
    assert serves(33, 8192, 8192) and serves(64, 14336, 4096) and serves(64, 4096, 14336)
    assert not serves(64, 4096, 4096) and not serves(128, 4096, 4096) and serves(256, 4096, 14336)
    assert serves(129, 4096, 4096) and serves(1024, 4096, 4096) and not serves(256, 2048, 4096)
    assert serves(257, 8192, 8192) and serves(1024, 28672, 8192) and serves(1024, 8192, 28672)
    assert serves(512, 14336, 4096) and serves(384, 4096, 14336)
    assert serves(2048, 28672, 8192) and serves(2048, 4096, 4096) and serves(1025, 14336, 4096)
    assert not serves(2049, 8192, 28672) and not serves(4096, 4096, 4096) and not serves(1, 8192, 28672)
    # 2049-4096 rows: the wide layers from 2^27 weights only (8192x28672, K x N)
    assert serves(2049, 28672, 8192) and serves(4096, 28672, 8192) and not serves(4097, 28672, 8192)
    assert not serves(4096, 14336, 4096) and not serves(4096, 4096, 14336) and not serves(4096, 8192, 8192)


@needs_wgmma
def test_quantlinear_routes_middle_m_to_wgmma(monkeypatch):
    """QuantLinear at m in the wgmma range gives the reference's answer, also with a 3-D,
    non-contiguous input, and inside a captured CUDA graph replayed on new data."""
    monkeypatch.setattr(cuda_backend, "WGMMA_CELLS", ((0, 1 << 30, 0, 0),))  # every (m, layer): small layer
    layer, portable = _layer(1024, 256, 4, 128, False, torch.float16)
    assert layer._prepared["cuda"].wgmma
    m = 100
    x3 = torch.randn(2, m, 2048, device="cuda", dtype=torch.float16)[:, :, ::2]
    out = layer(x3)
    assert out.shape == (2, m, 256)
    err = _rel(out.reshape(-1, 256), _ref(portable, x3.reshape(-1, 1024), 4))
    assert err < BOUND[torch.float16]
    x = torch.randn(m, 1024, device="cuda", dtype=torch.float16)
    layer(x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer(x)
    x.copy_(torch.randn_like(x))
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert _rel(out, _ref(portable, x, 4)) < BOUND[torch.float16]


@needs_wgmma
def test_opcheck():
    layer, _ = _layer(256, 64, 4, 64, False, torch.float16)
    st = layer._prepared["cuda"]
    x = torch.randn(40, 256, device="cuda", dtype=torch.float16)
    torch.library.opcheck(
        torch.ops.quantkernels.cuda_wxa16_gemm_wgmma.default,
        (x, st.qweight, st.scales[x.dtype], st.zeros[x.dtype], None, 64, st.bias[x.dtype], 4),
    )
