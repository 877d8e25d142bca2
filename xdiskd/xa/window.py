"""
An xa unit's window of writes that are acknowledged but not yet durable,
and their replay when the exporter that acknowledged them may have lost
them (issue 16).

NBD's promise is that a FLUSH that succeeds covers every write completed
before it was sent.  An exporter acknowledges a write once it is in its
page cache; a host crash or power loss, or a failover to another node of
the same shared disk, loses it.  So the unit keeps, per open:

  - every WRITE (range and data) and FREEBLKS (range only; NBD TRIM and
    WRITE_ZEROES end up as one of the two) the exporter acknowledged
    since the last FLUSH that completed on the current open;
  - a completed FLUSH releases exactly what the unit had seen
    acknowledged when it sent that FLUSH (L{UnflushedWindow.issued}
    records the mark): the exporter acknowledged those writes, after
    they were in its page cache, before it received the FLUSH on the
    same open, so the FLUSH's fdatasync (or DragonFly's cache flush)
    covers them.  An NBD FUA write is a write then a flush
    (nbd.commands), so it is released the same way.  A caller's FLUSH
    is still a barrier in the unit (issued once everything numbered
    before it finished, NBD's promise and more); the window's own FLUSH
    is not: it goes out at once, with writes in flight, and covers what
    was acknowledged before it;
  - the window is bounded (C{limit} bytes of data plus L{ENTRY_COST} per
    entry).  At half the limit the unit sends its own FLUSH, one at a
    time, while writes keep completing into the other half; a completion that finds the window full is held back (not
    reported to the caller, a FLUSH is on its way) and reported once a
    flush made room.  A client that never flushes thus runs at full
    speed while a FLUSH of half a window takes less time than writing
    the other half, and at the speed of the flushes otherwise, in
    bounded memory: the window plus the held completions' buffers,
    which the unit's congestion limit (32 MiB of requests accepted)
    bounds.

When an open was lost and the new open is on a path whose exporter
states a different incarnation (L{xdiskd.export.incarnation}) than the
one the window's writes were acknowledged on, or either states none (a
DragonFly exporter), the window is lost data:

  - C{replay} (default): before any queued or new I/O, the retained
    writes are issued again in their original order, then a FLUSH; only
    when that FLUSH succeeded is the queue released.  A FLUSH that was in
    flight when the open was lost was re-queued after them, so it
    succeeds only once the replayed data is on the store.  The replay's
    chunks are put at the head of the queue with sequence numbers below
    every queued chunk, and the unit issues nothing numbered above
    L{UnflushedWindow.gate} until the replay's FLUSH completed.
  - C{fail}: the held completions and the next FLUSH fail with EIO
    (L{UnflushedLostError}); the client is told, it never believes.

Same incarnation: the writes are still in that page cache and nothing is
replayed.  Multi-writer caveat: a replay rewrites this importer's writes;
with two importers writing one disk it can overwrite the other's newer
data (README).

Payload buffers are retained without copying.  Every writer hands the
unit a buffer it never changes afterwards (L{IBlockDevice.write}): NBD
payloads are fresh C{bytes} or buffers of L{xdiskd.buffers}' pool, which
hands a buffer out again only when nothing refers to it (our reference
keeps it out of use); read-modify-write buffers are private to one
request, and WRITE_ZEROES writes views of one constant zero buffer.
"""

from __future__ import annotations

import weakref
from collections import deque
from time import perf_counter
from typing import Any, Deque, Dict, List, Optional, Tuple

from twisted.logger import Logger
from twisted.python.failure import Failure

from xdiskd.dmsg import constants as C
from xdiskd.errors import UnflushedLostError
from xdiskd.xa.request import Chunk, Request

DEFAULT_WINDOW = 64 << 20
#: What the windows of all units may hold together (--unflushed-memory).
DEFAULT_BUDGET = 256 << 20
#: What a window may always hold, whatever the others hold: a unit
#: keeps writing (a FLUSH per MiB at worst) while stalled units' windows
#: fill the daemon's budget.
FLOOR = 1 << 20
#: Bytes charged per retained write or trim besides its data (the entry
#: and its bookkeeping), so many tiny trims are bounded too.
ENTRY_COST = 128
REPLAY = "replay"
FAIL = "fail"
MODES = (REPLAY, FAIL)

_NEVER = float("inf")

# (seq, cmd, offset, length, data): an acknowledged write or trim.
Entry = Tuple[int, int, int, int, Any]
# What a FLUSH covers: (entries ever added, completions ever held) when
# it was sent.
Mark = Tuple[int, int]
#: Marks of flushes no longer in flight are pruned beyond this many (a
#: flush that failed leaves its mark behind).
MARKS_MAX = 128


