"""Block-by-block calibration machinery shared by GPTQ and AWQ.

A model is processed one repeated block at a time (LLaMA ``model.layers``, BERT ``encoder.layer``,
else the largest ``nn.ModuleList``). The inputs of the first block are captured once by running the
model with a pre-hook that raises :class:`StopForward`; afterwards each block is run on the stored
inputs and its outputs become the next block's inputs, so peak memory is about one block's
activations for the calibration set. Input statistics of a linear layer are accumulated in fp32 by
forward hooks while the block runs, streaming: ``X^T X`` and ``sum |x|`` per input channel, never the
activations themselves.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass early, once it has what it needs."""


def find_blocks(model: nn.Module) -> Tuple[str, nn.ModuleList]:
    """``(name, ModuleList)`` of the model's repeated blocks."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "encoder.layer", "bert.encoder.layer", "layers"):
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList) and len(mod):
            return path, mod
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and any(isinstance(m, nn.Linear) for m in mod.modules()):
            size = sum(p.numel() for p in mod.parameters())
            if best is None or size > best[2]:
                best = (name, mod, size)
    if best is None:
        raise ValueError("find_blocks: the model has no nn.ModuleList of blocks holding nn.Linear layers")
    return best[0], best[1]


def _as_call(batch):
    if isinstance(batch, torch.Tensor):
        return (batch if batch.dim() == 2 else batch.unsqueeze(0),), {}
    if isinstance(batch, dict):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    raise TypeError(f"calibration batches must be token-id tensors or dicts for model(**batch), got {type(batch).__name__}")


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


@torch.no_grad()
def capture_block_inputs(model: nn.Module, first_block: nn.Module, calibration: Iterable) -> List[Tuple[tuple, dict]]:
    """Run the model on each batch until ``first_block``; return the block's ``(args, kwargs)`` per batch."""
    device = next(model.parameters()).device
    captured: List[Tuple[tuple, dict]] = []

    def hook(module, args, kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_value", "past_key_values", "use_cache")}
        captured.append((args, kwargs))
        raise StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache is not None:
        config.use_cache = False
    try:
        for batch in calibration:
            args, kwargs = _as_call(batch)
            try:
                model(*_to(args, device), **_to(kwargs, device))
            except StopForward:
                pass
    finally:
        handle.remove()
        if use_cache is not None:
            config.use_cache = use_cache
    if not captured:
        raise ValueError("calibration: no batch reached the first block (is the calibration iterable empty?)")
    return captured


def hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor):
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = hidden
    return args, kwargs


def _batch_free(obj) -> bool:
    """True when ``obj`` holds no tensor with a batch dimension above 1 (it broadcasts over any batch)."""
    if isinstance(obj, torch.Tensor):
        return obj.dim() == 0 or obj.shape[0] == 1
    if isinstance(obj, (tuple, list)):
        return all(_batch_free(v) for v in obj)
    if isinstance(obj, dict):
        return all(_batch_free(v) for v in obj.values())
    return obj is None or isinstance(obj, (bool, int, float, str))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _rest(args: tuple, kwargs: dict):
    """Everything a block call gets besides its hidden states."""
    return args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}


def batch_inputs(inputs: List[Tuple[tuple, dict]], max_tokens: int) -> List[Tuple[tuple, dict]]:
    """Concatenate consecutive stored block inputs along the batch dimension, at most ``max_tokens``
    tokens per entry, where their other arguments (position embeddings, masks) are identical and
    broadcast over the batch (batch dimension 1 or none). One large call runs the block's matmuls
    far faster than many 512-token ones; inputs that differ (padded batches of different masks) stay
    as they are."""
    out: List[Tuple[tuple, dict]] = []
    pending: List[torch.Tensor] = []
    head = None

    def flush():
        if pending:
            h = pending[0] if len(pending) == 1 else torch.cat(pending, dim=0)
            out.append(with_hidden(*head, h))
            pending.clear()

    for args, kwargs in inputs:
        h = hidden_of(args, kwargs)
        rest = _rest(args, kwargs)
        mergeable = h.dim() == 3 and _batch_free(rest)
        if not mergeable:
            flush()
            out.append((args, kwargs))
            head = None
            continue
        fits = pending and sum(p.shape[0] * p.shape[1] for p in pending) + h.shape[0] * h.shape[1] <= max_tokens
        if not (head is not None and fits and pending[0].shape[1:] == h.shape[1:] and _same(_rest(*head), rest)):
            flush()
            head = (args, kwargs)
        pending.append(h)
    flush()
    return out


