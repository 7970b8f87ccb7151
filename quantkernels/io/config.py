"""The quantization config of a checkpoint directory, as GPTQ and AWQ tools write it.

Where it lives, in order of precedence:

* ``config.json`` -> ``quantization_config`` (transformers, GPTQModel, AutoAWQ),
* ``quantize_config.json`` (AutoGPTQ, GPTQModel),
* ``quant_config.json`` (AutoAWQ: ``w_bit``, ``q_group_size``, ``zero_point``, ``version``).

When more than one is present they must agree on every field that changes how tensors are read
(bits, group_size, sym, desc_act, checkpoint format); a disagreement is an error naming both files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import torch

from ..formats import QuantConfig

GPTQ_BITS = (2, 3, 4, 8)
AWQ_BITS = (4,)
GPTQ_FORMATS = ("gptq", "gptq_v2")  # v1 (AutoGPTQ: zero points stored minus one), v2 (real zeros)
CONFIG_FILES = ("config.json", "quantize_config.json", "quant_config.json")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as it claims to be; the message names the tensor or file."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """What a checkpoint's quantization config says, normalised.

    ``checkpoint_format`` is ``"gptq"`` (v1), ``"gptq_v2"`` or ``"awq_gemm"``. ``source`` names the
    file it came from; ``raw`` keeps the dict as read (unknown keys included).
    """

    quant_method: str  # "gptq" | "awq"
    bits: int
    group_size: int  # -1: one group per output channel
    sym: bool
    desc_act: bool
    checkpoint_format: str
    static_groups: bool = False
    true_sequential: bool = True
    source: str = ""
    raw: dict = dataclasses.field(default_factory=dict, compare=False)

    def quant_config(self, scale_dtype: torch.dtype = torch.float16) -> QuantConfig:
        """The :class:`QuantConfig` of every layer this checkpoint holds."""
        return QuantConfig(
            bits=self.bits, group_size=self.group_size, sym=self.sym, act_order=self.desc_act, scale_dtype=scale_dtype
        )

    def _reading_fields(self):
        return (self.quant_method, self.bits, self.group_size, self.sym, self.desc_act, self.checkpoint_format)


def _as_bool(value, key: str, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise CheckpointError(f"{source}: {key} must be true or false, got {value!r}")


def parse(d: dict, source: str = "<dict>", checkpoint_format: Optional[str] = None) -> CheckpointConfig:
    """Normalise one quantization-config dict; ``checkpoint_format`` overrides what it says."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: quantization config must be a JSON object, got {type(d).__name__}")
    method = str(d.get("quant_method", "awq" if "w_bit" in d else "gptq")).lower()
    if method not in ("gptq", "awq"):
        raise CheckpointError(f"{source}: quant_method {method!r} is not supported (expected 'gptq' or 'awq')")
    bits = d.get("bits", d.get("w_bit"))
    if bits is None:
        raise CheckpointError(f"{source}: no 'bits' in the quantization config")
    allowed = GPTQ_BITS if method == "gptq" else AWQ_BITS
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        raise CheckpointError(f"{source}: bits={bits!r} is not supported for {method} (supported: {allowed})")
    group_size = d.get("group_size", d.get("q_group_size", -1))
    if isinstance(group_size, bool) or not isinstance(group_size, int) or not (
        group_size == -1 or (group_size > 0 and group_size % 16 == 0)
    ):
        raise CheckpointError(
            f"{source}: group_size={group_size!r} is not supported (expected -1 or a positive multiple of 16)"
        )
    if method == "gptq":
        fmt = d.get("checkpoint_format")
        alt = d.get("format")  # GPTQModel's newer key
        if fmt is not None and alt is not None and str(fmt).lower() != str(alt).lower():
            raise CheckpointError(f"{source}: checkpoint_format={fmt!r} and format={alt!r} disagree")
        fmt = str(fmt if fmt is not None else (alt if alt is not None else "gptq")).lower()
        if checkpoint_format is not None:
            fmt = checkpoint_format
        if fmt not in GPTQ_FORMATS:
            raise CheckpointError(
                f"{source}: checkpoint_format {fmt!r} is not supported (expected one of {GPTQ_FORMATS}; "
                "kernel-specific repacks such as marlin must be converted back to gptq first)"
            )
        sym = _as_bool(d.get("sym", True), "sym", source)
        desc_act = _as_bool(d.get("desc_act", False), "desc_act", source)
    else:
        version = str(d.get("version", "gemm")).lower()
        if version != "gemm":
            raise CheckpointError(f"{source}: AWQ version {version!r} is not supported (only 'gemm')")
        if checkpoint_format not in (None, "awq_gemm"):
            raise CheckpointError(f"checkpoint_format={checkpoint_format!r} given for an AWQ checkpoint ({source})")
        fmt = "awq_gemm"
        # AWQ GEMM layers carry qzeros, which are what its kernels subtract: they are read as real
        # zero points whatever zero_point says (a layer without them is a missing-tensor error).
        sym = False
        desc_act = False
    return CheckpointConfig(
        quant_method=method,
        bits=bits,
        group_size=group_size,
        sym=sym,
        desc_act=desc_act,
        checkpoint_format=fmt,
        static_groups=_as_bool(d.get("static_groups", False), "static_groups", source),
        true_sequential=_as_bool(d.get("true_sequential", True), "true_sequential", source),
        source=source,
        raw=dict(d),
    )


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def read(path: str, checkpoint_format: Optional[str] = None) -> CheckpointConfig:
    """The quantization config of the checkpoint directory ``path`` (see the module docstring)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")
    found = []
    for name in CONFIG_FILES:
        file = os.path.join(path, name)
        if not os.path.exists(file):
            continue
        d = _read_json(file)
        if name == "config.json":
            if "quantization_config" not in d:
                continue
            d = d["quantization_config"]
            name = "config.json:quantization_config"
        found.append(parse(d, name, checkpoint_format))
    if not found:
        raise CheckpointError(
            f"{path}: no quantization config (looked for config.json's quantization_config, quantize_config.json, "
            "quant_config.json)"
        )
    first = found[0]
    for other in found[1:]:
        if other._reading_fields() != first._reading_fields():
            raise CheckpointError(
                f"{path}: {first.source} and {other.source} disagree: "
                f"{_describe(first)} vs {_describe(other)}"
            )
    return first


def _describe(c: CheckpointConfig) -> str:
    return (
        f"(quant_method={c.quant_method}, bits={c.bits}, group_size={c.group_size}, sym={c.sym}, "
        f"desc_act={c.desc_act}, checkpoint_format={c.checkpoint_format})"
    )


def to_dict(config: QuantConfig, checkpoint_format: str) -> dict:
    """The ``quantize_config.json`` / ``quantization_config`` a GPTQ writer emits for ``config``."""
    from .. import __version__

    return {
        "quant_method": "gptq",
        "bits": config.bits,
        "group_size": config.group_size,
        "desc_act": config.act_order,
        "sym": config.sym,
        "static_groups": False,
        "true_sequential": True,
        "checkpoint_format": checkpoint_format,
        "meta": {"quantizer": [f"quantkernels:{__version__}"]},
    }
