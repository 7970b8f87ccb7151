"""``quantkernels::triton_linear``: the Triton kernels as a ``torch.library.triton_op``.

``triton_op`` makes the op's body visible to ``torch.compile`` (Inductor sees the kernel launches
through ``wrap_triton``), and the same body, run on fake tensors, is the op's fake implementation.

Two weight layouts. 4-bit layers arrive in the backend's nk4 layout (uint8 ``qweight``, see
kernels.py): ``qgemm_nk4_kernel`` serves every m below ``DEQUANT_MIN_M`` (m = 1 pads to the 16-row
MMA tile), and from there on ``dequant_nk4_kernel`` + cuBLAS or big fused tiles, whichever the tuner
measures faster. 8-bit layers use the portable int32 ``qweight``: ``qgemv_kernel`` for m = 1,
``qgemm_kernel`` (tiled ``tl.dot``) up to ``DEQUANT_MIN_M``, and above it ``dequant_kernel`` then
cuBLAS (``torch.mm``), which measured faster for compute-bound sizes on the H100 (docs/triton.md).

Tuning: each family has a short list of candidate configurations. The first eager call of a key
``(family, m bucket, N, K, format, dtypes)`` times every candidate on the real tensors (replayed from
a CUDA graph, so the Python launch path does not hide the kernel time) and caches the fastest in
:data:`CHOSEN`; later calls, and ``torch.compile`` traces, launch that choice directly.
(``triton.autotune`` does the same, but its per-call bookkeeping cost about 100 us of CPU time per
launch with triton 3.6 on the H100 host, more than a whole m = 1 kernel.) Under
``TRITON_INTERPRET=1`` (CPU tests) nothing is timed: the first candidate runs, or one set by
:func:`force_config`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Dict, List, Optional, Tuple

import torch
import triton
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch._subclasses.functional_tensor import FunctionalTensor

from . import kernels

INTERPRETED = not isinstance(kernels.qgemm_kernel, triton.runtime.JITFunction)
# Inline PTX for the 4-bit unpacking: NVIDIA GPUs only (not the interpreter, not ROCm).
_USE_ASM = not INTERPRETED and torch.version.hip is None

SPLIT_K_MAX_M = 64  # split-K only for m <= this; larger m has enough output tiles to fill the GPU
WORKSPACE_ROWS = 16  # rows up to which a caller's persistent workspace serves split-K (see workspace_floats)
DEQUANT_MIN_M = 256  # from here on: dequantize, then cuBLAS (measured faster on the H100)


def m_bucket(m: int) -> int:
    """Power of two at or above m, capped at 4096: the tuning cache's m."""
    b = 1
    while b < m and b < 4096:
        b *= 2
    return b


def workspace_floats(n: int) -> int:
    """Size of the fp32 workspace a layer of N outputs may pass to ``triton_linear`` (zeros; the
    kernels leave it zero): ``WORKSPACE_ROWS * N`` partial sums, then the int32 arrival counters of
    the (16 x 16) output tiles of ``WORKSPACE_ROWS`` rows. With it, split-K calls of up to
    ``WORKSPACE_ROWS`` rows launch no zero-fill of their own (two memsets fewer per call)."""
    return WORKSPACE_ROWS * n + triton.cdiv(WORKSPACE_ROWS, 16) * triton.cdiv(n, 16)


def _cfg(num_warps=4, num_stages=3, **meta) -> triton.Config:
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


def _gemm(bm, bn, bk, sk, w, st, swap, u3=True, gm=8) -> triton.Config:
    return _cfg(
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, GROUP_M=gm, SWAP_AB=swap, UNPACK_3D=u3,
        num_warps=w, num_stages=st,
    )


