"""The CPU backend (quantkernels/backends/cpu.py, csrc/cpu/qlinear*.cpp) against the reference.

Every instruction-set path this machine can run is called explicitly (the ops take an ``isa``
argument), so one process covers scalar, AVX2, AVX-512... Paths the CPU cannot run are skipped
with the reason; NEON is covered by ci/neon_test.sh under qemu.

Error bounds, as ``||out - ref|| / ||ref||`` on fresh random data:

* float activations: both sides accumulate K products in fp32, in different orders, and the kernel
  applies the zero point once per group (s * (sum x q - z sum x)) where the reference does it per
  weight. Random-walk rounding gives ~eps32 * sqrt(K) relative error on each side; the bound
  ``FLOAT_BOUND(K) = 1e-6 * sqrt(K)`` (about 16 eps32 sqrt(K), 9e-5 at K = 8192) leaves room for
  the zero-point cancellation while any indexing or layout bug gives an error of order 1.
* int8 activations: compared with the reference applied to the *same* quantized activations
  (reference.quantize_activations_int8), so only fp32 rounding remains: the same bound. The
  integer dot products themselves are exact.
* bf16 activations: the output is rounded to bf16 on both sides; a tie broken the other way
  changes an element by one bf16 ulp (2^-8 relative), so the bound is 2^-7.
"""

from __future__ import annotations

import copy
import functools
import io
import math
import sys

import pytest
import torch

import quantkernels
from quantkernels import QuantConfig, _ext, reference
from quantkernels.backends import cpu as cpu_backend
from quantkernels.nn import QuantLinear

pytestmark = pytest.mark.skipif(_ext.extension() is None, reason=f"needs quantkernels._C: {_ext.unavailable_reason()}")

ALL_ISAS = ("scalar", "avx2", "avx_vnni", "avx512", "avx512_vnni", "neon", "i8mm")
MS = (1, 2, 3, 5, 17, 64, 129)


def FLOAT_BOUND(k: int) -> float:
    return 1e-6 * math.sqrt(k)


BF16_BOUND = 2.0**-7


def isa_param(isa):
    ok = _ext.extension() is not None and torch.ops.quantkernels.cpu_isa_supported(isa)
    return pytest.param(isa, marks=pytest.mark.skipif(not ok, reason=f"this CPU/OS cannot run the {isa} path"))


ISAS = [isa_param(i) for i in ALL_ISAS]

FLOAT_FORMATS = [
    QuantConfig(4, 32, sym=True),
    QuantConfig(4, 64, sym=False, scale_dtype=torch.bfloat16),
    QuantConfig(4, 128, sym=True),
    QuantConfig(4, 128, sym=False, scale_dtype=torch.float32),
    QuantConfig(4, -1, sym=False),
    QuantConfig(8, -1, sym=True),
    QuantConfig(8, 64, sym=False),
]
INT8_FORMATS = [
    QuantConfig(4, 128, sym=True, act_bits=8),
    QuantConfig(4, 32, sym=False, act_bits=8, act_group_size=32),
    # the AVX2 short-segment W4A8 kernel counts segments per group: 2 blocks per segment and group
    # here, 4 one-block segments per group below, then all of K's one-block segments in one group
    QuantConfig(4, 64, sym=False, act_bits=8),
    QuantConfig(4, 128, sym=False, act_bits=8, act_group_size=32),
    QuantConfig(4, -1, sym=False, act_bits=8, act_group_size=32),
    QuantConfig(4, -1, sym=False, act_bits=8),
    QuantConfig(8, -1, sym=True, act_bits=8),
    QuantConfig(8, 64, sym=False, act_bits=8),
    QuantConfig(8, -1, sym=True, act_bits=8, act_group_size=32),
]
# (K, N): N = 72 / 136 are not multiples of 16 (two tiles), K = 264 is not a multiple of 32 (the
# int8-activation block; per-channel formats only).
SHAPES = [(256, 72), (384, 136)]


def _id(cfg):
    return cfg.describe().replace(" ", "-") + ("-as32" if cfg.act_group_size == 32 else "")


