"""L1: chunks of versions in RAM, in an ``lru-dict`` bounded by a byte budget.

Keys are ``(sha256, chunk_index)``; values are the chunk's bytes (immutable, so any reader
may share them). Touched only from the trio loop: no lock.
"""

from __future__ import annotations

from lru import LRU


class ChunkCache:
    """An LRU of immutable chunks whose total size stays within ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.hits = 0
        self.misses = 0
        # lru-dict bounds by count; the byte budget is enforced below, so the count is
        # only a safety net large enough never to be the limit that matters.
        self._lru: LRU = LRU(max(16, budget // 4096 + 16))

    def get(self, key: tuple[str, int]) -> bytes | None:
        data = self._lru.get(key)
        if data is None:
            self.misses += 1
        else:
            self.hits += 1
        return data

    def put(self, key: tuple[str, int], data: bytes) -> None:
        if len(data) > self.budget:
            return
        old = self._lru.get(key)
        if old is not None:
            self.used -= len(old)
        self._lru[key] = data
        self.used += len(data)
        while self.used > self.budget and len(self._lru):
            # peek + del, not popitem(): lru-dict 1.4's popitem leaks a reference to
            # every value it returns, which kept each evicted chunk alive forever.
            oldest, evicted = self._lru.peek_last_item()
            del self._lru[oldest]
            self.used -= len(evicted)

    def drop_blob(self, sha: str) -> None:
        """Forget every chunk of one blob (it was evicted, deleted or found corrupt)."""
        for key in [k for k in self._lru.keys() if k[0] == sha]:
            self.used -= len(self._lru.pop(key))

    def holds_blob(self, sha: str) -> bool:
        return any(k[0] == sha for k in self._lru.keys())

    def __len__(self) -> int:
        return len(self._lru)
