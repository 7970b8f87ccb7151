"""The CUDA backend: hand-written W4A16 / W8A16 kernels (``csrc/cuda/``) behind ``QuantLinear``.

Serves 4- and 8-bit weights (any group size, symmetric or asymmetric, with or without act_order)
with float16 or bfloat16 activations on NVIDIA GPUs of compute capability 8.0 or newer.

At ``prepare`` the portable ``qweight`` is replaced by the *mma-shuffled* layout (bit by bit in
``csrc/cuda/wxa16.h``; :func:`shuffle` / :func:`unshuffle` below are its pack/unpack pair), so the
GPU holds one copy of the weights; :meth:`CudaBackend.to_portable` rebuilds the exact portable
tensors. With act_order the input columns are sorted by group once here, and each call permutes
the activation's columns to match.

Dispatch by the number of rows m of the activation:

* ``m <= GEMM_MAX_M``: ``quantkernels::cuda_wxa16_gemm``, one tensor-core kernel (mma.sync
  m16n8k16, weights as the A operand, dequantized in registers, fp32 accumulation) that reads the
  weights once per 32 rows (once per 64 with its middle-m tiles, which stage the activations in
  shared memory and serve 64 < m <= 128 on large layers); its tile shape is chosen by m and the
  layer's shape inside the kernel. Up to ``STREAMK_MAX_M`` rows (one row for 4-bit layers) each layer
  gives it its own workspace, so that its stream-K tiles can share the weight stream equally among all SMs; from
  ``MID_MIN_M`` rows a workspace shared per (device, stream), for the middle-m tiles' split of K
  over blocks.
* larger m: ``quantkernels::cuda_wxa16_dequantize`` to a dense fp16/bf16 weight (a bandwidth-bound
  kernel, ~2.85 TB/s on an H100), then cuBLAS.

``GEMM_MAX_M`` comes from ``benchmarks/gpu_gemm.py`` on an H100 (see ``benchmarks/NOTES_gpu.md``).

On a Hopper GPU with an sm_90a build, the (m, layer) cells of ``WGMMA_CELLS`` (17 <= m <= 4096, by
layer size) go instead to ``quantkernels::cuda_wxa16_gemm_wgmma``: the same weights and formula on the
warpgroup tensor-core instruction (csrc/cuda/wxa16_gemm_sm90.cu), where it measured faster. Where a layer
has too few output tiles for the SMs it splits K: over the blocks of a cluster (parts summed in
distributed shared memory) or stream-K over one wave, through a workspace shared per (device, stream) of
:func:`wgmma_workspace_floats` that the backend gives it up to ``WGMMA_SPLIT_MAX_M`` rows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Optional, Tuple

import torch

from .. import _ext
from ..formats import is_trivial_g_idx
from ..reference import pack, unpack

ACT_DTYPES = (torch.float16, torch.bfloat16)
GEMM_MAX_M = 128  # largest m for the fused kernel: on an H100 it wins at 128 on 5 of the 6 benchmark
# layers (06:48 run: loses by ~6% on 4096x4096) and loses at 256 on all, middle-m tiles included
# (benchmarks/NOTES_gpu.md)


MID_MIN_M = 65  # rows from which the GEMM may pick a middle-m tile, which splits K over blocks in a shared workspace
STREAMK_MAX_M = 8  # rows up to which the GEMM gets the layer's workspace (its stream-K tiles serve one pass of 8)

# The Hopper wgmma GEMM (csrc/cuda/wxa16_gemm_sm90.cu) serves the (m, layer) cells where it measured
# faster than the two paths above on an H100 (benchmarks/NOTES_gpu.md, `gpu_gemm.py --wgmma`, 21:21-21:34
# runs of 2026-11-23, after its 128-column stages, and 02:53 of 2026-11-24, after its split of K), where
# the GPU and the build have it (CudaState.wgmma): rows (lo, hi] -> the fewest weights N x K of a layer
# at least as wide as deep (N >= K), and of the others. m <= 16 never (the mma.sync tiles stream the
# weights once); 17-256 on layers from 2^25 weights (8192x28672 m=32: 61.1 against 82.0 us; 4096x14336
# m=24: 20.8 against 23.4, m=64: 25.0 against 40.8; 14336x4096 m=256: 98.3 against 114.5 for
# dequantize + cuBLAS; 8192x8192 at 17-24 rows 25.6 against 24.9, the one cell it loses), not
# 4096x4096 (m=64: 22.5 against 15.5); 257-1024 on the wide layers from 2^26 weights and the others
# from 2^27 (8192x28672 m=1024: 871.8 against 927.1; 28672x8192 m=512: 429.8 against 569.2; not
# 14336x4096: 228.8 against 231.2 at m=1024 but 169.2 against 145.8 at m=512, nor 4096x14336: 163.4
# against 127.9 at m=384). Since the warp-specialized config (thirteenth session, 04:53 run of
# 2026-11-24) and the split of K, 129-1024 on every layer from 2^24 weights: 4096x4096 m=256 28.7
# against 34.4, m=512 36.1 against 42.1, m=1024 60.9 against 64.8; 14336x4096 m=512 121.0 against
# 147.4, m=1024 215.9 against 219.3. From 1025 rows dequantize + cuBLAS stays (05:18 run: at m=4096
# it was faster on all six layers, 8192x28672 2813.4 against 3078.6-3487.2; at m=2048 within 5%).
# Since the 256-row tiles (config 7, eighteenth session: 19:55 and 20:03 runs of 2026-11-24), 1025-2048
# too: at m=2048 they were faster than dequantize + cuBLAS on all six layers in three rounds but one
# (4096x4096 118.8 / 115.8 / 122.0 against 119.8 / 126.3 / 121.5 us; 8192x28672 1502.8 / 1424.5 /
# 1467.5 against 1611.5 / 1583.4 / 1556.2; 28672x8192 1481.1 / 1442.0 / 1474.7 against 1607.3 /
# 1580.9 / 1564.6). At 2049-4096 rows dequantize + cuBLAS stays (faster on four layers of six at m=4096),
# except on the layers at least as wide as deep from 2^27 weights (8192x28672): there config 7 took
# 2888.3 us at m=4096 against 2977.9 for dequantize + cuBLAS and 2774.8 for cuBLAS, config 6 2900.3
# (twenty-third session, 08:00 UTC run of 2026-11-25, timed interleaved); on the other five layers the
# wgmma configs were 1-6% slower or level.
WGMMA_CELLS = ((16, 128, 1 << 25, 1 << 25), (128, 2048, 1 << 24, 1 << 24), (2048, 4096, 1 << 27, 1 << 62))
# Rows up to which the wgmma GEMM gets the shared workspace (its stream-K split). 1024 since the
# warp-specialized config's stream-K (fourteenth session): 14336x4096 m=512 110.1-111.9 against
# 119.6-122.0 us without it; full waves of whole tiles and stream-K for the rest at 4096x14336 m=1024
# (benchmarks/NOTES_gpu.md). 2048 with the 1025-2048-row cells, which the benchmark measured with it (the
# workspace holds one wave of partial tiles whatever m is: its size grows only by a counter a tile).
WGMMA_SPLIT_MAX_M = 2048


def workspace_floats(m: int, n: int) -> int:
    """Size of the zeroed float32 workspace the GEMM needs for m rows: for its stream-K tiles (one
    pass of rows; the backend gives each layer one for m <= STREAMK_MAX_M) and to split K over
    blocks (``ksplit > 1``, for tuning: it measured slower on an H100, benchmarks/NOTES_gpu.md)."""
    return m * n + (n // 16) * ((m + 7) // 8)


def wgmma_workspace_floats(m: int, n: int, num_sms: int) -> int:
    """Size of the zeroed float32 workspace of the wgmma GEMM's stream-K split of K (over one wave of
    num_sms blocks): a partial tile of the largest tile the kernel's automatic config gives m rows for
    each block (plain stores, summed by the block that holds the tile's last stage), then a counter per
    output tile. Mirrors wxa16_gemm_wgmma_workspace_floats (csrc/cuda/wxa16.h)."""
    bn = 32 if m <= 32 else 64 if m <= 64 else 128
    return num_sms * bn * 256 + (n // 16) * ((m + 7) // 8)


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int) -> int:
    """Streaming multiprocessors of a CUDA device (looked up once per device)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Zeroed float32 workspaces for the GEMM's split of K over blocks at m > STREAMK_MAX_M (the middle-m
# tiles and the wgmma GEMM's stream-K take it when the layer has too few tiles to fill the GPU), one
# per (device, stream): a launch leaves it zeroed again, and launches on one stream never overlap.
# Grown to the largest size seen; kept for the process (at most GEMM_MAX_M x N floats, or one wave of
# partial wgmma tiles, wgmma_workspace_floats(WGMMA_SPLIT_MAX_M, N, SMs), per stream).
_SHARED_WS: Dict[Tuple[int, int], torch.Tensor] = {}


def _shared_workspace(device: torch.device, floats: int) -> torch.Tensor:
    key = (device.index, torch.cuda.current_stream(device).cuda_stream)
    ws = _SHARED_WS.get(key)
    if ws is None or ws.numel() < floats:
        ws = torch.zeros(floats, dtype=torch.float32, device=device)
        _SHARED_WS[key] = ws
    return ws


def _wgmma_available(qweight: torch.Tensor) -> bool:
    """Whether the wgmma GEMM runs on qweight's device: a Hopper GPU and an extension built for sm_90a."""
    if not torch._C._dispatch_has_kernel_for_dispatch_key("quantkernels::cuda_wxa16_wgmma_available", "CUDA"):
        return False
    if torch.cuda.get_device_capability(qweight.device) != (9, 0):
        return False
    return bool(torch.ops.quantkernels.cuda_wxa16_wgmma_available(qweight))


def _wgmma_serves(m: int, n: int, k: int) -> bool:
    """Whether the wgmma GEMM serves m rows of an N x K layer (WGMMA_CELLS)."""
    for lo, hi, min_wide, min_other in WGMMA_CELLS:
        if lo < m <= hi:
            return n * k >= (min_wide if n >= k else min_other)
    return False


def chunk_cols(bits: int) -> int:
    """Input columns per chunk of the shuffled layout (one 16-byte slice per lane)."""
    return 64 if bits == 4 else 32


# Nibble of q[r_h, k_i] inside a 4-bit run word: h + _NIB4[i] (see wxa16.h).
_NIB4 = (0, 4, 2, 6)


def _shifts(bits: int, device) -> torch.Tensor:
    if bits == 4:  # [h, i] -> 4 * (h + _NIB4[i])
        s = [[4 * (h + _NIB4[i]) for i in range(4)] for h in range(2)]
        return torch.tensor(s, dtype=torch.int64, device=device).view(1, 2, 1, 1, 1, 1, 4)
    # 8 bits: [h, i & 1] -> 8 * (2h + (i & 1))
    s = [[8 * (2 * h + b) for b in range(2)] for h in range(2)]
    return torch.tensor(s, dtype=torch.int64, device=device).view(1, 2, 1, 1, 1, 1, 1, 2)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding unsigned 32-bit patterns -> int32 with the same bits."""
    return torch.where(words >= (1 << 31), words - (1 << 32), words).to(torch.int32)


def shuffle(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes ``[N, K]`` (uint8, sorted columns) -> mma-shuffled int32 ``[N/16, K/KC, 32, 4]``."""
    n, k = codes.shape
    kc = chunk_cols(bits)
    if n % 16 or k % kc:
        raise ValueError(f"shuffle: need N % 16 == 0 and K % {kc} == 0 for {bits}-bit, got N={n}, K={k}")
    c = codes.to(torch.int64)
    if bits == 4:  # [nt, h, g, kc, t, j, i], k = KC*kc + 16t + 4j + i
        c = c.view(n // 16, 2, 8, k // kc, 4, 4, 4)
        words = (c << _shifts(4, c.device)).sum(dim=(1, 6))  # [nt, g, kc, t, j]
        words = words.permute(0, 2, 1, 3, 4)  # [nt, kc, g, t, j]
    else:  # [nt, h, g, kc, t, j, w, b], k = KC*kc + 8t + 4j + 2w + b
        c = c.view(n // 16, 2, 8, k // kc, 4, 2, 2, 2)
        words = (c << _shifts(8, c.device)).sum(dim=(1, 7))  # [nt, g, kc, t, j, w]
        words = words.permute(0, 2, 1, 3, 4, 5)  # [nt, kc, g, t, j, w]
    return _to_int32(words.reshape(n // 16, k // kc, 32, 4)).contiguous()


def unshuffle(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`shuffle`: ``[N/16, K/KC, 32, 4]`` int32 -> codes ``[N, K]`` uint8."""
    nt, nc = qweight.shape[:2]
    kc = chunk_cols(bits)
    w = qweight.to(torch.int64) & 0xFFFFFFFF
    if bits == 4:
        w = w.view(nt, nc, 8, 4, 4).permute(0, 2, 1, 3, 4)  # [nt, g, kc, t, j]
        c = (w.unsqueeze(1).unsqueeze(-1) >> _shifts(4, w.device)) & 0xF  # [nt, h, g, kc, t, j, i]
    else:
        w = w.view(nt, nc, 8, 4, 2, 2).permute(0, 2, 1, 3, 4, 5)  # [nt, g, kc, t, j, w]
        c = (w.unsqueeze(1).unsqueeze(-1) >> _shifts(8, w.device)) & 0xFF  # [nt, h, g, kc, t, j, w, b]
    return c.reshape(nt * 16, nc * kc).to(torch.uint8)


def shuffle_pairs(t: torch.Tensor) -> torch.Tensor:
    """Per-(group, row) values ``[G, N]`` -> ``[G, N/16, 8, 2]``: (row 16nt+g, row 16nt+g+8) pairs."""
    g, n = t.shape
    return t.view(g, n // 16, 2, 8).transpose(2, 3).contiguous()


@dataclasses.dataclass
class CudaState:
    """The layer's weights in the kernels' layout, on the layer's device."""

    replaces_qweight: bool
    qweight: Optional[torch.Tensor] = None  # [N/16, K/KC, 32, 4] int32
    scales: Dict[torch.dtype, torch.Tensor] = dataclasses.field(default_factory=dict)  # per act dtype
    zeros: Dict[torch.dtype, Optional[torch.Tensor]] = dataclasses.field(default_factory=dict)
    bias: Dict[torch.dtype, Optional[torch.Tensor]] = dataclasses.field(default_factory=dict)
    kgroup: Optional[torch.Tensor] = None  # [K/16] int32, only with act_order
    group_size: int = 0  # effective group size (K for per-channel)
    perm: Optional[torch.Tensor] = None  # sorted column -> original column (act_order)
    unsupported: Optional[str] = None  # found at prepare: the reference serves instead
    wgmma: bool = False  # the Hopper wgmma GEMM serves this layer (sm_90a build on a Hopper GPU, K % 64 == 0)
    # float32 zeros for the stream-K GEMM at m <= STREAMK_MAX_M (the kernel leaves it zeroed), sized for
    # 8 rows (8-bit layers) or 1 (4-bit): one per layer, so one layer must not run on two streams at once.
    workspace: Optional[torch.Tensor] = None


class CudaBackend:
    name = "cuda"

    def __init__(self):
        self._reason_cache = ()  # machine facts do not change within a process: look once

    def unavailable_reason(self) -> Optional[str]:
        # Cached: the registry asks on every call, also while torch.compile traces, and dynamo
        # cannot trace the extension or dispatcher queries below.
        if not self._reason_cache:
            self._reason_cache = (self._machine_reason(),)
        return self._reason_cache[0]

    def _machine_reason(self) -> Optional[str]:
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        reason = _ext.unavailable_reason()
        if reason is not None:
            return reason
        if not _ext.build_info().get("cuda", False):
            return "quantkernels._C was built without CUDA kernels (rebuild with QUANTKERNELS_BUILD_CUDA=1)"
        if not torch._C._dispatch_has_kernel_for_dispatch_key("quantkernels::cuda_wxa16_gemm", "CUDA"):
            return "quantkernels._C has no CUDA kernel for quantkernels::cuda_wxa16_gemm"
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            return f"the CUDA kernels need compute capability 8.0 or newer, this GPU has {major}.{minor}"
        return None

    def supports(self, layer, x) -> Optional[str]:
        cfg = layer.config
        if x.device.type != "cuda":
            return f"activation is on {x.device}, not a CUDA device"
        if x.dtype not in ACT_DTYPES:
            return f"activation dtype {x.dtype} is not float16/bfloat16"
        if cfg.bits not in (4, 8):
            return f"{cfg.bits}-bit weights are not served by the CUDA kernels (4 and 8 are)"
        if cfg.act_bits is not None:
            return "dynamic int8 activations (act_bits=8) are not served by the CUDA kernels"
        kc = chunk_cols(cfg.bits)
        if layer.out_features % 16 or layer.in_features % kc:
            return (
                f"the CUDA kernels need out_features % 16 == 0 and in_features % {kc} == 0 for {cfg.bits}-bit "
                f"weights, got N={layer.out_features}, K={layer.in_features}"
            )
        state = layer._prepared.get(self.name)
        if state is not None and state.unsupported:
            return state.unsupported
        return None

    def prepare(self, layer) -> CudaState:
        cfg = layer.config
        t = layer.portable_tensors()
        n, k = layer.out_features, layer.in_features
        gs = cfg.effective_group_size(k)
        g_idx = t["g_idx"]
        perm = kgroup = None
        if not is_trivial_g_idx(g_idx, cfg.group_size):
            perm = torch.argsort(g_idx.to(torch.int64), stable=True)
            runs = g_idx[perm].view(k // 16, 16)
            if not bool((runs == runs[:, :1]).all()):
                # Some group has a size that is not a multiple of 16: no kernel layout for it.
                return CudaState(
                    replaces_qweight=False,
                    unsupported="g_idx has a group whose size is not a multiple of 16 (the CUDA kernels need that)",
                )
            kgroup = runs[:, 0].to(torch.int32).contiguous()
            perm = perm.contiguous()
        codes = unpack(t["qweight"], cfg.bits, dim=0).t()  # [N, K]
        if perm is not None:
            codes = codes[:, perm]
        zeros = unpack(t["qzeros"], cfg.bits, dim=1)  # [G, N] uint8
        symmetric = bool((zeros == (1 << (cfg.bits - 1))).all())
        state = CudaState(replaces_qweight=True, kgroup=kgroup, group_size=gs, perm=perm)
        state.qweight = shuffle(codes.contiguous(), cfg.bits)
        for dt in ACT_DTYPES:
            state.scales[dt] = shuffle_pairs(t["scales"].to(dt))
            state.zeros[dt] = None if symmetric else shuffle_pairs(zeros.to(dt))
            state.bias[dt] = None if layer.bias is None else layer.bias.to(dt).contiguous()
        # The GEMM's stream-K tiles (wxa16_gemm_sm80.cu, auto_tile) serve 8-bit layers up to 8 rows and
        # 4-bit layers at one row.
        ws_rows = STREAMK_MAX_M if cfg.bits == 8 else 1
        state.workspace = torch.zeros(workspace_floats(ws_rows, n), dtype=torch.float32, device=codes.device)
        state.wgmma = _wgmma_available(state.qweight) and k % 64 == 0
        # The shuffled copy replaces the portable one: a placeholder keeps the device and dtype.
        layer.qweight = torch.empty(0, dtype=torch.int32, device=state.qweight.device)
        return state

    def to_portable(self, layer, state: CudaState) -> dict:
        codes = unshuffle(state.qweight, layer.config.bits)  # [N, K], sorted columns
        if state.perm is not None:
            unsorted = torch.empty_like(codes)
            unsorted[:, state.perm] = codes
            codes = unsorted
        qweight = pack(codes.t().contiguous(), layer.config.bits, dim=0)
        return {"qweight": qweight, "qzeros": layer.qzeros, "scales": layer.scales, "g_idx": layer.g_idx}

    def dequantize(self, layer, state: CudaState, dtype: torch.dtype) -> torch.Tensor:
        kdt = dtype if dtype in ACT_DTYPES else torch.float16 if layer.scales.dtype != torch.bfloat16 else torch.bfloat16
        w = torch.ops.quantkernels.cuda_wxa16_dequantize(
            state.qweight, state.scales[kdt], state.zeros[kdt], state.kgroup, state.group_size, layer.config.bits
        )
        if state.perm is not None:
            unsorted = torch.empty_like(w)
            unsorted[:, state.perm] = w
            w = unsorted
        return w.to(dtype)

    def linear(self, layer, state: CudaState, x2d: torch.Tensor) -> torch.Tensor:
        if state.unsupported:
            from .reference import BACKEND as reference

            return reference.linear(layer, None, x2d)
        dt = x2d.dtype
        if state.perm is not None:
            x2d = x2d.index_select(1, state.perm)
        bits = layer.config.bits
        m = x2d.shape[0]
        if state.wgmma and _wgmma_serves(m, layer.out_features, layer.in_features):
            ws = None  # beyond WGMMA_SPLIT_MAX_M a split over a cluster only
            if m <= WGMMA_SPLIT_MAX_M:
                n = layer.out_features
                ws = _shared_workspace(x2d.device, wgmma_workspace_floats(m, n, num_sms(x2d.device.index)))
            return torch.ops.quantkernels.cuda_wxa16_gemm_wgmma(
                x2d, state.qweight, state.scales[dt], state.zeros[dt], state.kgroup, state.group_size,
                state.bias[dt], bits, ws,
            )
        if m <= GEMM_MAX_M:
            ws = None
            if m <= STREAMK_MAX_M:
                ws = state.workspace
            elif m >= MID_MIN_M:
                ws = _shared_workspace(x2d.device, workspace_floats(m, layer.out_features))
            return torch.ops.quantkernels.cuda_wxa16_gemm(
                x2d, state.qweight, state.scales[dt], state.zeros[dt], state.kgroup, state.group_size,
                state.bias[dt], bits, ws,
            )
        w = torch.ops.quantkernels.cuda_wxa16_dequantize(
            state.qweight, state.scales[dt], state.zeros[dt], state.kgroup, state.group_size, bits
        )
        return torch.nn.functional.linear(x2d, w, state.bias[dt])


BACKEND = CudaBackend()
