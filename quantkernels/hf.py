"""Hugging Face transformers models on ``QuantLinear``, without forking transformers.

Any transformers model whose projections are ``nn.Linear`` works; nothing here knows an
architecture. Three paths:

* :func:`from_pretrained` ``(path)``: read ``config.json``, build the model with its parameters on
  the meta device (no memory, no random init), swap the linears named in the GPTQ / AWQ checkpoint
  for ``QuantLinear`` and load every tensor (:func:`quantkernels.io.apply`). Then ``generate()``.
* :func:`quantize` ``(model, config)``: quantize an already loaded float model in place (RTN, or
  GPTQ / AWQ with calibration data): :func:`quantkernels.quantize_`.
* :func:`save_pretrained` ``(model, path)``: a GPTQ directory (plus the tokenizer, if given) that
  :func:`from_pretrained` and other GPTQ tools load.

``transformers`` is imported only when these functions run.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Optional, Union

import torch
from torch import nn

from . import io as qio
from .api import QuantizeSummary, quantize_
from .formats import QuantConfig


@contextlib.contextmanager
def parameters_on_meta():
    """Inside this context every new ``nn.Parameter`` is moved to the meta device when registered.

    Buffers stay real, so buffers a model computes in ``__init__`` and does not save (rotary
    ``inv_freq``) keep their values; parameters cost no memory and their random init does nothing.
    It patches ``nn.Module.register_parameter`` for its duration: do not build models in other
    threads meanwhile.
    """
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        p = module._parameters.get(name)
        if p is not None and p.device.type != "meta":
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def empty_model(config, model_class=None, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A transformers model for ``config`` with its parameters on the meta device (see above)."""
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    config = _without_quantization_config(config)
    with parameters_on_meta():
        if hasattr(model_class, "from_config"):
            model = model_class.from_config(config, dtype=dtype) if dtype is not None else model_class.from_config(config)
        else:
            model = model_class(config)
            if dtype is not None:
                model.to(dtype)
    return model


def _without_quantization_config(config):
    """A copy of ``config`` without ``quantization_config``, so transformers does not act on it."""
    import copy

    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    return config


def from_pretrained(
    path: str,
    model_class=None,
    dtype: Optional[torch.dtype] = None,
    device: Union[str, torch.device] = "cpu",
    checkpoint_format: Optional[str] = None,
) -> nn.Module:
    """Load a GPTQ / AWQ checkpoint directory into a transformers model on ``QuantLinear``.

    Args:
        path: a directory with ``config.json`` (a transformers config with ``quantization_config``)
            and the safetensors.
        model_class: a transformers class or auto class (default ``AutoModelForCausalLM``).
        dtype: dtype of the float parts (embeddings, norms, float linears); default the config's
            ``dtype`` / ``torch_dtype``, else float32. Quantized layers keep the checkpoint's scale dtype.
        device: where the weights go.
        checkpoint_format: override a mislabelled GPTQ checkpoint (``"gptq"`` / ``"gptq_v2"``).
    Returns:
        the model in eval mode, ready for ``generate()``.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    if dtype is None:
        dtype = getattr(config, "dtype", None) if hasattr(config, "dtype") else getattr(config, "torch_dtype", None)
        dtype = dtype or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
    model = empty_model(config, model_class, dtype)
    # Buffers computed in __init__ (rotary inv_freq) are real but on the CPU: move them first.
    _move_buffers(model, device)
    qio.apply(model, path, checkpoint_format=checkpoint_format, device=device)
    if hasattr(model, "tie_weights") and getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    _load_generation_config(model, path)
    return model.eval()


def _move_buffers(model: nn.Module, device) -> None:
    for mod in model.modules():
        for name, b in mod._buffers.items():
            if b is not None and b.device.type != "meta":
                mod._buffers[name] = b.to(device)


def _load_generation_config(model: nn.Module, path: str) -> None:
    if not os.path.exists(os.path.join(path, "generation_config.json")):
        return
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig.from_pretrained(path)


def quantize(model: nn.Module, config: QuantConfig = QuantConfig(), **kwargs) -> QuantizeSummary:
    """Quantize a loaded float transformers model in place (``lm_head`` and tied layers stay float).

    Same arguments as :func:`quantkernels.quantize_`.
    """
    return quantize_(model, config, **kwargs)


def save_pretrained(model: nn.Module, path: str, format: str = "gptq", tokenizer=None, **kwargs) -> dict:
    """:func:`quantkernels.io.save` plus ``generation_config.json`` and the tokenizer when given."""
    qcfg = qio.save(model, path, format=format, **kwargs)
    gen = getattr(model, "generation_config", None)
    if gen is not None and hasattr(gen, "to_json_string"):
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            f.write(gen.to_json_string())
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return qcfg


def describe(model: nn.Module) -> str:
    """One line: how many QuantLinear layers, their formats, and the bytes of the quantized tensors."""
    from .nn import QuantLinear

    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    kinds = sorted({m.config.describe() for m in layers})
    nbytes = sum(t.numel() * t.element_size() for m in layers for t in m.portable_tensors().values())
    return json.dumps({"quant_linears": len(layers), "formats": kinds, "quantized_MiB": round(nbytes / 2**20, 2)})