# Candidates per family, from the sweeps of benchmarks/triton_gemm.py on the H100 (int4 g128 fp16).
CONFIGS: Dict[str, List[triton.Config]] = {
    "gemv": [
        _cfg(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=w, num_stages=st)
        for (bn, bk, sk, w, st) in [
            (64, 128, 8, 4, 3),
            (64, 128, 4, 4, 3),
            (128, 128, 8, 4, 4),
            (256, 128, 4, 8, 3),
            (128, 128, 4, 4, 3),
            (64, 256, 4, 4, 3),
        ]
    ],
    # m <= 16: memory-bound; the weight is the wide MMA side (SWAP_AB), split K to fill the GPU.
    # (16, 128, 128) without UNPACK_3D was dropped: its full int32 tile per stage needed 240 KiB of
    # shared memory on the H100, more than the GPU has.
    "small": [
        _gemm(16, 64, 128, 4, 4, 4, True),
        _gemm(16, 64, 128, 4, 4, 4, True, False),
        _gemm(16, 128, 128, 4, 4, 4, True),
        _gemm(16, 64, 128, 2, 4, 4, True),
        _gemm(16, 128, 64, 8, 4, 4, True, False),
    ],
    # 17 <= m <= 64: still mostly memory-bound.
    "medium": [
        _gemm(64, 64, 128, 4, 4, 4, True),
        _gemm(64, 128, 128, 1, 4, 4, True),
        _gemm(64, 128, 128, 2, 4, 4, True),
        _gemm(64, 64, 128, 4, 4, 4, True, False),
        _gemm(32, 64, 128, 4, 4, 4, True, False),
    ],
    # 64 < m < DEQUANT_MIN_M: big tiles, no split.
    "large": [
        _gemm(128, 64, 64, 1, 4, 4, False),
        _gemm(128, 128, 128, 1, 8, 3, False),
        _gemm(128, 128, 64, 1, 8, 3, True),
        _gemm(128, 64, 64, 1, 4, 4, True),
        _gemm(64, 128, 64, 1, 4, 4, False),
    ],
    "dequant": [_cfg(BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=1) for (bn, bk) in [(128, 64), (256, 64)]],
}


def _nk4(bm, bn, bk, sk, w, st, gm=8, scale_w=False, prefetch_s=False, split_inner=False) -> triton.Config:
    return _cfg(
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, GROUP_M=gm, SCALE_W=scale_w, PREFETCH_S=prefetch_s,
        SPLIT_INNER=split_inner, num_warps=w, num_stages=st,
    )


def _nk4_stream_k(bm, bn, bk, per_sm, w, st, scale_w=False, prefetch_s=False) -> triton.Config:
    """``qgemm_nk4_streamk_kernel`` on a grid of ``per_sm`` programs an SM, which deal the layer's
    work evenly (per_sm: the programs that fit an SM, from the registers and shared memory that
    ``benchmarks/triton_gemm.py --only asm`` reports)."""
    return _cfg(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, STREAM_K=per_sm, SCALE_W=scale_w, PREFETCH_S=prefetch_s,
                num_warps=w, num_stages=st)


def _nk4_dequant(bn, bk, w=4) -> triton.Config:
    return _cfg(BLOCK_N=bn, BLOCK_K=bk, DEQUANT=True, num_warps=w, num_stages=1)


