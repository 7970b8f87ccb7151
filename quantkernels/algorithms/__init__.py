"""Calibrated quantization methods: GPTQ and AWQ (RTN, the baseline, lives in ``QuantLinear.from_linear``).

``run(method, model, layers, config, calibration, progress=True, **options)`` returns
``({name: QuantLinear}, {name: report})``; :func:`quantkernels.quantize_` calls it and swaps the layers
in. The float linears passed in are consumed: their weights are overwritten while the model is
processed (GPTQ: by the dequantized weights, so later blocks see the quantized ones; AWQ: scaled, with
the inverse scale folded into the preceding norm or linear). Each report entry holds ``rtn_error``
and ``error``: the relative output error ``||XW^T - XWq^T||^2 / ||XW^T||^2`` on the calibration
inputs for RTN and for the method.
"""

from __future__ import annotations

from typing import Dict

from torch import nn

from ..formats import QuantConfig

METHODS = ("gptq", "awq")


def run(method: str, model: nn.Module, layers: Dict[str, nn.Linear], config: QuantConfig, calibration,
        progress: bool = True, **options):
    if method == "gptq":
        from . import gptq

        return gptq.run(model, layers, config, calibration, progress=progress, **options)
    if method == "awq":
        from . import awq

        return awq.run(model, layers, config, calibration, progress=progress, **options)
    raise ValueError(f"algorithms.run: method must be one of {METHODS}, got {method!r}")
