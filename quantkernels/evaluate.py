"""Evaluation on real models: SmolLM2 perplexity and MiniLM embedding fidelity.

* Perplexity: the text is tokenized once and cut into non-overlapping windows of ``window`` tokens
  (the tail shorter than a window is dropped); each window is scored independently (no context
  carried over), and perplexity is ``exp(total NLL / total predicted tokens)`` with ``window - 1``
  predictions per window. The window and token counts are printed, so that rows can be compared.
* MiniLM: mean cosine similarity of the sentence embeddings and SQNR (dB) of the last hidden states,
  quantized model against the float one, over the same sentences.
"""

from __future__ import annotations

import math
import re
import time
from typing import Iterable, List, Optional, Sequence

import torch


def read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def token_windows(tokenizer, text: str, window: int = 512, max_windows: Optional[int] = None,
                  start: int = 0) -> List[torch.Tensor]:
    """Non-overlapping ``[1, window]`` token-id tensors from ``text`` (at most ``max_windows``,
    spread evenly over the text when it holds more)."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    ids = ids[start:]
    n = ids.numel() // window
    if n == 0:
        raise ValueError(f"token_windows: the text has {ids.numel()} tokens, fewer than one window of {window}")
    wins = ids[: n * window].reshape(n, window)
    if max_windows is not None and n > max_windows:
        pick = torch.linspace(0, n - 1, max_windows).round().long()
        wins = wins[pick]
    return [w.unsqueeze(0) for w in wins]


@torch.no_grad()
def perplexity(model, windows: Sequence[torch.Tensor], progress: bool = False, label: str = "ppl",
               verbose: bool = True, batch_size: int = 1) -> float:
    """Perplexity of a causal LM over the given windows (see the module docstring).

    ``batch_size`` windows go through the model at once (each still scored on its own: no padding,
    no shared context); more than 1 pays on a GPU, while on the CPU the logits of a 49152-token
    vocabulary (100 MB per 512-token window) make 1 the better choice."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    chunks = [torch.cat(list(windows[i : i + batch_size])) for i in range(0, len(windows), batch_size)]
    it = chunks
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(chunks, desc=label, unit="batch", leave=False)
    for w in it:
        w = w.to(device)
        logits = model(w, use_cache=False).logits[:, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                                                 reduction="sum").item()
        count += w[:, 1:].numel()
    if verbose:
        print(f"  [{label}] {len(windows)} windows x {windows[0].shape[1]} tokens, {count} predicted tokens", flush=True)
    return math.exp(nll / count)


def sentences(text: str, count: int = 300, min_words: int = 5, max_words: int = 60) -> List[str]:
    """Up to ``count`` sentences of reasonable length from a text, evenly spread."""
    flat = re.sub(r"\s+", " ", text)
    parts = [s.strip() for s in re.split(r"(?<=[.!?])\s+", flat)]
    parts = [s for s in parts if min_words <= len(s.split()) <= max_words]
    if len(parts) > count:
        step = len(parts) / count
        parts = [parts[int(i * step)] for i in range(count)]
    return parts


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    ref = ref.float()
    noise = (ref - test.float()).pow(2).sum()
    return float(10 * torch.log10(ref.pow(2).sum() / noise.clamp(min=1e-30)))


@torch.no_grad()
def embedding_fidelity(float_model, quant_model, batches: Iterable[dict]) -> dict:
    """Mean cosine similarity of sentence embeddings and hidden-state SQNR, quantized vs float."""
    from .models.minilm import embed

    device = next(quant_model.parameters()).device
    cos, sig, noise, n = 0.0, 0.0, 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        e_ref, h_ref = embed(float_model, batch)
        e_q, h_q = embed(quant_model, batch)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        cos += torch.nn.functional.cosine_similarity(e_ref, e_q, dim=-1).sum().item()
        sig += (h_ref.pow(2) * mask).sum().item()
        noise += ((h_ref - h_q).pow(2) * mask).sum().item()
        n += e_ref.shape[0]
    return {"sentences": n, "cosine": cos / n, "sqnr_db": 10 * math.log10(sig / max(noise, 1e-30))}


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of ``prompt`` (chat-formatted when the tokenizer has a template)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id or 0)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def tokens_per_second(model, tokenizer, prompt: str = "The", new_tokens: int = 32, repeats: int = 1) -> float:
    """Greedy decode throughput (batch 1, KV cache on): new tokens / seconds, best of ``repeats``."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id or 0)
        dt = time.perf_counter() - t
        best = max(best, (out.shape[1] - ids.shape[1]) / dt)
    return best


def dequantized(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``QuantLinear`` by an ``nn.Linear`` holding its dequantized weight, in place.

    The function is the same (the reference defines ``QuantLinear`` as ``x @ dequantize(W)^T + b``);
    evaluating this way avoids unpacking the weights at every call when no fast kernel serves.
    """
    from .api import set_submodule
    from .nn import QuantLinear

    for name, mod in list(model.named_modules()):
        if isinstance(mod, QuantLinear):
            w = mod.dequantize(torch.float32)
            dtype = mod.bias.dtype if mod.bias is not None else torch.float32
            lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
            lin.weight = torch.nn.Parameter(w, requires_grad=False)
            if mod.bias is not None:
                lin.bias = torch.nn.Parameter(mod.bias.detach().to(torch.float32).clone(), requires_grad=False)
            set_submodule(model, name, lin)
    return model
