"""Safetensors files of a checkpoint directory: one ``model.safetensors``, or shards with an index.

The sharded layout is the one transformers writes: ``model-00001-of-00003.safetensors`` ... and
``model.safetensors.index.json`` = ``{"metadata": {"total_size": bytes}, "weight_map": {tensor:
file}}``. Tensors are read lazily, one at a time, so a checkpoint never needs twice its size in
memory.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Optional

import torch

from .config import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class TensorFiles:
    """Name -> tensor access to the safetensors files of a directory (lazy, read-only)."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self.path = path
        self._where: Dict[str, str] = {}
        index = os.path.join(path, INDEX_FILE)
        if os.path.exists(index):
            with open(index) as f:
                try:
                    weight_map = json.load(f)["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise CheckpointError(f"{index}: not a safetensors index (needs a 'weight_map' object): {e}") from None
            files = sorted(set(weight_map.values()))
            for file in files:
                if not os.path.exists(os.path.join(path, file)):
                    missing = next(k for k, v in weight_map.items() if v == file)
                    raise CheckpointError(f"{index}: shard {file!r} (holding {missing!r}) does not exist")
        else:
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            if not files:
                raise CheckpointError(f"{path}: no .safetensors file (and no {INDEX_FILE})")
            weight_map = None
        self._handles = {f: safe_open(os.path.join(path, f), framework="pt") for f in files}
        for file, handle in self._handles.items():
            for key in handle.keys():
                if key in self._where:
                    raise CheckpointError(f"{path}: tensor {key!r} is stored twice ({self._where[key]} and {file})")
                self._where[key] = file
        if weight_map is not None:
            for key, file in weight_map.items():
                if self._where.get(key) != file:
                    raise CheckpointError(f"{index}: tensor {key!r} is mapped to {file!r} but that shard does not hold it")

    def keys(self) -> List[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> Optional[torch.Tensor]:
        """The tensor, or None when absent."""
        file = self._where.get(name)
        return None if file is None else self._handles[file].get_tensor(name)

    def require(self, name: str, why: str) -> torch.Tensor:
        t = self.get(name)
        if t is None:
            raise CheckpointError(f"{self.path}: missing tensor {name!r} ({why})")
        return t


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def write(tensors: Dict[str, torch.Tensor], path: str, max_shard_bytes: int = 4 << 30) -> List[str]:
    """Write ``tensors`` as safetensors under ``path``; shard past ``max_shard_bytes``. Returns the files."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    for stale in os.listdir(path):  # leftovers of an earlier save would be read as part of this one
        if stale.endswith(".safetensors") or stale == INDEX_FILE:
            os.remove(os.path.join(path, stale))
    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        n = _nbytes(t)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().to("cpu").contiguous()
        size += n
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, SINGLE_FILE), metadata=meta)
        return [SINGLE_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file, shard in zip(names, shards):
        save_file(shard, os.path.join(path, file), metadata=meta)
        weight_map.update({k: file for k in shard})
    index = {"metadata": {"total_size": sum(_nbytes(t) for t in tensors.values())}, "weight_map": weight_map}
    with open(os.path.join(path, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return names + [INDEX_FILE]


def quantized_prefixes(names: Iterable[str]) -> List[str]:
    """Module names that hold a quantized layer (those with a ``<name>.qweight`` tensor), sorted."""
    return sorted(n[: -len(".qweight")] for n in names if n.endswith(".qweight"))
