"""A key/value cache in preallocated buffers, for continuous batching without whole-cache copies.

transformers' ``DynamicCache`` appends each decode step with ``torch.cat``, which copies every layer's whole
[B, H_kv, W, D] cache at every step; stacking new sequences under a running batch and dropping finished ones copy
it again. Here each layer keeps one buffer [B_cap, H_kv, W_cap, D]; the live cache is the view
``buf[:rows, :, lo:hi]``:

* a decode step writes column ``hi`` in place;
* new rows are written under the live ones, their key/values right-aligned at ``hi`` (``lo`` moves left if they
  are wider: the columns they add are masked for the other rows);
* a finished row is overwritten by a live row from the end (only the moved rows are copied);
* columns no live row attends to any more are dropped by moving ``lo``.

Buffers grow (one copy of the live window) only when the rows or columns run out, by at least half of what they
hold, so the copies are amortised. Buffers start zeroed: masked columns may hold stale key/values of retired rows
but never non-finite values (a masked column gets weight exp(−inf) = 0, and 0 · inf would be NaN).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class SlabLayer(DynamicLayer):
    """One layer's key/values: ``kbuf``/``vbuf`` [B_cap, H_kv, W_cap, D], live window [:rows, :, lo:hi]."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows_cap: int, right: int) -> None:
        b, h, w, d = keys.shape
        self.kbuf = keys.new_zeros((max(rows_cap, b), h, w + right, d))
        self.vbuf = values.new_zeros((max(rows_cap, b), h, w + right, d))
        self.kbuf[:b, :, :w] = keys
        self.vbuf[:b, :, :w] = values
        self.rows, self.lo, self.hi = b, 0, w
        self.is_initialized = True
        self.device = keys.device

    @property
    def keys(self) -> torch.Tensor:  # [rows, H_kv, hi − lo, D] (a view)
        return self.kbuf[: self.rows, :, self.lo : self.hi]

    @property
    def values(self) -> torch.Tensor:
        return self.vbuf[: self.rows, :, self.lo : self.hi]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        s = key_states.shape[-2]
        if self.hi + s > self.kbuf.shape[2]:
            self.grow(right=s)
        self.kbuf[: self.rows, :, self.hi : self.hi + s] = key_states
        self.vbuf[: self.rows, :, self.hi : self.hi + s] = value_states
        self.hi += s
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.hi - self.lo

    def grow(self, rows: int = 0, left: int = 0, right: int = 0) -> None:
        """Reallocate with room for ``rows`` rows in all, ``left`` columns before ``lo`` and ``right`` after ``hi``
        (each grown by at least half of the current size: amortised)."""
        b_cap, h, _, d = self.kbuf.shape
        width = self.hi - self.lo
        new_rows = b_cap if rows <= b_cap else max(rows, b_cap + b_cap // 2)
        left = left + width // 2 if left else 0
        right = max(right, 64, width // 2)
        k = self.kbuf.new_zeros((new_rows, h, left + width + right, d))
        v = self.vbuf.new_zeros((new_rows, h, left + width + right, d))
        k[: self.rows, :, left : left + width] = self.keys
        v[: self.rows, :, left : left + width] = self.values
        self.kbuf, self.vbuf, self.lo, self.hi = k, v, left, left + width


class SlabCache(Cache):
    """A ``transformers`` cache over :class:`SlabLayer` buffers, with the row operations continuous batching needs."""

    def __init__(self, block: Cache, rows_cap: int, right: int) -> None:
        """Start from the key/values of a prefilled block (``block.layers[i].keys``: [b, H_kv, w, D]), with room
        for ``rows_cap`` rows and ``right`` more columns."""
        super().__init__(layers=[SlabLayer(lay.keys, lay.values, rows_cap, right) for lay in block.layers])

    @property
    def rows(self) -> int:
        return self.layers[0].rows

    @property
    def width(self) -> int:
        return self.layers[0].hi - self.layers[0].lo

    def append_rows(self, block: Cache, right: int) -> int:
        """Write a prefilled block's rows under the live ones, right-aligned at ``hi``; keep ``right`` free columns.
        Returns how many columns the live window grew on the left (the live rows' masks need that many zeros)."""
        grew = 0
        for lay, blk in zip(self.layers, block.layers):
            b, w = blk.keys.shape[0], blk.keys.shape[2]
            need_rows = lay.rows + b
            if need_rows > lay.kbuf.shape[0] or w > lay.hi or lay.hi + right > lay.kbuf.shape[2]:
                # grow() keeps only the live window (at column ``left``): make w − width columns of room before it
                lay.grow(rows=need_rows, left=max(0, w - (lay.hi - lay.lo)), right=right)
            lay.kbuf[lay.rows : lay.rows + b, :, lay.hi - w : lay.hi] = blk.keys
            lay.vbuf[lay.rows : lay.rows + b, :, lay.hi - w : lay.hi] = blk.values
            new_lo = min(lay.lo, lay.hi - w)
            grew = lay.lo - new_lo
            lay.lo, lay.rows = new_lo, lay.rows + b
        return grew

    def remove_rows(self, dead: list[int]) -> list[int]:
        """Drop rows ``dead``: each hole below the new row count is filled by a live row from the end. Returns
        the new row order as old indices (row i now holds what row order[i] held)."""
        n = self.rows - len(dead)
        dead_set = set(dead)
        holes = [r for r in sorted(dead_set) if r < n]
        movers = [r for r in range(n, self.rows) if r not in dead_set]
        order = list(range(n))
        for h, m in zip(holes, movers):
            order[h] = m
        if holes:
            hi_t, mv_t = torch.tensor(holes), torch.tensor(movers)
            for lay in self.layers:
                lay.kbuf[hi_t, :, lay.lo : lay.hi] = lay.kbuf[mv_t, :, lay.lo : lay.hi]
                lay.vbuf[hi_t, :, lay.lo : lay.hi] = lay.vbuf[mv_t, :, lay.lo : lay.hi]
        for lay in self.layers:
            lay.rows = n
        return order

    def drop_leading(self, cols: int) -> None:
        """Forget the first ``cols`` columns of the live window (no live row attends to them)."""
        for lay in self.layers:
            lay.lo += cols
