"""The CUDA backend (csrc/cuda/, quantkernels/backends/cuda.py) against quantkernels.reference.

The layout tests run everywhere; the kernel tests need a CUDA GPU with the extension built with
QUANTKERNELS_BUILD_CUDA=1 and skip (with the reason) otherwise.

Error bounds (||out - ref|| / ||ref||, ref = the fp32 reference on the same inputs):
* float16: the kernels round each dequantized weight (q - z) * s once to fp16 (relative error at
  most 2**-11 = 4.9e-4, rms about 2.8e-4 on random data), accumulate in fp32 (negligible at these
  K), and round the output once more (rms about 2.8e-4). For random data the errors are
  independent, so the relative norm error is about 4e-4: bound 1e-3.
* bfloat16: the same two roundings with unit roundoff 2**-8 instead of 2**-11, 8x larger: bound 8e-3.
The small-m tiles that scale after the mma (one group per chunk) skip the first rounding (q - z is
exact and the scale multiplies the fp32 sum), so their error is below these bounds.
The dequantize kernel rounds (q - z) * s once, exactly as the reference's fp32 result cast to the
dtype does, so it must match bit for bit.
"""

from __future__ import annotations

import functools

import pytest
import torch

from quantkernels import QuantConfig, backends, reference
from quantkernels.backends import cuda as cuda_backend
from quantkernels.nn import QuantLinear

BOUND = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
NUM_TILES = 16  # the GEMM's tile list (csrc/cuda/wxa16_gemm_sm80.cu, kTiles, kMidTiles, kLateTiles)
MID_TILES = (10, 11)  # the middle-m kernel's tiles (64 rows a pass, 2 or 4 n-tiles a warp)
M_LIST = (1, 2, 3, 7, 16, 33, 64, 100, 256, 1000, 4096)

_REASON = backends.unavailable_reason("cuda")
needs_gpu = pytest.mark.skipif(_REASON is not None, reason=f"CUDA backend unavailable: {_REASON}")


