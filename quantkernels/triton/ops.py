"""``quantkernels::triton_linear``: the Triton kernels as a ``torch.library.triton_op``.

``triton_op`` makes the op's body visible to ``torch.compile`` (Inductor sees the kernel launches
through ``wrap_triton``), and the same body, run on fake tensors, is the op's fake implementation.

Configurations are chosen by ``triton.autotune`` per m bucket (1, 2, 4, ..., 4096 and above; the
autotune key is ``(M_BUCKET, N, K)`` plus the format constants), so a model's decode steps (m = 1)
and prefill chunks each get their own tuned, cached choice. Under ``TRITON_INTERPRET=1`` (CPU tests)
nothing is timed: the first configuration of each bucket runs, or one set by :func:`force_config`.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Optional

import torch
import triton
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch._subclasses.functional_tensor import FunctionalTensor

from . import kernels

INTERPRETED = not isinstance(kernels.qgemm_kernel, triton.runtime.JITFunction)

SPLIT_K_MAX_M = 64  # split-K only serves m <= this; larger m has enough output tiles to fill the GPU


def m_bucket(m: int) -> int:
    """Power of two at or above m, capped at 4096: the autotune key's m."""
    b = 1
    while b < m and b < 4096:
        b *= 2
    return b


def _cfg(num_warps=4, num_stages=3, **meta) -> triton.Config:
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


# Candidate configurations per bucket family. Kept short: each one is compiled (about a second)
# the first time a shape in its bucket runs. Chosen from the sweep in benchmarks/triton_gemm.py.
GEMV_CONFIGS: List[triton.Config] = [
    _cfg(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, UNPACK_3D=u3, num_warps=w, num_stages=st)
    for (bn, bk, sk, u3, w, st) in [
        (32, 128, 4, True, 4, 4),
        (64, 128, 4, True, 4, 3),
        (64, 128, 2, True, 4, 3),
        (32, 128, 4, False, 4, 4),
        (64, 128, 4, False, 4, 3),
        (128, 64, 4, False, 4, 3),
        (64, 128, 8, False, 4, 3),
        (32, 256, 4, False, 4, 3),
    ]
]


def _gemm(bm, bn, bk, sk, w, st, swap, u3=True, gm=8) -> triton.Config:
    return _cfg(
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, GROUP_M=gm, SWAP_AB=swap, UNPACK_3D=u3,
        num_warps=w, num_stages=st,
    )


GEMM_CONFIGS: Dict[str, List[triton.Config]] = {
    # m <= 16: memory-bound; the weight is the wide MMA side (SWAP_AB), split K to fill the GPU.
    "small": [
        _gemm(16, 64, 128, 4, 4, 4, True),
        _gemm(16, 64, 128, 2, 4, 4, True),
        _gemm(16, 128, 128, 4, 4, 4, True),
        _gemm(16, 64, 128, 4, 4, 4, True, False),
        _gemm(16, 128, 128, 4, 4, 4, True, False),
        _gemm(16, 64, 256, 4, 4, 3, True, False),
        _gemm(16, 128, 64, 8, 4, 4, True, False),
    ],
    # 17 <= m <= 64: still mostly memory-bound.
    "medium": [
        _gemm(64, 64, 128, 4, 4, 4, True),
        _gemm(64, 128, 128, 1, 4, 4, True),
        _gemm(64, 128, 128, 2, 4, 4, True),
        _gemm(64, 64, 128, 4, 4, 4, True, False),
        _gemm(64, 128, 128, 2, 4, 4, True, False),
        _gemm(32, 64, 128, 4, 4, 4, True, False),
    ],
    # m > 64: compute grows; big tiles, no split.
    "large": [
        _gemm(128, 64, 64, 1, 4, 4, False),
        _gemm(128, 128, 128, 1, 8, 3, False),
        _gemm(128, 128, 64, 1, 8, 3, True),
        _gemm(256, 128, 64, 1, 8, 3, True),
        _gemm(128, 64, 64, 1, 4, 4, True),
        _gemm(128, 128, 64, 1, 8, 3, True, False),
        _gemm(128, 128, 64, 1, 8, 3, False, False),
    ],
}

_KEY = ["M_BUCKET", "N", "K"]
_autotuners: Dict[str, object] = {}
_forced: Optional[triton.Config] = None


def _family(m: int) -> str:
    if m == 1:
        return "gemv"
    if m <= 16:
        return "small"
    return "medium" if m <= SPLIT_K_MAX_M else "large"


def _configs(family: str) -> List[triton.Config]:
    return GEMV_CONFIGS if family == "gemv" else GEMM_CONFIGS[family]


def _kernel(family: str):
    """The autotuned kernel of a bucket family (a bare kernel under the interpreter or force_config)."""
    raw = kernels.qgemv_kernel if family == "gemv" else kernels.qgemm_kernel
    if INTERPRETED or _forced_config(family) is not None:
        return raw
    if family not in _autotuners:
        _autotuners[family] = triton.autotune(configs=_configs(family), key=_KEY)(raw)
    return _autotuners[family]


