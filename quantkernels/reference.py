"""Pure-PyTorch reference of every op on the portable format (see :mod:`quantkernels.formats`).

This is the definition: every fast backend is tested against these functions, and they serve any
call no other backend can. They favour clarity over speed, but stay vectorised so that they are
usable on real models (a 4096x14336 layer dequantizes in well under a second on a CPU).
"""

from __future__ import annotations

from typing import Optional

import torch

from .formats import block_values, block_words

_MASK32 = 0xFFFFFFFF


def _wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 holding an unsigned 32-bit pattern -> int32 with the same bits."""
    x = x & _MASK32
    return torch.where(x >= (1 << 31), x - (1 << 32), x).to(torch.int32)


def pack(codes: torch.Tensor, bits: int, dim: int = 0) -> torch.Tensor:
    """Pack unsigned codes along ``dim`` into int32 words (LSB-first bit stream).

    ``codes``: integer tensor with values in ``[0, 2**bits)``; its size along ``dim`` must be a
    multiple of the packing block. Returns int32 with that dimension scaled by ``bits / 32``.
    """
    nv, nw = block_values(bits), block_words(bits)
    dim = dim % codes.dim()
    length = codes.shape[dim]
    if length % nv:
        raise ValueError(f"pack: size {length} along dim {dim} is not a multiple of {nv} ({bits}-bit block)")
    c = codes.movedim(dim, -1).to(torch.int64)
    lead = c.shape[:-1]
    c = c.reshape(*lead, length // nv, nv)
    words = torch.zeros(*lead, length // nv, nw, dtype=torch.int64, device=codes.device)
    mask = (1 << bits) - 1
    for j in range(nv):
        start = j * bits
        w, off = divmod(start, 32)
        v = c[..., j] & mask
        words[..., w] |= (v << off) & _MASK32
        if off + bits > 32:  # the value straddles into the next word (3-bit only)
            words[..., w + 1] |= v >> (32 - off)
    out = _wrap_int32(words.reshape(*lead, length // nv * nw))
    return out.movedim(-1, dim).contiguous()


def unpack(packed: torch.Tensor, bits: int, dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 words -> uint8 codes, ``dim`` scaled by ``32 / bits``."""
    if packed.dtype != torch.int32:
        raise TypeError(f"unpack: packed must be int32, got {packed.dtype}")
    nv, nw = block_values(bits), block_words(bits)
    dim = dim % packed.dim()
    length = packed.shape[dim]
    if length % nw:
        raise ValueError(f"unpack: size {length} along dim {dim} is not a multiple of {nw} words ({bits}-bit block)")
    w = packed.movedim(dim, -1).to(torch.int64) & _MASK32
    lead = w.shape[:-1]
    w = w.reshape(*lead, length // nw, nw)
    mask = (1 << bits) - 1
    vals = []
    for j in range(nv):
        start = j * bits
        i, off = divmod(start, 32)
        v = w[..., i] >> off
        if off + bits > 32:
            v = v | (w[..., i + 1] << (32 - off))
        vals.append(v & mask)
    out = torch.stack(vals, dim=-1).reshape(*lead, length // nw * nv).to(torch.uint8)
    return out.movedim(-1, dim).contiguous()


def quantize(
    w: torch.Tensor,
    bits: int,
    group_size: int,
    sym: bool,
    scale_dtype: torch.dtype,
    g_idx: Optional[torch.Tensor] = None,
):
    """Round-to-nearest quantization of a ``[N, K]`` weight.

    Returns ``(codes uint8 [N, K], scales [G, N] scale_dtype, zeros int32 [G, N])``. Groups are
    given by ``g_idx`` (default: consecutive runs of ``group_size`` columns).
    """
    if w.dim() != 2:
        raise ValueError(f"quantize: w must be 2-D [out_features, in_features], got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"quantize: w must be a floating-point tensor, got {w.dtype}")
    if not torch.isfinite(w).all():
        raise ValueError("quantize: w contains NaN or Inf; cannot quantize non-finite weights")
    n, k = w.shape
    gs = k if group_size == -1 else group_size
    if g_idx is None:
        if k % gs:
            raise ValueError(f"quantize: in_features {k} is not divisible by group_size {group_size}")
        g = torch.arange(k, device=w.device) // gs
    else:
        g = g_idx.to(device=w.device, dtype=torch.int64)
    num_groups = k // gs
    maxq = (1 << bits) - 1
    wf = w.detach().to(torch.float32)
    index = g.unsqueeze(0).expand(n, k)
    gmax = torch.zeros(n, num_groups, device=w.device).scatter_reduce(1, index, wf, "amax", include_self=True)
    gmin = torch.zeros(n, num_groups, device=w.device).scatter_reduce(1, index, wf, "amin", include_self=True)
    # gmin <= 0 <= gmax already: include_self with zeros widens every range to contain 0.
    if sym:
        absmax = torch.maximum(gmax, -gmin)
        scale = 2.0 * absmax / maxq
        zero = torch.full_like(scale, float(1 << (bits - 1)))
    else:
        scale = (gmax - gmin) / maxq
        zero = None
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scale = scale.to(scale_dtype)
    # A scale that underflows in a 16-bit dtype would divide by zero: use the smallest normal.
    tiny = torch.finfo(scale_dtype).tiny
    scale = torch.where(scale.to(torch.float32) > 0, scale, torch.full_like(scale, tiny))
    s32 = scale.to(torch.float32)
    if zero is None:
        zero = torch.clamp(torch.round(-gmin / s32), 0, maxq)
    s_col = torch.gather(s32, 1, index)
    z_col = torch.gather(zero, 1, index)
    codes = torch.clamp(torch.round(wf / s_col) + z_col, 0, maxq).to(torch.uint8)
    return codes, scale.t().contiguous(), zero.t().contiguous().to(torch.int32)


def dequantize(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Portable tensors -> float weight ``[N, K]`` in ``dtype`` (computed in fp32)."""
    codes = unpack(qweight, bits, dim=0).to(torch.float32)  # [K, N]
    zeros = unpack(qzeros, bits, dim=1).to(torch.float32)  # [G, N]
    gi = g_idx.to(torch.int64)
    s = scales.to(torch.float32)[gi]  # [K, N]
    z = zeros[gi]
    return ((codes - z) * s).t().to(dtype).contiguous()


def linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bias: Optional[torch.Tensor],
    bits: int,
) -> torch.Tensor:
    """``x @ dequantize(W).T + bias`` with fp32 accumulation; output in ``x.dtype``."""
    w = dequantize(qweight, qzeros, scales, g_idx, bits, torch.float32)
    out = torch.matmul(x.to(torch.float32), w.t())
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(x.dtype)


def quantize_activations_int8(x: torch.Tensor, group_size: int = -1):
    """Dynamic symmetric int8 quantization of activations ``[M, K]``, per row or per 32-column block.

    Returns ``(xq int8 [M, K], scale fp32 [M, K / group])`` with ``x ~= xq * scale``. The reference
    for W8A8 / W4A8 is :func:`linear` applied to ``xq * scale`` (what the integer kernels compute up
    to fp32 rounding).
    """
    m, k = x.shape
    gs = k if group_size == -1 else group_size
    xf = x.to(torch.float32).reshape(m, k // gs, gs)
    amax = xf.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    xq = torch.clamp(torch.round(xf / scale.unsqueeze(-1)), -127, 127).to(torch.int8)
    return xq.reshape(m, k), scale


def dequantize_activations_int8(xq: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    m, k = xq.shape
    ng = scale.shape[1]
    return (xq.to(torch.float32).reshape(m, ng, k // ng) * scale.unsqueeze(-1)).reshape(m, k)