def probe_input(entry: Tuple[tuple, dict]) -> Tuple[tuple, dict]:
    """One sequence of a stored block input (all of it when its other arguments carry a batch), for
    cheap probe passes that only look at which modules run on which tensors."""
    args, kwargs = entry
    h = hidden_of(args, kwargs)
    if h.dim() == 3 and h.shape[0] > 1 and _batch_free(_rest(args, kwargs)):
        return with_hidden(args, kwargs, h[:1])
    return entry


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: List[Tuple[tuple, dict]], stop_early: bool = False) -> Optional[List[Tuple[tuple, dict]]]:
    """Run ``block`` on every stored input. Returns the next block's inputs (or None when
    ``stop_early``: hooks end each pass with :class:`StopForward` and outputs are not needed)."""
    out = None if stop_early else []
    for args, kwargs in inputs:
        try:
            y = _first(block(*args, **kwargs))
        except StopForward:
            continue
        if out is not None:
            out.append(with_hidden(args, kwargs, y))
    return out


class InputStats:
    """Streaming fp32 statistics of one linear layer's inputs: ``sum x x^T``, ``sum |x|``, count."""

    def __init__(self, in_features: int, device, want_hessian: bool = True, want_absmean: bool = False):
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float32, device=device) if want_hessian else None
        self.abs_sum = torch.zeros(in_features, dtype=torch.float32, device=device) if want_absmean else None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        if self.xtx is not None:
            self.xtx.addmm_(x.t(), x)
        if self.abs_sum is not None:
            self.abs_sum += x.abs().sum(0)
        self.count += x.shape[0]

    def hessian(self) -> torch.Tensor:
        """``H = 2 X^T X / n`` (the GPTQ normalisation)."""
        return self.xtx * (2.0 / max(self.count, 1))

    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.count, 1)


def input_groups(block: nn.Module, linears: Dict[str, nn.Linear], probe: Tuple[tuple, dict]) -> List[List[str]]:
    """Group a block's linears by shared input tensor, in the order they run (e.g. LLaMA:
    [q, k, v], [o], [gate, up], [down]). One probe forward decides it."""
    order: List[Tuple[str, tuple]] = []
    alive = []  # hold every input so that no address is freed and reused during the probe
    handles = []
    for name, lin in linears.items():
        def hook(mod, args, name=name):
            x = args[0]
            alive.append(x)
            order.append((name, (x.data_ptr(), tuple(x.shape), tuple(x.stride()))))
        handles.append(lin.register_forward_pre_hook(hook))
    try:
        run_block(block, [probe])
    finally:
        for h in handles:
            h.remove()
    groups: List[List[str]] = []
    key_of_group: Dict[tuple, int] = {}
    seen = set()
    for name, key in order:
        if name in seen:
            continue
        seen.add(name)
        if key in key_of_group:
            groups[key_of_group[key]].append(name)
        else:
            key_of_group[key] = len(groups)
            groups.append([name])
    missing = [n for n in linears if n not in seen]
    if missing:
        groups.append(missing)  # never called on the calibration data: quantized last, with no statistics
    return groups


@torch.no_grad()
def collect_stats(block: nn.Module, inputs, linear: nn.Linear, want_hessian=True, want_absmean=False, stop=True) -> InputStats:
    """Run the block on every input, accumulating ``linear``'s input statistics; with ``stop`` the pass
    ends right after that linear's input is seen."""
    w = linear.weight
    stats = InputStats(linear.in_features, w.device, want_hessian, want_absmean)

    def hook(mod, args):
        stats.add(args[0])
        if stop:
            raise StopForward

    h = linear.register_forward_pre_hook(hook)
    try:
        run_block(block, inputs, stop_early=True)
    finally:
        h.remove()
    return stats


def relative_error(w: torch.Tensor, wq: torch.Tensor, h: torch.Tensor) -> float:
    """``||X W^T - X Wq^T||^2 / ||X W^T||^2`` computed from ``H ~ X^T X`` (the layer's output error on
    the calibration inputs)."""
    e = (w - wq).to(torch.float32)
    num = ((e @ h) * e).sum()
    den = ((w.to(torch.float32) @ h) * w.to(torch.float32)).sum()
    return float(num / den) if den > 0 else float(num)
