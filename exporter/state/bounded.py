"""The one bounded map: least-recently-used order, a size cap and a time-to-live."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Touched(Protocol):
    """A value that carries when it was last used (kept on the value: one object less each)."""

    touched: float


K = TypeVar("K")
V = TypeVar("V", bound=Touched)


class BoundedMap(Generic[K, V]):
    """Map whose entries leave when it is full (oldest first) or when unused for ``ttl`` seconds.

    Every eviction is counted by reason and handed to ``on_evict`` so that nothing held in an
    entry is lost silently.
    """

    def __init__(
        self,
        *,
        max_size: int,
        ttl: float,
        on_evict: Callable[[K, V], None] | None = None,
    ) -> None:
        self._max_size = max_size
        self._ttl = ttl
        self._on_evict = on_evict
        self._data: OrderedDict[K, V] = OrderedDict()
        self.evicted_capacity = 0
        self.evicted_ttl = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, now: float) -> V | None:
        """The value under ``key``, marking it used at ``now``; None if absent."""
        value = self._data.get(key)
        if value is None:
            return None
        value.touched = now
        self._data.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """The value under ``key`` without touching it."""
        return self._data.get(key)

    def put(self, key: K, value: V, now: float) -> None:
        """Insert or replace ``key``, evicting the least recently used entry when full."""
        value.touched = now
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._max_size:
            old_key, old = self._data.popitem(last=False)
            self.evicted_capacity += 1
            if self._on_evict is not None:
                self._on_evict(old_key, old)

    def expire(self, now: float) -> None:
        """Evict every entry untouched for longer than the TTL."""
        deadline = now - self._ttl
        data = self._data
        while data:
            key, value = next(iter(data.items()))
            if value.touched > deadline:
                return
            del data[key]
            self.evicted_ttl += 1
            if self._on_evict is not None:
                self._on_evict(key, value)
