"""AWQ (Lin et al., MLSys 2024): activation-aware per-channel scaling plus a per-group clipping search.

For each set of linears sharing one input ``x`` (e.g. q/k/v after the attention norm), the weight
columns are multiplied by ``s = mean|x|^alpha`` (normalised to geometric mean 1) and the inverse is
folded into the op that produces ``x`` — a norm's weight (and bias), or the rows of a preceding
linear (``v_proj -> o_proj`` when their shapes match, ``up_proj -> down_proj``; BERT's
``attention.self.value -> attention.output.dense``) — so the float function is unchanged while
salient input channels get finer quantization steps. ``alpha`` is searched on a grid over ``[0, 1)``
(``alpha = 0`` is plain RTN, so the search never loses to it on the calibration loss). Then, per
linear, each (row, group)'s range is shrunk by the ratio in ``[min_clip, 1]`` that minimises that
group's output error. Losses use the input statistics ``H = 2 X^T X / n``, so no activations are
stored: the output error of a weight error ``E`` is ``tr(E H E^T)``.

Groups with no foldable predecessor get only the clipping search. The chosen weights are rounded
with :func:`quantkernels.reference.quantize`, so the stored tensors follow its conventions exactly.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import reference
from ..formats import QuantConfig, trivial_g_idx
from . import blocks as B
from .blocks import relative_error
from .common import range_params

log = logging.getLogger("quantkernels.awq")

# consumer (suffix of the name inside the block) -> producer linear whose output rows can absorb 1/s
LINEAR_PRODUCERS = {
    "o_proj": "v_proj",
    "down_proj": "up_proj",
    "attention.output.dense": "attention.self.value",
}


def rtn_dequant(w: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """``dequantize(quantize(w))`` with the reference conventions, fp32 ``[N, K]``, for consecutive
    groups. The same arithmetic as :func:`quantkernels.reference.quantize` (range widened to contain
    0, scale rounded to the scale dtype first), without its checks and general ``g_idx`` gathers: the
    searches call it hundreds of times."""
    n, k = w.shape
    gs = config.effective_group_size(k)
    maxq = config.maxq
    wg = w.to(torch.float32).reshape(n, k // gs, gs)
    _, s32, zero = range_params(wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0), config)
    s32, zero = s32.unsqueeze(-1), zero.unsqueeze(-1)
    q = torch.clamp(torch.round(wg / s32) + zero, 0, maxq)
    return ((q - zero) * s32).reshape(n, k)


def output_error(w: torch.Tensor, wq: torch.Tensor, h: torch.Tensor) -> float:
    e = w - wq
    return float(((e @ h) * e).sum())


def search_scale(w: torch.Tensor, h: torch.Tensor, x_absmean: torch.Tensor, config: QuantConfig,
                 n_grid: int = 20) -> Tuple[torch.Tensor, float, List[float]]:
    """Best per-input-channel scale for weights ``w [N, K]`` (the group's linears stacked).
    Returns ``(s [K], alpha, losses per grid point)``."""
    best = (None, 0.0, float("inf"))
    losses = []
    base = x_absmean.clamp(min=1e-6)
    for i in range(n_grid):
        alpha = i / n_grid
        s = base.pow(alpha)
        s = s / torch.sqrt(s.max() * s.min())
        weff = rtn_dequant(w * s, config) / s
        loss = output_error(w, weff, h)
        losses.append(loss)
        if loss < best[2]:
            best = (s, alpha, loss)
    return best[0], best[1], losses


def clip_weights(w: torch.Tensor, h: torch.Tensor, config: QuantConfig, n_grid: int = 20,
                 min_clip: float = 0.5) -> torch.Tensor:
    """Shrink each (row, group)'s range by the ratio that minimises the group's own output error
    ``e H_gg e^T`` (``H_gg``: the diagonal block of H for the group's columns)."""
    n, k = w.shape
    gs = config.effective_group_size(k)
    ng = k // gs
    wg = w.reshape(n, ng, gs)
    hg = torch.stack([h[g * gs:(g + 1) * gs, g * gs:(g + 1) * gs] for g in range(ng)])  # [G, gs, gs]
    hi = wg.amax(-1, keepdim=True).clamp(min=0)
    lo = wg.amin(-1, keepdim=True).clamp(max=0)
    if config.sym:
        hi = torch.maximum(hi, -lo)
        lo = -hi
    best_err = torch.full((n, ng), float("inf"), device=w.device)
    best_ratio = torch.ones(n, ng, 1, device=w.device)
    for i in range(n_grid):
        r = 1.0 - (1.0 - min_clip) * i / n_grid
        wc = torch.maximum(torch.minimum(wg, hi * r), lo * r).reshape(n, k)
        e = (w - rtn_dequant(wc, config)).reshape(n, ng, gs)
        err = torch.einsum("ngi,gij,ngj->ng", e, hg, e)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better.unsqueeze(-1), torch.full_like(best_ratio, r), best_ratio)
    return torch.maximum(torch.minimum(wg, hi * best_ratio), lo * best_ratio).reshape(n, k)


def _is_norm(mod: nn.Module, k: int) -> bool:
    w = getattr(mod, "weight", None)
    return (
        "norm" in type(mod).__name__.lower()
        and isinstance(w, torch.Tensor)
        and w.dim() == 1
        and w.numel() == k
    )


def find_producers(block: nn.Module, mine: Dict[str, nn.Linear], groups: List[List[str]], probe) -> Dict[str, Tuple[str, nn.Module]]:
    """For each input group (keyed by its first linear), the op its input can be folded into:
    ``("norm", module)`` or ``("linear", module)``."""
    # The module that produced each output address; read when a linear runs.
    outputs: Dict[int, nn.Module] = {}
    producer_of: Dict[str, Optional[nn.Module]] = {}
    alive = []  # outputs kept alive during the probe so that no address is reused
    handles = []
    for _, mod in block.named_modules():
        if mod is block:
            continue

        def out_hook(m, args, out):
            if isinstance(out, torch.Tensor):
                alive.append(out)
                outputs.setdefault(out.data_ptr(), m)  # innermost module first (its hook runs first)
        handles.append(mod.register_forward_hook(out_hook))
    for names in groups:
        def in_hook(m, args, key=names[0]):
            if key not in producer_of:
                producer_of[key] = outputs.get(args[0].data_ptr())
        handles.append(mine[names[0]].register_forward_pre_hook(in_hook))
    try:
        B.run_block(block, [probe])
    finally:
        for hd in handles:
            hd.remove()
    candidates = {}
    named = dict(block.named_modules())
    for names in groups:
        key = names[0]
        k = mine[key].in_features
        mod = producer_of.get(key)
        if mod is not None and _is_norm(mod, k):
            candidates[key] = ("norm", mod)
            continue
        for cons, prod in LINEAR_PRODUCERS.items():
            if key == cons or key.endswith("." + cons):
                pname = key[: len(key) - len(cons)] + prod
                pmod = named.get(pname)
                if isinstance(pmod, nn.Linear) and pmod.out_features == k and all(
                    n == key or not n.endswith(cons) for n in names):
                    candidates[key] = ("linear", pmod)
                break
    # A fold is only valid when the producer's output feeds nothing but this group (BERT's attention
    # LayerNorm also feeds the residual, for one): check that the block's output is unchanged.
    ref = B.run_block(block, [probe])[0]
    found = {}
    for names in groups:
        key = names[0]
        if key not in candidates:
            continue
        kind, prod = candidates[key]
        consumers = [mine[n] for n in names]
        params = [prod.weight] + ([prod.bias] if getattr(prod, "bias", None) is not None else []) + [c.weight for c in consumers]
        saved = [p.detach().clone() for p in params]
        g = torch.Generator().manual_seed(0)
        trial = 0.5 + 1.5 * torch.rand(mine[key].in_features, generator=g)
        fold_scale(kind, prod, consumers, trial.to(prod.weight.device))
        out = B.run_block(block, [probe])[0]
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)
        a, b = B.hidden_of(*out).float(), B.hidden_of(*ref).float()
        if torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max())):
            found[key] = (kind, prod)
        else:
            log.info("AWQ: %s's input cannot be folded into its producer (it feeds other ops too)", key)
    return found


