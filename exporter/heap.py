"""The C heap: glibc's allocation policy, fixed at start-up, and freed pages handed back.

Without glibc (musl, macOS) both are no-ops and the libc's own policy applies.
"""

from __future__ import annotations

import ctypes
from typing import Any

# glibc serves allocations above its mmap threshold with mmap and unmaps them when freed, but by
# default raises the threshold to the largest block freed so far: socket reads then come from
# the heap, where small long-lived allocations pin the freed space, and a burst stays resident
# after it is parsed (Redis unbatched bench burst, chunks kept raw: RSS 138 MiB after it,
# against 74 with the threshold fixed).
MMAP_THRESHOLD = 128 * 1024
# By default every thread that allocates gets an arena of its own, which keeps its own freed
# pages (bench bursts: peak RSS 1.5 MiB lower with one). With one arena, threads that allocate
# at the same moment wait for each other, and for a trim; this process's threads mostly take
# turns under the GIL anyway.
ARENAS = 1
# mallopt's parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def configure() -> None:
    """Keep large blocks out of the heap, so they go back to the system when freed, and use
    one arena; before the process starts its threads."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)


def trim() -> None:
    """Hand the heap's free pages back to the system.

    glibc only returns free space at the top of the heap; pages freed between live blocks stay
    resident. Decoding a burst leaves many (messages and event dicts above pymalloc's 512 bytes
    come from malloc), and so does rendering a scrape: trimming as compressed chunks are parsed
    took the RSS after the Redis bench burst from about 86 to 78 MiB. A call costs up to
    a few milliseconds; it releases the GIL, but a thread that allocates meanwhile waits for it,
    so callers trim after a stretch of work, not after every item.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
