"""
The daemon-wide NBD memory budget: request and reply bytes held for NBD
clients, over every connection of every NBD listener (C{--nbd-memory},
default 256 MiB).

Each connection reports what it holds: READ/WRITE bytes accepted and not
answered (WRITE payloads, READ buffers being filled), plus reply bytes
written while its transport reported a full send buffer (a client that
does not read).  Per connection that is already bounded (32 MiB in
flight, 8 MiB buffered); the budget bounds the sum, which otherwise grew
with the number of clients (issue 18: 8 non-reading clients took an
importer from 102 to 343 MiB).

Past three quarters of the budget, reading stops on the connections
holding most, largest first, until those still reading hold no more
than the room left under the budget: the paused ones hold what they
hold, the others may at most fill the rest, so the sum passes the budget
by at most one request (C{maxPayload}) per connection added at once.
With no room left, every connection holding anything is paused.  A
paused connection reads again once it holds nothing (it has taken its
replies), or when the sum is back under half the budget.  A client that
never reads thus stays paused with what it holds; the others go on, at
worst one request at a time each.
"""

from __future__ import annotations

from typing import Any, Set

DEFAULT_BUDGET = 256 << 20
#: The smallest budget accepted: one largest request and its reply.
MIN_BUDGET = 1 << 20


class MemoryBudget:
    """
    Bytes held for NBD clients, and who is paused for it.

    A connection is C{add}ed when made and C{remove}d when lost; it has
    an int attribute C{budgetHeld} (what it holds, kept here) and the
    methods C{budgetPaused()} and C{budgetResumed()}.  L{change} runs
    twice per request, so it only adds unless the budget is passed.

    @ivar limit: the budget in bytes.
    @ivar held: bytes held by every connection together.
    @ivar peak: the largest C{held} seen.
    @ivar pauses: times a connection was paused for the budget.
    """

    def __init__(self, limit: int = DEFAULT_BUDGET) -> None:
        if limit < MIN_BUDGET:
            raise ValueError("NBD memory budget %d below %d bytes" % (
                limit, MIN_BUDGET))
        self.limit = limit
        self._high = limit * 3 // 4     # shed above this
        self._low = limit // 2          # resume everyone below this
        self.held = 0
        self.peak = 0
        self.pauses = 0
        self._conns: Set[Any] = set()
        self._paused: Set[Any] = set()
        self._readingHeld = 0      # held by connections not paused

    @property
    def paused(self) -> int:
        """Connections not read from because of the budget."""
        return len(self._paused)

    def add(self, conn: Any) -> None:
        """A new connection (holding nothing yet)."""
        conn.budgetHeld = 0
        self._conns.add(conn)

    def remove(self, conn: Any) -> None:
        """C{conn} is gone: whatever it held is freed."""
        if conn not in self._conns:
            return
        n = conn.budgetHeld
        if n:
            self.change(conn, -n)
        self._conns.discard(conn)
        self._paused.discard(conn)

    def change(self, conn: Any, delta: int) -> None:
        """C{conn} holds C{delta} bytes more (or fewer, if negative)."""
        n = conn.budgetHeld = conn.budgetHeld + delta
        held = self.held = self.held + delta
        paused = self._paused
        if delta > 0:
            if conn not in paused:
                self._readingHeld += delta
            if held > self._high:
                if held > self.peak:
                    self.peak = held
                if self._readingHeld > self.limit - held:
                    self._shed()
            elif held > self.peak:
                self.peak = held
        else:
            if not paused:
                self._readingHeld += delta
            elif conn not in paused:
                self._readingHeld += delta
                if held <= self._low:
                    self._resumeAll()
            elif held <= self._low:
                self._resumeAll()
            elif n <= 0:
                self._resume(conn)

    def _shed(self) -> None:
        # Rare (only past three quarters of the budget): sorting is fine.
        paused = self._paused
        room = self.limit - self.held
        for conn in sorted(self._conns, key=lambda c: -c.budgetHeld):
            if self._readingHeld <= room:
                break
            n = conn.budgetHeld
            if conn in paused or n <= 0:
                continue
            paused.add(conn)
            self._readingHeld -= n
            self.pauses += 1
            conn.budgetPaused()

    def _resume(self, conn: Any) -> None:
        if conn not in self._paused:
            return       # resumed meanwhile (a resumed one read more)
        self._paused.discard(conn)
        self._readingHeld += conn.budgetHeld
        conn.budgetResumed()

    def _resumeAll(self) -> None:
        for conn in list(self._paused):
            self._resume(conn)
