"""Tokens/s of `cai generate` (run_generate + the local backend) vs raw `model.generate`.

    .venv/bin/python benchmarks/backend_throughput.py [--model embedded] [--n 16] [--batch-size 8]

Both paths get the same prompts, the same tokenised, left-padded batches (the backend's own
`plan_batches`) and the same loaded model, in one process, after one warm-up batch each. The raw
path is `lm.generate` with a plain GenerationConfig; the pipeline path is `run_generate` with an
uncached backend, writing a temp JSONL. Repeats run in ABBA order (raw, pipe, pipe, raw, ...) so
that a slow drift of the machine's load hits both alike. Tokens are the generated ones up to and
including EOS, as the backend counts them. Greedy by default: then the texts must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import GenerationConfig

from constitutional.backends import make_backend
from constitutional.backends.local import plan_batches
from constitutional.generate import build_requests, load_prompts, run_generate


def mixed_rows(n: int) -> list[dict]:
    """n chat rows, alternating red-team (advbench) and helpful (self_instruct) prompts."""
    red, helpful = load_prompts("builtin:advbench"), load_prompts("builtin:self_instruct")
    picked = [row for pair in zip(red, helpful) for row in pair][:n]
    return [{"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]}]} for r in picked]


@torch.inference_mode()
def raw_generate(local, batches, max_tokens: int, temperature: float) -> tuple[int, list[str]]:
    """Plain `lm.generate` over pre-padded batches; returns (new tokens, texts in batch order)."""
    eos = local.tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=temperature > 0,
        temperature=temperature or None,
        top_p=1.0,
        top_k=None,
        eos_token_id=eos,
        pad_token_id=local.tokenizer.pad_token_id,
    )
    tokens, texts = 0, []
    for enc in batches:
        out = local.lm.generate(**enc, generation_config=config)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            n = row.index(eos) + 1 if eos in row else len(row)  # pad == eos here: stop at the first
            tokens += n
            texts.append(local.tokenizer.decode(row[:n], skip_special_tokens=True))
    return tokens, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--n", type=int, default=16, help="prompts (advbench + self_instruct mixed)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--greedy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="temperature 0 (default); --no-greedy samples at 0.7",
    )
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each path (ABBA order)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default). 1 because on a shared 2-core box an "
        "oversubscribed OpenMP pool spins and makes timings erratic",
    )
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    temperature = 0.0 if args.greedy else 0.7

    t0 = time.perf_counter()
    backend = make_backend("local", args.model, use_cache=False, batch_size=args.batch_size)
    local = backend.inner
    print(
        f"model {args.model!r} loaded in {time.perf_counter() - t0:.1f}s on {local.device}, "
        f"{torch.get_num_threads()} torch threads"
    )

    rows = mixed_rows(args.n)
    reqs = build_requests(
        rows, temperature=temperature, top_p=1.0, max_tokens=args.max_tokens, seed=args.seed
    )
    ids = local._encode([local.render(r.messages) for r in reqs])
    plan = plan_batches(reqs, ids, args.batch_size)  # the pipeline's own batch composition
    batches = [local._pad([ids[i] for i in b]) for b in plan]
    order = [i for b in plan for i in b]

    # Warm-up: one small batch through each path (allocator, kernels, tokenizer caches).
    raw_generate(local, [local._pad(ids[:2])], 8, temperature)
    backend.generate(reqs[:2])

    tmp = Path(tempfile.mkdtemp(prefix="cai-bench-"))
    raw = {"tokens": 0, "seconds": 0.0}
    pipe = {"tokens": 0, "seconds": 0.0, "generate_seconds": 0.0}
    raw_texts: list[str] = []
    for k in range(2 * args.repeats):
        if k % 4 in (0, 3):  # ABBA: raw, pipe, pipe, raw, ...
            t = time.perf_counter()
            n, texts = raw_generate(local, batches, args.max_tokens, temperature)
            raw["seconds"] += time.perf_counter() - t
            raw["tokens"] += n
            raw_texts = [""] * len(reqs)
            for i, text in zip(order, texts):
                raw_texts[i] = text
        else:
            out = tmp / f"generations-{k}.jsonl"
            before = backend.usage.completion_tokens
            t = time.perf_counter()
            summary = run_generate(
                rows,
                out,
                backend,
                temperature=temperature,
                max_tokens=args.max_tokens,
                seed=args.seed,
            )
            pipe["seconds"] += time.perf_counter() - t
            pipe["generate_seconds"] += summary["wall_seconds"]
            pipe["tokens"] += backend.usage.completion_tokens - before
            pipe_texts = [
                json.loads(line)["response"] for line in out.read_text().split("\n") if line.strip()
            ]

    raw_tps, pipe_tps = raw["tokens"] / raw["seconds"], pipe["tokens"] / pipe["seconds"]
    print(
        f"\n{args.n} prompts, batch {args.batch_size}, max_tokens {args.max_tokens}, "
        f"{'greedy' if args.greedy else 'T=0.7'}, {args.repeats} repeat(s) per path\n"
    )
    print(f"{'path':<28}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}")
    print(f"{'raw model.generate':<28}{raw['tokens']:>8}{raw['seconds']:>10.2f}{raw_tps:>10.1f}")
    print(
        f"{'cai generate (run_generate)':<28}{pipe['tokens']:>8}{pipe['seconds']:>10.2f}"
        f"{pipe_tps:>10.1f}"
    )
    print(f"\nratio pipeline/raw tokens/s: {pipe_tps / raw_tps:.3f}")
    overhead = pipe["seconds"] - pipe["generate_seconds"]
    print(f"pipeline time outside backend.generate (JSONL, manifest): {overhead:.2f}s")
    if args.greedy:
        same = sum(a == b for a, b in zip(raw_texts, pipe_texts))
        print(
            f"greedy texts agree: {same}/{len(reqs)}"
            + ("" if same == len(reqs) else "  <-- MISMATCH")
        )
        for i, (a, b) in enumerate(zip(raw_texts, pipe_texts)):
            if a != b:
                print(f"  row {i}: raw={a[:60]!r}\n         pipe={b[:60]!r}")


if __name__ == "__main__":
    main()