# 4-bit weights in the nk4 layout (qgemm_nk4_kernel; m = 1 pads to the 16-row MMA tile). Swap-AB
# always: the weight tile is the MMA's 64-row side, the activations the narrow one. "dequant" mixes
# dequantize + cuBLAS (DEQUANT) with big fused tiles; the tuner keeps the faster per shape.
CONFIGS_NK4: Dict[str, List[triton.Config]] = {  # BLOCK_K: a multiple of the layout's 128 columns
    # Order: the best of the 2026-11-23 H100 sweep first (what a torch.compile trace launches before
    # any eager call has tuned). BLOCK_K = 256 measured 3x slower than 128 everywhere: not listed.
    # PREFETCH_S (the next K tile's scales loaded one iteration ahead): timed on the H100 on
    # 2026-11-23 08:38 (docs/triton.md, fourth round), where it won at m = 1 on both large shapes.
    # Split-K 5 / 6 / 7 / 12 (K tiles dealt evenly) were added to fill whole waves of 132 SMs (the
    # 16 x 64 tile: 79 registers, 6 programs an SM, or 95 with PREFETCH_S, 5); SPLIT_INNER runs a
    # tile's splits side by side. On the H100 (2026-11-23 15:40) SPLIT_INNER won on both large
    # shapes (K x N 8192x28672: split 8 54.8 us against 62.4 tiles outer; 28672x8192: split 12 58.8
    # against 64.9 for the old best), the wave counts alone did not.
    "gemv": [
        _nk4(16, 64, 128, 8, 4, 4),
        _nk4(16, 64, 128, 8, 4, 3, prefetch_s=True),
        _nk4(16, 64, 128, 8, 4, 4, prefetch_s=True),
        _nk4(16, 64, 128, 16, 4, 4, prefetch_s=True),
        _nk4(16, 64, 128, 16, 4, 4),
        _nk4(16, 64, 128, 8, 4, 3, prefetch_s=True, split_inner=True),
        _nk4(16, 64, 128, 6, 4, 4),
        _nk4(16, 64, 128, 6, 4, 4, split_inner=True),
        _nk4(16, 64, 128, 5, 4, 4, prefetch_s=True, split_inner=True),
        _nk4(16, 64, 128, 7, 4, 4),
        _nk4(16, 64, 128, 7, 4, 4, split_inner=True),
        _nk4(16, 64, 128, 7, 4, 4, prefetch_s=True, split_inner=True),
        _nk4(16, 64, 128, 12, 4, 4, split_inner=True),
    ],
    "small": [  # the same first candidate as "gemv": one compile serves both untuned
        _nk4(16, 64, 128, 8, 4, 4),
        _nk4(16, 64, 128, 8, 4, 4, prefetch_s=True),
        _nk4(16, 64, 128, 4, 4, 4),
        _nk4(16, 64, 128, 4, 4, 4, prefetch_s=True),
        _nk4(16, 128, 128, 4, 4, 4),
        _nk4(16, 128, 128, 2, 8, 4),
        _nk4(16, 64, 128, 2, 4, 4),
        # The m = 1 winner's split (8, SPLIT_INNER, PREFETCH_S, 3 stages) won at m = 8 and 16 on three
        # of the four layers of the H100 sweep of 2026-11-24 02:58 (m = 16: 8192x28672 58.9 against
        # 65.4 us for the old best, 4096x14336 20.7 against 21.4, 14336x4096 17.6 against 18.0; not
        # 8192x8192: 24.2 against 20.8); without PREFETCH_S it came second on two. Tried there and not
        # kept: split 4 and 16 with SPLIT_INNER, 16 x 32 tiles (2 warps), 16 x 128 split 4.
        _nk4(16, 64, 128, 8, 4, 3, prefetch_s=True, split_inner=True),
        _nk4(16, 64, 128, 8, 4, 4, split_inner=True),
    ],
    # 17 <= m <= 64: SCALE_W (weights scaled before an in-place dot, which lets Triton keep one wgmma
    # in flight across iterations) won with 8 warps. A 256-wide weight tile (x read from L2 once per
    # 256 outputs) won on 28672x8192; PREFETCH_S on the 128-wide SCALE_W tiles lost 25-60%.
    "medium": [
        _nk4(64, 128, 128, 4, 8, 4, scale_w=True),
        _nk4(64, 256, 128, 1, 8, 3, scale_w=True, prefetch_s=True),
        _nk4(64, 256, 128, 1, 8, 3, scale_w=True),
        _nk4(64, 256, 128, 2, 8, 3, scale_w=True, prefetch_s=True),
        _nk4(64, 128, 128, 1, 4, 4),
        _nk4(64, 128, 128, 2, 8, 4, scale_w=True),
        _nk4(64, 64, 128, 2, 4, 4),
        # Whole waves at 1-2 programs an SM: 28672x8192 has 32 tiles of 256 (split 4: 128 programs) and
        # 64 of 128 (split 4: 256); 8192x28672 224 tiles of 128 (split 7: 1568, six waves of 264).
        _nk4(64, 256, 128, 4, 8, 3, scale_w=True, split_inner=True),
        # The 8192x28672 winner's tile (PREFETCH_S: 84 against 120 us without, same tile, 17:46 tuner)
        # split 4 on 28672x8192: 128 programs, one an SM.
        _nk4(64, 256, 128, 4, 8, 3, scale_w=True, prefetch_s=True, split_inner=True),
        _nk4(64, 128, 128, 4, 8, 4, scale_w=True, split_inner=True),
        _nk4(64, 128, 128, 7, 8, 4, scale_w=True, split_inner=True),
        # On the K-block-major layout (2026-11-25 16:53 tuner): split 8 of the 256-wide tile won on
        # 14336x4096 (26.9 against 29.8 us), split 2 on 4096x14336 (29.6 against 30.2).
        _nk4(64, 256, 128, 8, 8, 3, scale_w=True, prefetch_s=True, split_inner=True),
        _nk4(64, 256, 128, 2, 8, 3, scale_w=True, prefetch_s=True, split_inner=True),
        # Stream-K, one program an SM (sm_90, triton 3.9: 232 registers x 256 threads; the K loop is
        # the split-K kernel's, 390 against 386 SASS instructions, fp16). H100 tuner, 2026-11-25 16:53
        # (K-block-major layout), m = 64: 4-14% behind the best split on the five large layers, never
        # the best (81.2 against 78.4 us on 8192x28672, 79.1 against 73.9 on 28672x8192); kept for
        # layers whose tiles fill waves worse. Without PREFETCH_S (109-114 us on those two) and the
        # 128-wide tile (126-129 us; 161 registers, so one program an SM where the split kernel fits
        # two) it was slower still: dropped.
        _nk4_stream_k(64, 256, 128, 1, 8, 3, scale_w=True, prefetch_s=True),
    ],
    "large": [
        _nk4(128, 64, 128, 1, 4, 4),
        _nk4(64, 128, 128, 1, 4, 4),
        _nk4(128, 128, 128, 1, 8, 3),
        _nk4(128, 256, 128, 1, 8, 3, scale_w=True, prefetch_s=True),
        _nk4(64, 64, 128, 1, 4, 4),
    ],
    # m >= 256: dequantize to W [N, K] + cuBLAS, or the fused 128 x 256 tile (x rows x outputs,
    # SCALE_W), which measured within 1% of it at m = 1024 (ahead on 28672x8192, behind on
    # 8192x28672); 256 x 128 and 128 x 128 fused tiles lost by 25-100%.
    "dequant": [
        _nk4_dequant(64, 128),
        _nk4_dequant(128, 128, 8),
        _nk4(128, 256, 128, 1, 8, 3, scale_w=True, prefetch_s=True),
        # 4 stages: 821 against 849 us (3 stages) and 878 (dequantize + cuBLAS) on 8192x28672 at m = 1024.
        _nk4(128, 256, 128, 1, 8, 4, scale_w=True, prefetch_s=True),
    ],
}


