"""Decode attention that reads a prefix shared by many rows once, not once per row.

SL-CAI critiques and revisions, and judge prompts, start with the same few-shot exemplars (~560
tokens of a ~750-token prompt). In the engine's timeline every row held its own copy of that
prefix, and each decode step read all copies: at 32 rows the attention read ~1 GB per step and
took half of it. Here the prefix's keys and values are stored once per layer; a step scores every
row's query against them in one matrix product (a real GEMM: all rows x all query heads), scores
the row's own columns as before, and takes one softmax over both, so the result is the attention
over the whole context (Hydragen / cascade attention, done with plain torch ops).

Registered with transformers as the attention implementation "cai_prefix"; without a
`shared_prefix` argument (prefill, training, other callers) it is exactly transformers' SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "cai_prefix"


@dataclass
class SharedPrefix:
    """One prefix's KV per layer ((kv heads, P, head dim) each) and which rows start with it."""

    ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    rows: torch.Tensor | None = None  # (rows,) bool, set per step


# cuDNN's fused attention, which SDPA picks on Hopper for our additive masks, plans anew for every
# key length, i.e. on every decode step: on an H200 that took 1.45 ms of CPU per call against 30 us
# of GPU work, and made the engine 2.6x slower than plain `generate`. The others need no plan.
NO_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                     shared_prefix: SharedPrefix | None = None, **kwargs):
    if shared_prefix is None or query.shape[2] != 1:
        if not query.is_cuda:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        with sdpa_kernel(NO_CUDNN):
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
    prefix_k, prefix_v = shared_prefix.keys[module.layer_idx], shared_prefix.values[module.layer_idx]
    rows, heads, _, dim = query.shape
    kv_heads, n_prefix = key.shape[1], prefix_k.shape[1]
    group = heads // kv_heads  # query heads kv*group .. kv*group+group-1 share kv head `kv`
    scale = scaling if scaling is not None else dim**-0.5
    q = query.reshape(rows, kv_heads, group, dim)
    own = torch.matmul(q, key.transpose(-1, -2)) * scale + attention_mask  # (rows, kv, group, cols)
    by_head = q.transpose(0, 1).reshape(kv_heads, rows * group, dim)
    shared = (torch.matmul(by_head, prefix_k.transpose(-1, -2)) * scale).view(kv_heads, rows, group, n_prefix)
    shared = shared.transpose(0, 1).masked_fill(~shared_prefix.rows[:, None, None, None], torch.finfo(own.dtype).min)
    probs = torch.softmax(torch.cat([shared, own], dim=-1), dim=-1)
    p_shared, p_own = probs[..., :n_prefix], probs[..., n_prefix:]
    out = torch.matmul(p_own, value)  # (rows, kv, group, dim)
    p_by_head = p_shared.transpose(0, 1).reshape(kv_heads, rows * group, n_prefix)
    out += torch.matmul(p_by_head, prefix_v).view(kv_heads, rows, group, dim).transpose(0, 1)
    return out.reshape(rows, heads, 1, dim).transpose(1, 2), None


AttentionInterface.register(NAME, prefix_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
