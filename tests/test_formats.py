"""The portable format: config rules, the bit layout, and RTN quantization against float64 math."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantkernels import QuantConfig, reference
from quantkernels.formats import block_values, trivial_g_idx


def independent_pack_along_k(codes_kn, bits):
    """Packs codes [K, N] along K by writing each value's bits one at a time (no shared code with
    quantkernels): stream bit t of column n is bit t % 32 of word t // 32."""
    k, n = codes_kn.shape
    words = [[0] * n for _ in range(k * bits // 32)]
    for col in range(n):
        for row in range(k):
            v = int(codes_kn[row, col])
            for b in range(bits):
                t = row * bits + b
                if (v >> b) & 1:
                    words[t // 32][col] |= 1 << (t % 32)
    out = torch.tensor(words, dtype=torch.int64)
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def gptq_pack_3bit_column(vals):
    """GPTQ's published 3-bit packing of 32 values into 3 words, written out as GPTQ does."""
    w = [0, 0, 0]
    i = 0
    for j in range(10):
        w[0] |= vals[i + j] << (3 * j)
    i += 10
    w[0] |= (vals[i] << 30) & 0xFFFFFFFF
    w[1] |= (vals[i] >> 2) & 1
    i += 1
    for j in range(10):
        w[1] |= vals[i + j] << (3 * j + 1)
    i += 10
    w[1] |= (vals[i] << 31) & 0xFFFFFFFF
    w[2] |= (vals[i] >> 1) & 3
    i += 1
    for j in range(10):
        w[2] |= vals[i + j] << (3 * j + 2)
    return [x - 2**32 if x >= 2**31 else x for x in w]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_matches_independent_bitstream(bits):
    k, n = 2 * block_values(bits), 3
    codes = torch.randint(0, 2**bits, (k, n), dtype=torch.uint8)
    assert torch.equal(reference.pack(codes, bits, dim=0), independent_pack_along_k(codes, bits))


def test_3bit_layout_is_gptq():
    vals = torch.randint(0, 8, (32,)).tolist()
    ours = reference.pack(torch.tensor(vals, dtype=torch.uint8).unsqueeze(1), 3, dim=0).squeeze(1).tolist()
    assert ours == gptq_pack_3bit_column(vals)


def test_4bit_nibble_order_lsb_first():
    codes = torch.arange(8, dtype=torch.uint8).unsqueeze(1)  # values 0..7 along K
    word = reference.pack(codes, 4, dim=0).item() & 0xFFFFFFFF
    assert word == 0x76543210


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([2, 3, 4, 8]),
    blocks=st.integers(1, 4),
    cols=st.integers(1, 9),
    dim=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_unpack_roundtrip(bits, blocks, cols, dim, seed):
    g = torch.Generator().manual_seed(seed)
    length = blocks * block_values(bits)
    shape = (length, cols) if dim == 0 else (cols, length)
    codes = torch.randint(0, 2**bits, shape, generator=g, dtype=torch.uint8)
    packed = reference.pack(codes, bits, dim=dim)
    assert packed.dtype == torch.int32
    assert packed.shape[dim] == length * bits // 32
    assert torch.equal(reference.unpack(packed, bits, dim=dim), codes)


@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from([2, 3, 4, 8]),
    group=st.sampled_from([-1, 32, 64, 128]),
    sym=st.booleans(),
    groups=st.integers(1, 3),
    nblk=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_quantize_pack_dequantize_roundtrip(bits, group, sym, groups, nblk, seed):
    """Quantize -> pack -> unpack recovers the codes exactly, and dequantize equals the formula."""
    g = torch.Generator().manual_seed(seed)
    k = (group if group != -1 else 64) * groups
    n = block_values(bits) * nblk
    w = torch.randn(n, k, generator=g)
    codes, scales, zeros = reference.quantize(w, bits, group, sym, torch.float16)
    qweight = reference.pack(codes.t(), bits, 0)
    qzeros = reference.pack(zeros, bits, 1)
    assert torch.equal(reference.unpack(qweight, bits, 0).t(), codes)
    assert torch.equal(reference.unpack(qzeros, bits, 1).to(torch.int32), zeros)
    g_idx = trivial_g_idx(k, group)
    deq = reference.dequantize(qweight, qzeros, scales, g_idx, bits, torch.float64)
    gi = g_idx.long()
    expect = (codes.double() - zeros.double()[gi].t()) * scales.double()[gi].t()
    assert torch.equal(deq, expect)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [-1, 32, 128])
def test_rtn_matches_float64_definition(bits, sym, group):
    """RTN codes equal an independent float64 computation of the documented rules."""
    n, k = 64, 256
    w = torch.randn(n, k) * torch.rand(n, 1) * 3
    codes, scales, zeros = reference.quantize(w, bits, group, sym, torch.float32)
    gs = k if group == -1 else group
    maxq = 2**bits - 1
    wd = w.double().reshape(n, k // gs, gs)
    lo = wd.amin(-1).clamp(max=0)
    hi = wd.amax(-1).clamp(min=0)
    if sym:
        s = 2 * torch.maximum(-lo, hi) / maxq
        z = torch.full_like(s, 2 ** (bits - 1))
    else:
        s = (hi - lo) / maxq
    s = s.float().double()  # scales are rounded to the scale dtype before use
    if not sym:
        z = torch.clamp(torch.round(-lo / s), 0, maxq)
    q = torch.clamp(torch.round(wd / s.unsqueeze(-1)) + z.unsqueeze(-1), 0, maxq).reshape(n, k)
    assert torch.allclose(scales.t().double(), s, rtol=1e-6, atol=0)
    assert torch.equal(zeros.t().double(), z)
    # Codes may differ only at .5 ties, where fp32 and float64 can round either way (the symmetric
    # grid puts each group's absmax element exactly on a tie). "Tie" is within what fp32 may be off:
    # the division w / s and the addition of the zero point each round once, by at most 2^-24 of
    # values below |ratio| + maxq (a fixed 1e-5 was too tight at 8 bits, where ratios reach 255).
    ratio = (wd / s.unsqueeze(-1)).reshape(n, k)
    tie = ((ratio - ratio.floor()) - 0.5).abs() <= (ratio.abs() + maxq) * 2.0**-23
    diff = (codes.double() - q).abs()
    assert diff.max() <= 1 and not (diff.bool() & ~tie).any()
    # Error bound: each weight is within half a step of its group's grid (clamping aside).
    deq = (codes.double() - z.repeat_interleave(gs, 1)) * s.repeat_interleave(gs, 1)
    step = s.repeat_interleave(gs, 1)
    assert ((deq - w.double()).abs() <= 0.5 * step * 1.0001 + 1e-7).float().mean() > 0.999


def test_zero_range_groups_are_finite():
    w = torch.zeros(8, 64)
    w[1] = 3.0  # constant non-zero row: range [0, 3]
    for sym in (True, False):
        codes, scales, zeros = reference.quantize(w, 4, 32, sym, torch.float16)
        assert torch.isfinite(scales.float()).all() and (scales.float() > 0).all()
        deq = reference.dequantize(
            reference.pack(codes.t(), 4, 0), reference.pack(zeros, 4, 1), scales, trivial_g_idx(64, 32), 4
        )
        assert torch.isfinite(deq).all()
        assert deq[0].abs().max() == 0  # an all-zero group reproduces exactly
        # within one step (the symmetric grid clamps +absmax to 7 steps of 2*absmax/15)
        assert ((deq[1] - w[1]).abs() <= scales[:, 1].float().repeat_interleave(32)).all()


def test_tiny_weights_do_not_underflow_fp16_scales():
    w = torch.randn(8, 32) * 1e-9
    codes, scales, zeros = reference.quantize(w, 4, 32, False, torch.float16)
    assert (scales.float() > 0).all() and torch.isfinite(scales.float()).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_quantize_rejects_non_finite(bad):
    w = torch.randn(8, 32)
    w[3, 5] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        reference.quantize(w, 4, 32, True, torch.float16)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="bits"):
        QuantConfig(bits=5)
    with pytest.raises(ValueError, match="group_size"):
        QuantConfig(group_size=24)
    with pytest.raises(ValueError, match="scale_dtype"):
        QuantConfig(scale_dtype=torch.int8)
    with pytest.raises(ValueError, match="act_bits"):
        QuantConfig(act_bits=4)
    cfg = QuantConfig(bits=4, group_size=128)
    assert "not divisible by group_size=128" in cfg.shape_error(192, 64)
    assert "multiple of 8" in cfg.shape_error(130, 64)
    assert "multiple of 32" in QuantConfig(bits=3, group_size=-1).shape_error(64, 48)
    assert cfg.shape_error(256, 64) is None
    with pytest.raises(ValueError, match="group_size=128"):
        cfg.check_shape(192, 64)


def test_config_dict_roundtrip_and_bytes():
    cfg = QuantConfig(bits=3, group_size=64, sym=False, scale_dtype=torch.bfloat16, act_order=True)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    k, n = 256, 96
    expected = 4 * (k * 3 // 32 * n + (k // 64) * (n * 3 // 32) + k) + 2 * (k // 64) * n
    assert cfg.nbytes(k, n) == expected
    # 3 bits per weight + a bf16 scale and a 3-bit zero per 64 weights (+ g_idx, 32 bits per column)
    assert math.isclose(cfg.nbytes(4096, 4096) * 8 / (4096 * 4096), 3 + 16 / 64 + 3 / 64, rel_tol=0.01)
