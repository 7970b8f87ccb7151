"""Checkpoint interop: read and write GPTQ (v1, v2) and read AWQ GEMM checkpoint directories.

A checkpoint directory holds safetensors (one ``model.safetensors`` or shards with
``model.safetensors.index.json``) and a quantization config (``config.json``'s
``quantization_config``, ``quantize_config.json`` or AWQ's ``quant_config.json``). In memory every
layer is a :class:`~quantkernels.nn.QuantLinear` in the portable form (GPTQ v2: real zero points);
conversion happens here, at the file boundary.

* :func:`load` ``(path)`` -> :class:`Checkpoint`: the ``QuantLinear`` of every quantized module,
  the config, and the checkpoint's other (float) tensors.
* :func:`apply` ``(model, path)``: swap ``model``'s ``nn.Linear`` layers named in the checkpoint for
  ``QuantLinear`` and load every tensor in place; works on a model built on the meta device.
* :func:`save` ``(model, path, format="gptq" | "gptq_v2")``: write a directory that AutoGPTQ,
  GPTQModel and transformers load (see :mod:`quantkernels.io.gptq` for the v1 zero-point rule).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..nn import QuantLinear
from . import awq, files, gptq
from .config import GPTQ_FORMATS, CheckpointConfig, CheckpointError, to_dict
from .config import read as read_config

__all__ = ["Checkpoint", "CheckpointConfig", "CheckpointError", "apply", "load", "read_config", "save"]


@dataclasses.dataclass
class Checkpoint:
    """What :func:`load` returns."""

    config: CheckpointConfig
    layers: Dict[str, QuantLinear]  # module name -> layer
    tensors: Dict[str, torch.Tensor]  # every other tensor (embeddings, norms, float linears...)


def _reader(ckpt: CheckpointConfig):
    return awq.read_layer if ckpt.quant_method == "awq" else gptq.read_layer


class _FormatEvidence:
    """Collects what the layers' zero points say about a GPTQ v1/v2 label; warns once."""

    def __init__(self, ckpt: CheckpointConfig):
        self.ckpt = ckpt
        self.contrary = []
        self.total = 0

    def add(self, prefix: str, evidence: Optional[str]) -> None:
        self.total += 1
        if evidence is not None and evidence != self.ckpt.checkpoint_format:
            self.contrary.append((prefix, evidence))

    def warn(self) -> None:
        if not self.contrary:
            return
        prefix, seen = self.contrary[0]
        bits = self.ckpt.bits
        stored = (1 << (bits - 1)) - (1 if seen == "gptq" else 0)
        warnings.warn(
            f"{self.ckpt.source} labels this checkpoint {self.ckpt.checkpoint_format!r}, but the zero points of "
            f"{len(self.contrary)} of {self.total} layers look like {seen!r} (e.g. every stored zero point of "
            f"{prefix}.qzeros is {stored}, the symmetric {seen} value). Reading it as labelled; pass "
            f"checkpoint_format={seen!r} if the label is wrong",
            stacklevel=3,
        )


def _read_layers(path: str, ckpt: CheckpointConfig, tf: files.TensorFiles, expect: Dict[str, Tuple[int, int]], device):
    read_layer = _reader(ckpt)
    evidence = _FormatEvidence(ckpt)
    layers = {}
    for prefix in files.quantized_prefixes(tf.keys()):
        layer, seen = read_layer(tf, prefix, ckpt, expect.get(prefix), device)
        evidence.add(prefix, seen)
        layers[prefix] = layer
    if not layers:
        raise CheckpointError(f"{path}: no quantized layer (no tensor named '<module>.qweight')")
    evidence.warn()
    return layers


def _layer_tensor_names(prefixes) -> set:
    names = set()
    for p in prefixes:
        names.update(f"{p}.{k}" for k in ("qweight", "qzeros", "scales", "g_idx", "bias"))
    return names