class WindowBudget:
    """
    The bytes all units' windows hold together, bounded daemon-wide
    (C{--unflushed-memory}): N units written without flushes would
    otherwise hold N windows.

    Past half of it, every window holding over half of L{FLOOR} sends
    its own FLUSH (as past half of its own limit); at the limit, windows
    that hold L{FLOOR} or more hold completions as when they are full
    themselves.  A window below L{FLOOR} is never held for the others, so
    units whose windows cannot drain (no path) slow the others down to a
    FLUSH per MiB at worst, never stop them; memory is bounded by the
    budget plus L{FLOOR} per unit being written.  When the budget drops
    below its limit, the other windows holding completions are told.

    @ivar limit: bytes; 0 means no daemon-wide bound.
    @ivar used: bytes charged by all windows.
    """

    def __init__(self, limit: int = 0) -> None:
        if limit < 0:
            raise ValueError("unflushed memory of %d bytes" % (limit,))
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.presses = 0
        self.windows: "weakref.WeakSet[UnflushedWindow]" = weakref.WeakSet()

    def full(self) -> bool:
        return bool(self.limit) and self.used >= self.limit

    def half(self) -> bool:
        return bool(self.limit) and self.used * 2 >= self.limit

    def charge(self, window: "UnflushedWindow", n: int) -> None:
        """C{window} holds C{n} bytes more (less, if negative)."""
        before = self.used
        self.used += n
        if self.used > self.peak:
            self.peak = self.used
        if not self.limit:
            return
        half = self.limit / 2
        if n > 0 and before < half <= self.used:
            self.presses += 1
            for w in list(self.windows):
                if w is not window and w._half():
                    w._flushSoon()
        elif n < 0 and before >= self.limit > self.used:
            for w in list(self.windows):
                if w is not window and w.held:
                    w._fill()


