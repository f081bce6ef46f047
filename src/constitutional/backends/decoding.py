"""Per-row sampling and stopping for batched `generate` in the local backend.

transformers samples a whole batch from one global RNG with one temperature. We want each request
to own its seed, temperature and top_p, so that its sample is the same whatever batch it is in.
`RowSampler` picks every row's next token itself and masks all others, and greedy decoding then
keeps exactly that token. `RowStops` ends each row at its own max_tokens or stop strings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria

from constitutional.backends.base import GenerationRequest


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """Nucleus sampling from one row of logits (vocab,) with a private generator."""
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, idx = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter_(0, idx[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


class RowSampler(LogitsProcessor):
    """Choose each row's token (greedy when temperature is 0) and mask the rest to -inf."""

    def __init__(self, requests: Sequence[GenerationRequest]):
        self.requests = list(requests)
        self.generators = [torch.Generator().manual_seed(r.seed) for r in self.requests]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = scores.argmax(dim=-1)  # (batch,)
        for row, (req, gen) in enumerate(zip(self.requests, self.generators)):
            if req.temperature > 0:
                chosen[row] = sample_token(scores[row], req.temperature, req.top_p, gen)
        masked = torch.full_like(scores, float("-inf"))
        return masked.scatter_(1, chosen[:, None], 0.0)


class RowStops(StoppingCriteria):
    """Finish a row at its own max_tokens or once its decoded text contains a stop string.

    `finished_at[row]` records how many new tokens the row had when it finished (None: still
    running when the batch ended, e.g. at EOS, which transformers handles itself).
    """

    def __init__(self, requests: Sequence[GenerationRequest], tokenizer, prompt_len: int):
        self.requests = list(requests)
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.finished_at: list[int | None] = [None] * len(self.requests)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        n_new = input_ids.shape[1] - self.prompt_len
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, req in enumerate(self.requests):
            if self.finished_at[row] is not None:
                done[row] = True
                continue
            hit = n_new >= req.max_tokens
            if not hit and req.stop:
                text = self.tokenizer.decode(input_ids[row, self.prompt_len :], skip_special_tokens=True)
                hit = any(s and s in text for s in req.stop)
            if hit:
                self.finished_at[row] = n_new
                done[row] = True
        return done