# ---- the layout (runs on any machine) ---------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
def test_shuffle_roundtrip(bits):
    n, k = 48, 3 * cuda_backend.chunk_cols(bits)
    codes = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8)
    sh = cuda_backend.shuffle(codes, bits)
    assert sh.shape == (n // 16, k // cuda_backend.chunk_cols(bits), 32, 4) and sh.dtype == torch.int32
    assert torch.equal(cuda_backend.unshuffle(sh, bits), codes)


@pytest.mark.parametrize("bits", [4, 8])
def test_shuffle_matches_documented_bits(bits):
    """Spot-check the bit positions that csrc/cuda/wxa16.h documents (the kernels rely on them)."""
    g = None  # the global generator, seeded per test by tests/conftest.py
    kc = cuda_backend.chunk_cols(bits)
    n, k = 32, 2 * kc
    codes = torch.randint(0, 1 << bits, (n, k), generator=g, dtype=torch.uint8)
    words = cuda_backend.shuffle(codes, bits).to(torch.int64) & 0xFFFFFFFF
    span = kc // 4
    for _ in range(200):
        nt, c, lane = (int(torch.randint(0, s, (1,), generator=g)) for s in (n // 16, k // kc, 32))
        h, i = int(torch.randint(0, 2, (1,), generator=g)), int(torch.randint(0, 4, (1,), generator=g))
        j = int(torch.randint(0, 4 if bits == 4 else 2, (1,), generator=g))
        gg, t = lane // 4, lane % 4
        row, col = nt * 16 + gg + 8 * h, c * kc + span * t + 4 * j + i
        if bits == 4:
            word, shift = words[nt, c, lane, j], 4 * (h + (0, 4, 2, 6)[i])
        else:
            word, shift = words[nt, c, lane, 2 * j + (i >> 1)], 8 * (2 * h + (i & 1))
        assert int(word >> shift) & ((1 << bits) - 1) == int(codes[row, col])


def test_shuffle_pairs():
    s = torch.arange(3 * 32, dtype=torch.float32).view(3, 32)
    p = cuda_backend.shuffle_pairs(s)
    assert p.shape == (3, 2, 8, 2)
    assert p[2, 1, 5, 0] == s[2, 16 + 5] and p[2, 1, 5, 1] == s[2, 16 + 5 + 8]


def test_supports_reasons_on_cpu():
    layer = QuantLinear(64, 32, QuantConfig(bits=4, group_size=32), bias=False)
    x = torch.randn(2, 64)
    reason = cuda_backend.BACKEND.supports(layer, x)
    assert reason is not None and "not a CUDA device" in reason


# ---- the kernels (need a GPU) -----------------------------------------------------------------------
def _layer(k, n, cfg, dtype, bias=True, g_idx=None, seed=None):
    # Fresh data every run: tests/conftest.py seeds each test from os.urandom (`seed` only labels).
    lin = torch.nn.Linear(k, n, bias=bias, device="cuda", dtype=torch.float32)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05)
        if bias:
            lin.bias.normal_(0, 0.1)
    cfg = QuantConfig(**{**cfg.to_dict(), "scale_dtype": dtype})
    layer = QuantLinear.from_linear(lin, cfg, g_idx=g_idx)
    if bias:
        layer.bias = layer.bias.to(dtype)
    return layer


def _portable(layer):
    return {k: v.clone() for k, v in layer.portable_tensors().items()}


def _ref(layer_tensors, x, bits):
    t = layer_tensors
    return reference.linear(
        x.float(), t["qweight"], t["qzeros"], t["scales"], t["g_idx"], t.get("bias"), bits
    ).float()


def _poisoned_forward(layer, x):
    """Run layer(x) with the caching allocator's block for the output pre-filled with NaN."""
    poison = torch.full((x.shape[0], layer.out_features), float("nan"), dtype=x.dtype, device=x.device)
    del poison
    return layer(x)


def _rel(out, ref):
    assert torch.isfinite(out).all(), "output has NaN/Inf: some element was not written"
    return ((out.float() - ref).norm() / ref.norm()).item()


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, 48, 64, 128, -1])  # 48: a group size that is not a power of two
@pytest.mark.parametrize("bits", [4, 8])
def test_linear_every_format_every_m(bits, group_size, sym, dtype):
    k, n = 384, 272  # 17 n-tiles: not a multiple of any block shape
    layer = _layer(k, n, QuantConfig(bits=bits, group_size=group_size, sym=sym), dtype, seed=bits + group_size)
    layer.backend = "cuda"
    portable = _portable(layer)
    for m in M_LIST:
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        out = _poisoned_forward(layer, x)
        assert layer._last_backend == "cuda"
        assert out.shape == (m, n) and out.dtype == dtype
        err = _rel(out, _ref(portable, x, bits))
        assert err < BOUND[dtype], f"m={m}: rel err {err:.2e} >= {BOUND[dtype]}"


