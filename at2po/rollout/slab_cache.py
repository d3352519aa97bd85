"""A key/value cache in preallocated buffers, for continuous batching without whole-cache copies.

transformers' ``DynamicCache`` appends each decode step with ``torch.cat``, which copies every layer's whole
[B, H_kv, W, D] cache at every step; stacking new sequences under a running batch and dropping finished ones copy
it again. Here each layer keeps one buffer [B_cap, H_kv, W_cap, D]; the live cache is the view
``buf[:rows, :, lo:hi]``:

* a decode step writes column ``hi`` in place;
* new rows are prefilled straight into the buffer, under the live ones, their key/values right-aligned at ``hi``
  (:meth:`SlabCache.reserve`, :meth:`SlabCache.block`, :meth:`SlabCache.commit`; ``lo`` moves left if they are
  wider: the columns they add are masked for the other rows), so a prefilled block is never copied;
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

    def __init__(self, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, rows_cap: int,
                 width_cap: int) -> None:
        self.kbuf = torch.zeros((rows_cap, heads, width_cap, head_dim), dtype=dtype, device=device)
        self.vbuf = torch.zeros_like(self.kbuf)
        self.rows = self.lo = self.hi = 0
        self.is_initialized = True
        self.device = self.kbuf.device

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

    def reserve(self, b: int, w: int, right: int) -> int:
        """Room for ``b`` more rows whose key/values fill the ``w`` columns before ``hi``, and ``right`` free columns
        after it. Returns how many columns the live window grew on the left."""
        if self.rows == 0:  # nothing live: place the block at the left of the buffer
            self.lo = self.hi = w if w + right <= self.kbuf.shape[2] else 0
        need = self.rows + b
        if need > self.kbuf.shape[0] or w > self.hi or self.hi + right > self.kbuf.shape[2]:
            # grow() keeps only the live window (at column ``left``): make w − width columns of room before it
            self.grow(rows=need, left=max(0, w - (self.hi - self.lo)), right=right)
        new_lo = min(self.lo, self.hi - w)
        grew, self.lo = self.lo - new_lo, new_lo
        return grew


class BlockLayer(DynamicLayer):
    """The key/values of a block being prefilled: rows [r0, r1) of a :class:`SlabLayer`'s buffers, columns
    [c0, c). ``update`` (the model's forward) writes the new columns at ``c`` in place; with ``keep`` ([b, S]
    bool, True = a left-padding token of that row) those columns keep what they hold (a row's cached prefix may
    reach into them, so every row's key/values stay contiguous)."""

    def __init__(self, slab: SlabLayer, r0: int, r1: int, c0: int, c: int, keep: torch.Tensor | None = None) -> None:
        self.slab, self.r0, self.r1, self.c0, self.c, self.keep = slab, r0, r1, c0, c, keep
        self.is_initialized = True
        self.device = slab.device

    @property
    def keys(self) -> torch.Tensor:  # [r1 − r0, H_kv, c − c0, D] (a view)
        return self.slab.kbuf[self.r0 : self.r1, :, self.c0 : self.c]

    @property
    def values(self) -> torch.Tensor:
        return self.slab.vbuf[self.r0 : self.r1, :, self.c0 : self.c]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        b, h, s, d = key_states.shape
        buf = self.slab.kbuf
        if (b, h, d) != (self.r1 - self.r0, buf.shape[1], buf.shape[3]) or self.c + s > self.slab.hi:
            raise ValueError(
                f"SlabCache: the model wrote key/values of shape {tuple(key_states.shape)} into a block of "
                f"{self.r1 - self.r0} rows × {self.slab.hi - self.c} free columns of [.., {buf.shape[1]} heads, .., "
                f"{buf.shape[3]}] (num_key_value_heads / head_dim of the model config)")
        for src, dst in ((key_states, self.slab.kbuf), (value_states, self.slab.vbuf)):
            region = dst[self.r0 : self.r1, :, self.c : self.c + s]  # [b, H_kv, s, D]
            if self.keep is not None and s == self.keep.shape[1]:
                src = torch.where(self.keep[:, None, :, None], region, src)
            region.copy_(src)
        self.c += s
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.c - self.c0


class SlabCache(Cache):
    """A ``transformers`` cache over :class:`SlabLayer` buffers, with the row operations continuous batching needs."""

    def __init__(self, num_layers: int, heads: int, head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", rows_cap: int = 1, width_cap: int = 64) -> None:
        super().__init__(layers=[SlabLayer(heads, head_dim, dtype, torch.device(device), rows_cap, width_cap)
                                 for _ in range(num_layers)])

    @classmethod
    def from_cache(cls, block: Cache, rows_cap: int, right: int) -> SlabCache:
        """A slab holding the rows of a prefilled cache (``block.layers[i].keys``: [b, H_kv, w, D]), with room for
        ``rows_cap`` rows and ``right`` more columns."""
        k0 = block.layers[0].keys
        b, h, w, d = k0.shape
        slab = cls(len(block.layers), h, d, k0.dtype, k0.device, rows_cap=max(rows_cap, b), width_cap=w + right)
        slab.reserve(b, w, right)
        view = slab.block(b, w, filled=0)
        for src, lay in zip(block.layers, view.layers, strict=True):
            lay.update(src.keys, src.values)
        slab.commit(b)
        return slab

    @property
    def rows(self) -> int:
        return self.layers[0].rows

    @property
    def width(self) -> int:
        return self.layers[0].hi - self.layers[0].lo

    def reserve(self, b: int, w: int, right: int) -> int:
        """Make room for ``b`` rows of ``w`` columns under the live ones (right-aligned at ``hi``), keeping ``right``
        free columns. Returns how many columns the live window grew on the left (the live rows' masks need that
        many zeros). Then :meth:`block` gives the forward's view of the new rows and :meth:`commit` makes them live."""
        grew = 0
        for lay in self.layers:
            grew = lay.reserve(b, w, right)
        return grew

    def block(self, b: int, w: int, filled: int, keep: torch.Tensor | None = None) -> Cache:
        """The cache a prefill forward of the first ``b`` reserved rows writes into: their ``w`` columns before
        ``hi``, the first ``filled`` of them before the forward's (:meth:`put_prefix`); ``keep`` [b, w − filled]:
        columns of the forward's block that keep their key/values (see :class:`BlockLayer`)."""
        r0 = self.rows
        return Cache(layers=[BlockLayer(lay, r0, r0 + b, lay.hi - w, lay.hi - w + filled, keep) for lay in self.layers])

    def put_prefix(self, view: Cache, row: int, keys: list[torch.Tensor], values: list[torch.Tensor], p: int,
                   end: int) -> None:
        """Write the first ``p`` key/values of one sequence (per layer [H_kv, ≥ p, D]) into row ``row`` of a block
        ``view``, ending ``end`` columns before ``hi`` (right before the row's own suffix)."""
        for lay, k, v in zip(view.layers, keys, values, strict=True):
            r, e = lay.r0 + row, lay.slab.hi - end
            lay.slab.kbuf[r, :, e - p : e] = k[:, :p]
            lay.slab.vbuf[r, :, e - p : e] = v[:, :p]

    def copy_rows(self, src: list[int], dst: list[int], w: int) -> None:
        """Reserved row ``rows + dst[i]`` := reserved row ``rows + src[i]`` over the ``w`` columns before ``hi``
        (requests with the same context share one prefill)."""
        s = torch.tensor(src) + self.rows
        t = torch.tensor(dst) + self.rows
        for lay in self.layers:
            lay.kbuf[t, :, lay.hi - w : lay.hi] = lay.kbuf[s, :, lay.hi - w : lay.hi]
            lay.vbuf[t, :, lay.hi - w : lay.hi] = lay.vbuf[s, :, lay.hi - w : lay.hi]

    def commit(self, b: int) -> None:
        """The ``b`` reserved rows become live."""
        for lay in self.layers:
            lay.rows += b

    def remove_rows(self, dead: list[int]) -> list[int]:
        """Drop rows ``dead``: each hole below the new row count is filled by a live row from the end. Returns
        the new row order as old indices (row i now holds what row order[i] held)."""
        n = self.rows - len(dead)
        dead_set = set(dead)
        holes = [r for r in sorted(dead_set) if r < n]
        movers = [r for r in range(n, self.rows) if r not in dead_set]
        order = list(range(n))
        for h, m in zip(holes, movers, strict=True):
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