def load(path: str, checkpoint_format: Optional[str] = None, device: Union[str, torch.device] = "cpu") -> Checkpoint:
    """Read a GPTQ / AWQ checkpoint directory.

    Args:
        path: the directory.
        checkpoint_format: ``"gptq"`` or ``"gptq_v2"`` to override the config's label (for mislabelled
            files; see :mod:`quantkernels.io.gptq`).
        device: where the tensors go.
    """
    ckpt = read_config(path, checkpoint_format)
    tf = files.TensorFiles(path)
    layers = _read_layers(path, ckpt, tf, {}, device)
    taken = _layer_tensor_names(layers)
    tensors = {k: tf.get(k).to(device) for k in tf.keys() if k not in taken}
    return Checkpoint(ckpt, layers, tensors)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _default_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def _assign(model: nn.Module, name: str, value: torch.Tensor, device) -> None:
    """Put checkpoint tensor ``name`` into the model's parameter or buffer of that name."""
    mod_name, _, attr = name.rpartition(".")
    try:
        mod = model.get_submodule(mod_name) if mod_name else model
    except AttributeError:
        mod = None
    if mod is None or (attr not in mod._parameters and attr not in mod._buffers):
        raise CheckpointError(f"checkpoint tensor {name!r} has no parameter or buffer of that name in the model")
    current = mod._parameters[attr] if attr in mod._parameters else mod._buffers[attr]
    if current is None or tuple(current.shape) != tuple(value.shape):
        shape = None if current is None else tuple(current.shape)
        raise CheckpointError(f"checkpoint tensor {name!r} has shape {tuple(value.shape)}, the model's has {shape}")
    target = device if current.device.type == "meta" else current.device
    value = value.to(device=target, dtype=current.dtype if current.is_floating_point() else value.dtype)
    if attr in mod._parameters:
        mod._parameters[attr] = nn.Parameter(value, requires_grad=current.requires_grad)
    else:
        mod._buffers[attr] = value