class UnflushedWindow:
    """
    One unit's unflushed writes (see the module docstring).

    @ivar entries: acknowledged entries not yet released, in completion
        order (a flush releases a prefix: see L{_release}).
    @ivar held: completed chunks whose completion waits for room, in
        completion order.
    @ivar limit: bytes the window holds at most; at half of it the window
        sends its own FLUSH.
    @ivar inUse: bytes charged for C{entries}.
    @ivar home: the incarnation every entry is held in (0: unknown).
    @ivar current: the incarnation of the current open (0: none stated).
    @ivar lost: the open that acknowledged the entries was lost and no
        open since has decided what that means.
    @ivar gate: the unit issues no chunk numbered above this (a replay is
        running); infinity otherwise.
    """

    log = Logger()

    def __init__(self, unit: Any, limit: int = DEFAULT_WINDOW,
                 mode: str = REPLAY,
                 budget: Optional[WindowBudget] = None) -> None:
        if mode not in MODES:
            raise ValueError("unflushed mode %r not in %s" % (
                mode, "|".join(MODES)))
        if limit < 0:
            raise ValueError("window of %d bytes" % (limit,))
        self.unit = unit
        self.limit = limit
        self.mode = mode
        self.entries: Deque[Entry] = deque()
        self.held: List[Chunk] = []
        self.inUse = 0
        self._floor = min(limit, FLOOR)
        self.budget = WindowBudget()
        self.join(budget or self.budget)
        # Entries ever added and completions ever held: entries[i] is
        # number _added - len(entries) + 1 + i (removals are prefixes).
        self._added = 0
        self._heldCount = 0
        self._marks: Dict[Chunk, Mark] = {}
        self.home = 0
        self.current = 0
        self.lost = False
        self.gate: float = _NEVER
        self._flushing = False
        self._flushFailures = 0
        self._failNextFlush = False
        self._replay: Optional[Dict[Request, None]] = None
        self._replayFlush: Optional[Request] = None
        self._replayBytes = 0
        self._replayStarted = 0.0
        self._replayFailed: Optional[Failure] = None
        # Counters (snapshot, metrics, xdisk list).
        self.peak = 0
        self.replays = 0
        self.replayedWrites = 0
        self.replayedBytes = 0
        self.lastReplaySeconds = 0.0
        self.maxReplaySeconds = 0.0
        self.autoFlushes = 0
        self.lostWindows = 0

    def join(self, budget: WindowBudget) -> None:
        """Count this window against C{budget} (the daemon's)."""
        self.budget.windows.discard(self)
        self.budget.charge(self, -self.inUse)
        self.budget = budget
        budget.windows.add(self)
        budget.charge(self, self.inUse)

    def _charge(self, n: int) -> None:
        self.inUse += n
        self.budget.charge(self, n)

    def _full(self) -> bool:
        """No room: this window's limit, or the daemon's (past FLOOR)."""
        return self.inUse >= self.limit or (
            self.budget.full() and self.inUse >= self._floor)

    def _half(self) -> bool:
        """Time for our own FLUSH (while none is in flight)."""
        return bool(self.entries) and (
            self.inUse * 2 >= self.limit
            or (self.budget.half() and self.inUse * 2 >= self._floor))

    # ---------------------------------------------------------------
    # Completions (XAUnit._ioMessage)

    def completed(self, chunk: Chunk) -> bool:
        """
        The exporter acknowledged C{chunk} (a WRITE, FREEBLKS or FLUSH).

        @return: True if the window took over reporting its completion
            (held for room, or a flush failed for lost data); False if
            the unit reports it as usual.
        """
        if chunk.cmd == C.BLK_FLUSH:
            return self._flushed(chunk)
        if chunk.request.probe or self._replay is not None:
            return False        # no open to hold it for / it is a replay
        if not self.entries:
            self.home = self.current
        elif self.home != self.current:
            self.home = 0
        if self._full() or self.held:
            # Full: the exporter has it, the caller hears of it once a
            # flush made room (the chunk keeps its data meanwhile).
            self.held.append(chunk)
            self._heldCount += 1
            self._flushSoon()
            return True
        self._add(chunk)
        if self._half() and not self._flushing:
            self._flushSoon()      # early: half the window is in use
        return False

    def issued(self, chunk: Chunk) -> None:
        """The unit sent the FLUSH C{chunk}: it covers what was
        acknowledged so far (the latest send counts, after a re-queue)."""
        marks = self._marks
        if len(marks) >= MARKS_MAX:
            for c in [c for c in marks if c.txn is None]:
                del marks[c]
        marks[chunk] = (self._added, self._heldCount)

    def barrier(self, chunk: Chunk) -> bool:
        """Whether the FLUSH C{chunk} waits for everything numbered
        before it to finish: every flush but the window's own."""
        return chunk.request.done != self._autoFlushed

    def _add(self, chunk: Chunk) -> None:
        if chunk.cmd == C.BLK_WRITE:
            self.entries.append((chunk.seq, C.BLK_WRITE, chunk.offset,
                                 chunk.length, chunk.data))
            self._charge(ENTRY_COST + chunk.length)
        else:
            self.entries.append((chunk.seq, chunk.cmd, chunk.offset,
                                 chunk.length, None))
            self._charge(ENTRY_COST)
        self._added += 1
        if self.inUse > self.peak:
            self.peak = self.inUse

    def _flushed(self, chunk: Chunk) -> bool:
        mark = self._marks.pop(chunk, None)
        if self._failNextFlush and self._clientFlush(chunk):
            self._failNextFlush = False
            chunk.request.chunkFailed(chunk, Failure(UnflushedLostError(
                "%s: writes acknowledged before this flush were lost with "
                "the exporter (--unflushed fail)" % (self.unit.name,))))
            return True
        if self._replay is None and mark is not None:
            self._release(mark)
        return False

    def _clientFlush(self, chunk: Chunk) -> bool:
        """C{chunk} is a flush a caller asked for (not one of ours)."""
        req = chunk.request
        return not req.probe and req.done != self._autoFlushed and (
            req is not self._replayFlush)

    def _release(self, mark: Mark) -> None:
        """A flush sent at C{mark} completed: release what it covers."""
        added, heldCount = mark
        entries = self.entries
        freed = 0
        # Entries are added in completion order and only ever removed
        # from the front (or all at once): those the flush covers are
        # the oldest len(entries) - (added since the mark).
        n = len(entries) - (self._added - added)
        while n > 0:
            e = entries.popleft()
            freed += ENTRY_COST + (e[3] if e[4] is not None else 0)
            n -= 1
        self._charge(-freed)
        if self.held:
            self._admit(heldCount)

    def _admit(self, heldCount: int) -> None:
        """Report held completions: those the flush sent when
        C{heldCount} completions had been held covered, then the rest
        while the window has room for them."""
        held = self.held
        covered = max(0, len(held) - (self._heldCount - heldCount))
        ready = held[:covered]
        i = covered
        while i < len(held) and not self._full():
            self._add(held[i])
            ready.append(held[i])
            i += 1
        self.held = held[i:]
        if self._half() or self.held:
            self._flushSoon()
        for chunk in ready:
            chunk.request.chunkDone(chunk, None)

    def _fill(self) -> None:
        """The daemon's budget has room again: report held completions
        while there is room (L{WindowBudget.charge})."""
        held = self.held
        i = 0
        while i < len(held) and not self._full():
            self._add(held[i])
            i += 1
        ready, self.held = held[:i], held[i:]
        if self._half() and not self._flushing:
            self._flushSoon()
        for chunk in ready:
            chunk.request.chunkDone(chunk, None)

    def _flushSoon(self) -> None:
        """Send our own FLUSH (one at a time) to make room."""
        if self._flushing:
            return
        self._flushing = True
        self.autoFlushes += 1
        self.unit._enqueue(C.BLK_FLUSH, 0, 0, None, self._autoFlushed)

    def _autoFlushed(self, _: Any, failure: Optional[Failure]) -> None:
        self._flushing = False
        if failure is None:
            if self._half() or self.held:
                # More came in meanwhile than a flush may leave.
                self._flushSoon()
            return
        if self.held:
            # The store cannot make them durable.  The writes themselves
            # succeeded; their callers get on, and the client's own next
            # FLUSH fails the same way.  The window stays full, so each
            # write waits for one more attempt: bounded, never silent.
            self._flushFailures += 1
            n = self._flushFailures
            if n == 1 or n % 100 == 0:
                self.log.warn("{unit}: flush to make room in the unflushed "
                              "window failed ({n} so far): {e}",
                              unit=self.unit.name, n=n,
                              e=failure.getErrorMessage())
            held, self.held = self.held, []
            for chunk in held:
                chunk.request.chunkDone(chunk, None)

    # ---------------------------------------------------------------
    # Opens (XAUnit._openMessage, close, destroy)

    def openLost(self) -> None:
        """The open was lost (its I/O already re-queued, §6.8)."""
        self.lost = True
        if self._replay is not None:
            # Start again from the window on the next open.
            self._stopReplay()

    def opened(self, incarnation: int, via: str) -> bool:
        """
        An open succeeded on a path stating C{incarnation} (0: none).

        @return: True if a replay was put at the head of the queue.
        """
        self.current = incarnation
        lost, self.lost = self.lost, False
        if not lost or not (self.entries or self.held):
            return False
        n = len(self.entries) + len(self.held)
        if self.home and self.home == incarnation:
            self.log.info("{unit}: re-opened via {link} on the same "
                          "exporter incarnation {inc:016x}: {n} unflushed "
                          "writes are in its page cache, nothing replayed",
                          unit=self.unit.name, link=via, inc=incarnation,
                          n=n)
            return False
        if self.mode == FAIL:
            self._lose("--unflushed fail", via)
            return False
        self._startReplay(via)
        return True

    def closed(self) -> None:
        """The last close: nothing is kept for a later open."""
        if self._replay is not None:
            self._stopReplay()
        lost = self.lost
        held, self.held = self.held, []
        self.entries = deque()
        self._charge(-self.inUse)
        self.lost = False
        self._failNextFlush = False
        for chunk in held:
            if lost:
                chunk.request.chunkFailed(chunk, Failure(UnflushedLostError(
                    "%s closed with unflushed writes lost" % (
                        self.unit.name,))))
            else:
                chunk.request.chunkDone(chunk, None)

    def _lose(self, why: str, via: str) -> None:
        """The window's writes are lost: tell the client (EIO)."""
        unit = self.unit
        held, self.held = self.held, []
        n = len(self.entries) + len(held)
        size = sum(e[3] for e in self.entries if e[4] is not None) + sum(
            c.length for c in held if c.cmd == C.BLK_WRITE)
        self.entries = deque()
        self._charge(-self.inUse)
        self.lostWindows += 1
        flushes = [c for c in unit.queue
                   if c.cmd == C.BLK_FLUSH and self._clientFlush(c)]
        if flushes:
            failing = set(map(id, flushes))
            unit.queue = deque(c for c in unit.queue
                               if id(c) not in failing)
        else:
            self._failNextFlush = True
        self.log.warn("{unit}: open via {link} does not hold {n} unflushed "
                      "writes ({size} bytes) of the lost open; {why}: "
                      "failing {h} held writes and the next flush with EIO",
                      unit=unit.name, link=via, n=n, size=size, why=why,
                      h=len(held))
        error = UnflushedLostError(
            "%s: %d unflushed writes (%d bytes) lost with the exporter" % (
                unit.name, n, size))
        for chunk in held + flushes:
            chunk.request.chunkFailed(chunk, Failure(error))

    # ---------------------------------------------------------------
    # Replay

    def _startReplay(self, via: str) -> None:
        unit = self.unit
        items = sorted(list(self.entries) + [
            (c.seq, c.cmd, c.offset, c.length,
             c.data if c.cmd == C.BLK_WRITE else None) for c in self.held],
            key=lambda e: e[0])
        queue = unit.queue
        low = queue[0].seq if queue else unit._seq + 1
        base = low - len(items) - 1
        replay: Dict[Request, None] = {}
        chunks: List[Chunk] = []
        size = 0
        for i, (_, cmd, offset, length, data) in enumerate(items):
            if data is not None:
                size += length
            req = self._internal(cmd, offset, length, data, base + i)
            replay[req] = None
            chunks.extend(req.chunks)
        flush = self._internal(C.BLK_FLUSH, 0, 0, None, base + len(items))
        chunks.extend(flush.chunks)
        replay[flush] = None
        queue.extendleft(reversed(chunks))
        self._replay = replay
        self._replayFlush = flush
        self._replayBytes = size
        self._replayFailed = None
        self._replayStarted = perf_counter()
        self.gate = base + len(items)
        self.log.info("{unit}: open lost with {n} unflushed writes ({size} "
                      "bytes) the exporter via {link} may not hold "
                      "(incarnation {old:016x} -> {new:016x}); replaying "
                      "them before any other I/O", unit=unit.name,
                      n=len(items), size=size, link=via, old=self.home,
                      new=self.current)

    def _internal(self, cmd: int, offset: int, length: int, data: Any,
                  seq: int) -> Request:
        """A request of the unit's own, numbered C{seq}, with the
        bookkeeping XAUnit._enqueue does (its end undoes it)."""
        unit = self.unit
        req = Request(unit, cmd, offset, length, False, self._replayed)
        req.started = perf_counter()
        unit.requests[req] = None
        if cmd == C.BLK_WRITE:
            unit.bytesQueued += length
        unit.stats.start(cmd)
        for chunk in req.split(data, max(length, 1)):
            chunk.seq = seq
        return req

    def _replayed(self, _: Any, failure: Optional[Failure]) -> None:
        """One replay request finished (the flush comes last)."""
        if failure is not None and self._replayFailed is None:
            self._replayFailed = failure
        if self._replay is None or any(
                not r.finished for r in self._replay):
            return
        self._replay = None
        self._replayFlush = None
        self.gate = _NEVER
        n = len(self.entries) + len(self.held)
        took = perf_counter() - self._replayStarted
        if self._replayFailed is not None:
            self._lose("replay failed (%s)" % (
                self._replayFailed.getErrorMessage(),), "the new open")
        else:
            self.replays += 1
            self.replayedWrites += n
            self.replayedBytes += self._replayBytes
            self.lastReplaySeconds = took
            self.maxReplaySeconds = max(self.maxReplaySeconds, took)
            self.log.info("{unit}: replayed {n} unflushed writes ({size} "
                          "bytes) and flushed in {t:.3f}s; releasing the "
                          "queue", unit=self.unit.name, n=n,
                          size=self._replayBytes, t=took)
            held, self.held = self.held, []
            self.entries = deque()
            self._charge(-self.inUse)
            for chunk in held:
                chunk.request.chunkDone(chunk, None)
        self.unit._kick()

    def _stopReplay(self) -> None:
        """Withdraw the replay's chunks (the open carrying it is gone)."""
        replay, self._replay = self._replay, None
        self._replayFlush = None
        self.gate = _NEVER
        for req in replay or ():
            if not req.finished:
                req.cancelled = True
                self.unit._cancel(req)

    # ---------------------------------------------------------------

    def snapshot(self) -> Dict[str, Any]:
        return dict(limit=self.limit, mode=self.mode, inUse=self.inUse,
                    peak=self.peak, entries=len(self.entries),
                    held=len(self.held), lost=self.lost,
                    replaying=self._replay is not None,
                    replays=self.replays,
                    replayedWrites=self.replayedWrites,
                    replayedBytes=self.replayedBytes,
                    lastReplaySeconds=self.lastReplaySeconds,
                    maxReplaySeconds=self.maxReplaySeconds,
                    autoFlushes=self.autoFlushes,
                    lostWindows=self.lostWindows,
                    incarnation="%016x" % (self.current,))
