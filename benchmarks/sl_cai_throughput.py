"""SL-CAI generation throughput: batched pipeline vs raw `model.generate` vs a sequential chain.

    .venv/bin/python benchmarks/sl_cai_throughput.py --threads 2   # ~4 min on two idle cores
    .venv/bin/python benchmarks/sl_cai_throughput.py --threads 2 --rounds 2 --max-tokens 64

Prompt shape and batching are `cai sl-cai generate`'s defaults (2 exemplars, batch 16, 16
prompts so a batch is full); rounds and tokens are cut down (1 round, 32 tokens) to finish in a
few minutes.

One process, one loaded model, one warm-up, three timed paths:
  (a) pipeline: `generate_sl_data` (responses, then per round a batched critique call and a
      batched revision call) with an uncached backend; a recording wrapper keeps each call's
      GenerationRequests.
  (b) raw: every recorded call replayed through plain `lm.generate` in the backend's own batches
      (`plan_batches`), at that call's temperature and max_tokens (prompts tokenised untimed).
  (c) sequential: the same recorded requests one at a time (a batch_size=1 backend), prompt by
      prompt in chain order: response, then critique and revision per round. Sampling is seeded
      per request and independent of batching, so this is the chain a one-call-at-a-time
      implementation would run, with the same number of rounds.
Targets: (a) tok/s ÷ (b) tok/s >= 0.9; (c) wall ÷ (a) wall >= 4. Reported, not asserted.
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

from constitutional.backends import GenerationRequest, make_backend
from constitutional.backends.local import plan_batches
from constitutional.constitution import load_constitution
from constitutional.generate import load_prompts
from constitutional.sl_cai.pipeline import SLConfig, generate_sl_data
from constitutional.sl_cai.prompts import fewshot_messages


class Recording:
    """Forwards to a backend and keeps the requests of every `generate` call, in order."""

    def __init__(self, backend):
        self.backend, self.calls, self.seconds = backend, [], []

    def generate(self, requests, on_result=None):
        self.calls.append(list(requests))
        start = time.perf_counter()
        out = self.backend.generate(requests, on_result)
        self.seconds.append(time.perf_counter() - start)
        return out

    def __getattr__(self, name):
        return getattr(self.backend, name)


@torch.inference_mode()
def raw_replay(local, calls: list[list[GenerationRequest]]) -> tuple[int, list[float]]:
    """Each call's requests through plain lm.generate in the backend's batches: (tokens, seconds
    per call)."""
    eos, pad = local.tokenizer.eos_token_id, local.tokenizer.pad_token_id
    work = []  # tokenise and pad first: the timed part is model.generate alone
    for c, reqs in enumerate(calls):
        ids = local._encode([local.render(r.messages) for r in reqs])
        for batch in plan_batches(reqs, ids, local.batch_size):
            t, n = reqs[batch[0]].temperature, max(reqs[i].max_tokens for i in batch)
            assert all(reqs[i].temperature == t for i in batch), "one temperature per call"
            config = GenerationConfig(
                max_new_tokens=n,
                do_sample=t > 0,
                temperature=t or None,
                top_p=1.0,
                top_k=None,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            work.append((c, local._pad([ids[i] for i in batch]), config))
    tokens, seconds = 0, [0.0] * len(calls)
    for c, enc, config in work:
        start = time.perf_counter()
        out = local.lm.generate(**enc, generation_config=config)
        seconds[c] += time.perf_counter() - start
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)  # pad == eos: first one ends
    return tokens, seconds


def sequential(backend, calls: list[list[GenerationRequest]], n_fewshot: int) -> tuple[int, float]:
    """The recorded requests one call each, prompt by prompt in chain order: (tokens, seconds)."""

    def prompt_of(r: GenerationRequest) -> str:  # the red-team prompt a request belongs to
        return r.messages[0 if len(r.messages) == 1 else n_fewshot]["content"]

    chains: dict[str, list[GenerationRequest]] = {}
    for reqs in calls:  # calls are in pipeline order: responses, critiques 1, revisions 1, ...
        for r in reqs:
            chains.setdefault(prompt_of(r), []).append(r)
    tokens, start = 0, time.perf_counter()
    for chain in chains.values():
        for r in chain:
            tokens += backend.generate([r])[0].completion_tokens
    return tokens, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--n", type=int, default=16, help="red-team prompts from builtin:advbench")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--max-tokens", type=int, default=32, help="for responses, critiques, revisions"
    )
    ap.add_argument(
        "--fewshot",
        type=int,
        default=2,
        help="constitution exemplars per request (the CLI default)",
    )
    ap.add_argument("--batch-size", type=int, default=16, help="the CLI default")
    ap.add_argument(
        "--greedy",
        action="store_true",
        help="all temperatures 0, so (a) and (b) decode identical tokens",
    )
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

    backend = make_backend("local", args.model, use_cache=False, batch_size=args.batch_size)
    one_by_one = make_backend("local", args.model, use_cache=False, batch_size=1)  # same weights
    constitution, red = load_constitution("default"), load_prompts("builtin:advbench")[: args.n]
    temps = {"temperature_start": 0.0, "temperature_end": 0.0, "response_temperature": 0.0}
    config = SLConfig(
        rounds=args.rounds,
        max_tokens=args.max_tokens,
        fewshot=args.fewshot,
        critique_max_tokens=args.max_tokens,
        helpful_ratio=0.0,
        seed=args.seed,
        **(temps if args.greedy else {}),
    )

    warm = [
        GenerationRequest(messages=[{"role": "user", "content": r["prompt"]}], max_tokens=8)
        for r in red[:2]
    ]
    backend.generate(warm)
    one_by_one.generate(warm[:1])
    raw_replay(backend.inner, [warm])

    recorder = Recording(backend)
    start = time.perf_counter()
    traces = generate_sl_data(constitution, red, [], recorder, config)
    pipe_s = time.perf_counter() - start
    pipe_tok = sum(t["tokens"]["completion"] for t in traces)
    raw_tok, raw_calls = raw_replay(backend.inner, recorder.calls)
    raw_s = sum(raw_calls)
    seq_tok, seq_s = sequential(
        one_by_one, recorder.calls, len(fewshot_messages(constitution, config.fewshot))
    )

    n_req = sum(map(len, recorder.calls))
    kept = sum(not t["discarded"] for t in traces)
    print(
        f"\n{args.n} prompts x {args.rounds} rounds, max_tokens {args.max_tokens}, batch "
        f"{args.batch_size}, {'greedy' if args.greedy else 'sampled'}: {len(recorder.calls)} "
        f"calls, {n_req} requests; {kept}/{len(traces)} traces kept\n"
    )
    print(f"{'path':<34}{'calls':>6}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}")
    for name, calls, tok, sec in [
        ("(a) pipeline generate_sl_data", len(recorder.calls), pipe_tok, pipe_s),
        ("(b) raw lm.generate, same batches", len(recorder.calls), raw_tok, raw_s),
        ("(c) sequential, 1 request/call", n_req, seq_tok, seq_s),
    ]:
        print(f"{name:<34}{calls:>6}{tok:>8}{sec:>9.2f}{tok / sec:>10.1f}")
    per_call = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(recorder.seconds, raw_calls))
    print(
        f"\nseconds per call, (a)/(b): {per_call}  (a) outside calls: "
        f"{pipe_s - sum(recorder.seconds):.2f}s"
    )
    ratio, speedup = (pipe_tok / pipe_s) / (raw_tok / raw_s), seq_s / pipe_s
    print(
        f"\n(a) tok/s / (b) tok/s = {ratio:.3f}   target >= 0.9: {'PASS' if ratio >= 0.9 else 'MISS'}"
    )
    print(
        f"(c) wall / (a) wall  = {speedup:.2f}x  target >= 4x:  "
        f"{'PASS' if speedup >= 4 else 'MISS'}"
    )


if __name__ == "__main__":
    main()