@torch.no_grad()
def fold_scale(kind: str, producer: nn.Module, consumers: List[nn.Linear], s: torch.Tensor) -> None:
    """``x -> x / s`` at the producer, ``W -> W * s`` (columns) at the consumers: same function."""
    if kind == "norm":
        producer.weight.div_(s.to(producer.weight.dtype))
        if getattr(producer, "bias", None) is not None:
            producer.bias.div_(s.to(producer.bias.dtype))
    else:
        producer.weight.div_(s.to(producer.weight.dtype).unsqueeze(1))
        if producer.bias is not None:
            producer.bias.div_(s.to(producer.bias.dtype))
    for lin in consumers:
        lin.weight.mul_(s.to(lin.weight.dtype).unsqueeze(0))


@torch.no_grad()
def collect_all(block, inputs, firsts: Dict[str, nn.Linear]) -> Dict[str, B.InputStats]:
    """One full pass over the block, accumulating H and mean|x| for each group's input."""
    stats = {k: B.InputStats(l.in_features, l.weight.device, True, True) for k, l in firsts.items()}
    handles = []
    for key, lin in firsts.items():
        def hook(m, args, key=key):
            stats[key].add(args[0])
        handles.append(lin.register_forward_pre_hook(hook))
    try:
        B.run_block(block, inputs, stop_early=True)
    finally:
        for h in handles:
            h.remove()
    return stats


