"""The ``triton`` backend: W4A16 / W8A16 on Triton kernels (:mod:`quantkernels.triton`).

It serves CUDA (or ROCm) tensors whenever triton is installed and can target the GPU; the registry
puts it after ``cuda``, so it takes the calls the CUDA extension cannot serve. On a CPU it serves only
when the kernels run under ``TRITON_INTERPRET=1`` and the backend is forced (``layer.backend =
"triton"`` or ``QUANTKERNELS_BACKEND=triton``): that is how the CPU CI tests it, and it is never
picked automatically there because the interpreter is slow.

triton is imported lazily, at the first ``prepare``/``linear``; the availability checks only look
for the package, so that the registry's probing never pays triton's import time.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from typing import Optional

import torch

from ..formats import is_trivial_g_idx

_ACT_DTYPES = (torch.float16, torch.bfloat16)


def _interpreter_on() -> bool:
    """True when the kernels are (or, once imported, will be) built for the Triton interpreter."""
    mod = sys.modules.get("quantkernels.triton.ops")
    if mod is not None:
        return mod.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@dataclasses.dataclass
class TritonState:
    """What ``prepare`` computed once.

    4-bit layers: ``qweight`` holds the codes in the kernels' nk4 layout (uint8 ``[Kp/128, N, 64]``,
    the bytes of int32 words ``[Kp/128, N, 16]``; see quantkernels/triton/kernels.py) and *replaces* the portable
    qweight (the layer keeps a placeholder; :meth:`TritonBackend.to_portable` rebuilds it exactly).
    8-bit layers: ``qweight`` is None and the kernels read the portable one.
    """

    zeros: Optional[torch.Tensor]  # uint8 [G, N] real zero points; None when all are 2**(bits-1)
    g_idx: Optional[torch.Tensor]  # int32 [K]; None when it is k // group_size
    qweight: Optional[torch.Tensor] = None  # uint8 [Kp/128, N, 64] (4-bit) or None
    replaces_qweight: bool = False
    # fp32 zeros [workspace_floats(N)] (16 N + N / 16 floats): split-K partial sums and arrival
    # counters for calls of up to 16 rows, so that they launch no zero-fills (the kernels leave it zero)
    workspace: Optional[torch.Tensor] = None


# NK4_COLUMN[w, p]: the input column, within a 128-column block, of nibble p of the block's word w.
NK4_COLUMN = torch.tensor(
    [[32 * (w % 4) + 16 * ((p % 4) // 2) + 8 * (p % 2) + 2 * (w // 4) + p // 4 for p in range(8)] for w in range(16)]
)


def nk4_from_portable(qweight: torch.Tensor) -> torch.Tensor:
    """Portable 4-bit int32 ``[K/8, N]`` -> nk4 uint8 ``[Kp/128, N, 64]``: the bytes of the int32
    words ``[Kp/128, N, 16]`` described in quantkernels/triton/kernels.py (Kp = K rounded up to 128,
    zero codes)."""
    from ..reference import unpack

    codes = unpack(qweight, 4, dim=0).t()  # uint8 [N, K]
    n, k = codes.shape
    kp = -(-k // 128) * 128
    codes = torch.nn.functional.pad(codes, (0, kp - k)).view(n, kp // 128, 128).to(torch.int64)
    nib = codes[:, :, NK4_COLUMN.to(codes.device)]  # [N, Kp/128, 16 words, 8 nibbles]
    shifts = 4 * torch.arange(8, device=codes.device)
    words = (nib << shifts).sum(-1)  # [N, Kp/128, 16], each < 2**32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.transpose(0, 1).contiguous().view(torch.uint8)  # [Kp/128, N, 64]


def nk4_to_portable(qt: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`nk4_from_portable` for ``k`` input columns."""
    from ..reference import pack

    n = qt.shape[1]
    words = qt.contiguous().view(torch.int32).to(torch.int64).transpose(0, 1)  # [N, Kp/128, 16]
    nib = (words[..., None] >> (4 * torch.arange(8, device=qt.device))) & 15  # [N, Kp/128, 16, 8]
    codes = torch.empty(n, words.shape[1], 128, dtype=torch.int64, device=qt.device)
    codes[:, :, NK4_COLUMN.to(qt.device)] = nib
    return pack(codes.view(n, -1)[:, :k].t().contiguous(), 4, dim=0)


