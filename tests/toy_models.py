"""Small models with realistic input statistics for the GPTQ/AWQ tests (no downloads)."""

import torch
from torch import nn


class ToyBlock(nn.Module):
    """Pre-norm attention-free block: norm -> (q, k, v) -> o, norm -> (gate, up) -> down."""

    def __init__(self, d: int, f: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)
        self.mlp_norm = nn.LayerNorm(d)
        self.gate_proj, self.up_proj = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        h = self.attn_norm(x)
        q, k, v = self.q_proj(h), self.k_proj(h), self.v_proj(h)
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.o_proj(att @ v)
        h = self.mlp_norm(x)
        return x + self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


class ToyModel(nn.Module):
    def __init__(self, vocab=97, d=64, f=128, n_layers=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        # Correlated, low-rank embeddings with a few loud channels: the input statistics that make
        # GPTQ and AWQ matter.
        with torch.no_grad():
            e = torch.randn(vocab, 8, generator=g) @ torch.randn(8, d, generator=g) + 0.1 * torch.randn(vocab, d, generator=g)
            e[:, :4] *= 8.0
            self.embed.weight.copy_(e)
        self.layers = nn.ModuleList([ToyBlock(d, f) for _ in range(n_layers)])
        with torch.no_grad():
            for blk in self.layers:
                for norm in (blk.attn_norm, blk.mlp_norm):
                    norm.weight.copy_(1 + 0.5 * torch.rand(d, generator=g) * 4)  # uneven channel gains
                    norm.bias.copy_(0.1 * torch.randn(d, generator=g))
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for blk in self.layers:
            x = blk(x)
        return self.head(x)


def toy_calibration(vocab=97, n=8, t=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, t), generator=g) for _ in range(n)]