@functools.lru_cache(maxsize=None)
def make_layer(cfg: QuantConfig, k: int, n: int, seed: int = 0, act_order: bool = False):
    """A QuantLinear on fresh random codes/scales/zeros, and its portable tensors (kept aside)."""
    gen = torch.Generator().manual_seed(seed * 7919 + k * 31 + n)
    g = cfg.num_groups(k)
    codes = torch.randint(0, cfg.maxq + 1, (n, k), dtype=torch.uint8, generator=gen)
    scales = (torch.rand(g, n, generator=gen) * 0.02 + 0.001).to(cfg.scale_dtype)
    if cfg.sym:
        zeros = torch.full((g, n), 1 << (cfg.bits - 1), dtype=torch.int32)
    else:
        zeros = torch.randint(0, cfg.maxq + 1, (g, n), dtype=torch.int32, generator=gen)
    g_idx = None
    if act_order:
        g_idx = reference_gidx = torch.arange(k, dtype=torch.int32) // cfg.effective_group_size(k)
        g_idx = reference_gidx[torch.randperm(k, generator=gen)].contiguous()
    bias = torch.randn(n, generator=gen).to(cfg.scale_dtype)
    portable = {
        "qweight": reference.pack(codes.t().contiguous(), cfg.bits, 0),
        "qzeros": reference.pack(zeros, cfg.bits, 1),
        "scales": scales,
        "g_idx": g_idx if g_idx is not None else quantkernels.formats.trivial_g_idx(k, cfg.group_size),
        "bias": bias,
    }
    layer = QuantLinear.from_codes(codes, scales, zeros, cfg, g_idx=g_idx, bias=bias)
    return layer, portable


def ref_out(cfg, portable, x):
    if cfg.act_bits is not None:
        xq, xs = reference.quantize_activations_int8(x, cfg.act_group_size)
        x = reference.dequantize_activations_int8(xq, xs)
    p = portable
    return reference.linear(x.float(), p["qweight"], p["qzeros"], p["scales"], p["g_idx"], p["bias"], cfg.bits)


def call_op(layer, x, isa):
    st = layer._prepared["cpu"]
    cfg = layer.config
    if st.perm is not None:
        x = x.index_select(1, st.perm)
    if cfg.act_bits is not None:
        return torch.ops.quantkernels.cpu_linear_int8(
            x, st.w, st.scales, st.zeros, st.zero_point, st.bias, cfg.bits, cfg.act_group_size, isa
        )
    return torch.ops.quantkernels.cpu_linear_float(x, st.w, st.scales, st.zeros, st.zero_point, st.bias, cfg.bits, isa)


