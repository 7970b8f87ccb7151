"""The ``cpu`` backend: native SIMD kernels (AVX2, AVX-VNNI, AVX-512 / VNNI, NEON, i8mm; scalar
fallback) for 4- and 8-bit weights with float activations (W4A16, W8A16) or dynamic int8 activations
(W4A8, W8A8).

``prepare`` repacks the portable ``qweight`` once into the layout the kernels stream (documented in
``csrc/cpu/qlinear.h``) and *replaces* it: the layer keeps only a placeholder, and ``to_portable``
rebuilds the exact portable tensors whenever a checkpoint or another device needs them. A layer whose
``g_idx`` is a permutation of the trivial grouping (GPTQ ``act_order``) has its columns sorted by
group once here; each call then gathers the activation's columns in the same order.

Layouts built here (T = N / 8 tiles, R = K * bits / 32 word rows, Kp = K rounded up to 32, KB = Kp / 32):

* float activations: ``int32 [T, R, 8]``, word ``(t, r, i)`` = portable ``qweight[r, 8t + i]``.
* int8 activations, 4-bit: ``uint8 [T, KB, 4, 2, 16]``, byte ``(t, kb, j, h, c)`` =
  ``q[n, 32kb + c] | q[n, 32kb + 16 + c] << 4`` with ``n = 8t + j + 4h``.
* int8 activations, 8-bit: ``int8 [T, KB, 8, 32]``, byte ``(t, kb, i, c)`` = ``q[8t + i, 32kb + c] - 128``.
* scales and zero points: ``[T, G, 8]``, element ``(t, g, i)`` = portable ``[g, 8t + i]``; fp16 for float
  activations where the layer's scales are fp16 (exact: zero points are integers up to 255), else fp32.
  Where every zero point is the same number (symmetric layers) no zero-point tensor is kept: the
  kernels take that number instead and read one stream fewer.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .. import _ext
from ..formats import trivial_g_idx
from ..reference import dequantize as _ref_dequantize
from ..reference import pack, unpack

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclasses.dataclass
class CpuState:
    w: torch.Tensor  # the repacked weight (see the module docstring)
    scales: torch.Tensor  # [N/8, G, 8], tile-major (see the module docstring): fp16 or fp32
    zeros: Optional[torch.Tensor]  # the same for the zero points as the kernel wants them (z, or z - 128 for
    # int8 x int8); None where they are all equal: zero_point then holds that value
    zero_point: float
    bias: Optional[torch.Tensor]  # fp32 [N]
    perm: Optional[torch.Tensor]  # int64 [K]: kernel column k' is portable column perm[k'] (None: identity)
    int8_acts: bool
    replaces_qweight: bool = True


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def _grouping_reason(layer) -> Optional[str]:
    """Why the layer's g_idx cannot be served by sorting columns, or None. Cached per g_idx version.

    Under torch.compile the tensors are symbolic: the answer cached when the layer was loaded
    (eagerly, by QuantLinear's load-time backend choice) is used as is."""
    cached = getattr(layer, "_cpu_grouping_check", None)
    if torch.compiler.is_compiling():
        return None if cached is None else cached[1]
    g = layer.g_idx
    # Inference tensors (made under torch.inference_mode) have no version counter; they cannot be
    # changed in place outside inference mode, so identity and storage key them.
    key = (id(g), -1 if g.is_inference() else g._version, g.data_ptr())
    if cached is not None and cached[0] == key:
        return cached[1]
    k = layer.in_features
    sorted_g = torch.sort(g.to(torch.int64), stable=True).values
    reason = None
    if not torch.equal(sorted_g, trivial_g_idx(k, layer.config.group_size).to(torch.int64)):
        reason = "g_idx is not a permutation of equal consecutive groups"
    layer._cpu_grouping_check = (key, reason)
    return reason


# Repacked weights from this size up go on huge pages (below it no 2 MiB page fits whole).
HUGE_PAGE_MIN_BYTES = 2 << 20


def _materialize(w: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of the repacked weight ``w`` (usually a permuted view), written straight into
    memory on transparent huge pages where the OS grants them (``cpu_empty_huge_pages``): the GEMV
    streams it once per call, and on 4 KiB pages every page is a TLB walk and a stop for the
    hardware prefetchers. An ordinary tensor otherwise; the values are the same either way."""
    nbytes = w.numel() * w.element_size()
    if nbytes < HUGE_PAGE_MIN_BYTES:
        return w.contiguous()
    return torch.ops.quantkernels.cpu_empty_huge_pages(nbytes).view(w.dtype).view(w.shape).copy_(w)


def _tile_major(p: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[G, N]`` -> contiguous ``[N/8, G, 8]`` in ``dtype`` (on huge pages from 2 MiB; it may share storage
    with ``p`` where ``p`` already has that dtype and the permutation moves nothing, G = 1): each tile's
    values for all groups together, so the kernels read them as one more stream beside the tile's
    weights."""
    g, n = p.shape
    return _materialize(p.to(dtype).view(g, n // 8, 8).permute(1, 0, 2))


def _tiles_to_portable_float(w: torch.Tensor, n: int) -> torch.Tensor:
    return w.view(n // 8, -1, 8).permute(1, 0, 2).reshape(-1, n).contiguous()


def _codes_to_int8_layout(codes_nk: torch.Tensor, bits: int) -> torch.Tensor:
    """codes uint8 [N, K] -> the int8-activation layout of ``bits``-bit weights (a permuted view)."""
    n, k = codes_nk.shape
    kp = _round_up(k, 32)
    t, kb = n // 8, kp // 32
    if bits == 4:
        c = torch.zeros(n, kp, dtype=torch.uint8)
        c[:, :k] = codes_nk
        c = c.view(t, 8, kb, 2, 16)
        b = c[:, :, :, 0, :] | (c[:, :, :, 1, :] << 4)  # [T, 8, KB, 16]
        return b.view(t, 2, 4, kb, 16).permute(0, 3, 2, 1, 4)  # [T, KB, j, h, 16]
    c = torch.zeros(n, kp, dtype=torch.int8)
    c[:, :k] = (codes_nk.to(torch.int16) - 128).to(torch.int8)
    return c.view(t, 8, kb, 32).permute(0, 2, 1, 3)  # [T, KB, 8, 32]


def _int8_layout_to_codes(w: torch.Tensor, bits: int, n: int, k: int) -> torch.Tensor:
    """Inverse of :func:`_codes_to_int8_layout`: uint8 codes [N, K]."""
    if bits == 4:
        t, kb = w.shape[0], w.shape[1]
        b = w.permute(0, 3, 2, 1, 4).reshape(n, kb, 16)  # [N, KB, 16]
        c = torch.stack((b & 0xF, b >> 4), dim=2).reshape(n, kb * 32)
        return c[:, :k].contiguous()
    c = w.permute(0, 2, 1, 3).reshape(n, -1)[:, :k]
    return (c.to(torch.int16) + 128).to(torch.uint8).contiguous()


class CpuBackend:
    name = "cpu"

    def __init__(self):
        self._reason: Optional[str] = None
        self._checked = False

    def unavailable_reason(self):
        # Computed once (loading the extension is not traceable by torch.compile).
        if not self._checked:
            reason = _ext.unavailable_reason()
            if reason is None and not hasattr(torch.ops.quantkernels, "cpu_linear_float"):
                reason = "quantkernels._C has no CPU kernels registered (rebuild the extension)"
            self._reason, self._checked = reason, True
        return self._reason

    def supports(self, layer, x):
        if x.device.type != "cpu":
            return f"activations are on {x.device}, not the CPU"
        if x.dtype not in FLOAT_DTYPES:
            return f"activation dtype {x.dtype} is not float32/bfloat16/float16"
        cfg = layer.config
        if cfg.bits not in (4, 8):
            return f"{cfg.bits}-bit weights have no CPU kernel (4 and 8 do); the reference serves them"
        if layer.out_features % 8:
            return f"out_features = {layer.out_features} is not a multiple of 8, the CPU kernels' tile of channels"
        if cfg.act_bits is not None and cfg.group_size != -1 and cfg.group_size % 32:
            return f"int8 activations need group_size -1 or a multiple of 32, got {cfg.group_size}"
        if layer.qweight.device.type != "cpu":
            return f"weights are on {layer.qweight.device}, not the CPU"
        return _grouping_reason(layer)

    def prepare(self, layer) -> CpuState:
        cfg, n, k = layer.config, layer.out_features, layer.in_features
        if layer.qweight.numel() == 0:
            raise RuntimeError("cpu backend: prepare() called on a layer whose qweight was already repacked")
        reason = _grouping_reason(layer)
        if reason is not None:
            raise RuntimeError(f"cpu backend cannot serve this layer: {reason}")
        perm = torch.sort(layer.g_idx.to(torch.int64), stable=True).indices
        if torch.equal(perm, torch.arange(k)):
            perm = None
        int8_acts = cfg.act_bits is not None
        zeros = unpack(layer.qzeros, cfg.bits, dim=1).to(torch.float32)
        if int8_acts or perm is not None:
            codes = unpack(layer.qweight, cfg.bits, dim=0)  # [K, N]
            if perm is not None:
                codes = codes[perm]
        if int8_acts:
            w = _materialize(_codes_to_int8_layout(codes.t(), cfg.bits))
            if cfg.bits == 8:
                zeros = zeros - 128.0
        else:
            qw = layer.qweight if perm is None else pack(codes, cfg.bits, dim=0)
            w = _materialize(qw.view(-1, n // 8, 8).permute(1, 0, 2))
        z0 = float(zeros.view(-1)[0])
        constant = bool((zeros == z0).all())
        # Float-activation layers keep fp16 scales as fp16 (no rounding: the kernels widen them exactly),
        # and their integer zero points (0 .. 255) with them: the m = 1 GEMV streams these beside the
        # codes, 3% of a 4-bit g128 layer's bytes in fp32 (6% with zero points). Else fp32.
        pdt = torch.float16 if not int8_acts and layer.scales.dtype == torch.float16 else torch.float32
        state = CpuState(
            w=w,
            scales=_tile_major(layer.scales, pdt),
            zeros=None if constant else _tile_major(zeros, pdt),
            zero_point=z0 if constant else 0.0,
            bias=None if layer.bias is None else layer.bias.to(torch.float32).contiguous(),
            perm=perm,
            int8_acts=int8_acts,
        )
        # The repacked weight replaces the portable one (no second full-size copy).
        layer.qweight = torch.empty(0, dtype=torch.int32)
        return state

    def to_portable(self, layer, state: CpuState) -> dict:
        cfg, n, k = layer.config, layer.out_features, layer.in_features
        if state.int8_acts:
            codes = _int8_layout_to_codes(state.w, cfg.bits, n, k).t()  # [K, N] in kernel column order
        elif state.perm is not None:
            codes = unpack(_tiles_to_portable_float(state.w, n), cfg.bits, dim=0)
        else:
            codes = None
            qweight = _tiles_to_portable_float(state.w, n)
        if codes is not None:
            if state.perm is not None:
                restored = torch.empty_like(codes)
                restored[state.perm] = codes
                codes = restored
            qweight = pack(codes.contiguous(), cfg.bits, dim=0)
        return {"qweight": qweight, "qzeros": layer.qzeros, "scales": layer.scales, "g_idx": layer.g_idx}

    def dequantize(self, layer, state: CpuState, dtype) -> torch.Tensor:
        t = self.to_portable(layer, state)
        return _ref_dequantize(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], layer.config.bits, dtype)

    def linear(self, layer, state: CpuState, x2d: torch.Tensor) -> torch.Tensor:
        cfg = layer.config
        x = x2d if x2d.dtype == torch.float32 else x2d.to(torch.float32)
        if state.perm is not None:
            x = x.index_select(1, state.perm)
        if state.int8_acts:
            out = torch.ops.quantkernels.cpu_linear_int8(
                x, state.w, state.scales, state.zeros, state.zero_point, state.bias, cfg.bits, cfg.act_group_size
            )
        else:
            out = torch.ops.quantkernels.cpu_linear_float(
                x, state.w, state.scales, state.zeros, state.zero_point, state.bias, cfg.bits
            )
        return out if x2d.dtype == torch.float32 else out.to(x2d.dtype)


BACKEND = CpuBackend()