@needs_gpu
@pytest.mark.parametrize("m", M_LIST)
@pytest.mark.parametrize("bits", [4, 8])
def test_gemm_kernel_at_every_m(bits, m):
    """The fused kernel itself (also above GEMM_MAX_M, where QuantLinear would use cuBLAS)."""
    k, n = 512, 208
    layer = _layer(k, n, QuantConfig(bits=bits, group_size=64, sym=False), torch.float16, seed=m)
    state = layer._prepared["cuda"]
    portable = _portable(layer)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    poison = torch.full((m, n), float("nan"), dtype=torch.float16, device="cuda")
    del poison
    out = torch.ops.quantkernels.cuda_wxa16_gemm(
        x, state.qweight, state.scales[x.dtype], state.zeros[x.dtype], None, state.group_size, state.bias[x.dtype], bits
    )
    assert _rel(out, _ref(portable, x, bits)) < BOUND[torch.float16]


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size,sym", [(128, False), (128, True), (-1, False)])
@pytest.mark.parametrize("tile", range(NUM_TILES))
def test_every_gemm_tile(tile, group_size, sym, bits, dtype):
    """Each tile shape of the kernel's list (auto picks some only for large N), forced, with and
    without a workspace (the stream-K tiles 7-9 and 14 use it for m <= 8, else run as their
    plain twins). Group 128 scales per weight or per chunk (symmetric: the zero's constants made once),
    per-channel (-1) once at the end."""
    k, n = 640, 336  # 21 n-tiles: partial NT groups for NT = 2 and 4
    layer = _layer(k, n, QuantConfig(bits=bits, group_size=group_size, sym=sym), dtype, seed=tile)
    st = layer._prepared["cuda"]
    portable = _portable(layer)
    ws = torch.zeros(cuda_backend.workspace_floats(8, n), dtype=torch.float32, device="cuda")
    for m in (1, 7, 8, 16, 33, 70):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        for w in (None, ws if m <= 8 else None):
            poison = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
            del poison
            out = torch.ops.quantkernels.cuda_wxa16_gemm(
                x, st.qweight, st.scales[dtype], st.zeros[dtype], None, st.group_size, st.bias[dtype], bits, w, tile
            )
            err = _rel(out, _ref(portable, x, bits))
            assert err < BOUND[dtype], f"tile={tile} m={m} workspace={w is not None}: {err:.2e}"
    assert not ws.any(), "the workspace must be all zeros after a launch"


