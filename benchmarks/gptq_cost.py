"""Cost of GPTQ on SmolLM2-135M: wall time and peak memory for N calibration windows of 512 tokens.

    PYTHONPATH=$PWD python benchmarks/gptq_cost.py --windows 128 [--device cuda]

Prints the load average before and after (the CI box is shared), wall time of quantize_ alone
(model loading and tokenization excluded), peak RSS of the process (CPU) or peak CUDA memory.
"""

import argparse
import os
import resource
import time

import torch

import quantkernels as qk
from quantkernels.evaluate import read_text, token_windows
from quantkernels.models import load_smollm2

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "text")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", type=int, default=128)
    p.add_argument("--calib-text", default=os.path.join(DATA, "pride_and_prejudice.txt"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--sym", action="store_true")
    p.add_argument("--random-weights", action="store_true",
                   help="SmolLM2's architecture (benchmarks/smollm2_config.json, as read from its GGUF) with random "
                        "weights and random tokens: GPTQ's cost does not depend on the values; for machines "
                        "where the 98 MB GGUF package cannot be carried")
    p.add_argument("--blocks", type=int, default=None,
                   help="keep only the first N transformer blocks (to time a few blocks on a busy machine; the "
                        "printed per-block numbers then extrapolate to all 30)")
    args = p.parse_args()
    if args.random_weights:
        import json

        from transformers import LlamaConfig, LlamaForCausalLM

        with open(os.path.join(os.path.dirname(__file__), "smollm2_config.json")) as f:
            config = LlamaConfig(**json.load(f))
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
        g = torch.Generator().manual_seed(0)
        cal = [torch.randint(0, config.vocab_size, (1, 512), generator=g) for _ in range(args.windows)]
    else:
        model, tok = load_smollm2()
        cal = token_windows(tok, read_text(args.calib_text), 512, args.windows)
    n_blocks = len(model.model.layers)
    if args.blocks:
        model.model.layers = model.model.layers[: args.blocks]
        model.config.num_hidden_layers = args.blocks
    model.to(args.device)
    cfg = qk.QuantConfig(bits=args.bits, group_size=args.group_size, sym=args.sym)
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}  torch threads: {torch.get_num_threads()}", flush=True)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    cpu0 = time.process_time()
    s = qk.quantize_(model, cfg, method="gptq", calibration=cal)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    cpu = time.process_time() - cpu0
    done = len(model.model.layers)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"load average after:  {os.getloadavg()}")
    print(s)
    rel = sum(r["error"] for r in s.report.values() if "error" in r) / sum(r["rtn_error"] for r in s.report.values() if "rtn_error" in r)
    cuda = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
    print(f"| windows | tokens | config | device | blocks | GPTQ wall s | process CPU s | wall s per block | "
          f"extrapolated wall s, {n_blocks} blocks | peak RSS GiB | peak CUDA GiB | sum err / sum RTN err |")
    print(f"| {len(cal)} | {len(cal) * 512} | {cfg.describe()} | {args.device} | {done} | {dt:.1f} | {cpu:.1f} | "
          f"{dt / done:.1f} | {dt / done * n_blocks:.0f} | {rss:.2f} | {cuda:.2f} | {rel:.3f} |")


if __name__ == "__main__":
    main()
