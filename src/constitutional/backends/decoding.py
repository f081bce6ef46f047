"""Token-level helpers for the local backend's engine: per-row sampling and shared prefixes.

transformers samples a whole batch from one global RNG with one temperature. We want each request
to own its seed, temperature and top_p, so that its sample is the same whatever batch it is in:
the engine (`continuous.py`) calls `sample_token` for each row with that row's own generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator
) -> int:
    """Nucleus sampling from one row of logits (vocab,) with a private generator."""
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, idx = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter_(0, idx[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


MIN_SHARED_PREFIX = 32  # tokens; below this a separate prefill costs more than it saves


def shared_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, leaving every row at least one own token."""
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n