@needs_gpu
@pytest.mark.parametrize("tile", [7, 8, 9, 14])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k,n", [(128, 33808), (4096, 1040), (1152, 272)])
@pytest.mark.parametrize("group_size", [64, -1])
def test_streamk_tiles(k, n, group_size, bits, dtype, tile):
    """Stream-K: every warp takes an equal range of (n-slice, chunk) items. (128, 33808): 2113
    n-tiles of 2 or 4 chunks, so warps hold whole slices (direct store) as well as parts, and cross
    from one slice into the next (per-channel: each slice's scales and zeros read as it starts); the
    others split every slice over several warps (workspace sums). Repeated launches rely on the
    previous one having zeroed the workspace; asymmetric zeros, group 64 or per-channel."""
    layer = _layer(k, n, QuantConfig(bits=bits, group_size=group_size, sym=False), dtype, seed=k + tile)
    st = layer._prepared["cuda"]
    portable = _portable(layer)
    ws = torch.zeros(cuda_backend.workspace_floats(8, n), dtype=torch.float32, device="cuda")
    for m in (1, 3, 8):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        ref = _ref(portable, x, bits)
        for _ in range(3):
            poison = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
            del poison
            out = torch.ops.quantkernels.cuda_wxa16_gemm(
                x, st.qweight, st.scales[dtype], st.zeros[dtype], None, st.group_size, st.bias[dtype], bits, ws, tile
            )
            err = _rel(out, ref)
            assert err < BOUND[dtype], f"m={m}: {err:.2e}"
        assert not ws.any(), "the workspace must be all zeros after a launch"


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(
    "group_size,sym,act_order", [(32, False, False), (64, True, False), (128, False, False), (-1, True, False), (64, False, True)]
)
@pytest.mark.parametrize("tile", MID_TILES)
def test_mid_tiles(tile, group_size, sym, act_order, bits, dtype):
    """The middle-m kernel (activations staged in shared memory), forced, at odd and round m
    (partial m-tiles and passes), without a workspace (k split inside the block only), with one
    (automatic split over blocks) and with a forced split of 3; the workspace must come back zeroed.
    1152 x 336: 21 n-tiles (partial n-slices), 18 / 36 chunks; act_order through the group table."""
    k, n = 1152, 336
    g_idx = None
    if act_order:
        order = torch.randperm(k)
        g_idx = torch.empty(k, dtype=torch.int32)
        g_idx[order] = (torch.arange(k) // group_size).to(torch.int32)
        g_idx = g_idx.cuda()
    cfg = QuantConfig(bits=bits, group_size=group_size, sym=sym, act_order=act_order)
    layer = _layer(k, n, cfg, dtype, g_idx=g_idx, seed=tile)
    st = layer._prepared["cuda"]
    assert (st.kgroup is not None) == act_order
    portable = _portable(layer)
    ws = torch.zeros(cuda_backend.workspace_floats(255, n), dtype=torch.float32, device="cuda")
    for m in (17, 33, 64, 100, 255):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        ref = _ref(portable, x, bits)
        xs = x if st.perm is None else x.index_select(1, st.perm)
        for w, ksplit in ((None, -1), (ws, -1), (ws, 3)):
            poison = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
            del poison
            out = torch.ops.quantkernels.cuda_wxa16_gemm(
                xs, st.qweight, st.scales[dtype], st.zeros[dtype], st.kgroup, st.group_size, st.bias[dtype], bits,
                w, tile, ksplit,
            )
            err = _rel(out, ref)
            assert err < BOUND[dtype], f"m={m} workspace={w is not None} ksplit={ksplit}: {err:.2e}"
        assert not ws.any(), "the workspace must be all zeros after a launch"


@needs_gpu
@pytest.mark.parametrize("group_size", [64, -1])
@pytest.mark.parametrize("ksplit", [2, 3])
@pytest.mark.parametrize("tile", [0, 2, 4, 5])
@pytest.mark.parametrize("bits", [4, 8])
def test_split_k_leaves_workspace_zeroed(bits, tile, ksplit, group_size):
    k, n = 1024, 336
    layer = _layer(k, n, QuantConfig(bits=bits, group_size=group_size, sym=False), torch.float16, seed=ksplit)
    st = layer._prepared["cuda"]
    portable = _portable(layer)
    ws = torch.zeros(cuda_backend.workspace_floats(128, n), dtype=torch.float32, device="cuda")
    for m in (1, 16, 33, 100):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        for _ in range(2):  # the second launch relies on the first having cleaned up
            out = torch.ops.quantkernels.cuda_wxa16_gemm(
                x, st.qweight, st.scales[x.dtype], st.zeros[x.dtype], None, st.group_size, st.bias[x.dtype], bits,
                ws, tile, ksplit,
            )
            err = _rel(out, _ref(portable, x, bits))
            assert err < BOUND[torch.float16], f"m={m}: {err:.2e}"
        assert not ws.any(), "the workspace must be all zeros after a launch"
    with pytest.raises(RuntimeError, match="needs a zeroed float32 workspace"):
        torch.ops.quantkernels.cuda_wxa16_gemm(
            x, st.qweight, st.scales[x.dtype], None, None, st.group_size, None, bits, None, tile, ksplit
        )


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,group_size", [(4, 128), (4, 32), (8, 64)])
def test_act_order(bits, group_size, dtype):
    k, n = 512, 96
    order = torch.randperm(k)
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // group_size).to(torch.int32)  # GPTQ's act_order grouping
    layer = _layer(k, n, QuantConfig(bits=bits, group_size=group_size, act_order=True), dtype, g_idx=g_idx.cuda())
    layer.backend = "cuda"
    assert layer._prepared["cuda"].perm is not None
    portable = _portable(layer)
    assert torch.equal(portable["g_idx"].cpu(), g_idx)
    for m in (1, 7, 33, 256):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        err = _rel(_poisoned_forward(layer, x), _ref(portable, x, bits))
        assert err < BOUND[dtype], f"m={m}: {err:.2e}"


@needs_gpu
@pytest.mark.parametrize(
    "k,n",
    [(4096, 11008), (11008, 4096), (4096, 14336), (14336, 4096), (3584, 18944), (4096, 1024)],
    ids=["llama-up", "llama-down", "mistral-up", "mistral-down", "qwen2-up", "mistral-kv"],
)
def test_real_layer_shapes(k, n):
    layer = _layer(k, n, QuantConfig(bits=4, group_size=128), torch.float16, bias=False, seed=k + n)
    portable = _portable(layer)
    for m in (1, 9, 16, 64, 128, 256, 4096):  # 9, 16: tile 15 on the wide ones; 128: the middle-m tiles
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        err = _rel(_poisoned_forward(layer, x), _ref(portable, x, 4))
        assert err < BOUND[torch.float16], f"m={m}: {err:.2e}"



@needs_gpu
def test_automatic_tile_choice_and_shared_memory_fallback():
    """The automatic tile for 9-16 rows (auto_tile): tile 15 where its slices of 4 n-tiles give
    nearly every SM a block (4 N/16 >= 15 SMs; 8-bit layers only below tile 4's width), tile 13
    on narrower layers. Where a block may not opt in to the 120 KB tile 15 or the 112 KB tile 13 take
    (99 KB: compute capability 8.6 / 8.9), their unstaged twins (4, 5) serve; the output is then right
    as well (the forced twins are checked against the reference in test_every_gemm_tile)."""
    probe = torch.zeros(1, dtype=torch.int32, device="cuda")
    sms = cuda_backend.num_sms(probe.device.index)
    tile = functools.partial(torch.ops.quantkernels.cuda_wxa16_gemm_tile, probe)
    wide = 16 * -(-15 * sms // 4)  # the narrowest N that takes tile 15
    big, small = 227 * 1024, 99 * 1024  # what an H100 and an sm_86 / sm_89 GPU let a block opt in to
    assert tile(16, wide, 4096, 4, False, big) == 15 and tile(9, wide, 4096, 4, False, big) == 15
    assert tile(16, wide - 16, 4096, 4, False, big) == 13
    assert tile(8, wide, 4096, 4, False, big) == 12 and tile(17, wide, 4096, 4, False, big) == 6
    assert tile(16, wide, 4096, 8, False, big) == (15 if wide < 64 * sms else 4)
    assert tile(16, 16 * 8 * sms, 4096, 8, False, big) == 4  # the widest 8-bit layers keep tile 4
    assert tile(16, wide, 4096, 4, False, small) == (4 if wide >= 128 * sms else 5)
    assert tile(16, wide - 16, 4096, 4, False, small) == 5
    assert tile(16, wide, 4096, 4, False) in (15, tile(16, wide, 4096, 4, False, small))  # this device's own limit
    with pytest.raises(RuntimeError, match="bits must be 4 or 8"):
        tile(16, wide, 4096, 3, False)
    with pytest.raises(RuntimeError, match="k % 64 == 0"):
        tile(16, wide, 4100, 4, False)
    # The wide layer at 16 rows, through the automatic tile and forced through its fallback.
    k, n = 1024, wide
    layer = _layer(k, n, QuantConfig(bits=4, group_size=128, sym=True), torch.float16, seed=n)
    st = layer._prepared["cuda"]
    portable = _portable(layer)
    x = torch.randn(16, k, device="cuda", dtype=torch.float16)
    ref = _ref(portable, x, 4)
    for forced in (-1, tile(16, n, k, 4, False, small)):
        out = torch.ops.quantkernels.cuda_wxa16_gemm(x, st.qweight, st.scales[x.dtype], st.zeros[x.dtype], st.kgroup,
                                                     st.group_size, st.bias[x.dtype], 4, None, forced)
        assert _rel(out, ref) < BOUND[torch.float16], f"tile {forced}"


@needs_gpu
@pytest.mark.parametrize(
    "bits,group_size,sym,k,n",
    [(4, 128, True, 8192, 16384), (4, 64, False, 16384, 8192), (8, -1, True, 4096, 8192), (8, 128, False, 8192, 16384)],
)
def test_streamk_layers_through_quantlinear(bits, group_size, sym, k, n):
    """Layers large enough for the automatic stream-K tile with staged activations (auto_tile: m = 1 from
    2^27 weights for 4 bits, 2^25 for 8; 8-bit layers up to 8 rows from 2^27), through QuantLinear with
    the workspace the backend sizes per layer (one row for 4 bits, 8 for 8). Rows 2-8 on a 4-bit layer
    take the plain tiles, whose workspace is then too small for stream-K. The workspace is left zeroed."""
    layer = _layer(k, n, QuantConfig(bits=bits, group_size=group_size, sym=sym), torch.float16, seed=k + n)
    layer.backend = "cuda"
    st = layer._prepared["cuda"]
    assert st.workspace is not None and st.workspace.numel() == cuda_backend.workspace_floats(1 if bits == 4 else 8, n)
    portable = _portable(layer)
    for m in (1, 2, 5, 8):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        ref = _ref(portable, x, bits)
        for _ in range(2):  # the second launch relies on the first having zeroed the workspace
            err = _rel(_poisoned_forward(layer, x), ref)
            assert err < BOUND[torch.float16], f"m={m}: {err:.2e}"
        assert not st.workspace.any(), f"m={m}: the workspace must be all zeros after a launch"


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,group_size,sym", [(4, 128, True), (4, 32, False), (8, -1, True), (8, 64, False)])
@pytest.mark.parametrize("k,n", [(384, 144), (1152, 208)])
def test_dequantize_is_exact(bits, group_size, sym, dtype, k, n):
    """K = 384 and 1152 end in a partial 256-column warp tile (the kernel's unit), 4-bit and 8-bit."""
    layer = _layer(k, n, QuantConfig(bits=bits, group_size=group_size, sym=sym), dtype, bias=False)
    portable = _portable(layer)
    state = layer._prepared["cuda"]
    poison = torch.full((n, k), float("nan"), dtype=dtype, device="cuda")
    del poison
    w = torch.ops.quantkernels.cuda_wxa16_dequantize(
        state.qweight, state.scales[dtype], state.zeros[dtype], None, state.group_size, bits
    )
    ref = reference.dequantize(portable["qweight"], portable["qzeros"], portable["scales"], portable["g_idx"], bits, dtype)
    assert torch.equal(w, ref)
    assert torch.equal(layer.dequantize(dtype), ref)


@needs_gpu
@pytest.mark.parametrize("bits", [4, 8])
def test_to_portable_roundtrip(bits):
    lin = torch.nn.Linear(256, 64).half()
    cpu_layer = QuantLinear.from_linear(lin.float(), QuantConfig(bits=bits, group_size=64, sym=False))
    gpu_layer = QuantLinear.from_linear(lin.float(), QuantConfig(bits=bits, group_size=64, sym=False)).to("cuda")
    gpu_layer.backend = "cuda"
    gpu_layer(torch.randn(2, 256, device="cuda", dtype=torch.float16))
    assert gpu_layer.qweight.numel() == 0  # the shuffled copy replaced it
    sd = gpu_layer.state_dict()
    cpu_sd = cpu_layer.state_dict()  # portable, whatever the cpu backend did with its qweight
    for name in ("qweight", "qzeros", "scales", "g_idx", "bias"):
        assert torch.equal(sd[name].cpu(), cpu_sd[name]), name
    back = gpu_layer.to("cpu")
    assert torch.equal(back.state_dict()["qweight"], cpu_sd["qweight"])


@needs_gpu
def test_noncontiguous_and_3d_input():
    layer = _layer(256, 64, QuantConfig(bits=4, group_size=64), torch.float16)
    portable = _portable(layer)
    big = torch.randn(5, 512, device="cuda", dtype=torch.float16)
    x = big[:, ::2]  # column stride 2
    out = torch.ops.quantkernels.cuda_wxa16_gemm(
        x, layer._prepared["cuda"].qweight, layer._prepared["cuda"].scales[torch.float16], None, None, 64,
        layer._prepared["cuda"].bias[torch.float16], 4,
    )
    assert _rel(out, _ref(portable, x, 4)) < BOUND[torch.float16]
    x3 = torch.randn(2, 3, 256, device="cuda", dtype=torch.float16)
    out3 = layer(x3)
    assert out3.shape == (2, 3, 64)
    assert _rel(out3.reshape(6, 64), _ref(portable, x3.reshape(6, 256), 4)) < BOUND[torch.float16]
    assert layer(torch.empty(0, 256, device="cuda", dtype=torch.float16)).shape == (0, 64)
    st = layer._prepared["cuda"]
    empty = torch.ops.quantkernels.cuda_wxa16_gemm(
        torch.empty(0, 256, device="cuda", dtype=torch.float16), st.qweight, st.scales[torch.float16], None, None,
        64, None, 4,
    )
    assert empty.shape == (0, 64)


_BAD_ARGS_SCRIPT = r"""
import torch, re
from quantkernels import QuantConfig
from quantkernels.nn import QuantLinear
layer = QuantLinear.from_linear(torch.nn.Linear(256, 64), QuantConfig(bits=4, group_size=64)).to("cuda")
st = layer._prepared["cuda"]
x = torch.randn(3, 256, device="cuda", dtype=torch.float16)
s16 = st.scales[torch.float16]
op = torch.ops.quantkernels.cuda_wxa16_gemm
cases = [
    ("x must be float16 or bfloat16", (x.float(), st.qweight, s16, None, None, 64, None, 4)),
    (r"x must be \[M, K=256\]", (x[:, :128], st.qweight, s16, None, None, 64, None, 4)),
    ("same dtype", (x, st.qweight, st.scales[torch.bfloat16], None, None, 64, None, 4)),
    ("qweight must be a contiguous int32", (x, st.qweight.view(-1), s16, None, None, 64, None, 4)),
    ("group_size must be", (x, st.qweight, s16, None, None, 48, None, 4)),
    ("bits must be 4 or 8", (x, st.qweight, s16, None, None, 64, None, 3)),
    ("bias must be", (x, st.qweight, s16, None, None, 64, torch.zeros(5, device="cuda"), 4)),
    ("x must be a CUDA tensor", (x.cpu(), st.qweight, s16, None, None, 64, None, 4)),
    ("tile must be", (x, st.qweight, s16, None, None, 64, None, 4, None, 99)),
]
for pattern, args in cases:
    try:
        op(*args)
    except RuntimeError as e:
        assert re.search(pattern, str(e)), (pattern, str(e))
        print("raised:", pattern, flush=True)
    else:
        raise AssertionError("no error for " + pattern)
print("ALL OK")
"""


@needs_gpu
def test_bad_arguments_name_the_argument():
    # In a child process: on the GPU box (torch 2.11) a C++ exception from the extension has
    # crashed the process at the next call, which must not take the rest of the suite with it.
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _BAD_ARGS_SCRIPT], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "ALL OK" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr[-2000:])


