"""
Large payload buffers, reused instead of allocated per message.

C{bytearray(n)} zero-fills its C{n} bytes, and every large DMSG or NBD
payload was received into (or read from disk into) a fresh one: on 1 MiB
writes that memset was 8% of the exporter's CPU and 4.5% of the
importer's (perf), for bytes that are overwritten at once.

A L{BufferPool} hands out a buffer it made before once nothing else
refers to it any more.  It decides by the buffer's reference count: a
memoryview of it held anywhere (a message's payload, a chunk waiting
for its reply, a pending send, a pool thread's write) keeps it out of
use, so nothing can be recycled under a reader and nobody has to give a
buffer back.  The counting is only safe from one thread: use a pool from
the reactor thread alone.

A reused buffer holds old bytes: the taker must overwrite all of it (a
receive that fills it, a read whose short end is zeroed) before anyone
reads it.
"""

from __future__ import annotations

import sys
from typing import Dict, List

#: Smaller buffers are not worth pooling: allocate them.
POOL_MIN = 64 << 10
#: Buffers of one size kept for reuse.
POOL_KEEP = 16
#: Bytes kept for reuse, all sizes together.
POOL_BYTES = 32 << 20

_refs = sys.getrefcount
# The list's reference, the loop variable's and getrefcount's argument.
_FREE = 3


class BufferPool:
    """
    Buffers of the sizes asked for recently, reused once unreferenced.

    @ivar reused: buffers handed out again (for tests and stats).
    @ivar made: buffers allocated.
    """

    def __init__(self, keep: int = POOL_KEEP, budget: int = POOL_BYTES,
                 minimum: int = POOL_MIN) -> None:
        self.keep = keep
        self.budget = budget
        self.minimum = minimum
        self._bySize: Dict[int, List[bytearray]] = {}
        self._held = 0
        self.reused = 0
        self.made = 0

    def take(self, size: int) -> bytearray:
        """
        A buffer of exactly C{size} bytes, of unspecified content (zeroed
        only if new).
        """
        if size < self.minimum or size > self.budget >> 2:
            return bytearray(size)
        bufs = self._bySize.get(size)
        if bufs is not None:
            for b in bufs:
                if _refs(b) == _FREE:
                    self.reused += 1
                    return b
        else:
            bufs = self._bySize[size] = []
        buf = bytearray(size)
        self.made += 1
        if len(bufs) < self.keep:
            if self._held + size > self.budget:
                self._shed(size)
            bufs.append(buf)
            self._held += size
        return buf

    @property
    def held(self) -> int:
        """Bytes the pool keeps (in use or free)."""
        return self._held

    def _shed(self, size: int) -> None:
        # Forget the other sizes, first asked for first (dict order),
        # until C{size} more bytes fit, then this size's own buffers;
        # buffers in use live on with their users.
        for other in list(self._bySize):
            if self._held + size <= self.budget:
                return
            if other != size:
                self._held -= other * len(self._bySize.pop(other))
        bufs = self._bySize[size]
        while bufs and self._held + size > self.budget:
            bufs.pop(0)
            self._held -= size

    def clear(self) -> None:
        """Forget every buffer (in-use ones live on with their users)."""
        self._bySize.clear()
        self._held = 0


#: The reactor thread's pool.
pool = BufferPool()
take = pool.take