@contextlib.contextmanager
def force_config(config):
    """Launch with a fixed configuration instead of autotuning (tests, tuning sweeps).

    ``config``: a ``triton.Config`` whose kwargs suit the kernel the calls pick (``qgemv_kernel``
    for m = 1, ``qgemm_kernel`` otherwise), or a dict ``{family: Config}`` with families ``gemv``,
    ``small`` (m <= 16), ``medium`` (m <= 64), ``large``; families it leaves out are autotuned.
    """
    global _forced
    old, _forced = _forced, config
    try:
        yield
    finally:
        _forced = old


def _forced_config(family: str) -> Optional[triton.Config]:
    if isinstance(_forced, dict):
        return _forced.get(family)
    return _forced


def _launch_meta(family: str) -> dict:
    cfg = _forced_config(family)
    if cfg is not None:
        pass
    elif INTERPRETED:
        cfg = _configs(family)[0]
    else:
        return {}
    meta = dict(cfg.kwargs)
    if not INTERPRETED:
        meta.update(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return meta


def _check_args(x, qweight, scales, zeros, g_idx, bias, bits, group_size) -> None:
    """Raise naming the argument: the kernels read raw pointers and trust these shapes."""
    name = "quantkernels::triton_linear"
    if bits not in (4, 8):
        raise ValueError(f"{name}: bits must be 4 or 8, got {bits}")
    if x.dim() != 2 or x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"{name}: x must be 2-D float16/bfloat16 [M, K], got {x.dtype} {tuple(x.shape)}")
    k = x.shape[1]
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[0] * 32 != k * bits:
        raise ValueError(
            f"{name}: qweight must be int32 [K*bits/32, N] = [{k * bits // 32}, N], got {qweight.dtype} {tuple(qweight.shape)}"
        )
    n = qweight.shape[1]
    if group_size != -1 and (group_size <= 0 or k % group_size):
        raise ValueError(f"{name}: group_size must be -1 or divide K={k}, got {group_size}")
    g = 1 if group_size == -1 else k // group_size
    if g_idx is not None:  # act_order: any number of groups, as many rows as scales has
        g = scales.shape[0]
    if scales.dim() != 2 or scales.shape[1] != n or scales.shape[0] != g:
        raise ValueError(f"{name}: scales must be [G, N] = [{g}, {n}], got {tuple(scales.shape)}")
    if zeros is not None and (zeros.dtype != torch.uint8 or tuple(zeros.shape) != tuple(scales.shape)):
        raise ValueError(f"{name}: zeros must be uint8 {tuple(scales.shape)}, got {zeros.dtype} {tuple(zeros.shape)}")
    if g_idx is not None and (g_idx.dtype != torch.int32 or tuple(g_idx.shape) != (k,)):
        raise ValueError(f"{name}: g_idx must be int32 [K] = [{k}], got {g_idx.dtype} {tuple(g_idx.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"{name}: bias must be [N] = [{n}], got {tuple(bias.shape)}")
    for t_name, t in (("qweight", qweight), ("scales", scales), ("zeros", zeros), ("g_idx", g_idx), ("bias", bias)):
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
) -> Tensor:
    """``x @ W.T + bias`` for x ``[M, K]`` fp16/bf16 (unit column stride), W in the portable layout.

    ``zeros``: uint8 ``[G, N]`` real zero points, or None when all are ``2**(bits-1)``; ``g_idx``:
    int32 ``[K]``, or None when it is ``k // group_size``; ``group_size``: -1 for per channel.
    """
    _check_args(x, qweight, scales, zeros, g_idx, bias, bits, group_size)
    if x.stride(1) != 1:
        x = x.contiguous()
    m, k = x.shape
    n = qweight.shape[1]
    out = x.new_empty((m, n))
    if m == 0:
        return out
    family = _family(m)
    bucket = m_bucket(m)
    rows = 1 if family == "gemv" else m
    if family == "large":
        ws, cnt = out, qweight  # no split-K: never touched
    else:
        # fp32 partial sums [rows, N] then one int32 arrival counter per (16 x 16) output tile, the
        # smallest tile any configuration uses; zero on entry.
        tiles = triton.cdiv(rows, 16) * triton.cdiv(n, 16)
        buf = torch.zeros(rows * n + tiles, dtype=torch.float32, device=x.device)
        ws, cnt = buf[: rows * n], buf[rows * n :].view(torch.int32)
    common = dict(
        BITS=bits,
        GROUP_SIZE=k if group_size == -1 else group_size,
        HAS_ZEROS=zeros is not None,
        HAS_GIDX=g_idx is not None,
        HAS_BIAS=bias is not None,
        **_launch_meta(family),
    )
    if INTERPRETED and is_fake(x):
        # The interpreter runs Python on real data: dynamo's shape propagation (plain fake tensors)
        # is fine, but the launch cannot be traced into a graph. On a GPU wrap_triton traces it.
        if isinstance(x, FunctionalTensor):
            raise RuntimeError("quantkernels::triton_linear: torch.compile cannot trace the Triton interpreter; use a GPU")
        return out
    z = scales if zeros is None else zeros
    gi = qweight if g_idx is None else g_idx
    b = scales if bias is None else bias
    kernel = torch.library.wrap_triton(_kernel(family))
    if family == "gemv":

        def grid(meta):
            return (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

        kernel[grid](x, qweight, scales, z, gi, b, out, ws, cnt, n, k, bucket, **common)
    else:

        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

        kernel[grid](x, qweight, scales, z, gi, b, out, ws, cnt, m, n, k, x.stride(0), bucket, **common)
    return out
