"""The self-attention key/value cache of decoding, in the design of mlx-lm's ``KVCache``
(``mlx_lm/models/cache.py``): buffers allocated in steps of 256 positions, each step's keys and values
written into them in place, ``offset`` positions filled.

Written here rather than imported: ``import mlx_lm.models.cache`` first runs ``mlx_lm/__init__.py``,
which imports mlx-lm's generation code and with it transformers (~1.5 s of cold start, measured on this
project's machine) for one small class. Ours adds :meth:`KVCache.reorder` for beam search.
"""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    """Keys and values ``(B, H, offset, Dh)`` of the positions decoded so far, for one attention layer.

    Appending concatenates nothing: a step writes its keys and values into preallocated buffers with a
    slice assignment (MLX updates the buffer in place when nothing else holds it), so a step costs the
    same at position 200 as at position 2. Buffers grow by :attr:`step` positions when full.
    """

    step = 256

    def __init__(self):
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append ``keys``, ``values`` ``(B, H, T, Dh)``; returns every position's, ``(B, H, offset, Dh)``."""
        start, end = self.offset, self.offset + keys.shape[2]
        if self.keys is None or end > self.keys.shape[2]:
            self.keys, self.values = self._grown(self.keys, keys, end), self._grown(self.values, values, end)
        self.keys[..., start:end, :] = keys
        self.values[..., start:end, :] = values
        self.offset = end
        return self.keys[..., :end, :], self.values[..., :end, :]

    def _grown(self, buffer: mx.array | None, new: mx.array, end: int) -> mx.array:
        """A buffer for at least ``end`` positions (a multiple of :attr:`step`) holding ``buffer``'s filled part."""
        B, H, _, Dh = new.shape
        capacity = -(-end // self.step) * self.step
        grown = mx.zeros((B, H, capacity, Dh), dtype=new.dtype)
        if buffer is not None and self.offset:
            grown[..., : self.offset, :] = buffer[..., : self.offset, :]
        return grown

    def reorder(self, rows: mx.array) -> None:
        """Row ``i`` of the batch becomes what row ``rows[i]`` was (beam search: a beam continues its
        parent). Only the filled positions are copied."""
        if self.keys is None:
            return
        n = self.offset
        self.keys[:, :, :n, :] = self.keys[rows, :, :n, :]
        self.values[:, :, :n, :] = self.values[rows, :, :n, :]
