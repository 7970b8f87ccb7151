"""Triton kernels for W4A16 / W8A16 linear layers: ``out = x @ W.T + bias``.

4-bit weights use the Triton layout "nk4" (``qgemm_nk4_kernel``, ``dequant_nk4_kernel``; described
with them below). The other kernels read the portable layout (8-bit layers; see
:mod:`quantkernels.formats`):

* ``qw``   int32 ``[K * BITS / 32, N]``: codes packed along K, LSB first: value j of word row r is
  input column ``PER_WORD * r + j`` (``PER_WORD = 32 / BITS``). Consecutive n are consecutive words,
  so ``BLOCK_K / PER_WORD`` word rows by ``BLOCK_N`` columns is a coalesced load.
* ``s``    ``[G, N]`` scales (fp16/bf16/fp32), ``z`` uint8 ``[G, N]`` real zero points (asymmetric
  only: ``prepare`` unpacks ``qzeros`` once; symmetric layers use the constant ``2**(BITS-1)``).
* ``gidx`` int32 ``[K]`` (act_order only; otherwise the group of column k is ``k // GROUP_SIZE``).

``qgemv_kernel`` (m = 1) never reshapes a K tile of words: slice ``j`` of it (``(words >> j*BITS) &
mask``, one value per word) holds columns ``PER_WORD * r + j``, so it loops over the PER_WORD slices
and pairs each with the matching strided slice of x; codes become floats with the ``2**23`` trick
(OR the code into the mantissa of 2**23, reinterpret as fp32, subtract ``2**23 + z``): exact, no
int-to-float conversion. Each program owns ``BLOCK_N`` outputs and one of ``SPLIT_K`` slices of K,
accumulates in fp32 registers and scales once per K tile.

``qgemm_kernel`` (m >= 2) is a tiled ``tl.dot``; it unpacks a ``[BLOCK_K, BLOCK_N]`` tile either by
loading each word once and spreading it over its rows with a reshape (``UNPACK_3D``) or by letting
every row load its word and shift (redundant addresses, one L1 line); both measured better than
PER_WORD slice-dots (K = 16 each) on the H100. With ``SWAP_AB`` it computes ``W @ x.T`` so that the
dequantized weight is the left operand (Hopper's wgmma takes it from registers) and a small m only
pads the MMA's narrow side.

``dequant_kernel`` writes ``W.T`` ``[K, N]`` in the activation dtype, for large m (then cuBLAS).

When a K tile lies inside one group (``GROUP_SIZE % BLOCK_K == 0``, no g_idx), the integer ``q - z`` is
exact in fp16/bf16 (|q - z| <= 255), the dots run on it, and the group's scale multiplies the fp32
partial product: one rounding fewer than dequantizing each weight. Otherwise each weight is
dequantized as ``(q - z) * s`` in fp32 and rounded once to the activation dtype.

Split-K (``SPLIT_K > 1``): each program adds its fp32 partial tile into ``ws`` with atomics and then
bumps the tile's arrival counter ``cnt``; the last program to arrive reads the sum, adds the bias,
writes ``out`` in the activation dtype and puts ``ws`` and ``cnt`` back to zero. One launch, no
second reduction pass; ``ws`` and ``cnt`` must be zero on entry and are zero again on exit.
``qgemm_nk4_streamk_kernel`` shares the nk4 K loop (``_nk4_acc``) and that reduction, but deals the
layer's (output tile, K tile) pairs evenly over a grid of one resident wave (stream-K).

Limits: BITS in (4, 8); activations fp16/bf16; ``x`` has unit column stride. Test: ``PYTHONPATH=$PWD python -m pytest -q
tests/test_triton_backend.py`` (interpreter on a CPU); benchmark: ``python benchmarks/triton_gemm.py``.
"""

from __future__ import annotations

import triton
import triton.language as tl

_MAGIC = tl.constexpr(0x4B000000)  # bit pattern of 2.0**23 in fp32
_MAGIC_F = tl.constexpr(8388608.0)


@triton.jit
def _slice(words, j: tl.constexpr, BITS: tl.constexpr):
    """Value j of every word, as the exact fp32 ``2**23 + code``."""
    q = ((words >> (j * BITS)) & ((1 << BITS) - 1)) | _MAGIC
    return q.to(tl.float32, bitcast=True)


@triton.jit
def _tile_zero_scale(s_ptr, z_ptr, g, offs_n, n_mask, N, BITS: tl.constexpr, HAS_ZEROS: tl.constexpr):
    """Row g's scales and ``2**23 + z`` (fp32, ``[BLOCK_N]``)."""
    s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        zf = tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.float32) + _MAGIC_F
    else:
        zf = tl.zeros_like(s) + (_MAGIC_F + (1 << (BITS - 1)))
    return s, zf


