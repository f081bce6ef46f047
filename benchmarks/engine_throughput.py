"""Tokens/s of the local backend's engine vs plain `model.generate`, on the same requests.

    .venv/bin/python benchmarks/engine_throughput.py [--n 64] [--batch-size 32] [--threads 2]

One process, one set of chat requests (red-team and helpful prompts mixed, greedy, up to
`--max-tokens` new tokens each, stopping at EOS as real runs do; with `--full-length` every row
runs to `--max-tokens`, EOS held off by `min_tokens`, which is how the issue's table of plain
`generate` speeds was measured). Paths:

  plain      `lm.generate` over batches of `--batch-size` prompts sorted by length: each batch
             runs until its longest row ends, the usual way to batch with transformers.
  engine     `LocalBackend.generate` at fp32: continuous batching (finished rows hand their slot
             to waiting requests), a KV cache that grows in place, shared-prefix prefill.
  engine8    the same at `--precision int8` (SmoothQuant-scaled int8 matmuls, `int8.py`).

Tokens are the generated ones up to and including EOS. The fp32 ceiling (~700 tokens/s on two
cores for a 135M model, ~0.27 GFLOP per token) is the yardstick the issue set. Greedy texts
of the engine must equal plain generate's; int8 texts are compared with fp32 ones and reported.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import GenerationConfig

from constitutional.backends.base import GenerationRequest
from constitutional.backends.local import LocalBackend
from constitutional.generate import load_prompts

FP32_CEILING = 700.0  # tokens/s, from the estimate for this machine


def requests(n: int, max_tokens: int, full_length: bool = False) -> list[GenerationRequest]:
    red, helpful = load_prompts("builtin:advbench"), load_prompts("builtin:self_instruct")
    rows = [row for pair in zip(red, helpful) for row in pair][:n]
    return [
        GenerationRequest(
            messages=[{"role": "user", "content": r["prompt"]}],
            max_tokens=max_tokens,
            min_tokens=max_tokens if full_length else 0,
        )
        for r in rows
    ]


@torch.inference_mode()
def plain_generate(backend: LocalBackend, reqs, batch_size: int) -> tuple[int, list[str]]:
    """`lm.generate` on length-sorted, left-padded batches; returns (tokens, texts in input order)."""
    tok, eos = backend.tokenizer, backend.tokenizer.eos_token_id
    ids = backend._encode([backend.render(r.messages) for r in reqs])
    order = sorted(range(len(reqs)), key=lambda i: (len(ids[i]), i))
    config = GenerationConfig(
        max_new_tokens=reqs[0].max_tokens,
        min_new_tokens=reqs[0].min_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
    )
    tokens, texts = 0, [""] * len(reqs)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        enc = backend._pad([ids[i] for i in batch])
        out = backend.lm.generate(**enc, generation_config=config)[:, enc["input_ids"].shape[1] :]
        for i, row in zip(batch, out.tolist()):
            n = row.index(eos) + 1 if eos in row else len(row)
            tokens += n
            texts[i] = tok.decode(row[:n], skip_special_tokens=True)
    return tokens, texts


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--n", type=int, default=64, help="requests")
    ap.add_argument("--batch-size", type=int, default=32, help="plain generate's batch size")
    ap.add_argument(
        "--slots",
        type=int,
        default=None,
        help="engine slots (default: the engine's own choice from the KV memory budget)",
    )
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--full-length", action="store_true", help="every row runs to --max-tokens (no EOS)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reqs = requests(args.n, args.max_tokens, args.full_length)

    fp32 = LocalBackend(args.model, batch_size=args.slots, precision="fp32")
    int8 = LocalBackend(args.model, batch_size=args.slots, precision="int8")
    for backend in (fp32, int8):  # warm-up: allocator, kernels, quantised weights
        backend.generate(reqs[:2])

    (plain_tokens, plain_texts), plain_s = timed(
        lambda: plain_generate(fp32, reqs, args.batch_size)
    )
    rows = {"plain generate (fp32)": (plain_tokens, plain_s)}
    texts = {}
    for name, backend in (("engine fp32", fp32), ("engine int8", int8)):
        out, seconds = timed(lambda b=backend: b.generate(reqs))
        rows[name] = (sum(c.completion_tokens for c in out), seconds)
        texts[name] = [c.text for c in out]

    slots = args.slots or "auto (KV budget)"
    length = f"all {args.max_tokens}" if args.full_length else f"up to {args.max_tokens}"
    print(
        f"\n{args.n} requests, plain batch {args.batch_size}, engine slots {slots}, {length} new tokens, "
        f"greedy, {torch.get_num_threads()} torch threads\n"
    )
    print(
        f"{'path':<24}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'vs plain':>10}{'of ceiling':>12}"
    )
    plain_tps = plain_tokens / plain_s
    for name, (tokens, seconds) in rows.items():
        tps = tokens / seconds
        print(
            f"{name:<24}{tokens:>8}{seconds:>9.1f}{tps:>10.1f}{tps / plain_tps:>9.2f}x"
            f"{tps / FP32_CEILING:>11.0%}"
        )
    same = sum(a == b for a, b in zip(plain_texts, texts["engine fp32"]))
    same8 = sum(a == b for a, b in zip(texts["engine fp32"], texts["engine int8"]))
    print(f"\nengine fp32 texts equal to plain generate's: {same}/{len(reqs)}")
    print(f"engine int8 texts equal to fp32's: {same8}/{len(reqs)} (int8 changes numbers slightly)")


if __name__ == "__main__":
    main()
