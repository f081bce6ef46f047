"""Decode attention that reads a prefix shared by many rows once, not once per row.

SL-CAI critiques and revisions, and judge prompts, start with the same few-shot exemplars (~560
tokens of a ~750-token prompt). In the engine's timeline every row held its own copy of that
prefix, and each decode step read all copies: at 32 rows the attention read ~1 GB per step and
took half of it. Here the prefix's keys and values are stored once per layer; a step scores every
row's query against them in one matrix product (a real GEMM: all rows x all query heads), scores
the row's own columns as before, and takes one softmax over both, so the result is the attention
over the whole context (Hydragen / cascade attention, done with plain torch ops).

The same products serve a KV cache kept in bf16 (`--precision int8` on a CPU with AVX512-BF16,
see `int8.py`): SDPA wants one dtype, and bf16 products read half the bytes.

Registered with transformers as the attention implementation "cai_prefix"; without a
`shared_prefix` argument and with KV in the query's dtype (prefill, training, other callers) it
is exactly transformers' SDPA.
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
# of GPU work (engine 1,870 tok/s with it, 4,542 without). The other kernels need no plan.
NO_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def prefix_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout=0.0,
    scaling=None,
    shared_prefix: SharedPrefix | None = None,
    **kwargs,
):
    if query.shape[2] == 1 and (shared_prefix is not None or key.dtype != query.dtype):
        return decode_attention(module, query, key, value, attention_mask, scaling, shared_prefix)
    if not query.is_cuda:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    with sdpa_kernel(NO_CUDNN):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )


def decode_attention(module, query, key, value, attention_mask, scaling, shared_prefix):
    """One query per row over [shared prefix, the row's own columns], by matrix products in the
    KV's dtype (bf16 KV on CPU: bf16 products, fp32 softmax) and one softmax over both parts."""
    rows, heads, _, dim = query.shape
    kv_heads, low = key.shape[1], key.dtype
    group = heads // kv_heads  # query heads kv*group .. kv*group+group-1 share kv head `kv`
    scale = scaling if scaling is not None else dim**-0.5
    # Scaling q costs less than scaling every score, and is exact for a power-of-two head dim.
    q = (query * scale).reshape(rows, kv_heads, group, dim).to(low)
    scores = (
        torch.matmul(q, key.transpose(-1, -2)).float().add_(attention_mask)
    )  # (rows, kv, group, cols)
    if shared_prefix is None:
        return _heads_out(torch.matmul(torch.softmax(scores, dim=-1).to(low), value), query)
    prefix_k, prefix_v = (
        shared_prefix.keys[module.layer_idx],
        shared_prefix.values[module.layer_idx],
    )
    by_head = q.transpose(0, 1).reshape(kv_heads, rows * group, dim)
    shared = (
        torch.matmul(by_head, prefix_k.transpose(-1, -2)).float().view(kv_heads, rows, group, -1)
    )
    shared = shared.transpose(0, 1).masked_fill(
        ~shared_prefix.rows[:, None, None, None], torch.finfo(torch.float32).min
    )
    probs = torch.softmax(torch.cat([shared, scores], dim=-1), dim=-1).to(low)
    n_prefix = prefix_k.shape[1]
    out = torch.matmul(probs[..., n_prefix:], value).float()  # (rows, kv, group, dim)
    p_by_head = probs[..., :n_prefix].transpose(0, 1).reshape(kv_heads, rows * group, n_prefix)
    out += (
        torch.matmul(p_by_head, prefix_v).float().view(kv_heads, rows, group, dim).transpose(0, 1)
    )
    return _heads_out(out, query)


def _heads_out(out, query):
    """(rows, kv, group, dim) -> (rows, 1, heads, dim) in the query's dtype, as SDPA returns it."""
    rows, heads, _, dim = query.shape
    return out.to(query.dtype).reshape(rows, heads, 1, dim).transpose(1, 2), None


AttentionInterface.register(NAME, prefix_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
