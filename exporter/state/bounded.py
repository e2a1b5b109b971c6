"""The one bounded map: least-recently-used order, a size cap and a time-to-live."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


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
        # key -> [last touched, value]; a list so a touch updates in place.
        self._data: OrderedDict[K, list[float | V]] = OrderedDict()
        self.evicted_capacity = 0
        self.evicted_ttl = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, now: float) -> V | None:
        """The value under ``key``, marking it used at ``now``; None if absent."""
        entry = self._data.get(key)
        if entry is None:
            return None
        entry[0] = now
        self._data.move_to_end(key)
        return entry[1]  # type: ignore[return-value]  # slot 1 always holds the value

    def peek(self, key: K) -> V | None:
        """The value under ``key`` without touching it."""
        entry = self._data.get(key)
        return None if entry is None else entry[1]  # type: ignore[return-value]  # see get()

    def put(self, key: K, value: V, now: float) -> None:
        """Insert or replace ``key``, evicting the least recently used entry when full."""
        self._data[key] = [now, value]
        self._data.move_to_end(key)
        while len(self._data) > self._max_size:
            old_key, old = self._data.popitem(last=False)
            self.evicted_capacity += 1
            if self._on_evict is not None:
                self._on_evict(old_key, old[1])  # type: ignore[arg-type]  # see get()

    def expire(self, now: float) -> None:
        """Evict every entry untouched for longer than the TTL."""
        deadline = now - self._ttl
        data = self._data
        while data:
            key, entry = next(iter(data.items()))
            if entry[0] > deadline:  # type: ignore[operator]  # slot 0 always holds a float
                return
            del data[key]
            self.evicted_ttl += 1
            if self._on_evict is not None:
                self._on_evict(key, entry[1])  # type: ignore[arg-type]  # see get()