@needs_gpu
def test_cuda_graph_capture():
    layer = _layer(512, 128, QuantConfig(bits=4, group_size=128), torch.float16)
    portable = _portable(layer)
    for m in (1, 33, 300):  # the fused kernel and the dequantize + cuBLAS path
        x = torch.randn(m, 512, device="cuda", dtype=torch.float16)
        layer(x)  # warm-up outside the graph (cuBLAS handles, lazy init)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(x)
        x.copy_(torch.randn_like(x))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert _rel(out, _ref(portable, x, 4)) < BOUND[torch.float16]


# Programmatic dependent launch (csrc/cuda/wxa16_common.cuh): on sm_90 each kernel may start while
# the previous one on the stream finishes, so its wait must come before every read of the previous
# kernel's output. A chain of layers, each reading the output of the one before it (queued back to
# back, eagerly and in a CUDA graph), catches a wait in the wrong place: a layer would read an
# activation not yet written. Every kernel kind is on the chain: the small-m tiles (m <= 16), the
# 8-bit stream-K tiles (tall layer, m <= 8), the wgmma GEMM and its activation pre-pass (8192 ->
# 4224 at 33 <= m <= 64), the middle-m / plain tiles, and dequantize + cuBLAS (m = 300).
_CHAIN = (  # (K, N, bits, group_size, sym)
    (2048, 8192, 4, 128, True),
    (8192, 4224, 8, -1, True),
    (4224, 1024, 4, 128, False),
    (1024, 2048, 4, 32, True),
)


