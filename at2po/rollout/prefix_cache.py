"""An LRU store of per-sequence key/value caches keyed by their token ids, for prefix reuse.

After a sequence finishes, the engine stores the key/values it computed (context + generated tokens, except the
last sampled token, which was never fed). A later context that shares a prefix with a stored sequence — a
continuation after an observation, or a fork from an earlier turn — takes the key/values of the longest common
prefix and prefills only the rest. Keys/values of a causal LM at position t depend only on tokens ≤ t, so any
prefix slice of a stored entry is exact.

The entries' token ids are kept as rows of one −1-padded matrix, updated in place on insert and eviction, so a
lookup and the superseded-prefix check of an insert are one vectorised comparison each (rollouts interleave
thousands of both).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class KVEntry:
    tokens: np.ndarray  # [n] int64: the tokens whose key/values are stored
    keys: list[torch.Tensor]  # per layer [H_kv, n, D]
    values: list[torch.Tensor]  # per layer [H_kv, n, D]


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    neq = np.flatnonzero(a[:n] != b[:n])
    return int(neq[0]) if len(neq) else n


class PrefixCache:
    """LRU over entries, bounded by the total number of stored tokens (``max_tokens``)."""

    def __init__(self, max_tokens: int = 262_144) -> None:
        self.max_tokens = max_tokens
        self.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries: OrderedDict[int, tuple[KVEntry, int]] = OrderedDict()  # id → (entry, matrix row)
        self._next_id = 0
        self.tokens = 0
        self._matrix = np.full((16, 64), -1, dtype=np.int64)  # [rows, width]: entry tokens, −1 padded
        self._lens = np.zeros(16, dtype=np.int64)  # [rows]; 0 = free row
        self._free = list(range(15, -1, -1))
        self._row_owner: dict[int, int] = {}  # matrix row → entry id

    def _lcp(self, context: np.ndarray) -> np.ndarray:
        """Common prefix length of ``context`` with every matrix row (free rows: 0).  # [rows]"""
        n = min(self._matrix.shape[1], len(context))
        eq = self._matrix[:, :n] == context[None, :n]  # [rows, n]; −1 padding never matches a token id
        return np.where(eq.all(axis=1), n, np.argmin(eq, axis=1))

    def lookup(self, context: np.ndarray, limit: int) -> tuple[int, KVEntry | None]:
        """Longest common prefix (≤ ``limit`` tokens) between ``context`` and any entry: (length, entry)."""
        if not self._entries or limit <= 0:
            return 0, None
        lcp = np.minimum(self._lcp(context), limit)
        r = int(np.argmax(lcp))
        if lcp[r] == 0:
            return 0, None
        eid = self._row_owner[r]
        self._entries.move_to_end(eid)
        return int(lcp[r]), self._entries[eid][0]

    def insert(self, entry: KVEntry) -> int:
        """Store ``entry``; entries that are prefixes of it are dropped (it serves every lookup they could).
        Returns the tokens evicted (least recently used entries) to stay within ``max_tokens``."""
        n = len(entry.tokens)
        if n == 0:
            return 0
        if n > self.max_tokens:
            return n
        if self._entries:
            lcp = self._lcp(entry.tokens)
            for r in np.flatnonzero((lcp == self._lens) & (self._lens > 0)):
                self._drop(self._row_owner[int(r)])
        if not self._free:  # double the rows
            rows = self._matrix.shape[0]
            self._matrix = np.concatenate([self._matrix, np.full_like(self._matrix, -1)])
            self._lens = np.concatenate([self._lens, np.zeros_like(self._lens)])
            self._free = list(range(2 * rows - 1, rows - 1, -1))
        if n > self._matrix.shape[1]:  # widen by ≥ 1.5×
            width = max(n, self._matrix.shape[1] * 3 // 2)
            self._matrix = np.pad(self._matrix, ((0, 0), (0, width - self._matrix.shape[1])), constant_values=-1)
        r = self._free.pop()
        self._matrix[r, :n] = entry.tokens
        self._lens[r] = n
        self._entries[self._next_id] = (entry, r)
        self._row_owner[r] = self._next_id
        self._next_id += 1
        self.tokens += n
        evicted = 0
        while self.tokens > self.max_tokens:
            evicted += self._drop(next(iter(self._entries)))
        return evicted

    def _drop(self, eid: int) -> int:
        entry, r = self._entries.pop(eid)
        self.tokens -= len(entry.tokens)
        self._matrix[r, : len(entry.tokens)] = -1
        self._lens[r] = 0
        self._free.append(r)
        del self._row_owner[r]
        return len(entry.tokens)
