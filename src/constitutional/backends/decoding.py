"""Per-row sampling for the local backend.

transformers samples a whole batch from one global RNG with one temperature. We want each request
to own its seed, temperature and top_p, so that its sample is the same whatever batch it is in:
the engine (`continuous.py`) calls `sample_token` for each row with that row's own generator.
"""

from __future__ import annotations

import torch


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """Nucleus sampling from one row of logits (vocab,) with a private generator."""
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, idx = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter_(0, idx[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=gen))
