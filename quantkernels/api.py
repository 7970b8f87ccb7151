"""``quantize_``: replace a model's ``nn.Linear`` layers with ``QuantLinear`` in place."""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Pattern, Sequence, Union

import torch
from torch import nn

from .formats import QuantConfig
from .nn import QuantLinear

DEFAULT_SKIP = ("lm_head",)
METHODS = ("rtn", "gptq", "awq")


@dataclasses.dataclass
class QuantizeSummary:
    """What :func:`quantize_` did."""

    replaced: List[str]
    skipped: Dict[str, str]  # name -> reason
    bytes_before: int  # float weights and biases of the replaced layers
    bytes_after: int  # their portable quantized tensors
    report: Dict[str, dict] = dataclasses.field(default_factory=dict)  # per-layer method report

    def __str__(self) -> str:
        ratio = self.bytes_before / self.bytes_after if self.bytes_after else float("nan")
        return (
            f"{len(self.replaced)} layers quantized, {len(self.skipped)} kept in float; "
            f"{self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB ({ratio:.2f}x smaller)"
        )


def _compile_skip(skip) -> List[Union[str, Pattern]]:
    if skip is None:
        return []
    if isinstance(skip, (str, re.Pattern)):
        skip = [skip]
    out = []
    for s in skip:
        if isinstance(s, re.Pattern):
            out.append(s)
        elif isinstance(s, str):
            out.append(s)
        else:
            raise TypeError(f"quantize_: skip entries must be str (exact name or regex) or re.Pattern, got {type(s).__name__}")
    return out


def _matches(name: str, rules) -> bool:
    for r in rules:
        if isinstance(r, str):
            if name == r or re.fullmatch(r, name):
                return True
        elif r.fullmatch(name):
            return True
    return False


def _tied_to_embedding(model: nn.Module, linear: nn.Linear) -> bool:
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.weight is linear.weight:
            return True
    return False


def find_linears(model: nn.Module, skip=None, include_default_skip: bool = True):
    """``(name, module)`` pairs of the linears to quantize, and a dict of skipped names -> reason."""
    rules = _compile_skip(skip)
    chosen, skipped = [], {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or isinstance(mod, QuantLinear):
            continue
        last = name.rsplit(".", 1)[-1]
        if _matches(name, rules):
            skipped[name] = "matched skip"
        elif include_default_skip and last in DEFAULT_SKIP:
            skipped[name] = "lm_head is kept in float by default"
        elif include_default_skip and _tied_to_embedding(model, mod):
            skipped[name] = "weight is tied to an embedding"
        else:
            chosen.append((name, mod))
    return chosen, skipped


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _float_bytes(linear: nn.Linear) -> int:
    n = linear.weight.numel() * linear.weight.element_size()
    if linear.bias is not None:
        n += linear.bias.numel() * linear.bias.element_size()
    return n


def _quant_bytes(q: QuantLinear) -> int:
    return sum(t.numel() * t.element_size() for t in q.portable_tensors().values())


def quantize_(
    model: nn.Module,
    config: QuantConfig = QuantConfig(),
    *,
    skip: Optional[Union[str, Pattern, Sequence[Union[str, Pattern]]]] = None,
    method: str = "rtn",
    calibration: Optional[Iterable] = None,
    progress: bool = True,
    **method_options,
) -> QuantizeSummary:
    """Replace ``model``'s ``nn.Linear`` layers with :class:`QuantLinear`, in place.

    Args:
        model: any module; its linears are found by name.
        config: the format of every replaced layer.
        skip: names (exact, or a regex matching the whole name) to keep in float. ``lm_head`` and
            linears whose weight is tied to an embedding are always kept.
        method: ``"rtn"`` (round to nearest, no data), ``"gptq"`` or ``"awq"`` (need ``calibration``).
        calibration: for gptq/awq, an iterable of token-id tensors or of dicts passed as
            ``model(**batch)``.
        progress: show progress bars (gptq/awq).
        **method_options: passed to the method (e.g. ``damp_percent``, ``static_groups`` for GPTQ).

    Returns:
        a :class:`QuantizeSummary`: replaced and skipped layers, bytes before and after, and for
        gptq/awq a per-layer report of reconstruction error against RTN.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, QuantConfig):
        raise TypeError(f"quantize_: config must be a QuantConfig, got {type(config).__name__}")
    if method not in METHODS:
        raise ValueError(f"quantize_: method must be one of {METHODS}, got {method!r}")
    chosen, skipped = find_linears(model, skip)
    servable = []
    for name, lin in chosen:
        err = config.shape_error(lin.in_features, lin.out_features)
        if err:
            warnings.warn(f"quantize_: keeping {name} in full precision: {err}", stacklevel=2)
            skipped[name] = err
        else:
            servable.append((name, lin))
    if not servable:
        warnings.warn("quantize_: no nn.Linear layer was replaced (all skipped or none found)", stacklevel=2)
        return QuantizeSummary([], skipped, 0, 0)

    report: Dict[str, dict] = {}
    if method == "rtn":
        if method_options:
            raise TypeError(f"quantize_: method 'rtn' takes no options, got {sorted(method_options)}")
        new_layers = {name: QuantLinear.from_linear(lin, config) for name, lin in servable}
    else:
        if calibration is None:
            raise ValueError(f"quantize_: method {method!r} needs calibration data (calibration=batches)")
        from . import algorithms

        new_layers, report = algorithms.run(
            method, model, dict(servable), config, calibration, progress=progress, **method_options
        )

    before = after = 0
    for name, lin in servable:
        q = new_layers[name]
        before += _float_bytes(lin)
        after += _quant_bytes(q)
        set_submodule(model, name, q)
    return QuantizeSummary([n for n, _ in servable], skipped, before, after, report)