def _chain_layers():
    layers = []
    for k, n, bits, gs, sym in _CHAIN:
        layer = _layer(k, n, QuantConfig(bits=bits, group_size=gs, sym=sym), torch.float16)
        layer.backend = "cuda"
        layers.append((layer, _portable(layer), bits))
    return layers


def _check_chain(layers, x, outs):
    inp = x
    for i, ((layer, portable, bits), out) in enumerate(zip(layers, outs)):
        err = _rel(out, _ref(portable, inp, bits))
        assert err < BOUND[torch.float16], f"layer {i} ({_CHAIN[i]}), m={x.shape[0]}: rel err {err:.2e}"
        inp = out


@needs_gpu
@pytest.mark.parametrize("m", [1, 5, 16, 48, 100, 300])
def test_dependent_chain(m):
    layers = _chain_layers()
    x = torch.randn(m, _CHAIN[0][0], device="cuda", dtype=torch.float16)

    def run(inp):
        outs = []
        for layer, _, _ in layers:
            inp = layer(inp)
            outs.append(inp)
        return outs

    torch.cuda.synchronize()
    outs = run(x)  # queued back to back, no sync in between
    torch.cuda.synchronize()
    assert all(layer._last_backend == "cuda" for layer, _, _ in layers)
    _check_chain(layers, x, outs)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = run(x)
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        for o in outs:
            o.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        _check_chain(layers, x, outs)