def run(model: nn.Module, layers: Dict[str, nn.Linear], config: QuantConfig, calibration, progress: bool = True, **options):
    """AWQ over the whole model, block by block. Options: ``n_grid`` (alpha grid), ``clip``,
    ``clip_grid``, ``min_clip``, ``scale``; ``batch_tokens``: calibration sequences are concatenated
    into batches of at most this many tokens (fewer, larger block calls)."""
    from ..nn import QuantLinear
    from .common import BlockPlan, progress_bar, quantize_outside_blocks

    known = {"n_grid", "clip", "clip_grid", "min_clip", "scale", "batch_tokens"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"awq: unknown options {sorted(unknown)}; known: {sorted(known)}")
    n_grid = options.get("n_grid", 20)
    do_clip = options.get("clip", True)
    do_scale = options.get("scale", True)
    plan = BlockPlan(model, layers)
    inputs = B.capture_block_inputs(model, plan.blocks[0], calibration)
    inputs = B.batch_inputs(inputs, options.get("batch_tokens", 65536))
    new_layers, report = quantize_outside_blocks(plan, config, "not inside a repeated block: RTN")
    for bi, block in enumerate(progress_bar(plan.blocks, progress, "AWQ")):
        mine = plan.block_linears(bi)
        if mine:
            probe = B.probe_input(inputs[0])
            groups = B.input_groups(block, mine, probe)
            producers = find_producers(block, mine, groups, probe) if do_scale else {}
            stats = collect_all(block, inputs, {g[0]: mine[g[0]] for g in groups})
            originals = {n: l.weight.detach().float().clone() for n, l in mine.items()}
            hs = {}
            row_scale = {}  # producer linears whose output rows were divided by a consumer's scale
            # 1. scales for every group from the float block, then fold them all
            for names in groups:
                key = names[0]
                h = stats[key].hessian()
                s, alpha = None, None
                if key in producers:
                    w = torch.cat([mine[n].weight.detach().float() for n in names])
                    s, alpha, _ = search_scale(w, h, stats[key].abs_mean(), config, n_grid)
                    if alpha > 0:
                        fold_scale(producers[key][0], producers[key][1], [mine[n] for n in names], s)
                        for pn, pl in mine.items():
                            if pl is producers[key][1]:
                                row_scale[pn] = s
                    else:
                        s = None
                for n in names:
                    hs[n] = (h, s, alpha, producers.get(key, (None,))[0])
            # 2. clip and round each linear in the scaled domain
            for n, lin in mine.items():
                h, s, alpha, kind = hs[n]
                w = lin.weight.detach().float()
                hh = h if s is None else h / (s.unsqueeze(0) * s.unsqueeze(1))
                wc = clip_weights(w, hh, config, options.get("clip_grid", 20), options.get("min_clip", 0.5)) if do_clip else w
                codes, scales, zeros = reference.quantize(wc, config.bits, config.group_size, config.sym, config.scale_dtype)
                bias = None if lin.bias is None else lin.bias.detach()
                q = QuantLinear.from_codes(codes, scales, zeros, config, bias=bias)
                dq = q.dequantize(torch.float32)
                lin.weight.data.copy_(dq.to(lin.weight.dtype))
                weff = dq if s is None else dq / s.unsqueeze(0)
                if n in row_scale:
                    weff = weff * row_scale[n].unsqueeze(1)
                w0 = originals[n]
                report[plan.full_name(bi, n)] = {
                    "rtn_error": relative_error(w0, rtn_dequant(w0, config), h),
                    "error": relative_error(w0, weff, h),
                    "alpha": alpha,
                    "folded_into": kind,
                }
                new_layers[plan.full_name(bi, n)] = q
        inputs = B.run_block(block, inputs)
    return new_layers, report