def smem_estimate(cfg: triton.Config, nk4: bool, bits: int = 4, per_weight_bytes: int = 0) -> int:
    """Bytes of shared memory a candidate needs, at least what Triton allocates for it.

    Triton's pipeliner stages the loads of each K step through shared memory: x ``[BLOCK_M, BLOCK_K]``
    (2 bytes), the weight words and, when a K tile spans several groups (group smaller than BLOCK_K,
    or act_order), the per-weight scale and zero-point tiles (``per_weight_bytes`` a weight: the
    H100 run of 2026-11-23 08:43 needed 264 KiB, 3 x 88 KiB, for a 128 x 128 tile with 4 stages of a
    g32 asymmetric layer). Compiled for sm_90 with the arguments specialised as a real launch does,
    Triton 3.9 allocated ``(stages - 1)`` copies of them, one more x tile and up to 16 KiB of
    layout-conversion scratch for every nk4 candidate; triton 3.6 on the H100 allocated two more x
    tiles for a g32 128 x 128 tile with 3 stages (240 KiB). The larger of ``(stages - 1)`` copies +
    2 x tiles + 16 KiB and one copy of x and the words per stage bounds all of these, and the 8-bit
    tile that needed 240 KiB on the H100."""
    kw = cfg.kwargs
    if "BLOCK_M" not in kw or kw.get("DEQUANT", False):
        return 0  # the GEMV and dequantize kernels stage (almost) nothing in shared memory
    bk, bn, st = kw["BLOCK_K"], kw["BLOCK_N"], cfg.num_stages
    x = kw["BLOCK_M"] * bk * 2
    if nk4:
        words = bn * bk // 2
    elif kw.get("UNPACK_3D", True):
        words = bk * bn * bits // 8
    else:
        words = bk * bn * 4  # every row loads its word: a full int32 tile
    step = x + words + bk * bn * per_weight_bytes
    return max(st * (x + words), (st - 1) * step + 2 * x + 16 * 1024)


def _smem_limit(device) -> int:
    """The shared memory one program may use on ``device`` (opt-in maximum), or unlimited."""
    if device is None or device.type != "cuda" or INTERPRETED:
        return 1 << 62
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "shared_memory_per_block_optin", 0) or props.shared_memory_per_block

def _l2_flush(device: torch.device) -> Tensor:
    """A buffer of twice ``device``'s L2 size: writing it evicts what the L2 held (the tuner's flush)."""
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or (50 << 20)
    return torch.empty(2 * l2, dtype=torch.uint8, device=device)


@functools.lru_cache(maxsize=None)
def _l2_flush_ms(device: torch.device) -> float:
    """The time of one flush (graph method), measured once per device: the tuner subtracts it."""
    return triton.testing.do_bench_cudagraph(_l2_flush(device).zero_, rep=20, return_mode="median")


def _sm_count(device) -> int:
    """SMs of ``device`` (the stream-K grid); 2 in the interpreter, so that its runs cross tiles."""
    if device.type != "cuda" or INTERPRETED:
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


CHOSEN: Dict[Tuple, triton.Config] = {}
TIMINGS: Dict[Tuple, List[Tuple[float, triton.Config]]] = {}  # the tuner's (ms, candidate) per key, fastest first
_forced = None
_tuning = True


