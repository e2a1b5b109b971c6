"""Unit tests of the bounded LRU + TTL map (exporter/state/bounded.py)."""

from __future__ import annotations

import pytest

from exporter.state.bounded import BoundedMap


class Item:
    """A value as the map wants it: carrying when it was last used."""

    __slots__ = ("touched", "value")

    def __init__(self, value: int) -> None:
        self.value = value
        self.touched = 0.0


class Ints:
    """The map under test, seen as holding plain ints (wrapped in Items inside)."""

    def __init__(self, inner: BoundedMap[str, Item]) -> None:
        self.inner = inner

    def put(self, key: str, value: int, now: float) -> None:
        self.inner.put(key, Item(value), now)

    def get(self, key: str, now: float) -> int | None:
        item = self.inner.get(key, now)
        return None if item is None else item.value

    def peek(self, key: str) -> int | None:
        item = self.inner.peek(key)
        return None if item is None else item.value

    def expire(self, now: float) -> None:
        self.inner.expire(now)

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def evicted_capacity(self) -> int:
        return self.inner.evicted_capacity

    @property
    def evicted_ttl(self) -> int:
        return self.inner.evicted_ttl


def make(max_size: int = 3, ttl: float = 10.0) -> tuple[Ints, list[tuple[str, int]]]:
    evicted: list[tuple[str, int]] = []
    bounded: BoundedMap[str, Item] = BoundedMap(
        max_size=max_size, ttl=ttl, on_evict=lambda k, v: evicted.append((k, v.value))
    )
    return Ints(bounded), evicted


def test_put_get_peek() -> None:
    """put stores, get and peek return the value, absent keys give None."""
    bounded, evicted = make()
    bounded.put("a", 1, 0.0)
    assert bounded.get("a", 1.0) == 1
    assert bounded.peek("a") == 1
    assert bounded.get("b", 1.0) is None
    assert bounded.peek("b") is None
    assert len(bounded) == 1
    assert evicted == []


def test_capacity_evicts_least_recently_used() -> None:
    """When full, the least recently used entry (get touches) is evicted and reported."""
    bounded, evicted = make(max_size=3)
    for i, key in enumerate("abc"):
        bounded.put(key, i, float(i))
    assert bounded.get("a", 3.0) == 0  # a is now the most recent
    bounded.put("d", 3, 4.0)
    assert evicted == [("b", 1)]
    assert (bounded.evicted_capacity, bounded.evicted_ttl) == (1, 0)
    assert [bounded.peek(k) for k in "abcd"] == [0, None, 2, 3]
    assert len(bounded) == 3


def test_peek_does_not_touch() -> None:
    """peek leaves the LRU order alone: a peeked oldest entry is still evicted first."""
    bounded, evicted = make(max_size=2)
    bounded.put("a", 1, 0.0)
    bounded.put("b", 2, 1.0)
    assert bounded.peek("a") == 1
    bounded.put("c", 3, 2.0)
    assert evicted == [("a", 1)]


def test_replacing_a_key_neither_grows_nor_evicts() -> None:
    """put on an existing key replaces its value, touches it, and evicts nothing."""
    bounded, evicted = make(max_size=2)
    bounded.put("a", 1, 0.0)
    bounded.put("b", 2, 1.0)
    bounded.put("a", 10, 2.0)
    assert (len(bounded), evicted) == (2, [])
    bounded.put("c", 3, 3.0)
    assert evicted == [("b", 2)]
    assert bounded.peek("a") == 10


def test_many_capacity_evictions_in_order() -> None:
    """Each insert past the cap evicts exactly one entry, oldest first."""
    bounded, evicted = make(max_size=2)
    for i in range(5):
        bounded.put(f"k{i}", i, float(i))
    assert evicted == [("k0", 0), ("k1", 1), ("k2", 2)]
    assert bounded.evicted_capacity == 3


@pytest.mark.parametrize(
    ("now", "left"),
    [
        (9.999, ["a", "b", "c"]),  # nothing idle for 10 s yet
        (10.001, ["b", "c"]),  # a last touched at 0
        (15.001, ["c"]),  # b touched at 5; c touched at 12
        (22.001, []),
    ],
)
def test_ttl_expires_idle_entries(now: float, left: list[str]) -> None:
    """expire() evicts entries untouched for the TTL, counts them and reports them."""
    bounded, evicted = make(max_size=10, ttl=10.0)
    bounded.put("a", 1, 0.0)
    bounded.put("c", 3, 1.0)
    bounded.put("b", 2, 5.0)
    assert bounded.get("c", 12.0) == 3  # touched: its TTL restarts
    bounded.expire(now)
    assert [k for k in "abc" if bounded.peek(k) is not None] == left
    assert bounded.evicted_ttl == 3 - len(left)
    assert bounded.evicted_capacity == 0
    assert sorted(k for k, _ in evicted) == sorted(set("abc") - set(left))


def test_without_callback_evictions_are_still_counted() -> None:
    """on_evict is optional; counts are kept either way."""
    bounded: BoundedMap[str, Item] = BoundedMap(max_size=1, ttl=1.0)
    bounded.put("a", Item(1), 0.0)
    bounded.put("b", Item(2), 0.0)
    bounded.expire(5.0)
    assert (bounded.evicted_capacity, bounded.evicted_ttl, len(bounded)) == (1, 1, 0)