@triton.jit
def _slice_zero_scale(
    s_ptr, z_ptr, gidx_ptr, kk, offs_n, n_mask, N, K,
    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_GIDX: tl.constexpr,
):
    """Per-weight scales and ``2**23 + z`` (fp32 ``[len(kk), BLOCK_N]``) for input columns kk."""
    k_mask = kk < K
    if HAS_GIDX:
        g = tl.load(gidx_ptr + kk, mask=k_mask, other=0)
    else:
        g = kk // GROUP_SIZE
    gmask = k_mask[:, None] & n_mask[None, :]
    s = tl.load(s_ptr + g[:, None] * N + offs_n[None, :], mask=gmask, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        zf = tl.load(z_ptr + g[:, None] * N + offs_n[None, :], mask=gmask, other=0).to(tl.float32) + _MAGIC_F
    else:
        zf = tl.zeros_like(s) + (_MAGIC_F + (1 << (BITS - 1)))
    return s, zf


@triton.jit
def _load_words(qw_ptr, wrow, offs_n, n_mask, N, K, PER_WORD: tl.constexpr):
    return tl.load(
        qw_ptr + wrow[:, None] * N + offs_n[None, :],
        mask=(wrow[:, None] < K // PER_WORD) & n_mask[None, :],
        other=0,
    )


@triton.jit
def _unpack_tile(words, BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """int32 words ``[BLOCK_K * BITS / 32, BLOCK_N]`` -> int32 codes ``[BLOCK_K, BLOCK_N]``, k-major."""
    PER_WORD: tl.constexpr = 32 // BITS
    shifts = tl.arange(0, PER_WORD) * BITS
    q = (words[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)
    return tl.reshape(q, (BLOCK_K, BLOCK_N))


@triton.jit
def _load_weight_tile(
    qw_ptr, s_ptr, z_ptr, gidx_ptr, k0, offs_n, n_mask, N, K,
    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_GIDX: tl.constexpr,
    TILE_IN_GROUP: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, DTYPE: tl.constexpr,
    UNPACK_3D: tl.constexpr,
):
    """The weight tile ``[BLOCK_K, BLOCK_N]`` starting at input column ``k0`` and its per-column scale.

    Returns ``(w, s)``: with TILE_IN_GROUP, ``w = q - z`` (exact, in DTYPE) and ``s`` is the group's
    fp32 scale row ``[BLOCK_N]``; otherwise ``w = (q - z) * s`` already and ``s`` is all ones.
    """
    PER_WORD: tl.constexpr = 32 // BITS
    if UNPACK_3D:
        # Each word loaded once, then spread over its PER_WORD rows (a reshape).
        offs_w = k0 // PER_WORD + tl.arange(0, BLOCK_K // PER_WORD)
        words = tl.load(
            qw_ptr + offs_w[:, None] * N + offs_n[None, :],
            mask=(offs_w[:, None] < K // PER_WORD) & n_mask[None, :],
            other=0,
        )
        q = _unpack_tile(words, BITS, BLOCK_K, BLOCK_N)
    else:
        # Each row loads its word (PER_WORD rows share an address, served by L1) and shifts.
        offs_kk = k0 + tl.arange(0, BLOCK_K)
        words = tl.load(
            qw_ptr + (offs_kk[:, None] // PER_WORD) * N + offs_n[None, :],
            mask=(offs_kk[:, None] < K) & n_mask[None, :],
            other=0,
        )
        q = (words >> ((offs_kk[:, None] % PER_WORD) * BITS)) & ((1 << BITS) - 1)
    if TILE_IN_GROUP:
        g = k0 // GROUP_SIZE
        s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z = tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.int32)
            w = (q - z[None, :]).to(DTYPE)
        else:
            w = (q - (1 << (BITS - 1))).to(DTYPE)
        return w, s
    else:
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        if HAS_GIDX:
            g = tl.load(gidx_ptr + offs_k, mask=k_mask, other=0)
        else:
            g = offs_k // GROUP_SIZE
        gmask = k_mask[:, None] & n_mask[None, :]
        s = tl.load(s_ptr + g[:, None] * N + offs_n[None, :], mask=gmask, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z = tl.load(z_ptr + g[:, None] * N + offs_n[None, :], mask=gmask, other=0).to(tl.int32)
        else:
            z = 1 << (BITS - 1)
        w = ((q - z).to(tl.float32) * s).to(DTYPE)
        return w, tl.full((BLOCK_N,), 1.0, tl.float32)


@triton.jit
def _finish_tile(
    acc, offs_m, offs_n, tile_id, M, N, out_ptr, bias_ptr, ws_ptr, cnt_ptr,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, arrivals=None,
):
    """Write the fp32 tile ``acc [BM, BN]`` (+ bias) to ``out``, reducing over the K splits first.

    ``arrivals``: how many programs add into this tile when SPLIT_K > 1 (default SPLIT_K; stream-K
    passes its own, counted at run time)."""
    if arrivals is None:
        arrivals = SPLIT_K
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    offs = offs_m[:, None] * N + offs_n[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(ws_ptr + offs, acc, mask=mask, sem="relaxed")
        # Every thread's partial sums are issued before one thread publishes the arrival.
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel")
        if arrived == arrivals - 1:
            # An atomic read (add 0) comes from L2, never from a stale L1 line.
            total = tl.atomic_add(ws_ptr + offs, tl.zeros_like(acc), mask=mask, sem="relaxed")
            if HAS_BIAS:
                total += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)
            # Leave the workspace as found: zero (the next launch may reuse it).
            tl.store(ws_ptr + offs, tl.zeros_like(acc), mask=mask)
            tl.store(cnt_ptr + tile_id, 0)


@triton.jit
def qgemv_kernel(
    x_ptr,  # [1, K] fp16/bf16
    qw_ptr,  # [K * BITS / 32, N] int32
    s_ptr,  # [G, N] fp16/bf16/fp32
    z_ptr,  # [G, N] uint8 (HAS_ZEROS)
    gidx_ptr,  # [K] int32 (HAS_GIDX)
    bias_ptr,  # [N] (HAS_BIAS)
    out_ptr,  # [1, N] x dtype
    ws_ptr,  # [1, N] fp32, zero on entry and exit (SPLIT_K > 1)
    cnt_ptr,  # [cdiv(N, BLOCK_N)] int32, zero on entry and exit (SPLIT_K > 1)
    N, K,
    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr,
    HAS_ZEROS: tl.constexpr, HAS_GIDX: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    PER_WORD: tl.constexpr = 32 // BITS
    BKW: tl.constexpr = BLOCK_K // PER_WORD
    TILE_IN_GROUP: tl.constexpr = (GROUP_SIZE % BLOCK_K == 0) and (not HAS_GIDX)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    k_tiles = (K + BLOCK_K - 1) // BLOCK_K
    per_split = (k_tiles + SPLIT_K - 1) // SPLIT_K
    kt_begin = pid_k * per_split
    kt_end = tl.minimum(kt_begin + per_split, k_tiles)
    acc = tl.zeros((BKW, BLOCK_N), dtype=tl.float32)
    for kt in range(kt_begin, kt_end):
        wrow = kt * BKW + tl.arange(0, BKW)
        words = _load_words(qw_ptr, wrow, offs_n, n_mask, N, K, PER_WORD)
        if TILE_IN_GROUP:
            s, zf = _tile_zero_scale(s_ptr, z_ptr, (kt * BLOCK_K) // GROUP_SIZE, offs_n, n_mask, N, BITS, HAS_ZEROS)
            part = tl.zeros((BKW, BLOCK_N), dtype=tl.float32)
            for j in tl.static_range(PER_WORD):
                kk = wrow * PER_WORD + j
                xj = tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
                part += xj[:, None] * (_slice(words, j, BITS) - zf[None, :])
            acc += part * s[None, :]
        else:
            for j in tl.static_range(PER_WORD):
                kk = wrow * PER_WORD + j
                xj = tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
                sj, zfj = _slice_zero_scale(
                    s_ptr, z_ptr, gidx_ptr, kk, offs_n, n_mask, N, K, BITS, GROUP_SIZE, HAS_ZEROS, HAS_GIDX
                )
                acc += xj[:, None] * ((_slice(words, j, BITS) - zfj) * sj)
    out = tl.sum(acc, axis=0)[None, :]
    _finish_tile(out, tl.arange(0, 1), offs_n, pid_n, 1, N, out_ptr, bias_ptr, ws_ptr, cnt_ptr, HAS_BIAS, SPLIT_K)


@triton.jit
def qgemm_kernel(
    x_ptr,  # [M, K] fp16/bf16, row stride stride_xm
    qw_ptr,  # [K * BITS / 32, N] int32
    s_ptr,  # [G, N] fp16/bf16/fp32
    z_ptr,  # [G, N] uint8 (HAS_ZEROS)
    gidx_ptr,  # [K] int32 (HAS_GIDX)
    bias_ptr,  # [N] (HAS_BIAS)
    out_ptr,  # [M, N] x dtype, contiguous
    ws_ptr,  # [M, N] fp32, zero on entry and exit (SPLIT_K > 1)
    cnt_ptr,  # [cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)] int32, zero on entry and exit (SPLIT_K > 1)
    M, N, K, stride_xm,
    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr,
    HAS_ZEROS: tl.constexpr, HAS_GIDX: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, SWAP_AB: tl.constexpr, UNPACK_3D: tl.constexpr,
):
    # Tiles that share weight columns run together (GROUP_M row tiles per column band) for L2 reuse.
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = ((M + BLOCK_M - 1) // BLOCK_M)
    num_pid_n = ((N + BLOCK_N - 1) // BLOCK_N)
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_rows
    pid_n = (pid % width) // group_rows

    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    TILE_IN_GROUP: tl.constexpr = (GROUP_SIZE % BLOCK_K == 0) and (not HAS_GIDX)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    k_tiles = ((K + BLOCK_K - 1) // BLOCK_K)
    per_split = ((k_tiles + SPLIT_K - 1) // SPLIT_K)
    kt_begin = pid_k * per_split
    kt_end = tl.minimum(kt_begin + per_split, k_tiles)
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(kt_begin, kt_end):
        k0 = kt * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
            mask=m_mask[:, None] & (offs_k[None, :] < K),
            other=0.0,
        )
        w, s = _load_weight_tile(
            qw_ptr, s_ptr, z_ptr, gidx_ptr, k0, offs_n, n_mask, N, K,
            BITS, GROUP_SIZE, HAS_ZEROS, HAS_GIDX, TILE_IN_GROUP, BLOCK_K, BLOCK_N, DTYPE, UNPACK_3D,
        )
        if SWAP_AB:
            part = tl.dot(tl.trans(w), tl.trans(x))
            if TILE_IN_GROUP:
                part = part * s[:, None]
        else:
            part = tl.dot(x, w)
            if TILE_IN_GROUP:
                part = part * s[None, :]
        acc += part
    if SWAP_AB:
        acc = tl.trans(acc)
    tile_id = pid_m * num_pid_n + pid_n
    _finish_tile(acc, offs_m, offs_n, tile_id, M, N, out_ptr, bias_ptr, ws_ptr, cnt_ptr, HAS_BIAS, SPLIT_K)


@triton.jit
def dequant_kernel(
    qw_ptr,  # [K * BITS / 32, N] int32
    s_ptr,  # [G, N] fp16/bf16/fp32
    z_ptr,  # [G, N] uint8 (HAS_ZEROS)
    gidx_ptr,  # [K] int32 (HAS_GIDX)
    wt_ptr,  # [K, N] output dtype: W.T
    N, K,
    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_GIDX: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    PER_WORD: tl.constexpr = 32 // BITS
    BKW: tl.constexpr = BLOCK_K // PER_WORD
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    wrow = tl.program_id(1) * BKW + tl.arange(0, BKW)
    words = _load_words(qw_ptr, wrow, offs_n, n_mask, N, K, PER_WORD)
    for j in tl.static_range(PER_WORD):
        kk = wrow * PER_WORD + j
        sj, zfj = _slice_zero_scale(s_ptr, z_ptr, gidx_ptr, kk, offs_n, n_mask, N, K, BITS, GROUP_SIZE, HAS_ZEROS, HAS_GIDX)
        w = (_slice(words, j, BITS) - zfj) * sj
        tl.store(wt_ptr + kk[:, None] * N + offs_n[None, :], w.to(wt_ptr.dtype.element_ty), mask=(kk[:, None] < K) & n_mask[None, :])


# ---------------------------------------------------------------------------------------------------
# 4-bit weights in the Triton layout ("nk4", made once by the backend's ``prepare``):
#
#   ``qt`` int32 ``[Kp / 128, N, 16]``, Kp = K rounded up to 128 (codes past K are 0): K-block
#   major. ``qt[b, n]`` holds output column n's codes of input columns 128b .. 128b + 127: word
#   ``4c + q`` holds, at nibble p (bits 4p..4p+3), the code of input column ``128b + 32q + 16 *
#   ((p % 4) // 2) + 8 * (p % 2) + 2c + p // 4``  (see ``NK4_COLUMN`` in quantkernels/backends/triton.py).
#   The kernels take the strides as arguments (``stride_qn`` words between outputs, ``stride_qb``
#   between 128-column blocks), so the address of word w of block b of output n is
#   ``n * stride_qn + b * stride_qb + w``.
#
# Why K-block major: a K step of a ``[BLOCK_N, 128]`` tile then reads ``BLOCK_N x 64`` contiguous
# bytes, where rows of whole K (the layout until 2026-11-25) scattered it into BLOCK_N pieces of 64
# bytes, ``K / 2`` bytes apart. On the H100 the same kernels ran 5-39% faster on the K-block-major
# copy (every tile and split of the m = 1, 16 and 64 candidates on 8192x28672, 28672x8192 and
# 8192x8192, docs/triton.md, 2026-11-25), though both read the same bytes.
#
# Why that order: the weight tile ``[BLOCK_N, BLOCK_K]`` is the left operand of ``tl.dot`` (swap-AB:
# out.T = W @ x.T; Hopper's wgmma reads it from registers, and a small m only pads the MMA's narrow
# side). There, thread c of each quad holds, per row and 16-column slice, columns (2c, 2c+1) and
# (2c+8, 2c+9) as two fp16x2 registers: word 4c + q is exactly that thread's 8 codes of the 32
# columns 32q.., its 4 words of a block are adjacent, and nibbles (p, p+4) are one register's pair.
# So a thread loads whole words (16-byte vectors through shared memory) and one ``lop3`` per register turns two codes into two fp16/bf16 values with the
# "magic number" trick: OR the code into the mantissa of 1024.0 (fp16, 0x6400) or 128.0 (bf16,
# 0x4300); one packed fma (x1, minus magic + z) then leaves ``q - z`` exactly. That is 1.5
# instructions per weight, against about 4 for shift/mask/int-to-float/subtract (int-to-float runs
# at a quarter of the FMA rate), and no byte shuffles. The kernels only state the column order
# (reshape, join, permute); Triton's layout propagation puts each word in the thread that needs it
# (checked in the SASS: LDS.128, no PRMT between the unpacking and the HGMMAs). On GPUs without
# inline PTX (the interpreter, ROCm) plain Triton computes the same values.

@triton.jit
def _unpack_words(wd, nzf, NZF_BITS: tl.constexpr, NZF_HI_BITS: tl.constexpr, DTYPE: tl.constexpr,
                  USE_ASM: tl.constexpr):
    """int32 nk4 words -> 8 tensors ``o_j`` (DTYPE, wd's shape): magic + nibble ``P[j]`` + nzf, with
    P = 0, 4, 1, 5, 2, 6, 3, 7 and ``nzf`` (fp32, broadcast to wd's shape) = ``-(magic + z)``.
    NZF_BITS: 0, or the bit pattern of a constant nzf in DTYPE (lets Triton place the words freely);
    NZF_HI_BITS: then that of ``nzf + 960`` = ``-(64 + z)`` (fp16: the second nibble of a byte, below)."""
    if USE_ASM:
        # The packed operand of the fma.x2: a constant when NZF_BITS (nzf's DTYPE bits) is given.
        if NZF_BITS != 0:
            nzf2 = tl.full(wd.shape, NZF_BITS * 65537 - (1 << 32), tl.int32)
        else:
            half = nzf.to(DTYPE).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
            nzf2 = half | (half << 16)
        if DTYPE == tl.float16:
            # A byte's second nibble is taken in place: 1024 + 16 q, exact in fp16 (10 mantissa bits),
            # then fma(., 1/16, -(64 + z)) = q - z, exact. One shift a word instead of three.
            if NZF_HI_BITS != 0:
                nzh2 = tl.full(wd.shape, NZF_HI_BITS * 65537 - (1 << 32), tl.int32)
            else:
                hhalf = (nzf + 960.0).to(DTYPE).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
                nzh2 = hhalf | (hhalf << 16)
            o0, o1, o2, o3, o4, o5, o6, o7 = tl.inline_asm_elementwise(
                asm="""{
                .reg .b32 t, a, b, c, d, one, sixteenth;
                mov.b32 one, 0x3c003c00;
                mov.b32 sixteenth, 0x2c002c00;
                lop3.b32 a, $8, 0x000f000f, 0x64006400, 0xea;
                lop3.b32 b, $8, 0x00f000f0, 0x64006400, 0xea;
                shr.b32 t, $8, 8;
                lop3.b32 c, t, 0x000f000f, 0x64006400, 0xea;
                lop3.b32 d, t, 0x00f000f0, 0x64006400, 0xea;
                fma.rn.f16x2 a, a, one, $9;
                fma.rn.f16x2 b, b, sixteenth, $10;
                fma.rn.f16x2 c, c, one, $9;
                fma.rn.f16x2 d, d, sixteenth, $10;
                mov.b32 {$0, $1}, a;
                mov.b32 {$2, $3}, b;
                mov.b32 {$4, $5}, c;
                mov.b32 {$6, $7}, d;
                }""",
                constraints="=h,=h,=h,=h,=h,=h,=h,=h,r,r,r",
                args=[wd, nzf2, nzh2], dtype=(tl.float16,) * 8, is_pure=True, pack=1,
            )
        else:
            o0, o1, o2, o3, o4, o5, o6, o7 = tl.inline_asm_elementwise(
                asm="""{
                .reg .b32 t, a, b, c, d, one;
                mov.b32 one, 0x3f803f80;
                lop3.b32 a, $8, 0x000f000f, 0x43004300, 0xea;
                shr.b32 t, $8, 4;
                lop3.b32 b, t, 0x000f000f, 0x43004300, 0xea;
                shr.b32 t, $8, 8;
                lop3.b32 c, t, 0x000f000f, 0x43004300, 0xea;
                shr.b32 t, $8, 12;
                lop3.b32 d, t, 0x000f000f, 0x43004300, 0xea;
                fma.rn.bf16x2 a, a, one, $9;
                fma.rn.bf16x2 b, b, one, $9;
                fma.rn.bf16x2 c, c, one, $9;
                fma.rn.bf16x2 d, d, one, $9;
                mov.b32 {$0, $1}, a;
                mov.b32 {$2, $3}, b;
                mov.b32 {$4, $5}, c;
                mov.b32 {$6, $7}, d;
                }""",
                constraints="=h,=h,=h,=h,=h,=h,=h,=h,r,r",
                args=[wd, nzf2], dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1,
            )
    else:
        # Same values in fp32 arithmetic (exact: magic + q < 2**11), no reinterpretation.
        MAGIC_F: tl.constexpr = 1024.0 if DTYPE == tl.float16 else 128.0
        off = nzf + MAGIC_F
        o0 = ((wd & 15).to(tl.float32) + off).to(DTYPE)
        o1 = (((wd >> 16) & 15).to(tl.float32) + off).to(DTYPE)
        o2 = (((wd >> 4) & 15).to(tl.float32) + off).to(DTYPE)
        o3 = (((wd >> 20) & 15).to(tl.float32) + off).to(DTYPE)
        o4 = (((wd >> 8) & 15).to(tl.float32) + off).to(DTYPE)
        o5 = (((wd >> 24) & 15).to(tl.float32) + off).to(DTYPE)
        o6 = (((wd >> 12) & 15).to(tl.float32) + off).to(DTYPE)
        o7 = (((wd >> 28) & 15).to(tl.float32) + off).to(DTYPE)
    return o0, o1, o2, o3, o4, o5, o6, o7


@triton.jit
def _nk4_group(s_ptr, z_ptr, k0, offs_n, n_mask, N, GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr,
               DTYPE: tl.constexpr):
    """The fp32 scales ``s`` and ``nzf = -(magic + z)`` (``[BLOCK_N]``) of the group holding column k0
    (for tiles inside one group; ``nzf`` is unused for symmetric layers)."""
    MAGIC_F: tl.constexpr = 1024.0 if DTYPE == tl.float16 else 128.0
    g = k0 // GROUP_SIZE
    s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        nzf = -(tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0).to(tl.float32) + MAGIC_F)
    else:
        nzf = tl.full(s.shape, -(MAGIC_F + 8.0), tl.float32)
    return s, nzf


@triton.jit
def _nk4_tile(
    qt_ptr, s_ptr, z_ptr, gidx_ptr, k0, offs_n, n_mask, N, K, stride_qn, stride_qb, s_grp, nzf_grp,
    GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_GIDX: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, DTYPE: tl.constexpr, USE_ASM: tl.constexpr, EVEN_K: tl.constexpr,
):
    """The weight tile ``W[offs_n, k0:k0+BLOCK_K]`` (``[BLOCK_N, BLOCK_K]``) of an nk4 layout.

    Returns ``(w, s)`` as ``_load_weight_tile``: inside one group, ``w = q - z`` (exact) and ``s`` the
    group's fp32 scales ``[BLOCK_N]`` (``s_grp``, ``nzf_grp``: that group's ``_nk4_group``, loaded by
    the caller, possibly one K tile ahead); otherwise ``w = (q - z) * s`` rounded once, ``s`` all ones.
    EVEN_K: K is a multiple of BLOCK_K (no column masks; then the padded K is K).
    """
    MAGIC_F: tl.constexpr = 1024.0 if DTYPE == tl.float16 else 128.0
    tl.static_assert(BLOCK_K % 128 == 0, "nk4: BLOCK_K must be a multiple of the layout's 128-column block")
    B: tl.constexpr = BLOCK_K // 128
    j = tl.arange(0, BLOCK_K // 8)  # word of the tile: block k0 // 128 + j // 16, word j % 16 of it
    if B == 1:
        offs_w = (k0 // 128) * stride_qb + j
    else:
        offs_w = (k0 // 128 + j // 16) * stride_qb + j % 16
    ptrs = qt_ptr.to(tl.pointer_type(tl.int32)) + offs_n[:, None] * stride_qn + offs_w[None, :]
    if EVEN_K:
        wd = tl.load(ptrs, mask=n_mask[:, None], other=0)
    else:  # the layout holds whole 128-column blocks: mask the blocks past the last
        wd = tl.load(ptrs, mask=n_mask[:, None] & ((k0 + 8 * j)[None, :] < (K + 127) // 128 * 128), other=0)
    wd = tl.reshape(wd, (BLOCK_N, B, 4, 4))  # (row, block b, thread c, chunk q)
    TILE_IN_GROUP: tl.constexpr = (GROUP_SIZE % BLOCK_K == 0) and (not HAS_GIDX)
    if TILE_IN_GROUP:
        s = s_grp
        nzf = nzf_grp
        if HAS_ZEROS:
            NZF_BITS: tl.constexpr = 0
            NZF_HI_BITS: tl.constexpr = 0
        else:
            NZF_BITS: tl.constexpr = 0xE408 if DTYPE == tl.float16 else 0xC308  # -1032.0 / -136.0
            NZF_HI_BITS: tl.constexpr = 0xD480  # fp16 -72.0
    else:
        nzf = tl.full((BLOCK_N,), -MAGIC_F, tl.float32)  # the codes q themselves
        NZF_BITS: tl.constexpr = 0xE400 if DTYPE == tl.float16 else 0xC300  # -1024.0 / -128.0
        NZF_HI_BITS: tl.constexpr = 0xD400  # fp16 -64.0
    o0, o1, o2, o3, o4, o5, o6, o7 = _unpack_words(wd, nzf[:, None, None, None], NZF_BITS, NZF_HI_BITS, DTYPE,
                                                   USE_ASM)
    # o_(4s + 2h + e) holds column 128b + 32q + 16s + 8h + 2c + e: stack (e, h, s), order the columns.
    t = tl.join(tl.join(tl.join(o0, o1), tl.join(o2, o3)), tl.join(tl.join(o4, o5), tl.join(o6, o7)))
    w = tl.reshape(tl.permute(t, (0, 1, 3, 6, 5, 2, 4)), (BLOCK_N, BLOCK_K))
    if TILE_IN_GROUP:
        return w, s
    else:
        # Per-weight groups: (q - z) * s per element, in fp32, rounded once.
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        if HAS_GIDX:
            gk = tl.load(gidx_ptr + offs_k, mask=k_mask, other=0)
        else:
            gk = offs_k // GROUP_SIZE
        idx = gk[None, :] * N + offs_n[:, None]
        gmask = n_mask[:, None] & k_mask[None, :]
        sk = tl.load(s_ptr + idx, mask=gmask, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            zk = tl.load(z_ptr + idx, mask=gmask, other=0).to(tl.float32)
        else:
            zk = 8.0
        w = ((w.to(tl.float32) - zk) * sk).to(DTYPE)
        return w, tl.full((BLOCK_N,), 1.0, tl.float32)


@triton.jit
def _nk4_acc(
    x_ptr, qt_ptr, s_ptr, z_ptr, gidx_ptr, offs_m, offs_n, m_mask, n_mask, N, K, stride_xm, stride_qn, stride_qb,
    kt_begin, kt_end, k_tiles,
    GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_GIDX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_ASM: tl.constexpr, EVEN_K: tl.constexpr,
    DOT_F32: tl.constexpr, SCALE_W: tl.constexpr, PREFETCH_S: tl.constexpr,
):
    """fp32 ``(W x.T)[offs_n, offs_m]`` (``[BLOCK_N, BLOCK_M]``) over K tiles ``kt_begin .. kt_end - 1``:
    the K loop of ``qgemm_nk4_kernel`` (whose docstring describes SCALE_W, PREFETCH_S and DOT_F32)."""
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    TILE_IN_GROUP: tl.constexpr = (GROUP_SIZE % BLOCK_K == 0) and (not HAS_GIDX)
    if TILE_IN_GROUP and PREFETCH_S:
        # Clamped: a split past the last tile (empty loop) still reads in bounds.
        s_grp, nzf_grp = _nk4_group(s_ptr, z_ptr, tl.minimum(kt_begin, k_tiles - 1) * BLOCK_K, offs_n, n_mask, N,
                                    GROUP_SIZE, HAS_ZEROS, DTYPE)
    for kt in range(kt_begin, kt_end):
        k0 = kt * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if TILE_IN_GROUP and PREFETCH_S:
            s_cur, nzf_cur = s_grp, nzf_grp
            # The next tile's group (clamped to the last tile: no mask, an in-bounds reload at the end).
            s_grp, nzf_grp = _nk4_group(s_ptr, z_ptr, tl.minimum(kt + 1, k_tiles - 1) * BLOCK_K, offs_n, n_mask, N,
                                        GROUP_SIZE, HAS_ZEROS, DTYPE)
        elif TILE_IN_GROUP:
            s_cur, nzf_cur = _nk4_group(s_ptr, z_ptr, k0, offs_n, n_mask, N, GROUP_SIZE, HAS_ZEROS, DTYPE)
        else:  # per-weight scales: _nk4_tile loads them itself
            s_cur = tl.zeros((BLOCK_N,), tl.float32)
            nzf_cur = s_cur
        if EVEN_K:
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_mask[:, None], other=0.0)
        else:
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                mask=m_mask[:, None] & (offs_k[None, :] < K),
                other=0.0,
            )
        w, s = _nk4_tile(
            qt_ptr, s_ptr, z_ptr, gidx_ptr, k0, offs_n, n_mask, N, K, stride_qn, stride_qb, s_cur, nzf_cur,
            GROUP_SIZE, HAS_ZEROS, HAS_GIDX, BLOCK_K, BLOCK_N, DTYPE, USE_ASM, EVEN_K,
        )
        if SCALE_W and DOT_F32:
            # The same value (a product of two 8- or 11-bit significands is exact in fp32, rounded
            # once); the interpreter's bf16 multiply returned NaN.
            w = (w.to(tl.float32) * s[:, None].to(DTYPE).to(tl.float32)).to(DTYPE)
        elif SCALE_W:
            w = w * s[:, None].to(DTYPE)
        if DOT_F32:
            w = w.to(tl.float32)
            x = x.to(tl.float32)
        if SCALE_W:
            acc = tl.dot(w, tl.trans(x), acc)
        else:
            acc += tl.dot(w, tl.trans(x)) * s[:, None]
    return acc


@triton.jit
def qgemm_nk4_kernel(
    x_ptr,  # [M, K] fp16/bf16, row stride stride_xm
    qt_ptr,  # the bytes of the nk4 int32 words; stride_qn, stride_qb: words between outputs, 128-column blocks
    s_ptr,  # [G, N] fp16/bf16/fp32
    z_ptr,  # [G, N] uint8 (HAS_ZEROS)
    gidx_ptr,  # [K] int32 (HAS_GIDX)
    bias_ptr,  # [N] (HAS_BIAS)
    out_ptr,  # [M, N] x dtype, contiguous
    ws_ptr,  # [M, N] fp32, zero on entry and exit (SPLIT_K > 1)
    cnt_ptr,  # [cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)] int32, zero on entry and exit (SPLIT_K > 1)
    M, N, K, stride_xm, stride_qn, stride_qb,
    GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_GIDX: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    GROUP_M: tl.constexpr, USE_ASM: tl.constexpr, EVEN_K: tl.constexpr, DOT_F32: tl.constexpr,
    SCALE_W: tl.constexpr = False, PREFETCH_S: tl.constexpr = False, SPLIT_INNER: tl.constexpr = False,
):
    """``out = x @ W.T (+ bias)`` for 4-bit nk4 weights: swap-AB ``tl.dot(W tile, x tile.T)``.

    PREFETCH_S: load the next K tile's group scales (and zero points) one iteration ahead. Triton's
    pipeliner stages only the loads that feed the dot (x, the words) through shared memory; the scale
    row is a plain load, so without this every iteration waits a global-memory latency for it.

    SCALE_W: multiply the weight tile by its group's scales before the dot (one more rounding per
    weight, to the activation dtype) so that the dot accumulates in place: one accumulator instead of
    a product tile plus the accumulator, and no wait for the MMA before the fp32 scaling of its result.

    SPLIT_INNER: a 1-D grid of ``tiles * SPLIT_K`` programs with the split fastest, so that the K
    splits of one output tile run side by side: together they read whole weight rows (runs of
    ``K / 2`` bytes) instead of ``K / (2 SPLIT_K)``-byte pieces of many rows, and the tile's partial
    sums meet in L2 while they are fresh. Otherwise the grid is ``(tiles, SPLIT_K)``.

    The K tiles are dealt to the splits as evenly as integers allow (``k_tiles * s // SPLIT_K``
    onwards), so any SPLIT_K can be chosen to fill whole waves of the GPU (e.g. 6 or 7, where
    rounding up would leave the last split short or empty).

    DOT_F32 (the interpreter only: numpy has no bfloat16 and mangles bf16 dot operands) upcasts the
    operands; the values are the same, the products exact either way.
    """
    if SPLIT_INNER:
        pid = tl.program_id(0) // SPLIT_K
        pid_k = tl.program_id(0) % SPLIT_K
    else:
        pid = tl.program_id(0)
        pid_k = tl.program_id(1)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_rows
    pid_n = (pid % width) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    k_tiles = (K + BLOCK_K - 1) // BLOCK_K
    kt_begin = pid_k * k_tiles // SPLIT_K
    kt_end = (pid_k + 1) * k_tiles // SPLIT_K
    acc = _nk4_acc(
        x_ptr, qt_ptr, s_ptr, z_ptr, gidx_ptr, offs_m, offs_n, m_mask, n_mask, N, K, stride_xm, stride_qn, stride_qb,
        kt_begin, kt_end, k_tiles, GROUP_SIZE, HAS_ZEROS, HAS_GIDX, BLOCK_M, BLOCK_N, BLOCK_K, USE_ASM, EVEN_K,
        DOT_F32, SCALE_W, PREFETCH_S,
    )
    tile_id = pid_m * num_pid_n + pid_n
    _finish_tile(tl.trans(acc), offs_m, offs_n, tile_id, M, N, out_ptr, bias_ptr, ws_ptr, cnt_ptr, HAS_BIAS, SPLIT_K)


@triton.jit
def qgemm_nk4_streamk_kernel(
    x_ptr,  # [M, K] fp16/bf16, row stride stride_xm
    qt_ptr,  # nk4 words, as qgemm_nk4_kernel
    s_ptr,  # [G, N] fp16/bf16/fp32
    z_ptr,  # [G, N] uint8 (HAS_ZEROS)
    gidx_ptr,  # [K] int32 (HAS_GIDX)
    bias_ptr,  # [N] (HAS_BIAS)
    out_ptr,  # [M, N] x dtype, contiguous
    ws_ptr,  # [M, N] fp32, zero on entry and exit
    cnt_ptr,  # [cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)] int32, zero on entry and exit
    M, N, K, stride_xm, stride_qn, stride_qb,
    GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_GIDX: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_ASM: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_F32: tl.constexpr, SCALE_W: tl.constexpr = False, PREFETCH_S: tl.constexpr = False,
):
    """``qgemm_nk4_kernel``'s product with the work dealt evenly: stream-K.

    The layer's ``T`` units of work, (output tile, K tile) pairs in tile-major order, are dealt to
    the ``P <= T`` programs of the grid (one resident wave: a few programs an SM) as evenly as
    integers allow: program p takes units ``p T // P`` up to ``(p + 1) T // P``, so every program
    streams the same number of weight bytes, give or take one K tile, and none idles in a partial
    last wave (8192x28672 at m = 64 has 112 tiles of 64 x 256 for 132 SMs; split-K 4 is 3.4 waves).
    A run may end inside an output tile and the next begin there. A tile whose K tiles one program
    owns is stored directly; a shared one is summed in ``ws`` as split-K does, its contributors
    (the owners of its first and last K tile and every program between) counted at run time.
    """
    pid = tl.program_id(0).to(tl.int64)
    progs = tl.num_programs(0)
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    k_tiles = (K + BLOCK_K - 1) // BLOCK_K
    total = ((M + BLOCK_M - 1) // BLOCK_M) * num_pid_n * k_tiles
    unit = (pid * total // progs).to(tl.int32)
    end = ((pid + 1) * total // progs).to(tl.int32)
    while unit < end:
        tile = unit // k_tiles
        kt_begin = unit - tile * k_tiles
        kt_end = tl.minimum(k_tiles, kt_begin + (end - unit))
        pid_m = tile // num_pid_n
        pid_n = tile - pid_m * num_pid_n
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = _nk4_acc(
            x_ptr, qt_ptr, s_ptr, z_ptr, gidx_ptr, offs_m, offs_n, offs_m < M, offs_n < N, N, K, stride_xm,
            stride_qn, stride_qb, kt_begin, kt_end, k_tiles, GROUP_SIZE, HAS_ZEROS, HAS_GIDX, BLOCK_M, BLOCK_N, BLOCK_K,
            USE_ASM, EVEN_K, DOT_F32, SCALE_W, PREFETCH_S,
        )
        # The owner of unit u is the last program whose run starts at or before it: (P (u + 1) - 1) // T.
        first = tile.to(tl.int64) * k_tiles
        arrivals = ((first + k_tiles) * progs - 1) // total - ((first + 1) * progs - 1) // total + 1
        # SPLIT_K (constexpr) only selects the path: 1 stores directly, any larger value sums through
        # the workspace, waiting for ``arrivals`` contributors.
        if arrivals == 1:
            _finish_tile(tl.trans(acc), offs_m, offs_n, tile, M, N, out_ptr, bias_ptr, ws_ptr, cnt_ptr, HAS_BIAS, 1)
        else:
            _finish_tile(tl.trans(acc), offs_m, offs_n, tile, M, N, out_ptr, bias_ptr, ws_ptr, cnt_ptr, HAS_BIAS, 2,
                         arrivals.to(tl.int32))
        unit += kt_end - kt_begin


@triton.jit
def dequant_nk4_kernel(
    qt_ptr,  # the bytes of the nk4 int32 words; stride_qn, stride_qb: words between outputs, 128-column blocks
    s_ptr,  # [G, N] fp16/bf16/fp32
    z_ptr,  # [G, N] uint8 (HAS_ZEROS)
    gidx_ptr,  # [K] int32 (HAS_GIDX)
    w_ptr,  # [N, K] output dtype: W, contiguous
    N, K, stride_qn, stride_qb,
    GROUP_SIZE: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_GIDX: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_ASM: tl.constexpr, EVEN_K: tl.constexpr,
):
    """``W [N, K]`` from nk4 weights (then ``x @ W.T`` on cuBLAS)."""
    DTYPE: tl.constexpr = w_ptr.dtype.element_ty
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    k0 = tl.program_id(1) * BLOCK_K
    TILE_IN_GROUP: tl.constexpr = (GROUP_SIZE % BLOCK_K == 0) and (not HAS_GIDX)
    if TILE_IN_GROUP:
        s_grp, nzf_grp = _nk4_group(s_ptr, z_ptr, k0, offs_n, n_mask, N, GROUP_SIZE, HAS_ZEROS, DTYPE)
    else:  # per-weight scales: _nk4_tile loads them itself
        s_grp = tl.zeros((BLOCK_N,), tl.float32)
        nzf_grp = s_grp
    w, s = _nk4_tile(
        qt_ptr, s_ptr, z_ptr, gidx_ptr, k0, offs_n, n_mask, N, K, stride_qn, stride_qb, s_grp, nzf_grp,
        GROUP_SIZE, HAS_ZEROS, HAS_GIDX, BLOCK_K, BLOCK_N, DTYPE, USE_ASM, EVEN_K,
    )
    offs_k = k0 + tl.arange(0, BLOCK_K)
    w = (w.to(tl.float32) * s[:, None]).to(DTYPE)
    tl.store(w_ptr + offs_n[:, None] * K + offs_k[None, :], w, mask=n_mask[:, None] & (offs_k[None, :] < K))
