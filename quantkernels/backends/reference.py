"""The reference backend: the portable-format ops in pure PyTorch, on any device and dtype."""

from __future__ import annotations

import torch


class ReferenceBackend:
    name = "reference"

    def unavailable_reason(self):
        return None

    def supports(self, layer, x):
        # Every format, device and float dtype; dynamic int8 activations are simulated exactly
        # (quantize the activation, then the float matmul on the dequantized values).
        return None

    def prepare(self, layer):
        return None

    def linear(self, layer, state, x2d):
        if layer.config.act_bits is not None:
            from ..reference import dequantize_activations_int8, quantize_activations_int8

            xq, xs = quantize_activations_int8(x2d, layer.config.act_group_size)
            x2d_eff = dequantize_activations_int8(xq, xs)
            out = torch.ops.quantkernels.linear(
                x2d_eff, layer.qweight, layer.qzeros, layer.scales, layer.g_idx, layer.bias, layer.config.bits
            )
            return out.to(x2d.dtype)
        return torch.ops.quantkernels.linear(
            x2d, layer.qweight, layer.qzeros, layer.scales, layer.g_idx, layer.bias, layer.config.bits
        )


BACKEND = ReferenceBackend()
