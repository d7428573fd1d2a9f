"""Which GPT-2 size gives the best base in a fixed CPU budget: training throughput of candidate sizes, side by side.

For each size (layers x width, GPT-2's 50,257-token vocabulary, a 512-token context), times full training steps
(forward, backward, AdamW) on random token windows and reports tokens/s, the parameters (all, and without the
embedding tables, which cost memory but little compute), and the tokens one budget buys: tokens per non-embedding
parameter is the figure scaling laws judge a size by (Kaplan et al. 2020; Hoffmann et al. 2022: ~20 tokens per
parameter is compute-optimal). Sizes alternate in rounds so machine noise hits all of them.

    python scripts/gpt2_sizes.py [--sizes 2x128 4x256 6x256 6x384] [--budget-min 60] [--steps 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnlab.models.hf import HFCausalLM


def step_time(model: HFCausalLM, opt: torch.optim.Optimizer, batch: torch.Tensor) -> float:
    start = time.perf_counter()
    logits = model(batch[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["2x128", "4x256", "6x256", "6x384"], help="<layers>x<width>")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget-min", type=float, default=60.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    vocab = 50257
    batch = torch.randint(0, vocab, (args.batch, args.context + 1))
    models = {}
    for size in args.sizes:
        layers, width = map(int, size.split("x"))
        model = HFCausalLM(vocab_size=vocab, max_len=args.context, n_layer=layers, n_embd=width, n_head=max(1, width // 64),
                           dropout=0.0)
        models[size] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
        step_time(*models[size], batch)  # warm-up
    times: dict[str, list[float]] = {size: [] for size in args.sizes}
    for _ in range(args.rounds):
        for size, (model, opt) in models.items():
            times[size].append(statistics.median(step_time(model, opt, batch) for _ in range(args.steps)))
    print(f"torch threads {torch.get_num_threads()}; batch {args.batch} x {args.context} tokens; budget {args.budget_min:g} min")
    print("| size | params (M) | non-embedding (M) | tokens/s | tokens in budget (M) | tokens per non-emb. param |")
    print("|---|---|---|---|---|---|")
    for size, (model, _) in models.items():
        hf = model.model
        total = sum(p.numel() for p in hf.parameters())
        embed = hf.transformer.wte.weight.numel() + hf.transformer.wpe.weight.numel()
        rate = args.batch * args.context / statistics.median(times[size])
        budget = rate * args.budget_min * 60
        print(f"| {size} | {total / 1e6:.1f} | {(total - embed) / 1e6:.2f} | {rate:,.0f} | {budget / 1e6:.1f} | "
              f"{budget / (total - embed):.0f} |")


if __name__ == "__main__":
    main()