def rel_err(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def check(layer, portable, x, isa):
    k = x.shape[1]
    out = call_op(layer, x, isa)
    ref = ref_out(layer.config, portable, x)
    err = rel_err(out, ref)
    assert err <= FLOAT_BOUND(k), f"{isa} {layer.config.describe()} M={x.shape[0]} K={k}: rel err {err:.3g}"


# ---- every ISA x format x shape ---------------------------------------------------------------
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cfg", FLOAT_FORMATS + INT8_FORMATS, ids=_id)
@pytest.mark.parametrize("k,n", SHAPES)
def test_kernel_matches_reference(isa, cfg, k, n):
    layer, portable = make_layer(cfg, k, n)
    assert layer._last_backend is None and "cpu" in layer._prepared
    gen = torch.Generator().manual_seed(k + n)
    for m in MS:
        check(layer, portable, torch.randn(m, k, generator=gen), isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cfg", [QuantConfig(4, -1, sym=False), QuantConfig(4, -1, act_bits=8), QuantConfig(8, -1, act_bits=8)], ids=_id)
def test_k_not_multiple_of_32(isa, cfg):
    layer, portable = make_layer(cfg, 264, 24)
    for m in (1, 3, 17):
        check(layer, portable, torch.randn(m, 264), isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cfg", [QuantConfig(4, 128, act_bits=8), QuantConfig(8, -1, act_bits=8, act_group_size=32)], ids=_id)
def test_int8_activation_ties_round_half_even(isa, cfg):
    # Every activation a multiple of 0.5 and every row's (and 32-block's) amax 127, so scale = 1
    # and x / scale lands on .5 ties: a tie rounded away from even changes one xq by 1, an output
    # change of ~1/K of its size, far above the fp32 bound that check() applies.
    k = 256
    layer, portable = make_layer(cfg, k, 72)
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(-254, 255, (17, k), generator=gen).float() / 2
    x[:, ::32] = 127.0
    check(layer, portable, x, isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cfg", [QuantConfig(4, 128), QuantConfig(4, -1, sym=False), QuantConfig(4, 128, act_bits=8), QuantConfig(8, -1, act_bits=8)], ids=_id)
def test_long_k_accumulation(isa, cfg):
    layer, portable = make_layer(cfg, 8192, 16)
    check(layer, portable, torch.randn(3, 8192, generator=torch.Generator().manual_seed(1)), isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cfg", [QuantConfig(4, 64, sym=False), QuantConfig(4, 128, sym=False, act_bits=8), QuantConfig(8, -1, sym=False, act_bits=8), QuantConfig(8, 64, sym=False)], ids=_id)
def test_one_zero_point_for_all_is_passed_as_a_value(isa, cfg):
    # Where every zero point is the same number the state keeps no zero-point tensor and the kernels
    # take the value (zeros=None, zero_point): here an asymmetric format whose zero points all happen
    # to be 3 (or 200 for 8 bits: z' = 72 on the int8 x int8 path), not the symmetric midpoint.
    k, n = 1024, 72
    g = cfg.num_groups(k)
    codes = torch.randint(0, cfg.maxq + 1, (n, k), dtype=torch.uint8)
    scales = (torch.rand(g, n) * 0.02 + 0.001).to(cfg.scale_dtype)
    z = 3 if cfg.bits == 4 else 200
    zeros = torch.full((g, n), z, dtype=torch.int32)
    layer = QuantLinear.from_codes(codes, scales, zeros, cfg)
    st = layer._prepared["cpu"]
    assert st.zeros is None and st.zero_point == (z - 128 if cfg.bits == 8 and cfg.act_bits else z)
    portable = {"qweight": reference.pack(codes.t().contiguous(), cfg.bits, 0), "qzeros": reference.pack(zeros, cfg.bits, 1),
                "scales": scales, "g_idx": quantkernels.formats.trivial_g_idx(k, cfg.group_size), "bias": None}
    for m in (1, 5):  # the GEMV and the register tiles
        check(layer, portable, torch.randn(m, k), isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("log2_scale", [-110, -90, -20, 0, 40, 95])
def test_gemv_activation_range(isa, log2_scale):
    # The AVX2 int4 GEMV (m = 1) multiplies codes read as denormal bit patterns by activations
    # rescaled by a power of two chosen from max|x|; outside max|x| in 2^-100 .. 2^90 it hands over
    # to the converting kernel. Both sides of both cutoffs, at K = 8192, N = 72 (two 4-tile passes
    # and a single tile): power-of-two scaling is exact, so the fp32 bound holds unchanged.
    layer, portable = make_layer(QuantConfig(4, 128, sym=False), 8192, 72)
    portable = dict(portable, bias=None)  # a bias would dominate the tiny outputs
    st = layer._prepared["cpu"]
    x = torch.randn(1, 8192, generator=torch.Generator().manual_seed(5)) * 2.0**log2_scale
    out = torch.ops.quantkernels.cpu_linear_float(x, st.w, st.scales, st.zeros, st.zero_point, None, 4, isa)
    out = out * 2.0**-log2_scale  # exact; the norms of the unscaled outputs overflow
    ref = ref_out(layer.config, portable, x) * 2.0**-log2_scale
    assert rel_err(out, ref) <= FLOAT_BOUND(8192)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_gemv_non_finite_activation(isa, bad):
    # A NaN or inf activation sends the AVX2 GEMV to the converting kernel: the same NaN/inf
    # outputs as the scalar kernel (which applies the zero point per group as well).
    layer, _ = make_layer(QuantConfig(4, 128, sym=False), 8192, 72)
    x = torch.randn(1, 8192, generator=torch.Generator().manual_seed(7))
    x[0, 77] = bad
    out, ref = call_op(layer, x, isa), call_op(layer, x, "scalar")
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf()) and out.isnan().any()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cfg", [QuantConfig(4, -1, sym=False), QuantConfig(4, 32)], ids=_id)
@pytest.mark.parametrize("threads", [1, 2])
def test_gemv_passes(isa, cfg, threads):
    # The AVX2 GEMV runs 4-tile passes whose last 64 word rows prefetch the next pass's tiles, so a
    # group that straddles that row runs as two calls of the assembly loop with one set of
    # accumulators. K = 1056 (132 word rows: the turn at row 68, inside the one per-channel group,
    # on a group edge for g32), N = 456 (57 tiles: on one thread 14 passes and a single tile; on two,
    # chunks of 8 and 4 tiles handed out by parallel_over_tiles, so passes with and without a next one).
    layer, portable = make_layer(cfg, 1056, 456)
    x = torch.randn(1, 1056, generator=torch.Generator().manual_seed(8))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check(layer, portable, x, isa)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cfg", [QuantConfig(4, 128), QuantConfig(4, 32, sym=False), QuantConfig(4, -1, sym=False),
                                 QuantConfig(8, 64, sym=False)], ids=_id)
def test_fp16_params_equal_fp32_params(isa, cfg):
    # Float-activation layers with fp16 scales keep their tile-major scales and zero points as fp16;
    # the kernels widen them exactly, so the output must equal, bit for bit, that of the same layer
    # with the values held as fp32 (GEMV, the 2 x 6 tile and the row tiles: m = 1, 3, 6, 17; K x N
    # = 1152 x 456 gives GEMV passes with and without a next pass).
    layer, _ = make_layer(cfg, 1152, 456)
    st = layer._prepared["cpu"]
    assert st.scales.dtype == torch.float16 and (st.zeros is None or st.zeros.dtype == torch.float16)
    op = torch.ops.quantkernels.cpu_linear_float
    z32 = None if st.zeros is None else st.zeros.float()
    gen = torch.Generator().manual_seed(11)
    for m in (1, 3, 6, 17):
        x = torch.randn(m, 1152, generator=gen)
        out16 = op(x, st.w, st.scales, st.zeros, st.zero_point, st.bias, cfg.bits, isa)
        out32 = op(x, st.w, st.scales.float(), z32, st.zero_point, st.bias, cfg.bits, isa)
        assert torch.equal(out16, out32), f"{isa} m={m}: max diff {(out16 - out32).abs().max().item():.3g}"


@pytest.mark.parametrize("cfg", [QuantConfig(4, 64, scale_dtype=torch.bfloat16), QuantConfig(4, 64, scale_dtype=torch.float32),
                                 QuantConfig(4, 64, sym=False, act_bits=8)], ids=_id)
def test_params_stay_fp32_unless_exact_and_float(cfg):
    # bf16 scales do not fit fp16 (range), fp32 ones would be rounded, and the int8-activation kernels
    # read fp32 (their zero points are shifted): all keep fp32 tile-major parameters.
    layer, _ = make_layer(cfg, 256, 72)
    st = layer._prepared["cpu"]
    assert st.scales.dtype == torch.float32 and (st.zeros is None or st.zeros.dtype == torch.float32)


def test_param_dtype_errors():
    layer, _ = make_layer(QuantConfig(4, 64, sym=False), 256, 72)
    st = layer._prepared["cpu"]
    x = torch.randn(2, 256)
    with pytest.raises(RuntimeError, match="zeros must be None or contiguous with the dtype and shape of scales"):
        torch.ops.quantkernels.cpu_linear_float(x, st.w, st.scales, st.zeros.float(), 0.0, st.bias, 4)
    with pytest.raises(RuntimeError, match="scales must be contiguous float32 or float16"):
        torch.ops.quantkernels.cpu_linear_float(x, st.w, st.scales.double(), None, 8.0, st.bias, 4)
    layer8, _ = make_layer(QuantConfig(4, 64, sym=False, act_bits=8), 256, 72)
    s8 = layer8._prepared["cpu"]
    with pytest.raises(RuntimeError, match="scales must be contiguous float32 tile-major"):
        torch.ops.quantkernels.cpu_linear_int8(x, s8.w, s8.scales.half(), None, 8.0, None, 4, -1)


@pytest.mark.parametrize("isa", ISAS)
def test_gemv_k_zero(isa):
    # An empty reduction gives zeros (the AVX2 GEMV's assembly loop must not run on zero rows).
    op = torch.ops.quantkernels.cpu_linear_float
    out = op(torch.randn(1, 0), torch.empty(0, dtype=torch.int32), torch.ones(9, 1, 8), torch.zeros(9, 1, 8), 0.0, None, 4, isa)
    assert out.shape == (1, 72) and not out.any()


@pytest.mark.parametrize("isa", ISAS)
def test_gemv_with_denormals_flushed(isa):
    # torch.set_flush_denormal sets MXCSR.DAZ, which would read the GEMV's denormal-coded weights
    # as zeros: the kernel must see it and use the converting path (one thread: the flag is per thread).
    layer, portable = make_layer(QuantConfig(4, 64, sym=False), 1024, 72)
    x = torch.randn(1, 1024, generator=torch.Generator().manual_seed(6))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU cannot flush denormals")
        check(layer, portable, x, isa)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(old)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cfg", [QuantConfig(4, 64, sym=False), QuantConfig(8, -1, act_bits=8)], ids=_id)
def test_non_contiguous_and_strided_inputs(isa, cfg):
    layer, portable = make_layer(cfg, 256, 72)
    big = torch.randn(9, 256 + 40)
    for x in (big[:, 8:264], big.t().contiguous().t()[:, :256], big[::2, :256]):
        assert not x.is_contiguous()
        check(layer, portable, x, isa)


@pytest.mark.parametrize("isa", ISAS)
def test_m_zero(isa):
    layer, _ = make_layer(QuantConfig(4, 128), 256, 72)
    assert call_op(layer, torch.empty(0, 256), isa).shape == (0, 72)
    layer8, _ = make_layer(QuantConfig(4, 128, act_bits=8), 256, 72)
    assert call_op(layer8, torch.empty(0, 256), isa).shape == (0, 72)


@pytest.mark.parametrize("m", [1, 17])
@pytest.mark.parametrize("n", [136, 1600])
def test_thread_count_does_not_change_results(m, n):
    # N = 1600 (200 tiles) gives the threads different chunk sizes for 1 and 2 threads; the chunks
    # stay multiples of 4 tiles so the kernels' 4-tile passes cover the same tiles either way.
    layer, _ = make_layer(QuantConfig(4, 128), 384, n)
    x = torch.randn(m, 384)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = call_op(layer, x, "")
        torch.set_num_threads(2)
        two = call_op(layer, x, "")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)  # tiles are computed identically whichever thread runs them


@pytest.mark.skipif(not (torch._C.has_openmp and sys.platform.startswith("linux")), reason="torch without OpenMP")
def test_extension_is_built_with_openmp():
    # Without -fopenmp in the extension's own build, at::parallel_for is a serial loop and the CPU
    # kernels ignore torch.get_num_threads() (it happened: every "2 threads" timing ran on one).
    assert _ext.require().build_info()["openmp"] is True


# ---- QuantLinear through the registry ----------------------------------------------------------
@pytest.mark.parametrize("cfg", [QuantConfig(4, 128), QuantConfig(4, 32, sym=False, act_bits=8), QuantConfig(8, -1)], ids=_id)
def test_quantlinear_uses_cpu_backend_fp32_bf16(cfg):
    layer, portable = make_layer(cfg, 256, 72, seed=3)
    x = torch.randn(2, 5, 256)
    out = layer(x)
    assert layer._last_backend == "cpu"
    assert rel_err(out.reshape(10, 72), ref_out(cfg, portable, x.reshape(10, 256))) <= FLOAT_BOUND(256)
    xb = x.to(torch.bfloat16)
    outb = layer(xb)
    assert outb.dtype == torch.bfloat16
    refb = ref_out(cfg, portable, xb.reshape(10, 256)).to(torch.bfloat16)
    assert rel_err(outb.reshape(10, 72), refb) <= BF16_BOUND


@pytest.mark.parametrize("cfg", [QuantConfig(4, 64, sym=False, act_order=True), QuantConfig(4, 128, act_order=True, act_bits=8), QuantConfig(8, 64, act_order=True)], ids=_id)
def test_act_order_permutation(cfg):
    layer, portable = make_layer(cfg, 256, 72, seed=5, act_order=True)
    assert layer._prepared["cpu"].perm is not None
    x = torch.randn(7, 256)
    assert rel_err(layer(x), ref_out(cfg, portable, x)) <= FLOAT_BOUND(256)
    assert layer._last_backend == "cpu"
    assert torch.equal(layer.portable_tensors()["qweight"], portable["qweight"])


@pytest.mark.parametrize("cfg", FLOAT_FORMATS[:1] + INT8_FORMATS[:1] + INT8_FORMATS[3:4], ids=_id)
def test_repacked_layout_replaces_qweight_and_round_trips(cfg):
    layer, portable = make_layer(cfg, 264 if cfg.group_size == -1 else 256, 72, seed=9)
    assert layer.qweight.numel() == 0, "the portable qweight must not be kept next to the repacked one"
    st = layer._prepared["cpu"]  # scales tile-major: (t, g, i) is portable [g, 8t + i]
    g = portable["scales"].shape[0]
    assert st.scales.shape == (9, g, 8) and st.scales.is_contiguous()
    assert torch.equal(st.scales, portable["scales"].float().view(g, 9, 8).permute(1, 0, 2))
    zeros = reference.unpack(portable["qzeros"], cfg.bits, 1).float() - (128 if cfg.bits == 8 and cfg.act_bits else 0)
    if cfg.sym:  # one zero point for all: no tensor, the value instead
        assert st.zeros is None and st.zero_point == zeros[0, 0] and (zeros == zeros[0, 0]).all()
    else:
        assert torch.equal(st.zeros, zeros.view(g, 9, 8).permute(1, 0, 2))
    sd = layer.state_dict()
    for name in ("qweight", "qzeros", "scales", "g_idx"):
        assert torch.equal(sd[name], portable[name]), name
    assert torch.equal(layer.dequantize(torch.float32), reference.dequantize(
        portable["qweight"], portable["qzeros"], portable["scales"], portable["g_idx"], cfg.bits))
    buf = io.BytesIO()
    torch.save(sd, buf)
    fresh = QuantLinear(layer.in_features, 72, cfg, bias=True, dtype=cfg.scale_dtype)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    x = torch.randn(3, layer.in_features)
    assert torch.equal(fresh(x), layer(x))
    moved = layer.to(torch.float32)  # _apply: back to portable, then repacked again
    assert "cpu" in moved._prepared and torch.equal(moved(x), layer(x))


def _thp_mode(name="enabled"):
    """Linux's transparent-huge-page setting (enabled: "always", "madvise", "never"; defrag: ...),
    or None elsewhere."""
    try:
        text = open(f"/sys/kernel/mm/transparent_hugepage/{name}").read()
    except OSError:
        return None
    return text[text.index("[") + 1 : text.index("]")]


def _thp_faults_in_advised_ranges():
    """Whether a first write to an MADV_HUGEPAGE range gets a huge page right away: THP enabled for
    it, and the kernel allowed to compact memory synchronously for such ranges when it must."""
    return _thp_mode() in ("always", "madvise") and _thp_mode("defrag") in ("always", "defer+madvise", "madvise")


def _anon_huge_kb(ptr):
    """AnonHugePages (kB) of the mapping that starts at address ptr, from /proc/self/smaps."""
    found = False
    for line in open("/proc/self/smaps"):
        first = line.split()[0]
        if "-" in first and not first.endswith(":"):
            found = int(first.split("-")[0], 16) == ptr
        elif found and first == "AnonHugePages:":
            return int(line.split()[1])
    return None


# Repacked weights of >= 2 MiB (cpu.HUGE_PAGE_MIN_BYTES): 4-bit 2048 x 2056 is 2.1 MB (257 tiles,
# an odd count); 8-bit 4.2 MB.
@pytest.mark.parametrize("cfg", [QuantConfig(4, 128), QuantConfig(4, 128, act_bits=8), QuantConfig(8, -1, act_bits=8)], ids=_id)
def test_repacked_weight_on_huge_pages(cfg):
    layer, portable = make_layer(cfg, 2048, 2056, seed=11)
    w = layer._prepared["cpu"].w
    assert w.numel() * w.element_size() >= cpu_backend.HUGE_PAGE_MIN_BYTES
    assert w.is_contiguous() and w.data_ptr() % (2 << 20) == 0, "the buffer must start on a 2 MiB boundary"
    if _thp_faults_in_advised_ranges():
        # the repack wrote the pages after madvise(MADV_HUGEPAGE): the kernel gave huge pages
        assert (_anon_huge_kb(w.data_ptr()) or 0) >= 2048, "no huge page backs the repacked weight"
    for m in (1, 3):
        check(layer, portable, torch.randn(m, 2048), "")  # same results as on ordinary memory
    # A proper tensor: the state dict, save/load, deepcopy and .to() see the portable weight.
    assert torch.equal(layer.state_dict()["qweight"], portable["qweight"])
    buf = io.BytesIO()
    torch.save({"w": w, "sd": layer.state_dict()}, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()))
    assert torch.equal(loaded["w"], w) and torch.equal(loaded["sd"]["qweight"], portable["qweight"])
    x = torch.randn(2, 2048)
    assert torch.equal(copy.deepcopy(layer)(x), layer(x))
    moved = layer.to(torch.float32)  # back to portable, then repacked again into a fresh buffer
    assert torch.equal(moved(x), layer(x)) and moved._prepared["cpu"].w.data_ptr() % (2 << 20) == 0


def test_huge_page_buffer_op():
    for nbytes in (0, 5, (2 << 20) + 4097):
        t = torch.ops.quantkernels.cpu_empty_huge_pages(nbytes)
        assert t.dtype == torch.uint8 and t.shape == (nbytes,) and t.device.type == "cpu"
        t.fill_(7)  # every byte is writable (the tail past the last 2 MiB is on small pages)
        assert int(t.sum()) == 7 * nbytes
    with pytest.raises(RuntimeError, match="nbytes must be >= 0"):
        torch.ops.quantkernels.cpu_empty_huge_pages(-1)
    # schema and fake implementation (the contents are unspecified, so no value comparisons)
    torch.library.opcheck(torch.ops.quantkernels.cpu_empty_huge_pages.default, ((2 << 20) + 5,),
                          test_utils=("test_schema", "test_faketensor"))


def test_unsupported_formats_fall_back_with_a_reason():
    layer3, portable = make_layer(QuantConfig(3, 128), 256, 64)
    x = torch.randn(2, 256)
    reason = cpu_backend.BACKEND.supports(layer3, x)
    assert reason and "3-bit" in reason
    assert rel_err(layer3(x), ref_out(layer3.config, portable, x)) <= FLOAT_BOUND(256)
    assert layer3._last_backend == "reference"
    layer16, _ = make_layer(QuantConfig(4, 16, act_bits=8), 256, 64)
    assert "multiple of 32" in cpu_backend.BACKEND.supports(layer16, x)
    # 8-bit codes pack 4 to a word, so N = 20 is a valid layer; the kernels' tiles are 8 channels
    layer20, portable20 = make_layer(QuantConfig(8, 64), 256, 20)
    assert "not a multiple of 8" in cpu_backend.BACKEND.supports(layer20, x)
    assert rel_err(layer20(x), ref_out(layer20.config, portable20, x)) <= FLOAT_BOUND(256)
    assert layer20._last_backend == "reference"


# ---- bad input: clear errors naming the argument -----------------------------------------------
def test_errors_name_the_argument():
    layer, _ = make_layer(QuantConfig(4, 128, sym=False), 256, 72)
    st = layer._prepared["cpu"]
    op = torch.ops.quantkernels.cpu_linear_float
    with pytest.raises(RuntimeError, match="x must be a 2-D float32"):
        op(torch.randn(2, 256).to(torch.float64), st.w, st.scales, st.zeros, st.zero_point, st.bias, 4)
    with pytest.raises(RuntimeError, match="w must be the contiguous int32"):
        op(torch.randn(2, 256), st.w[:3], st.scales, st.zeros, st.zero_point, st.bias, 4)
    with pytest.raises(RuntimeError, match="zeros must be"):
        op(torch.randn(2, 256), st.w, st.scales, st.zeros[:1], 0.0, st.bias, 4)
    with pytest.raises(RuntimeError, match="zero_point .* must be finite"):
        op(torch.randn(2, 256), st.w, st.scales, None, float("nan"), st.bias, 4)
    with pytest.raises(RuntimeError, match=r"scales must be contiguous float32 or float16 tile-major \[N/8, G, 8\]"):
        op(torch.randn(2, 256), st.w, st.scales.permute(1, 0, 2).reshape(-1, 72), st.zeros, st.zero_point, st.bias, 4)
    with pytest.raises(RuntimeError, match="scales must be"):
        op(torch.randn(2, 256), st.w, st.scales.transpose(0, 1), st.zeros, st.zero_point, st.bias, 4)  # not contiguous
    with pytest.raises(RuntimeError, match="bias must be"):
        op(torch.randn(2, 256), st.w, st.scales, st.zeros, st.zero_point, st.bias[:8], 4)
    with pytest.raises(RuntimeError, match="K = x.size"):
        op(torch.randn(2, 255), st.w, st.scales, st.zeros, st.zero_point, st.bias, 4)
    with pytest.raises(RuntimeError, match="unknown isa"):
        op(torch.randn(2, 256), st.w, st.scales, st.zeros, st.zero_point, st.bias, 4, "sse9")
    layer8, _ = make_layer(QuantConfig(4, 128, act_bits=8), 256, 72)
    st8 = layer8._prepared["cpu"]
    with pytest.raises(RuntimeError, match="act_group_size must be"):
        torch.ops.quantkernels.cpu_linear_int8(torch.randn(2, 256), st8.w, st8.scales, st8.zeros, st8.zero_point, None, 4, 64)
    with pytest.raises(RuntimeError, match="w must be the contiguous uint8"):
        torch.ops.quantkernels.cpu_linear_int8(torch.randn(2, 256), st8.w.view(torch.int8), st8.scales, st8.zeros, st8.zero_point, None, 4, -1)


def test_isa_selection_is_reported():
    info = _ext.build_info()
    assert info["cpu_isa_selected"] in ALL_ISAS
    assert torch.ops.quantkernels.cpu_isa_supported(info["cpu_isa_selected"])
    assert torch.ops.quantkernels.cpu_isa_supported("scalar")
    assert not torch.ops.quantkernels.cpu_isa_supported("no_such_isa")


def test_fast_denormals_follows_the_vendor():
    # The AVX2 GEMV reads codes as denormal floats only on AMD / Hygon cores (Intel cores assist every
    # denormal operand: 100x slower); the flag must match the vendor the OS reports.
    vendors = set()
    try:
        with open("/proc/cpuinfo") as f:
            vendors = {line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")}
    except OSError:
        pass
    if len(vendors) != 1:
        pytest.skip("no single x86 vendor_id in /proc/cpuinfo")
    expected = vendors.pop() in ("AuthenticAMD", "HygonGenuine")
    assert _ext.build_info()["cpu_fast_denormals"] is expected


@pytest.mark.parametrize("op", ["float", "int8"])
def test_opcheck(op):
    cfg = QuantConfig(4, 128) if op == "float" else QuantConfig(8, -1, act_bits=8)
    layer, _ = make_layer(cfg, 256, 72)
    st = layer._prepared["cpu"]
    x = torch.randn(3, 256)
    if op == "float":
        args = (x, st.w, st.scales, st.zeros, st.zero_point, st.bias, cfg.bits)
        torch.library.opcheck(torch.ops.quantkernels.cpu_linear_float, args)
    else:
        args = (x, st.w, st.scales, st.zeros, st.zero_point, st.bias, cfg.bits, -1)
        torch.library.opcheck(torch.ops.quantkernels.cpu_linear_int8, args)


@pytest.mark.parametrize("cfg", [QuantConfig(4, 64, sym=False, act_order=True), QuantConfig(8, -1, act_bits=8)], ids=_id)
def test_torch_compile_fullgraph(cfg):
    torch._dynamo.reset()
    layer, portable = make_layer(cfg, 256, 72, seed=11, act_order=cfg.act_order)
    x = torch.randn(5, 256)
    eager = layer(x)
    assert layer._last_backend == "cpu"
    with torch.no_grad():
        compiled = torch.compile(layer, fullgraph=True)(x)
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("env, status", [("scalar", "used"), ("no_such_isa", "unknown"), ("", "unset")])
def test_cpu_isa_environment_is_honoured_or_reported(env, status):
    # The choice is made once a process, so each setting runs in its own interpreter. A name that is
    # not an ISA is ignored with a warning that lists the valid ones; "scalar" is always runnable.
    import os
    import subprocess

    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "from quantkernels import _ext\n"
        "_ext.require(); i = _ext.build_info()\n"
        "print(i['cpu_isa_env_status'], i['cpu_isa_selected'], i['cpu_isa_best'], i['cpu_isas_compiled'])\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    e = dict(os.environ, QUANTKERNELS_CPU_ISA=env, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)
    assert r.returncode == 0, r.stderr
    got, selected, best, compiled = r.stdout.split()
    assert got == status
    assert "scalar" in compiled.split(",") and best in compiled.split(",")
    if status == "used":
        assert selected == "scalar" and "QUANTKERNELS_CPU_ISA" not in r.stderr
    else:
        assert selected == best
    if status == "unknown":
        assert "QUANTKERNELS_CPU_ISA='no_such_isa' is not an instruction set name" in r.stderr and compiled in r.stderr
