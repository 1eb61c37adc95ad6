"""The keys and values of recent prompts, in fixed-size token blocks, for prompts that share a beginning.

GPT-2's positions are absolute, so a prefix always sits at the same positions and its
cached keys and values are exactly what a cold prefill computes (the INT8 and FP32
kernels are row-exact, and a prompt prefilled in chunks gives the same logits as in one
call). As vLLM's automatic prefix caching does, a block is keyed by the block before it
and its own tokens, so a key names its whole prefix; the least recently used blocks are
dropped to stay within a byte budget.

    prompt ─full blocks of `block_size`─> (parent key, tokens) ─lookup─> cached KV
           [layers × kinds, n_head, block_size, head_dim] each, copied into the request's row
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

ROOT = -1  # the parent key of a prompt's first block


@dataclass(frozen=True)
class PrefixCacheStats:
    hits: int  # prompts that found at least one block
    misses: int
    hit_tokens: int  # prompt tokens taken from the cache instead of computed
    blocks: int
    bytes: int
    budget_bytes: int


class PrefixCache:
    """LRU store of KV blocks of `block_size` tokens; `budget_bytes` bounds the blocks'
    arrays, `token_bytes` is what one position's keys and values take."""

    def __init__(self, block_size: int, budget_bytes: int, token_bytes: int):
        if block_size < 1 or budget_bytes < 0 or token_bytes < 1:
            raise ValueError(
                f"block_size and token_bytes must be ≥ 1 and budget_bytes ≥ 0, got {block_size}, {token_bytes}, "
                f"{budget_bytes}"
            )
        self.block_size, self.budget_bytes = block_size, budget_bytes
        self.block_bytes = block_size * token_bytes
        self._blocks: OrderedDict[tuple[int, tuple[int, ...]], tuple[int, np.ndarray]] = OrderedDict()  # key → (id, kv)
        self._next_id = 0
        self._bytes = 0
        self._lock = threading.Lock()  # engines of several threads share one cache
        self.hits = self.misses = self.hit_tokens = 0

    def _chain(self, ids: Sequence[int], blocks: int) -> list[tuple[tuple[int, tuple[int, ...]], np.ndarray]]:
        """The cached blocks that begin `ids` (at most `blocks`): [(key, kv)] in order."""
        chain, parent = [], ROOT
        for k in range(blocks):
            key = (parent, tuple(ids[k * self.block_size : (k + 1) * self.block_size]))
            if key not in self._blocks:
                break
            parent, kv = self._blocks[key]
            chain.append((key, kv))
        return chain

    def _touch(self, keys: list[tuple[int, tuple[int, ...]]]) -> None:
        """Most recently used, a prefix's first block last: a block is evicted before its parent."""
        for key in reversed(keys):
            self._blocks.move_to_end(key)

    def lookup(self, ids: Sequence[int]) -> list[np.ndarray]:
        """The cached blocks that begin `ids`, in order; at least one token is left to compute,
        since the last prompt position's logits are needed."""
        with self._lock:
            chain = self._chain(ids, (len(ids) - 1) // self.block_size)
            self._touch([key for key, _ in chain])
            self.hits += bool(chain)
            self.misses += not chain
            self.hit_tokens += len(chain) * self.block_size
            return [kv for _, kv in chain]

    def insert(self, ids: Sequence[int], read: Callable[[int, int], np.ndarray]) -> None:
        """Store the full blocks of `ids` not cached yet; `read(start, end)` copies positions of the row."""
        with self._lock:
            self._insert(ids, read)

    def _insert(self, ids: Sequence[int], read: Callable[[int, int], np.ndarray]) -> None:
        blocks = len(ids) // self.block_size
        keys = [key for key, _ in self._chain(ids, blocks)]
        parent = self._blocks[keys[-1]][0] if keys else ROOT
        for k in range(len(keys), blocks):
            if self._bytes + self.block_bytes > self.budget_bytes and not self._evictable(keys):
                break  # checked before copying the block out of the row
            kv = read(k * self.block_size, (k + 1) * self.block_size)
            assert kv.nbytes == self.block_bytes, f"a block of {kv.nbytes} bytes, {self.block_bytes} expected"
            key = (parent, tuple(ids[k * self.block_size : (k + 1) * self.block_size]))
            self._blocks[key] = (self._next_id, kv)
            parent, self._next_id = self._next_id, self._next_id + 1
            self._bytes += kv.nbytes
            keys.append(key)
            self._touch(keys)
            self._evict()

    def _evictable(self, keep: list) -> bool:
        """Whether dropping blocks outside `keep` frees room for one more block."""
        return (len(keep) + 1) * self.block_bytes <= self.budget_bytes

    def _evict(self) -> None:
        while self._bytes > self.budget_bytes and self._blocks:
            _, (_, kv) = self._blocks.popitem(last=False)
            self._bytes -= kv.nbytes

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            self.hits, self.misses, self.hit_tokens, len(self._blocks), self._bytes, self.budget_bytes
        )
