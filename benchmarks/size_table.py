"""Quantize a small model end to end and print the size table: FP32 / FP16 / INT8 / INT4.

Bytes are measured on disk (each model saved with safetensors); the output error is
||y - y_fp32|| / ||y_fp32|| on random inputs. The model is a stack of transformer-sized MLP blocks
(random weights), which is enough to show the format's size and error trade-off; the real-model
numbers (SmolLM2, MiniLM) come from the main job.

    python benchmarks/size_table.py [--dim 512] [--layers 4]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import torch
from torch import nn

import quantkernels
from quantkernels import QuantConfig


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


def saved_bytes(model: nn.Module) -> int:
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        return os.path.getsize(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = nn.Sequential(*[Block(args.dim) for _ in range(args.layers)]).eval()
    x = torch.randn(args.tokens, args.dim)
    with torch.no_grad():
        ref = model(x)
    rows = []
    variants = [
        ("FP32", None, None),
        ("FP16", "fp16", None),
        ("INT8 per-channel", "q", QuantConfig(bits=8, group_size=-1, sym=True)),
        ("INT4 g128 asym", "q", QuantConfig(bits=4, group_size=128, sym=False)),
        ("INT4 g128 sym", "q", QuantConfig(bits=4, group_size=128, sym=True)),
        ("INT3 g64 asym", "q", QuantConfig(bits=3, group_size=64, sym=False)),
    ]
    for name, kind, cfg in variants:
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        if kind == "fp16":
            m = m.half()
        elif kind == "q":
            quantkernels.quantize_(m, cfg)
        qtime = time.perf_counter() - t0
        with torch.no_grad():
            y = m(x.to(torch.float16) if kind == "fp16" else x).float()
        err = ((y - ref).norm() / ref.norm()).item()
        rows.append((name, saved_bytes(m), err, qtime))
    base = rows[0][1]
    print(f"model: {args.layers} MLP blocks, d={args.dim} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params)")
    print(f"{'format':<18} {'bytes on disk':>14} {'vs FP32':>8} {'output rel. error':>18} {'quantize s':>11}")
    for name, nbytes, err, qtime in rows:
        print(f"{name:<18} {nbytes:>14,d} {base / nbytes:>7.2f}x {err:>18.2e} {qtime:>11.2f}")


if __name__ == "__main__":
    main()
