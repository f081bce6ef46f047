"""Continuous batching for the local backend.

`model.generate` decodes a batch until its longest row is done: rows that finished early decode
padding, which on a CPU is most of the work when response lengths vary (critiques, refusals). Here
a fixed number of slots decode together; when a row finishes, the next waiting request is
prefilled and takes its slot, so every step does useful work for nearly every slot.

All slots share one KV "timeline" of columns. A newly admitted row's prompt KV is copied in
right-aligned at the current column, and a per-slot mask says which columns belong to it, so the
decode step is one forward pass of shape (slots, 1) whatever mix of rows it holds. Each row gets
its own position ids (its own count of tokens), so it computes what it would compute alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from constitutional.backends.base import GenerationRequest
from constitutional.backends.decoding import sample_token, shared_prefix_len
from constitutional.backends.kv_store import KVStore, Reuse, StoredRow
from constitutional.backends.prefix_attention import NAME as PREFIX_ATTENTION
from constitutional.backends.prefix_attention import SharedPrefix

# Shorter shared prefixes (a chat template's system line) stay in each row: for them SDPA's fused
# kernel over the row's own copy beats the separate prefix product (measured 148 vs 126 tok/s).
MIN_HELD_PREFIX = 256


def kv_budget_bytes() -> int:
    """Memory the KV cache may take: $CAI_KV_BUDGET_GB, default 4 GiB."""
    return int(float(os.environ.get("CAI_KV_BUDGET_GB", "4")) * 2**30)


def slots_for_budget(config, context: int, max_slots: int, budget: int) -> int:
    """As many slots as `max_slots` allows and whose KV cache for `context` tokens each fits in
    `budget` bytes (the timeline may hold up to twice the context while it grows)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * heads * head_dim * 4  # keys + values, fp32
    return max(1, min(max_slots, budget // max(1, 2 * context * per_token)))


GROWTH = 64  # columns a timeline gains at a time


class TimelineLayer(DynamicLayer):
    """One layer's KV for every slot, in a buffer that grows `GROWTH` columns at a time instead of
    by `torch.cat` on every step (the copy of the whole cache per token that dominates plain CPU
    decoding). Attention reads the whole buffer, spare columns masked: a slice of it is not
    contiguous per row, and bf16 products copied such a K and V on every layer of every step."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.key_buf, self.value_buf, self.length = keys, values, length
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._expose()

    def _expose(self) -> None:
        self.keys, self.values = self.key_buf, self.value_buf

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        self.reserve(self.length + n)
        self.key_buf[:, :, self.length : self.length + n] = key_states
        self.value_buf[:, :, self.length : self.length + n] = value_states
        self.length += n
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    @property
    def capacity(self) -> int:
        return self.key_buf.shape[2]

    def reserve(self, columns: int) -> None:
        """Make room for `columns` columns (a copy every `GROWTH` steps)."""
        if columns > self.capacity:
            self.shift(0, 0, capacity=columns + GROWTH)

    def shift(self, left_drop: int, right_pad: int = 0, capacity: int | None = None) -> None:
        """Drop `left_drop` leading columns (no slot uses them) or, with `right_pad`, insert empty
        columns at the front so a longer prompt fits before the current column."""
        keep = self.length - left_drop
        capacity = capacity or keep + right_pad + GROWTH

        def moved(buf):
            # Every spare column is read (masked): it must hold finite numbers, as a masked
            # weight of 0 times NaN is still NaN.
            new = buf.new_zeros(*buf.shape[:2], capacity, buf.shape[3])
            new[:, :, right_pad : right_pad + keep] = buf[:, :, left_drop : self.length]
            return new

        self.key_buf, self.value_buf = moved(self.key_buf), moved(self.value_buf)
        self.length = keep + right_pad
        self._expose()


@dataclass
class Row:
    """A request being decoded in a slot."""

    index: int  # position in the caller's request list
    request: GenerationRequest
    prompt_ids: list[int]
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    # Per step, only if logprobs are wanted: (chosen token's logprob, top-k logprobs, their ids).
    # Not the step's whole logits: 49k floats a token would let one long request fill the memory.
    logprobs: list[StepLogprobs] = field(default_factory=list)


StepLogprobs = tuple[float, list[float], list[int]]


def step_logprobs(logits: torch.Tensor, token: int, k: int) -> StepLogprobs:
    """The log-probability of `token` under one step's `logits`, and the `k` most likely."""
    logp = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logp, k) if k else None
    return (
        logp[token].item(),
        top.values.tolist() if top else [],
        top.indices.tolist() if top else [],
    )


class Intake(Protocol):
    """Where a serving batcher gets requests that arrive while it runs (see `ContinuousBatcher.run`)."""

    def arrivals(self) -> list[int]:
        """Indices of requests appended to the caller's lists since the last call."""
        ...

    def cancelled(self, index: int) -> bool:
        """Whether request `index` is no longer wanted (its client left, the server stops)."""
        ...


PADDING_SLACK = 1.25  # a batched prefill may run at most this many times its real tokens


def prefill_chunks(rows: Sequence[Sequence[int]]) -> list[list[int]]:
    """Split prompts into prefill batches that waste little on padding; returns row indices.

    A batch is padded to its longest prompt, so one 1,000-token prompt among thirty 50-token ones
    would multiply the prefill's work ~15x. The prefix every row shares is prefilled once per
    batch, so only the rest is padded, and each extra batch costs that prefix again. Rows are taken
    shortest first; a new batch starts when the next row would pad the batch past
    `PADDING_SLACK` times its real tokens plus the prefix a new batch would repeat.
    """
    common = shared_prefix_len(rows) if len(rows) > 1 else 0
    own = [len(r) - common for r in rows]
    chunks: list[list[int]] = []
    real = 0
    for i in sorted(range(len(rows)), key=lambda i: (own[i], i)):
        if chunks and (len(chunks[-1]) + 1) * own[i] <= PADDING_SLACK * (real + own[i]) + common:
            chunks[-1].append(i)
            real += own[i]
        else:
            chunks.append([i])
            real = own[i]
    return chunks


CONTEXT_SPREAD = 2.0  # a decoding group's widest context may be this many times its narrowest
# What a decode step costs besides attention, in attention's units (rows x columns read): int8,
# 64 rows at ~125 columns, 121 ms a step of which 38 ms attention, so ~17,000 row-columns.
STEP_COST_IN_COLUMNS = 16_000


def context_groups(contexts: Sequence[int], slots: int) -> list[list[int]]:
    """Split requests (by their longest possible context: prompt + max_tokens) into groups decoded
    one after another, shortest first; returns indices in admission order.

    Slots share one timeline of KV columns, so every row's attention step reads as many columns
    as the widest live row needs: one 1,400-token prompt among 100-token ones made each step ~3x
    dearer for all of them. A lone long request decodes faster on its own than it slows the rest.
    But a group that leaves slots empty takes the next group in when the columns its rows would
    read in addition cost less than the extra steps of running the two apart.
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(contexts)), key=lambda i: (contexts[i], i)):
        if groups and contexts[i] <= CONTEXT_SPREAD * contexts[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    merged = groups[:1]
    for group in groups[1:]:
        last = merged[-1]
        wider = contexts[group[-1]] - contexts[last[-1]]
        if len(last) + len(group) <= slots and len(last) * wider <= STEP_COST_IN_COLUMNS:
            last.extend(group)
        else:
            merged.append(group)
    return merged


@dataclass
class Prefilled:
    """A batch of prompts run through the model."""

    cache: DynamicCache
    mask: torch.Tensor  # (rows, columns): which cache columns belong to each row
    logits: torch.Tensor  # (rows, vocab): next-token logits
    common: int  # leading columns every row shares: the same tokens, no padding among them


# (prompt token rows, stored KV of each row's first tokens or None) -> the prefilled batch
Prefill = Callable[[list[list[int]], "list[Reuse] | None"], Prefilled]
# (row, finished) -> None; called once per request as soon as it is done
OnFinished = Callable[[Row], None]


class ContinuousBatcher:
    """Decode `requests` in `slots` slots, admitting waiting requests as rows finish.

    Args:
        lm: a causal LM from transformers.
        prefill: runs prompts (already tokenised) and returns their cache, mask and last logits.
        slots: rows decoded together.
        is_done: (row) -> bool, the row's stop rule (EOS, max_tokens, stop strings).
        store: finished rows' KV goes here, and prompts that extend a stored row start from it.
        kv_dtype: the timeline's dtype (default: the model's); int8 mode keeps bf16 KV on CPU.
        eos_token_id: never picked for a row short of its request's `min_tokens`.
    """

    def __init__(
        self,
        lm,
        prefill: Prefill,
        slots: int,
        is_done: Callable[[Row], bool],
        store: KVStore | None = None,
        kv_dtype: torch.dtype | None = None,
        eos_token_id: int | None = None,
    ):
        self.lm, self.prefill, self.slots, self.is_done, self.store = (
            lm,
            prefill,
            slots,
            is_done,
            store,
        )
        self.kv_dtype, self.eos_token_id = kv_dtype or lm.dtype, eos_token_id
        self.layers: list[TimelineLayer] = []
        self.mask = torch.zeros(0, 0, dtype=torch.bool)  # (slots, columns in use)
        self.rows: list[Row | None] = []
        # Rows whose prompt starts with `prefix` keep only the rest in the timeline; the prefix's
        # KV is held once and read by `prefix_attention` (when the model was set up for it).
        self.share_prefix = getattr(lm.config, "_attn_implementation", None) == PREFIX_ATTENTION
        self.prefix: SharedPrefix | None = None
        self.on_prefix = torch.zeros(0, dtype=torch.bool)

    @torch.inference_mode()
    def run(
        self,
        requests: Sequence[GenerationRequest],
        prompt_ids: Sequence[list[int]],
        order: Sequence[int],
        on_finished: OnFinished,
        intake: Intake | None = None,
    ) -> None:
        """Decode every request; `order` is the admission order (similar lengths together).

        With `intake` (a server), requests also arrive while this runs: between steps, new ones
        are admitted into free slots (up to `slots`, the slots growing as needed) and rows of
        cancelled requests give their slot up. It returns once nothing is waiting or decoding.
        """
        waiting = list(order)
        self.rows = [None] * (self.slots if intake is None else 0)
        self.on_prefix = torch.zeros(len(self.rows), dtype=torch.bool)
        while True:
            if intake is not None:
                waiting = self._keep_wanted(waiting + intake.arrivals(), intake)
            if not (waiting or any(self.rows)):
                return
            free = self._free_slots(len(waiting) if intake is not None else 0)
            # Admit in groups: one batched prefill per group costs far less than one per row.
            # A server admits at once: a new client should not wait for others' rows to end.
            group = 1 if intake is not None else max(1, self.slots // 4)
            if waiting and free and (len(free) >= group or not any(self.rows)):
                take, waiting = waiting[: len(free)], waiting[len(free) :]
                self._admit(free, take, requests, prompt_ids, on_finished)
                continue
            self._shrink_if_draining(bool(waiting))
            self._step(on_finished)

    def _keep_wanted(self, waiting: list[int], intake: Intake) -> list[int]:
        """Free the slots of cancelled rows, and drop cancelled requests still waiting."""
        for slot, row in enumerate(self.rows):
            if row is not None and intake.cancelled(row.index):
                self.rows[slot] = None
                self.on_prefix[slot] = False
        return [i for i in waiting if not intake.cancelled(i)]

    def _free_slots(self, wanted: int) -> list[int]:
        """Empty slots; first adding up to `wanted` more while under `slots` (a server's batch
        grows with the requests in flight instead of decoding empty rows)."""
        free = [s for s, r in enumerate(self.rows) if r is None]
        grow = min(self.slots - len(self.rows), wanted - len(free))
        if grow > 0:
            self._grow(grow)
            free += list(range(len(self.rows) - grow, len(self.rows)))
        return free

    def _grow(self, n: int) -> None:
        """Add `n` empty slots (zeroed KV: spare columns are read, masked, and must be finite)."""
        self.rows += [None] * n
        self.on_prefix = torch.cat([self.on_prefix, torch.zeros(n, dtype=torch.bool)])
        self.mask = torch.cat([self.mask, self.mask.new_zeros(n, self.mask.shape[1])])
        for layer in self.layers:
            layer.key_buf = torch.cat(
                [layer.key_buf, layer.key_buf.new_zeros(n, *layer.key_buf.shape[1:])]
            )
            layer.value_buf = torch.cat(
                [layer.value_buf, layer.value_buf.new_zeros(n, *layer.value_buf.shape[1:])]
            )
            layer._expose()

    def _admit(self, free, take, requests, prompt_ids, on_finished) -> None:
        """Prefill `take` into slots `free`. Rows that extend a stored row further than the prefix
        all of `take` share (which a plain prefill runs once for all) run only the rest."""
        shared = shared_prefix_len([prompt_ids[i] for i in take]) if len(take) > 1 else 0
        found = {i: self.store.lookup(prompt_ids[i]) for i in take} if self.store else {}
        reuse = {i: r for i, r in found.items() if r is not None and r.n > shared}
        resumed = [i for i in take if i in reuse]
        fresh = [i for i in take if i not in reuse]
        slots = iter(free)
        for group, pasts in ((fresh, None), (resumed, reuse)):
            todo = [prompt_ids[i][reuse[i].n :] if pasts else prompt_ids[i] for i in group]
            # Widest chunk first: the timeline then takes its width once, not once per chunk.
            for chunk in reversed(prefill_chunks(todo)):
                take_chunk = [group[j] for j in chunk]
                self._admit_chunk(
                    [next(slots) for _ in chunk],
                    take_chunk,
                    requests,
                    prompt_ids,
                    [pasts[i] for i in take_chunk] if pasts else None,
                    on_finished,
                )

    def _admit_chunk(self, free, take, requests, prompt_ids, pasts, on_finished) -> None:
        prefilled = self.prefill([prompt_ids[i] for i in take], pasts)
        cache, mask, logits = prefilled.cache, prefilled.mask, prefilled.logits
        skip = self._shared_columns([prompt_ids[i] for i in take], prefilled)
        width = mask.shape[1] - skip
        if not self.layers:
            self._start_timeline(cache, width)
        self._make_room(width)
        end = self.layers[0].length
        for j, (slot, i) in enumerate(zip(free, take)):
            req = requests[i]
            row = Row(i, req, prompt_ids[i], torch.Generator().manual_seed(req.seed))
            for layer, new in zip(self.layers, cache.layers):
                layer.key_buf[slot, :, end - width : end] = new.keys[j, :, skip:]
                layer.value_buf[slot, :, end - width : end] = new.values[j, :, skip:]
            self.mask[slot] = False
            self.mask[slot, end - width : end] = mask[j, skip:].bool()
            self.on_prefix[slot] = skip > 0
            self.rows[slot] = row
        self._take(free, list(range(len(free))), logits, on_finished)

    def _shared_columns(self, rows: list[list[int]], prefilled: Prefilled) -> int:
        """How many leading columns of this prefill are the shared prefix (0: rows keep their own).

        The prefix in use stays while any live row reads it; otherwise a group whose rows share a
        long enough prefix installs theirs, taken from its prefill (computed once at batch 1).
        """
        if not self.share_prefix:
            return 0
        common = prefilled.common
        if self.prefix is not None and bool(self.on_prefix.any()):  # cleared as rows finish
            n = len(self.prefix.ids)
            return n if n <= common and rows[0][:n] == self.prefix.ids else 0
        if len(rows) < 2 or common < MIN_HELD_PREFIX:
            return 0

        def held(t):
            return t[0, :, :common].to(self.kv_dtype, copy=True)

        layers = prefilled.cache.layers
        self.prefix = SharedPrefix(
            rows[0][:common], [held(c.keys) for c in layers], [held(c.values) for c in layers]
        )
        return common

    def _start_timeline(self, cache: DynamicCache, width: int) -> None:
        def empty(t):
            return t.new_zeros(
                len(self.rows), t.shape[1], width + GROWTH, t.shape[3], dtype=self.kv_dtype
            )

        self.layers = [TimelineLayer(empty(c.keys), empty(c.values), width) for c in cache.layers]
        self.mask = torch.zeros(
            len(self.rows), width, dtype=torch.bool, device=cache.layers[0].keys.device
        )

    def _make_room(self, width: int) -> None:
        """Insert columns in front if a prompt is wider than the timeline so far; drop leading
        columns no live row uses once they are a quarter of it (each step attends over them)."""
        length = self.layers[0].length
        live = self.mask[[s for s, r in enumerate(self.rows) if r is not None]]
        first_used = int(live.any(0).int().argmax()) if live.any() else length
        pad = max(0, width - (length - first_used))
        if pad == 0 and first_used < max(1, length // 4):
            return
        for layer in self.layers:
            layer.shift(first_used, pad)
        self.mask = torch.cat(
            [self.mask.new_zeros(len(self.rows), pad), self.mask[:, first_used:]], dim=1
        )

    def _step(self, on_finished: OnFinished) -> None:
        """One decode step for every slot: feed each row's last token, pick its next one."""
        live = [s for s, r in enumerate(self.rows) if r is not None]
        last = torch.tensor(
            [[r.tokens[-1] if r else 0] for r in self.rows], device=self.mask.device
        )
        positions = self.mask.sum(-1, keepdim=True)  # each row's own count of tokens so far
        extra = {}
        if self.prefix is not None and bool(self.on_prefix.any()):
            self.prefix.rows = self.on_prefix.to(self.mask.device)
            positions = positions + self.prefix.rows[:, None] * len(self.prefix.ids)
            extra["shared_prefix"] = self.prefix
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        for layer in self.layers:
            layer.reserve(self.mask.shape[1])
        additive = torch.full(
            (len(self.rows), self.layers[0].capacity),
            torch.finfo(self.lm.dtype).min,
            dtype=self.lm.dtype,
            device=self.mask.device,
        )  # spare columns stay blocked
        additive[:, : self.mask.shape[1]].masked_fill_(self.mask, 0)
        out = self.lm(
            input_ids=last,
            attention_mask=additive[:, None, None, :],  # 4-D: used as given, no causal rebuild
            position_ids=positions,
            past_key_values=self._cache(),
            use_cache=True,
            **extra,
        )
        self._take(live, live, out.logits[:, -1].float(), on_finished)

    def _cache(self) -> Cache:
        return Cache(layers=self.layers)

    def _take(
        self, slots: list[int], rows: list[int], logits: torch.Tensor, on_finished: OnFinished
    ) -> None:
        """Give the row in each of `slots` its next token, from row `rows[k]` of `logits`.

        Greedy picks come from one argmax over the batch; rows that sample or want log-probs read
        their logits on the host (one copy for the batch: on a GPU, one sync instead of one per row).
        """
        young = [
            k
            for s, k in zip(slots, rows)
            if len(self.rows[s].tokens) < self.rows[s].request.min_tokens
        ]
        if young and self.eos_token_id is not None:
            logits[young, self.eos_token_id] = float("-inf")
        greedy = logits.argmax(-1).tolist()
        host = None
        for slot, k in zip(slots, rows):
            row = self.rows[slot]
            req = row.request
            if req.temperature > 0 or req.logprobs is not None:
                host = logits.cpu() if host is None else host
            if req.temperature > 0:
                row.tokens.append(sample_token(host[k], req.temperature, req.top_p, row.generator))
            else:
                row.tokens.append(greedy[k])
            if req.logprobs is not None:
                row.logprobs.append(step_logprobs(host[k], row.tokens[-1], req.logprobs))
            if self.is_done(row):
                if self.store is not None:
                    self.store.add(self._stored(slot, row))
                self.rows[slot] = None
                self.on_prefix[slot] = False
                on_finished(row)

    def _stored(self, slot: int, row: Row) -> StoredRow:
        """The slot's KV as a stored row: its own timeline columns, and the held prefix by reference."""
        columns = self.mask[slot].nonzero().squeeze(1)
        keys = [layer.key_buf[slot][:, columns] for layer in self.layers]  # indexing copies
        values = [layer.value_buf[slot][:, columns] for layer in self.layers]
        prefix = self.prefix if self.on_prefix[slot] else None
        return StoredRow(np.asarray(row.prompt_ids + row.tokens[:-1]), prefix, keys, values)

    def _shrink_if_draining(self, waiting: bool) -> None:
        """With nothing left to admit, drop empty slots so the tail of the run does not decode
        padding rows."""
        live = [s for s, r in enumerate(self.rows) if r is not None]
        if waiting or len(live) == len(self.rows) or len(live) > len(self.rows) // 2:
            return
        index = torch.tensor(live, device=self.mask.device)
        for layer in self.layers:
            layer.key_buf, layer.value_buf = layer.key_buf[index], layer.value_buf[index]
            layer._expose()
        self.mask = self.mask[index]
        self.on_prefix = self.on_prefix[index.cpu()]
        self.rows = [self.rows[s] for s in live]