_UNSET = object()


class TritonBackend:
    name = "triton"

    def __init__(self):
        # Machine facts, looked up once: the registry asks on every call, also while torch.compile
        # traces, and dynamo cannot trace importlib or the CUDA queries.
        self._machine_reason = _UNSET
        self._bf16 = _UNSET

    def _machine(self) -> Optional[str]:
        if self._machine_reason is _UNSET:
            if importlib.util.find_spec("triton") is None:
                self._machine_reason = "triton not installed (pip install triton)"
            elif not torch.cuda.is_available():
                self._machine_reason = (
                    "no GPU triton can target (torch.cuda.is_available() is False); "
                    "TRITON_INTERPRET=1 runs the kernels on the CPU, for tests only"
                )
            else:
                self._machine_reason = None
        return self._machine_reason

    def unavailable_reason(self) -> Optional[str]:
        reason = self._machine()
        if reason is None or (not reason.startswith("triton not") and _interpreter_on()):
            return None
        return reason

    def supports(self, layer, x) -> Optional[str]:
        cfg = layer.config
        if cfg.bits not in (4, 8):
            return f"the triton kernels cover 4- and 8-bit weights, not {cfg.bits}-bit"
        if cfg.act_bits is not None:
            return "the triton kernels take float activations (W4A16/W8A16), not dynamic int8 activations"
        if x.dtype not in _ACT_DTYPES:
            return f"the triton kernels take float16/bfloat16 activations, got {x.dtype}"
        if x.device.type == "cpu":
            if not _interpreter_on():
                return "CPU tensors run only under TRITON_INTERPRET=1"
            from . import forced_backend

            if forced_backend(layer) != self.name:
                return "the triton interpreter serves CPU tensors only when the backend is forced (tests)"
            return None
        if x.device.type != "cuda":
            return f"the triton backend serves CUDA tensors, got {x.device.type}"
        if x.dtype == torch.bfloat16:
            if self._bf16 is _UNSET:
                self._bf16 = torch.cuda.is_bf16_supported()
            if not self._bf16:
                return "this GPU has no bfloat16 tensor-core support"
        return None

    def prepare(self, layer) -> TritonState:
        from ..reference import unpack

        bits = layer.config.bits
        zeros = unpack(layer.qzeros, bits, dim=1)  # uint8 [G, N]
        if bool((zeros == (1 << (bits - 1))).all()):
            zeros = None  # symmetric: the kernels use the constant zero point
        g_idx = None if is_trivial_g_idx(layer.g_idx, layer.config.group_size) else layer.g_idx.contiguous()
        state = TritonState(zeros=None if zeros is None else zeros.contiguous(), g_idx=g_idx)
        from ..triton.ops import workspace_floats

        state.workspace = torch.zeros(workspace_floats(layer.out_features), dtype=torch.float32, device=layer.scales.device)
        if bits == 4:
            state.qweight = nk4_from_portable(layer.qweight)
            state.replaces_qweight = True
            # The nk4 copy replaces the portable one: a placeholder keeps the device and dtype.
            layer.qweight = torch.empty(0, dtype=torch.int32, device=state.qweight.device)
        return state

    def to_portable(self, layer, state: TritonState) -> dict:
        qweight = nk4_to_portable(state.qweight, layer.in_features) if state.replaces_qweight else layer.qweight
        return {"qweight": qweight, "qzeros": layer.qzeros, "scales": layer.scales, "g_idx": layer.g_idx}

    def dequantize(self, layer, state: TritonState, dtype) -> torch.Tensor:
        t = self.to_portable(layer, state)
        return torch.ops.quantkernels.dequantize(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], layer.config.bits, dtype)

    def linear(self, layer, state: TritonState, x2d: torch.Tensor) -> torch.Tensor:
        import quantkernels.triton  # noqa: F401  (defines quantkernels::triton_linear; imports triton)

        return torch.ops.quantkernels.triton_linear(
            x2d,
            layer.qweight if state.qweight is None else state.qweight,
            layer.scales,
            state.zeros,
            state.g_idx,
            layer.bias,
            layer.config.bits,
            layer.config.group_size,
            state.workspace,
        )


BACKEND = TritonBackend()