@needs_gpu
def test_dependent_chain_without_pdl():
    """QUANTKERNELS_CUDA_PDL=0 launches every kernel plainly: the chain is right that way too."""
    import os
    import subprocess
    import sys

    if os.environ.get("QUANTKERNELS_CUDA_PDL") == "0":
        pytest.skip("already the PDL-off run (this test's child)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, QUANTKERNELS_CUDA_PDL="0", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__), "-k", "test_dependent_chain and not without"],
        capture_output=True, text=True, env=env, cwd=root,
    )
    assert proc.returncode == 0 and "6 passed" in proc.stdout, (proc.returncode, proc.stdout[-3000:], proc.stderr[-2000:])


@needs_gpu
def test_opcheck():
    layer = _layer(256, 64, QuantConfig(bits=4, group_size=64, sym=False), torch.float16)
    st = layer._prepared["cuda"]
    x = torch.randn(5, 256, device="cuda", dtype=torch.float16)
    torch.library.opcheck(
        torch.ops.quantkernels.cuda_wxa16_gemm.default,
        (x, st.qweight, st.scales[x.dtype], st.zeros[x.dtype], None, 64, st.bias[x.dtype], 4),
    )
    torch.library.opcheck(
        torch.ops.quantkernels.cuda_wxa16_dequantize.default,
        (st.qweight, st.scales[x.dtype], st.zeros[x.dtype], None, 64, 4),
    )


@needs_gpu
def test_unsupported_grouping_falls_back_to_reference():
    k, n = 64, 32
    g_idx = torch.tensor([0] * 24 + [1] * 40, dtype=torch.int32)  # group sizes 24 and 40
    layer = _layer(k, n, QuantConfig(bits=4, group_size=32, act_order=True), torch.float16, g_idx=g_idx.cuda())
    x = torch.randn(3, k, device="cuda", dtype=torch.float16)
    # The reason is asked first: a backend that serves the layer afterwards with a layout that
    # replaces qweight (triton's) drops the other backends' prepared states.
    layer._prepare("cuda")
    assert "multiple of 16" in cuda_backend.BACKEND.supports(layer, x)
    out = layer(x)
    assert layer._last_backend != "cuda"
    assert _rel(out, _ref(_portable(layer), x, 4)) < BOUND[torch.float16]