def apply(
    model: nn.Module,
    path: str,
    checkpoint_format: Optional[str] = None,
    device: Union[str, torch.device, None] = None,
) -> CheckpointConfig:
    """Swap ``model``'s linears for the checkpoint's ``QuantLinear`` and load every tensor in place.

    Every ``<m>.qweight`` in the checkpoint replaces module ``<m>`` (an ``nn.Linear`` or
    ``QuantLinear`` of the same shape); the other tensors are loaded into the parameters and buffers
    of the same names, converted to the model's dtypes. The model may be built on the meta device
    (parameters then land on ``device``, default: the model's first real tensor's device, else CPU).
    Parameters shared by several names (tied embeddings) stay shared. Raises
    :class:`CheckpointError` naming the tensor for any mismatch, and listing any model parameter the
    checkpoint does not provide (the model is then left partly loaded). Returns the checkpoint's
    config.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply: model must be an nn.Module, got {type(model).__name__}")
    ckpt = read_config(path, checkpoint_format)
    tf = files.TensorFiles(path)
    device = torch.device(device) if device is not None else _default_device(model)
    prefixes = files.quantized_prefixes(tf.keys())
    expect = {}
    for prefix in prefixes:
        try:
            mod = model.get_submodule(prefix)
        except AttributeError:
            mod = None
        if not isinstance(mod, (nn.Linear, QuantLinear)):
            found = "nothing" if mod is None else type(mod).__name__
            raise CheckpointError(f"checkpoint tensor {prefix}.qweight: the model has {found} at {prefix!r}, not a linear layer")
        expect[prefix] = (mod.in_features, mod.out_features)
        has_bias = mod.bias is not None
        if has_bias and f"{prefix}.bias" not in tf:
            tf.require(f"{prefix}.bias", f"the model's {prefix} has a bias")
        if not has_bias and f"{prefix}.bias" in tf:
            raise CheckpointError(f"checkpoint tensor {prefix}.bias: the model's {prefix} has no bias")

    # Names that share one Parameter (tied weights) before anything is replaced.
    shared: Dict[int, list] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(name)
    layers = _read_layers(path, ckpt, tf, expect, device)
    for prefix, layer in layers.items():
        _set_submodule(model, prefix, layer)
    taken = _layer_tensor_names(layers)
    loaded = set()
    for name in tf.keys():
        if name not in taken:
            _assign(model, name, tf.get(name), device)
            loaded.add(name)
    for names in shared.values():
        source = next((n for n in names if n in loaded), None)
        if source is None or len(names) == 1:
            continue
        mod_name, _, attr = source.rpartition(".")
        param = (model.get_submodule(mod_name) if mod_name else model)._parameters[attr]
        for other in names:
            if other != source and not any(other.startswith(p + ".") for p in layers):
                mod_name, _, attr = other.rpartition(".")
                (model.get_submodule(mod_name) if mod_name else model)._parameters[attr] = param
                loaded.add(other)
    # Whatever the model saves (parameters, persistent buffers) must have come from the checkpoint;
    # non-persistent buffers (computed in __init__) must at least not be left on meta.
    missing = [n for n in model.state_dict() if n not in loaded and n not in taken]
    missing += [n for n, t in model.named_buffers() if t.device.type == "meta" and n not in missing]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{path}: the checkpoint has no tensor for the model's {missing[:5]}{more}")
    return ckpt


def _common_config(layers: Dict[str, QuantLinear]):
    first_name, first = next(iter(layers.items()))
    key = lambda c: (c.bits, c.group_size, c.sym, c.act_order)  # noqa: E731
    for name, layer in layers.items():
        if key(layer.config) != key(first.config):
            raise ValueError(
                f"save: GPTQ checkpoints have one quantization config, but {name} is {layer.config.describe()} "
                f"(act_order={layer.config.act_order}) and {first_name} is {first.config.describe()} "
                f"(act_order={first.config.act_order})"
            )
    if first.config.act_bits is not None:
        warnings.warn(
            "save: act_bits (dynamic activation quantization) is a run-time choice and is not stored in GPTQ files",
            stacklevel=3,
        )
    return first.config


def save(
    model: nn.Module,
    path: str,
    format: str = "gptq",
    max_shard_size: Union[int, str] = "4GB",
) -> Dict[str, object]:
    """Write ``model`` (with ``QuantLinear`` layers) as a GPTQ checkpoint directory.

    Args:
        model: its ``QuantLinear`` modules become ``<name>.qweight/qzeros/scales/g_idx[/bias]``; every
            other parameter and persistent buffer is written as it is. A tensor shared by several
            names (tied embeddings) is written once, under its first name.
        path: the directory (created; old ``*.safetensors`` and index files in it are removed).
        format: ``"gptq"`` (v1, AutoGPTQ's and transformers' default: zero points stored minus one)
            or ``"gptq_v2"`` (real zero points, GPTQModel). For v1, a group whose real zero point is 0
            is re-centred (codes and zero +1, the same weights) when no code of it is ``maxq``;
            otherwise save raises ``ValueError`` naming the layer and group.
        max_shard_size: bytes (int) or a string like ``"2GB"`` / ``"500MB"``; bigger checkpoints are
            sharded with a ``model.safetensors.index.json``.

    Writes ``quantize_config.json`` and, when ``model.config`` is a transformers config,
    ``config.json`` with the same ``quantization_config``. Scales are written in their own dtype.
    Returns the quantization config dict written.
    """
    if format not in GPTQ_FORMATS:
        raise ValueError(f"save: format must be 'gptq' or 'gptq_v2', got {format!r}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        raise ValueError("save: the model has no QuantLinear layer (quantize it first, e.g. quantkernels.quantize_)")
    qcfg = to_dict(_common_config(layers), format)
    tensors: Dict[str, torch.Tensor] = {}
    seen: Dict[Tuple, str] = {}
    state = model.state_dict()
    layer_names = _layer_tensor_names(layers)
    for name, t in state.items():
        if name in layer_names:
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.device.type != "meta" and ident in seen:
            continue  # tied to an earlier name
        if t.device.type == "meta":
            raise ValueError(f"save: tensor {name!r} is on the meta device (not loaded)")
        seen[ident] = name
        tensors[name] = t
    for prefix, layer in layers.items():
        for k, v in gptq.layer_tensors_for_file(prefix, layer, format).items():
            tensors[f"{prefix}.{k}"] = v
    files.write(tensors, path, _parse_size(max_shard_size))
    with open(os.path.join(path, "quantize_config.json"), "w") as f:
        json.dump(qcfg, f, indent=2)
    hf_config = getattr(model, "config", None)
    if hf_config is not None and hasattr(hf_config, "to_json_string"):
        d = json.loads(hf_config.to_json_string(use_diff=False))
        d["quantization_config"] = qcfg
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(d, f, indent=2, sort_keys=True)
    return qcfg


def _parse_size(size: Union[int, str]) -> int:
    if isinstance(size, int):
        return size
    s = size.strip().upper()
    for unit, mult in (("GIB", 1 << 30), ("MIB", 1 << 20), ("KIB", 1 << 10), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)