def _family(m: int) -> str:
    if m == 1:
        return "gemv"
    if m <= 16:
        return "small"
    if m <= SPLIT_K_MAX_M:
        return "medium"
    return "large" if m < DEQUANT_MIN_M else "dequant"


def _configs(family: str, nk4: bool = False, device=None, bits: int = 4, group_size: int = -1,
             has_gidx: bool = False, scale_bytes: int = 2, has_zeros: bool = True) -> List[triton.Config]:
    """The family's candidates that fit ``device``'s shared memory (all of them when None) for a
    layer of this format (group size -1: per channel)."""
    limit = _smem_limit(device)

    def per_weight_bytes(c):  # the kernels' TILE_IN_GROUP is false (per channel: one group as long as K)
        if has_gidx or (group_size != -1 and group_size % c.kwargs["BLOCK_K"] != 0):
            return scale_bytes + has_zeros
        return 0

    cands = (CONFIGS_NK4 if nk4 else CONFIGS)[family]
    need = {id(c): smem_estimate(c, nk4, bits, per_weight_bytes(c)) for c in cands}
    fit = [c for c in cands if need[id(c)] <= limit]
    # The estimate is conservative (gathered act_order scales, for one, are not staged at all): when
    # nothing fits by it, the smallest candidate rather than none.
    return fit or [min(cands, key=lambda c: need[id(c)])]


@contextlib.contextmanager
def force_config(config):
    """Launch with a fixed configuration instead of the tuned one (tests, tuning sweeps).

    ``config``: a ``triton.Config`` whose kwargs suit the kernel the calls pick (see ``CONFIGS``),
    or a dict ``{family: Config}``; families it leaves out use the tuned choice.
    """
    global _forced
    old, _forced = _forced, config
    try:
        yield
    finally:
        _forced = old


@contextlib.contextmanager
def tuning(enabled: bool):
    """Time the candidates at a key's first call (on, the default) or launch each family's first
    candidate untimed and cache nothing (off). Tests turn it off: timing every candidate of every
    format and m bucket made the GPU test file spend minutes compiling and timing."""
    global _tuning
    old, _tuning = _tuning, enabled
    try:
        yield
    finally:
        _tuning = old


def _forced_config(family: str) -> Optional[triton.Config]:
    if isinstance(_forced, dict):
        return _forced.get(family)
    return _forced


def _launch_opts(cfg: triton.Config) -> dict:
    return {} if INTERPRETED else dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _meta(cfg: triton.Config) -> dict:
    return dict(cfg.kwargs, **_launch_opts(cfg))


def _choose(family: str, key: Tuple, launch, real: bool, nk4: bool, device, bits: int) -> triton.Config:
    """The configuration for ``key``: forced, cached, or timed now (eager calls on a GPU only)."""
    cfg = _forced_config(family)
    if cfg is not None:
        return cfg
    # A trace with dynamic shapes (torch.compile, opcheck's aot_dispatch_dynamic) has SymInts in the
    # key, which cannot be hashed: it launches the first candidate, as an untuned call does.
    symbolic = any(isinstance(v, torch.SymInt) for v in key)
    cfg = None if symbolic else CHOSEN.get(key)
    if cfg is not None:
        return cfg
    candidates = _configs(family, nk4, device, bits, group_size=key[6], has_gidx=key[8],
                          scale_bytes=key[11].itemsize, has_zeros=key[7])
    if symbolic:
        return candidates[0]
    if INTERPRETED or not real or not _tuning or len(candidates) == 1:
        return candidates[0]
    if torch.cuda.is_current_stream_capturing():
        # Timing needs launches outside the capture and a synchronize, which a capture forbids: a
        # key first met while a CUDA graph is captured launches the first candidate, untuned and
        # not cached, so that the first eager call still tunes it.
        return candidates[0]
    best, best_t = candidates[0], float("inf")
    times = []
    # Each timed launch follows a write of twice the L2's size, which evicts the weights: a model's
    # layers reach the kernel from DRAM, and a layer smaller than the L2 timed back to back (as before
    # 2026-11-24) ran from the L2 and was tuned for that. The write's own time (measured once per
    # device, the same way) is subtracted.
    flush, t_flush = _l2_flush(device), _l2_flush_ms(device)
    for c in candidates:
        try:
            launch(c)  # compile outside the capture
            # do_bench_cudagraph runs on a stream of its own, which nothing orders after this one:
            # without the wait, its first launch can overlap the launch above (or run before the
            # zero-fill of a fresh workspace), two launches then count arrivals in one split-K
            # counter, and the counter is left off zero for the next call. (A wrong, bias-only output
            # seen once on an H100, 2026-11-23 16:10, fits this race; it did not reproduce.)
            torch.cuda.current_stream(device).synchronize()
            # Replayed from a CUDA graph: the kernel's time, not the Python launch path's.
            def flushed_launch(c=c):
                flush.zero_()
                launch(c)

            t = triton.testing.do_bench_cudagraph(flushed_launch, rep=20, return_mode="median") - t_flush
        except triton.runtime.errors.OutOfResources:
            # smem_estimate keeps the listed candidates within the GPU; this guards another Triton
            # version allocating more (tests/triton_cases.py asserts none does on the tested GPU).
            continue
        times.append((t, c))
        if t < best_t:
            best, best_t = c, t
    CHOSEN[key] = best
    TIMINGS[key] = sorted(times, key=lambda tc: tc[0])
    return best


