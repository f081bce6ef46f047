"""Finished rows' KV, kept so that a later prompt which extends one is prefilled from where it ended.

An SL-CAI revision prompt is its critique prompt, then the critique the model just wrote, then the
revision request: all but ~40 of its tokens went through the model one call earlier. The engine
stores each finished row's keys and values (prompt and generated tokens) here; admission looks up
the longest stored token prefix of a new prompt and prefills only the rest (vLLM's automatic
prefix caching, at row granularity). Matching is on token ids, so a prompt that re-tokenises
differently after the critique's text was stripped and re-rendered simply reuses less.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # importing it loads transformers, which the CLI does lazily
    from constitutional.backends.prefix_attention import SharedPrefix

MIN_REUSE = 32  # tokens; a shorter match costs about as much to lay out as to recompute


def store_budget_bytes() -> int:
    """Memory the stored KV may take: $CAI_KV_STORE_GB, default 2 GiB (0 turns reuse off)."""
    return int(float(os.environ.get("CAI_KV_STORE_GB", "2")) * 2**30)


@dataclass
class StoredRow:
    """The KV of `ids`: a held prefix's (shared with other rows, not copied) and then its own."""

    ids: np.ndarray  # the prompt and every generated token but the last (never fed back)
    prefix: SharedPrefix | None
    keys: list[torch.Tensor]  # per layer (kv heads, own tokens, head dim)
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def kv(self, layer: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of tokens [start, end) in one layer, (kv heads, end - start, head dim)."""
        n = len(self.prefix.ids) if self.prefix is not None else 0
        own = slice(max(start - n, 0), max(end - n, 0))
        if start >= n:
            return self.keys[layer][:, own], self.values[layer][:, own]
        held = slice(start, min(end, n))
        keys, values = self.prefix.keys[layer][:, held], self.prefix.values[layer][:, held]
        if end <= n:
            return keys, values
        return torch.cat([keys, self.keys[layer][:, own]], 1), torch.cat(
            [values, self.values[layer][:, own]], 1
        )


@dataclass
class Reuse:
    """The first `n` tokens of a prompt have their KV in `row`."""

    row: StoredRow
    n: int


class KVStore:
    """Stored rows, least recently used dropped first once they pass `budget` bytes."""

    def __init__(self, budget: int):
        self.budget = budget
        self.rows: OrderedDict[int, StoredRow] = OrderedDict()
        self.nbytes = 0
        self._next = 0
        self._lock = threading.Lock()  # `cai serve` may decode on several threads

    def add(self, row: StoredRow) -> None:
        if row.nbytes > self.budget:
            return
        with self._lock:
            self.rows[self._next] = row
            self._next += 1
            self.nbytes += row.nbytes
            while self.nbytes > self.budget:
                self.nbytes -= self.rows.popitem(last=False)[1].nbytes

    def lookup(self, ids: list[int]) -> Reuse | None:
        """The stored row sharing the longest token prefix with `ids` (at least `MIN_REUSE`
        tokens, and always leaving the last token to run, whose logits the caller needs)."""
        prompt = np.asarray(ids)
        best_key, best_n = None, MIN_REUSE - 1
        with self._lock:
            for key, row in self.rows.items():
                m = min(len(row.ids), len(prompt) - 1)
                if m <= best_n:
                    continue
                same = row.ids[:m] == prompt[:m]
                n = m if same.all() else int(same.argmin())
                if n > best_n:
                    best_key, best_n = key, n
            if best_key is None:
                return None
            self.rows.move_to_end(best_key)
            return Reuse(self.rows[best_key], best_n)
