"""The quantized weight format, defined once.

Everything in quantkernels produces or consumes the *portable form* described here. Fast backends
may repack it into their own layouts once, at load time; what is saved is always this form.

Quantization
------------
A linear layer's weight ``W`` has shape ``[N, K]`` (out_features, in_features), as in ``nn.Linear``.
Input columns are split into groups along K. Column ``k`` belongs to group ``g_idx[k]``; without
``act_order``, ``g_idx[k] = k // group_size`` (``group_size = -1`` means one group spanning K, i.e.
one scale per output channel). Each (group, output channel) pair has a scale ``s`` and an integer
zero point ``z``; each weight is stored as an unsigned code ``q`` in ``[0, 2**bits - 1]``::

    W[n, k] = (q[n, k] - z[g_idx[k], n]) * s[g_idx[k], n]

* asymmetric (``sym=False``): the group's range is widened to contain 0 (as GPTQ does, so that 0 is
  exact), ``s = (max - min) / maxq``, ``z = clamp(round(-min / s), 0, maxq)``.
* symmetric (``sym=True``): ``s = 2 * absmax / maxq``, ``z = 2**(bits - 1)``, the GPTQ convention
  (codes 0..15 map to -8..7 for 4 bits).
* the code is ``q = clamp(round(W / s) + z, 0, maxq)``, computed with ``s`` already rounded to the
  scale dtype, so dequantization reproduces exactly what quantization chose.
* zero points are stored as the *real* zero (GPTQ "v2" convention, as GPTQModel writes it). AutoGPTQ's
  "v1" files store ``z - 1``; :mod:`quantkernels.io` converts at the file boundary.
* a group whose weights are all zero gets ``s = 1`` (any scale reproduces it); no NaN or Inf.

Packed layout, bit by bit
-------------------------
Codes are packed into int32 words as a little-endian bit stream, least-significant bits first:
value ``j`` of a run occupies stream bits ``[j*bits, (j+1)*bits)``, and stream bit ``t`` is bit
``t % 32`` of word ``t // 32``. For 2, 4 and 8 bits every word holds ``32 / bits`` whole values.
For 3 bits a block of 32 values fills 3 words and values 10 and 21 straddle a word boundary (value
10: bits 30-31 of word 0 and bit 0 of word 1; value 21: bit 31 of word 1 and bits 0-1 of word 2),
which is exactly how GPTQ packs 3-bit weights. A *packing block* is the smallest run that fills
whole words: 32/bits values for 2/4/8 bits, 32 values for 3 bits.

=========== ============================ =======================================================
tensor      shape, dtype                  contents
=========== ============================ =======================================================
``qweight`` ``[K * bits / 32, N]`` int32  codes packed along K (the input dimension): column n
                                          holds the bit stream of ``q[n, 0..K)``
``qzeros``  ``[G, N * bits / 32]`` int32  zero points packed along N: row g holds the bit stream
                                          of ``z[g, 0..N)``
``scales``  ``[G, N]`` fp16/bf16/fp32     scales
``g_idx``   ``[K]`` int32                 group of each input column
=========== ============================ =======================================================

``G = K / group_size`` (1 for per-channel). Shape rules: K and N are multiples of the packing block
(8 for 4 bits, 4 for 8 bits, 16 for 2 bits, 32 for 3 bits); ``group_size`` is -1 or a multiple of 16
that divides K. :meth:`QuantConfig.shape_error` states them for a given layer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def block_values(bits: int) -> int:
    """Number of codes in one packing block (the smallest run that fills whole int32 words)."""
    return 32 // math.gcd(32, bits)


def block_words(bits: int) -> int:
    """Number of int32 words in one packing block."""
    return block_values(bits) * bits // 32


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """How a linear layer's weights (and optionally activations) are quantized.

    Args:
        bits: weight bit width, one of 2, 3, 4, 8.
        group_size: input columns sharing one scale and zero point; -1 for one per output channel,
            otherwise a multiple of 16 that divides in_features.
        sym: symmetric (fixed zero point 2**(bits-1)) or asymmetric (integer zero points).
        act_order: columns were quantized in a data-dependent order; ``g_idx`` maps each input
            column to its group (set by GPTQ; RTN produces the trivial ``g_idx``).
        scale_dtype: dtype of the stored scales.
        act_bits: None for float activations (W*A16); 8 quantizes activations to int8 at run time
            (dynamic W8A8 / W4A8, served by backends that support it).
        act_group_size: with ``act_bits=8``: -1 for one activation scale per token (row), or 32 for
            one scale per 32-element block of each row (as llama.cpp's Q8 activations).
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    act_order: bool = False
    scale_dtype: torch.dtype = torch.float16
    act_bits: Optional[int] = None
    act_group_size: int = -1

    def __post_init__(self):
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"QuantConfig: bits must be one of {SUPPORTED_BITS}, got {self.bits!r}")
        gs = self.group_size
        if not isinstance(gs, int) or not (gs == -1 or (gs > 0 and gs % 16 == 0)):
            raise ValueError(
                f"QuantConfig: group_size must be -1 (per output channel) or a positive multiple of 16, got {gs!r}"
            )
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(
                f"QuantConfig: scale_dtype must be one of float16, bfloat16, float32, got {self.scale_dtype!r}"
            )
        if self.act_bits not in (None, 8):
            raise ValueError(f"QuantConfig: act_bits must be None or 8, got {self.act_bits!r}")
        if self.act_group_size not in (-1, 32):
            raise ValueError(f"QuantConfig: act_group_size must be -1 (per token) or 32, got {self.act_group_size!r}")

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    def num_groups(self, in_features: int) -> int:
        return 1 if self.group_size == -1 else in_features // self.group_size

    def effective_group_size(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size

    def shape_error(self, in_features: int, out_features: int) -> Optional[str]:
        """Why a [out_features, in_features] weight cannot be stored in this format, or None."""
        blk = block_values(self.bits)
        if in_features <= 0 or out_features <= 0:
            return f"in_features and out_features must be positive, got K={in_features}, N={out_features}"
        if in_features % blk:
            return f"in_features K={in_features} must be a multiple of {blk} for {self.bits}-bit packing along K"
        if out_features % blk:
            return f"out_features N={out_features} must be a multiple of {blk} for {self.bits}-bit zero-point packing along N"
        if self.group_size != -1 and in_features % self.group_size:
            return f"in_features K={in_features} is not divisible by group_size={self.group_size}"
        return None

    def check_shape(self, in_features: int, out_features: int) -> None:
        err = self.shape_error(in_features, out_features)
        if err:
            raise ValueError(f"QuantConfig(bits={self.bits}, group_size={self.group_size}): {err}")

    def packed_shapes(self, in_features: int, out_features: int) -> dict:
        """Shapes of the portable tensors for a [out_features, in_features] weight."""
        g = self.num_groups(in_features)
        return {
            "qweight": (in_features * self.bits // 32, out_features),
            "qzeros": (g, out_features * self.bits // 32),
            "scales": (g, out_features),
            "g_idx": (in_features,),
        }

    def nbytes(self, in_features: int, out_features: int, bias: bool = False) -> int:
        """Bytes of the portable tensors (what a checkpoint stores), bias in the scale dtype."""
        shapes = self.packed_shapes(in_features, out_features)
        esize = torch.empty((), dtype=self.scale_dtype).element_size()
        n = 4 * (math.prod(shapes["qweight"]) + math.prod(shapes["qzeros"]) + in_features)
        n += esize * (math.prod(shapes["scales"]) + (out_features if bias else 0))
        return n

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["scale_dtype"] = _DTYPE_NAMES[self.scale_dtype]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        d = dict(d)
        if isinstance(d.get("scale_dtype"), str):
            d["scale_dtype"] = getattr(torch, d["scale_dtype"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def describe(self) -> str:
        g = "channel" if self.group_size == -1 else f"g{self.group_size}"
        a = "" if self.act_bits is None else f" a{self.act_bits}"
        return f"int{self.bits} {g} {'sym' if self.sym else 'asym'}{a}"


def trivial_g_idx(in_features: int, group_size: int, device=None) -> torch.Tensor:
    """``g_idx[k] = k // group_size`` (all zeros for per-channel)."""
    gs = in_features if group_size == -1 else group_size
    return (torch.arange(in_features, device=device, dtype=torch.int32) // gs).to(torch.int32)


def is_trivial_g_idx(g_idx: torch.Tensor, group_size: int) -> bool:
    """True when ``g_idx`` is the identity grouping (no activation reordering needed). Syncs."""
    return bool(torch.equal(g_idx.to(torch.int32), trivial_g_idx(g_idx.numel(), group_size, g_idx.device)))