def _check_args(x, qweight, scales, zeros, g_idx, bias, bits, group_size, workspace) -> None:
    """Raise naming the argument: the kernels read raw pointers and trust these shapes."""
    name = "quantkernels::triton_linear"
    if bits not in (4, 8):
        raise ValueError(f"{name}: bits must be 4 or 8, got {bits}")
    if x.dim() != 2 or x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"{name}: x must be 2-D float16/bfloat16 [M, K], got {x.dtype} {tuple(x.shape)}")
    k = x.shape[1]
    if qweight.dtype == torch.uint8 and bits == 4:  # nk4 layout (see kernels.py)
        kp = -(-k // 128) * 128
        if qweight.dim() != 3 or qweight.shape[0] * 128 != kp or qweight.shape[2] != 64:
            raise ValueError(
                f"{name}: 4-bit nk4 qweight must be uint8 [Kp/128, N, 64] = [{kp // 128}, N, 64] (Kp = K rounded "
                f"up to 128), got {tuple(qweight.shape)}"
            )
        n = qweight.shape[1]
    elif qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[0] * 32 != k * bits:
        raise ValueError(
            f"{name}: qweight must be int32 [K*bits/32, N] = [{k * bits // 32}, N] (or nk4 uint8 for 4 bits), "
            f"got {qweight.dtype} {tuple(qweight.shape)}"
        )
    else:
        n = qweight.shape[1]
    if group_size != -1 and (group_size <= 0 or k % group_size):
        raise ValueError(f"{name}: group_size must be -1 or divide K={k}, got {group_size}")
    g = 1 if group_size == -1 else k // group_size
    if g_idx is not None:  # act_order: g_idx indexes the rows of scales
        g = scales.shape[0]
    if scales.dim() != 2 or scales.shape[1] != n or scales.shape[0] != g:
        raise ValueError(f"{name}: scales must be [G, N] = [{g}, {n}], got {tuple(scales.shape)}")
    if zeros is not None and (zeros.dtype != torch.uint8 or tuple(zeros.shape) != tuple(scales.shape)):
        raise ValueError(f"{name}: zeros must be uint8 {tuple(scales.shape)}, got {zeros.dtype} {tuple(zeros.shape)}")
    if g_idx is not None and (g_idx.dtype != torch.int32 or tuple(g_idx.shape) != (k,)):
        raise ValueError(f"{name}: g_idx must be int32 [K] = [{k}], got {g_idx.dtype} {tuple(g_idx.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"{name}: bias must be [N] = [{n}], got {tuple(bias.shape)}")
    if workspace is not None and (workspace.dtype != torch.float32 or tuple(workspace.shape) != (workspace_floats(n),)):
        raise ValueError(
            f"{name}: workspace must be float32 [workspace_floats(N)] = [{workspace_floats(n)}], "
            f"got {workspace.dtype} {tuple(workspace.shape)}"
        )
    tensors = (("qweight", qweight), ("scales", scales), ("zeros", zeros), ("g_idx", g_idx), ("bias", bias),
               ("workspace", workspace))
    for t_name, t in tensors:
        if t is not None and (t.device != x.device or not t.is_contiguous()):
            raise ValueError(f"{name}: {t_name} must be contiguous and on x's device {x.device}, got {t.device}")


@torch.library.triton_op("quantkernels::triton_linear", mutates_args=())
def triton_linear(
    x: Tensor,
    qweight: Tensor,
    scales: Tensor,
    zeros: Optional[Tensor],
    g_idx: Optional[Tensor],
    bias: Optional[Tensor],
    bits: int,
    group_size: int,
    workspace: Optional[Tensor] = None,
) -> Tensor:
    """``x @ W.T + bias`` for x ``[M, K]`` fp16/bf16, W in the portable layout (int32 ``qweight``
    ``[K*bits/32, N]``) or, for 4 bits, the nk4 layout (uint8 ``[Kp/128, N, 64]``, see kernels.py).

    ``zeros``: uint8 ``[G, N]`` real zero points, or None when all are ``2**(bits-1)``; ``g_idx``:
    int32 ``[K]``, or None when it is ``k // group_size``; ``group_size``: -1 for per channel.
    ``workspace``: None, or fp32 zeros ``[workspace_floats(N)]`` that split-K calls of up to
    ``WORKSPACE_ROWS`` rows use instead of zero-filling buffers of their own. The kernels leave it
    zero again, so it is not declared as mutated (as ``cuda_wxa16_gemm``'s workspace); calls that
    share one workspace must not run at the same time (on two streams). Traced calls (torch.compile)
    ignore it and allocate their own.
    """
    _check_args(x, qweight, scales, zeros, g_idx, bias, bits, group_size, workspace)
    if x.stride(1) != 1:
        x = x.contiguous()
    m, k = x.shape
    nk4 = qweight.dtype == torch.uint8
    n = qweight.shape[1]
    family = _family(m)
    fake = is_fake(x)
    if INTERPRETED and fake and isinstance(x, FunctionalTensor):
        # The interpreter runs Python on real data: it cannot be traced into a graph (a GPU can).
        raise RuntimeError("quantkernels::triton_linear: torch.compile cannot trace the Triton interpreter; use a GPU")
    consts = dict(
        # Per channel: one group as long as K, rounded up so that every K tile lies inside it.
        GROUP_SIZE=triton.cdiv(k, 512) * 512 if group_size == -1 else group_size,
        HAS_ZEROS=zeros is not None,
        HAS_GIDX=g_idx is not None,
    )
    if not nk4:
        consts["BITS"] = bits
    z = scales if zeros is None else zeros
    gi = scales if g_idx is None else g_idx
    key = (family, m_bucket(m), n, k, bits, nk4, group_size, zeros is not None, g_idx is not None, bias is not None,
           x.dtype, scales.dtype, x.device)
    if m == 0 or (INTERPRETED and fake):
        return x.new_empty((m, n))
    if fake:  # inside a trace the kernels' writes to a caller's workspace would be hidden from it
        workspace = None
    if nk4:
        return _linear_nk4(x, qweight, scales, z, gi, bias, consts, family, key, fake, workspace)

    if family == "dequant":
        wt = torch.empty((k, n), dtype=x.dtype, device=x.device)
        kernel = torch.library.wrap_triton(kernels.dequant_kernel)

        def launch(c):
            grid = (triton.cdiv(n, c.kwargs["BLOCK_N"]), triton.cdiv(k, c.kwargs["BLOCK_K"]))
            kernel[grid](qweight, scales, z, gi, wt, n, k, **consts, **_meta(c))

        launch(_choose(family, key, launch, not fake, False, x.device, bits))
        out = torch.mm(x, wt)
        return out if bias is None else out + bias.to(out.dtype)

    out = x.new_empty((m, n))
    rows = 1 if family == "gemv" else m
    ws, cnt = _split_k_buffers(rows, n, x.device, family != "large", out, workspace)
    b = scales if bias is None else bias
    consts["HAS_BIAS"] = bias is not None
    if family == "gemv":
        kernel = torch.library.wrap_triton(kernels.qgemv_kernel)

        def launch(c):
            grid = (triton.cdiv(n, c.kwargs["BLOCK_N"]), c.kwargs["SPLIT_K"])
            kernel[grid](x, qweight, scales, z, gi, b, out, ws, cnt, n, k, **consts, **_meta(c))

    else:
        kernel = torch.library.wrap_triton(kernels.qgemm_kernel)

        def launch(c):
            grid = (triton.cdiv(m, c.kwargs["BLOCK_M"]) * triton.cdiv(n, c.kwargs["BLOCK_N"]), c.kwargs["SPLIT_K"])
            kernel[grid](x, qweight, scales, z, gi, b, out, ws, cnt, m, n, k, x.stride(0), **consts, **_meta(c))

    launch(_choose(family, key, launch, not fake, False, x.device, bits))
    return out


def _split_k_buffers(rows: int, n: int, device, needed: bool, dummy: Tensor, workspace: Optional[Tensor]):
    """fp32 partial sums ``[rows, N]`` and one int32 arrival counter per (16 x 16) output tile (the
    smallest tile any configuration uses), zero on entry (the kernels leave them zero): views of the
    caller's ``workspace`` when it is given and ``rows <= WORKSPACE_ROWS``, else fresh zeros; when no
    configuration splits K, ``dummy`` stands in for both (never touched).

    Fresh buffers are two separate tensors, not two views of one (the workspace's views are taken in
    eager calls only, never traced): Inductor in torch 2.11 lowered the int32
    ``view`` of a slice of one zeroed fp32 buffer into a copy that read past its source, so compiled
    calls started with a garbage counter and returned unwritten outputs (seen on an H100)."""
    if not needed:
        return dummy, dummy
    if workspace is not None and rows <= WORKSPACE_ROWS:
        return workspace[: rows * n], workspace[WORKSPACE_ROWS * n :].view(torch.int32)
    tiles = triton.cdiv(rows, 16) * triton.cdiv(n, 16)
    ws = torch.zeros(rows * n, dtype=torch.float32, device=device)
    cnt = torch.zeros(tiles, dtype=torch.int32, device=device)
    return ws, cnt


def _linear_nk4(x, qt, scales, z, gi, bias, consts, family, key, fake, workspace):
    """4-bit weights in the nk4 layout: qgemm_nk4_kernel, or dequant_nk4_kernel + cuBLAS."""
    m, k = x.shape
    n = qt.shape[1]
    if qt.stride(2) != 1 or qt.stride(1) % 4 or qt.stride(0) % 4:
        qt = qt.contiguous()  # the kernels read whole int32 words
    consts["USE_ASM"] = _USE_ASM and x.device.type == "cuda"
    out = x.new_empty((m, n))
    ws, cnt = _split_k_buffers(m, n, x.device, m <= SPLIT_K_MAX_M, out, workspace)
    b = scales if bias is None else bias
    gemm = torch.library.wrap_triton(kernels.qgemm_nk4_kernel)
    stream_k = torch.library.wrap_triton(kernels.qgemm_nk4_streamk_kernel)
    deq = torch.library.wrap_triton(kernels.dequant_nk4_kernel)
    result = [out]

    stride_qn, stride_qb = qt.stride(1) // 4, qt.stride(0) // 4  # in int32 words
    kp = qt.shape[0] * 128

    def launch(c):
        kw = dict(c.kwargs)
        even_k = k % kw["BLOCK_K"] == 0 and kp == k
        if kw.pop("DEQUANT", False):
            w = torch.empty((n, k), dtype=x.dtype, device=x.device)
            grid = (triton.cdiv(n, kw["BLOCK_N"]), triton.cdiv(k, kw["BLOCK_K"]))
            deq[grid](qt, scales, z, gi, w, n, k, stride_qn, stride_qb, **consts, **kw, EVEN_K=even_k, **_launch_opts(c))
            mm = torch.mm(x, w.t())
            result[0] = mm if bias is None else mm + bias.to(mm.dtype)
        elif "STREAM_K" in kw:
            units = triton.cdiv(m, kw["BLOCK_M"]) * triton.cdiv(n, kw["BLOCK_N"]) * triton.cdiv(k, kw["BLOCK_K"])
            grid = (max(1, min(units, kw.pop("STREAM_K") * _sm_count(x.device))),)
            stream_k[grid](x, qt, scales, z, gi, b, out, ws, cnt, m, n, k, x.stride(0), stride_qn, stride_qb,
                           **consts, HAS_BIAS=bias is not None, **kw, EVEN_K=even_k, DOT_F32=INTERPRETED,
                           **_launch_opts(c))
            result[0] = out
        else:
            tiles = triton.cdiv(m, kw["BLOCK_M"]) * triton.cdiv(n, kw["BLOCK_N"])
            grid = (tiles * kw["SPLIT_K"], 1) if kw.get("SPLIT_INNER") else (tiles, kw["SPLIT_K"])
            gemm[grid](x, qt, scales, z, gi, b, out, ws, cnt, m, n, k, x.stride(0), stride_qn, stride_qb,
                       **consts, HAS_BIAS=bias is not None, **kw, EVEN_K=even_k, DOT_F32=INTERPRETED,
                       **_launch_opts(c))
            result[0] = out

    cfg = _choose(family, key, launch, not fake, True, x.device, 4)
    if (SPLIT_K_MAX_M < m) and (cfg.kwargs.get("SPLIT_K", 1) > 1 or "STREAM_K" in cfg.kwargs):
        raise ValueError(f"quantkernels::triton_linear: split-K configuration {cfg} for m = {m} > {SPLIT_K_MAX_M}")
    launch(cfg)
    return result[0]
