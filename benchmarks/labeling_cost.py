"""Cost of an RL-CAI preference label: logprob mode vs cot mode, and what --swap-average adds.

    .venv/bin/python benchmarks/labeling_cost.py [--model embedded] [--n 8] [--fewshot 2]

One process, one loaded model (policy and feedback, as with `--policy embedded --feedback
embedded`), an uncached backend (`use_cache=False`). The pairs are sampled once, up front; every
timed run then calls `rl_cai.label_pairs` with a policy that replays those samples, so all modes
judge the same prompts and responses and only the judging differs:

  (a) logprob              p(A) read off one forward pass per judgement
  (b) logprob + swap       also judged with A and B swapped (twice the judgements)
  (c) cot                  step-by-step reasoning sampled first (--cot-max-tokens), then p(A)
  (a') logprob again       last, so a drift in the machine's load shows as (a) != (a')

Seconds are those spent inside the feedback backend (generate + choice_logprobs); the wall time
of each `label_pairs` call is printed beside them (the replay adds nothing measurable). Targets,
reported not asserted: (c) / mean(a, a') >= 10x per label; (b) / mean(a, a') <= 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from constitutional.backends import make_backend
from constitutional.constitution import load_constitution
from constitutional.generate import load_prompts
from constitutional.rl_cai import LabelConfig, label_pairs


class Replay:
    """A policy that samples each request once through `backend`, then answers it from memory."""

    def __init__(self, backend):
        self.backend, self.model, self.memory = backend, backend.model, {}

    def generate(self, requests, on_result=None):
        todo = [r for r in requests if self._key(r) not in self.memory]
        for r, c in zip(todo, self.backend.generate(todo) if todo else []):
            self.memory[self._key(r)] = c
        return [self.memory[self._key(r)] for r in requests]

    @staticmethod
    def _key(request) -> str:
        return json.dumps(request.to_dict(), sort_keys=True)


class Timed:
    """Forwards to the feedback backend and adds up the seconds spent in it."""

    def __init__(self, backend):
        self.backend, self.seconds = backend, 0.0

    def generate(self, requests, on_result=None):
        start = time.perf_counter()
        try:
            return self.backend.generate(requests, on_result)
        finally:
            self.seconds += time.perf_counter() - start

    def choice_logprobs(self, prompts, choices):
        start = time.perf_counter()
        try:
            return self.backend.choice_logprobs(prompts, choices)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name):  # model, usage, inner (the renderer is found through it)
        return getattr(self.backend, name)


def run(rules, prompts, policy, backend, config) -> dict:
    """One timed `label_pairs` call: labels kept, judgements made, feedback and wall seconds."""
    feedback = Timed(backend)
    start = time.perf_counter()
    rows = label_pairs(rules, prompts, policy, feedback, config)
    wall = time.perf_counter() - start
    labels = sum(not r["discarded"] for r in rows)
    judgements = labels * (2 if config.swap_average else 1)
    return {"labels": labels, "judgements": judgements, "seconds": feedback.seconds, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", default="builtin:harmbench")
    ap.add_argument("--n", type=int, default=8, help="prompts, so pairs (one label each)")
    ap.add_argument(
        "--fewshot", type=int, default=2, help="comparison exemplars (cai rl-cai label's default)"
    )
    ap.add_argument("--max-tokens", type=int, default=64, help="policy response length")
    ap.add_argument(
        "--cot-max-tokens", type=int, default=128, help="reasoning length (the CLI default)"
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="rows per forward pass (cai rl-cai label's default)",
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
    rules, prompts = load_constitution("default"), load_prompts(args.prompts)[: args.n]
    base = {
        "fewshot": args.fewshot,
        "max_tokens": args.max_tokens,
        "cot_max_tokens": args.cot_max_tokens,
        "seed": args.seed,
    }
    policy = Replay(backend)
    start = time.perf_counter()  # samples the pairs and warms the model up on a logprob pass
    warm = run(rules, prompts, policy, backend, LabelConfig(mode="logprob", **base))
    print(
        f"{args.n} prompts from {args.prompts}: pairs sampled + warm-up in "
        f"{time.perf_counter() - start:.1f}s; {warm['labels']} pairs judgeable; {args.fewshot} exemplars, "
        f"batch {args.batch_size}, cot up to {args.cot_max_tokens} tokens, {torch.get_num_threads()} thread(s)\n"
    )

    runs = {}
    for name, config in [
        ("(a) logprob", LabelConfig(mode="logprob", **base)),
        ("(b) logprob + swap", LabelConfig(mode="logprob", swap_average=True, **base)),
        ("(c) cot", LabelConfig(mode="cot", **base)),
        ("(a') logprob again", LabelConfig(mode="logprob", **base)),
    ]:
        runs[name] = r = run(rules, prompts, policy, backend, config)
        print(
            f"{name:<22}{r['labels']:>4} labels {r['judgements']:>4} judgements {r['seconds']:>8.2f}s "
            f"feedback {r['wall']:>8.2f}s wall {r['seconds'] / max(r['labels'], 1):>7.3f} s/label",
            flush=True,
        )

    per = {k: v["seconds"] / max(v["labels"], 1) for k, v in runs.items()}
    logprob = (per["(a) logprob"] + per["(a') logprob again"]) / 2
    cot, swap = per["(c) cot"] / logprob, per["(b) logprob + swap"] / logprob
    print(
        f"\nlogprob {logprob:.3f} s/label (mean of a, a'), cot {per['(c) cot']:.3f}, "
        f"logprob + swap {per['(b) logprob + swap']:.3f}"
    )
    print(
        f"cot / logprob per label  = {cot:.2f}x  target >= 10x: {'PASS' if cot >= 10 else 'MISS'}"
    )
    print(
        f"swap / plain per label   = {swap:.2f}x  target <= 2x:  {'PASS' if swap <= 2 else 'MISS'}"
    )


if __name__ == "__main__":
    main()
