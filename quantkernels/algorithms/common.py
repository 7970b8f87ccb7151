"""Helpers shared by the calibrated methods: which linears live in which block, progress bars."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from .blocks import find_blocks


class BlockPlan:
    """The model's blocks and, for each, the linears to quantize (by name relative to the block)."""

    def __init__(self, model: nn.Module, layers: Dict[str, nn.Linear]):
        self.prefix, self.blocks = find_blocks(model)
        self.layers = layers
        self._per_block: List[Dict[str, nn.Linear]] = [dict() for _ in self.blocks]
        self.outside: Dict[str, nn.Linear] = {}
        for name, lin in layers.items():
            placed = False
            for i, _ in enumerate(self.blocks):
                head = f"{self.prefix}.{i}."
                if name.startswith(head):
                    self._per_block[i][name[len(head):]] = lin
                    placed = True
                    break
            if not placed:
                self.outside[name] = lin

    def block_linears(self, i: int) -> Dict[str, nn.Linear]:
        return self._per_block[i]

    def full_name(self, i: int, rel: str) -> str:
        return f"{self.prefix}.{i}.{rel}"


def quantize_outside_blocks(plan: BlockPlan, config, why: str) -> Tuple[dict, dict]:
    """Linears outside the repeated blocks get RTN (there is no block to calibrate them in)."""
    from ..nn import QuantLinear

    out, report = {}, {}
    for name, lin in plan.outside.items():
        out[name] = QuantLinear.from_linear(lin, config)
        report[name] = {"note": why}
    return out, report


def progress_bar(blocks, enabled: bool, label: str):
    if not enabled:
        return blocks
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an extra: fall back to one line per block
        def gen():
            for i, b in enumerate(blocks):
                print(f"{label}: block {i + 1}/{len(blocks)}", flush=True)
                yield b
        return gen()
    return tqdm(blocks, desc=f"{label} blocks", unit="block")


def range_params(lo: torch.Tensor, hi: torch.Tensor, config) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale and zero point for weights in ``[lo, hi]`` (``lo <= 0 <= hi``, any shape), with the
    conventions of :func:`quantkernels.reference.quantize`: ``(scale in config.scale_dtype, the same
    scale as fp32, zero as fp32)``. The searches (GPTQ's MSE grid, AWQ's clipping) call it with
    shrunk ranges."""
    maxq = config.maxq
    if config.sym:
        scale = 2.0 * torch.maximum(hi, -lo) / maxq
    else:
        scale = (hi - lo) / maxq
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(config.scale_dtype)
    # A scale that underflows in a 16-bit dtype would divide by zero: use the smallest normal.
    tiny = torch.finfo(config.scale_dtype).tiny
    scale = torch.where(scale.to(torch.float32) > 0, scale, torch.full_like(scale, tiny))
    s32 = scale.to(torch.float32)
    if config.sym:
        zero = torch.full_like(s32, float(1 << (config.bits - 1)))
    else:
        zero = torch.clamp(torch.round(-lo / s32), 0, maxq)
    return scale, s32, zero
