"""AWQ "GEMM" checkpoints (AutoAWQ, ``version="gemm"``) -> ``QuantLinear``.

Per quantized module ``<m>`` (4 bits only):

=============== ========================= ==================================================
tensor          shape, dtype              contents
=============== ========================= ==================================================
``qweight``     ``[K, N/8]`` int32        row k, word j: codes ``q[n, k]`` of the 8 output
                                          channels ``n = 8j .. 8j+7``, packed *along N*
``qzeros``      ``[G, N/8]`` int32        row g: real zero points of the same 8 channels
``scales``      ``[G, N]`` fp16           scales
``bias``        ``[N]`` (optional)
=============== ========================= ==================================================

Within a word, nibble ``i`` (bits ``4i .. 4i+3``) holds channel ``8j + ORDER[i]`` with
``ORDER = (0, 2, 4, 6, 1, 3, 5, 7)``: the interleave AWQ's GEMM kernel dequantizes in. Groups are
consecutive runs of ``group_size`` input columns (no ``g_idx``), zero points are real:
``W[n, k] = (q[n, k] - z[k // group_size, n]) * s[k // group_size, n]``, which is exactly our
portable form once the codes are repacked along K (the weights are reproduced bit for bit).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..formats import QuantConfig, trivial_g_idx
from ..nn import QuantLinear
from .config import CheckpointConfig, CheckpointError
from .files import TensorFiles
from .gptq import FLOAT_DTYPES, make_layer

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i holds channel 8j + ORDER[i]
_INVERSE = tuple(ORDER.index(c) for c in range(8))  # channel c sits in nibble _INVERSE[c]


def unpack_along_n(packed: torch.Tensor) -> torch.Tensor:
    """AWQ-packed int32 ``[R, C]`` -> uint8 codes ``[R, 8*C]`` in channel order."""
    w = packed.to(torch.int64) & 0xFFFFFFFF
    nibbles = torch.stack([(w >> (4 * i)) & 0xF for i in range(8)], dim=-1)  # [R, C, 8] by nibble
    return nibbles[..., list(_INVERSE)].reshape(packed.shape[0], -1).to(torch.uint8)


def read_layer(
    files: TensorFiles,
    prefix: str,
    ckpt: CheckpointConfig,
    expect: Optional[Tuple[int, int]] = None,
    device=None,
) -> Tuple[QuantLinear, None]:
    why = f"AWQ GEMM layer {prefix}"
    qweight, qzeros, scales = (files.require(f"{prefix}.{k}", why) for k in ("qweight", "qzeros", "scales"))
    bias = files.get(f"{prefix}.bias")
    for name, x in (("qweight", qweight), ("qzeros", qzeros)):
        if x.dtype != torch.int32 or x.dim() != 2:
            raise CheckpointError(f"tensor {prefix}.{name} must be a 2-D int32 tensor, got {x.dtype} {tuple(x.shape)}")
    if scales.dtype not in FLOAT_DTYPES or scales.dim() != 2:
        raise CheckpointError(f"tensor {prefix}.scales must be a 2-D float tensor, got {scales.dtype} {tuple(scales.shape)}")
    k, n = qweight.shape[0], qweight.shape[1] * 8
    if expect is not None and (k, n) != tuple(expect):
        raise CheckpointError(
            f"tensor {prefix}.qweight {tuple(qweight.shape)} holds a [{n}, {k}] AWQ weight, but the model's layer is "
            f"[{expect[1]}, {expect[0]}] (out_features, in_features)"
        )
    cfg = QuantConfig(bits=4, group_size=ckpt.group_size, sym=False, scale_dtype=scales.dtype)
    err = cfg.shape_error(k, n)
    if err:
        raise CheckpointError(f"tensor {prefix}.qweight {tuple(qweight.shape)}: {err}")
    g = cfg.num_groups(k)
    for name, x, shape in (("qzeros", qzeros, (g, n // 8)), ("scales", scales, (g, n))):
        if tuple(x.shape) != shape:
            raise CheckpointError(
                f"tensor {prefix}.{name} has shape {tuple(x.shape)}, {shape} expected for K={k}, N={n}, "
                f"group_size={ckpt.group_size}: the config disagrees with the tensors"
            )
    if bias is not None and (bias.dtype not in FLOAT_DTYPES or tuple(bias.shape) != (n,)):
        raise CheckpointError(f"tensor {prefix}.bias must be a float tensor of shape ({n},), got {bias.dtype} {tuple(bias.shape)}")
    codes = unpack_along_n(qweight)  # [K, N]
    zeros = unpack_along_n(qzeros)  # [G, N]
    pack = torch.ops.quantkernels.pack
    g_idx = trivial_g_idx(k, ckpt.group_size)
    return make_layer(cfg, pack(codes, 4, 0), pack(zeros, 4, 1), scales, g_idx, bias, device), None
