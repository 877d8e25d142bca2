"""
I/O requests of an xa unit: what the seed calls a bio, and the split of a
large request into per-tag chunks.

A L{Request} is one user-visible operation with one Deferred.  It is made
of one or more L{Chunk}s, each small enough for one DMSG I/O transaction
(one tag).  The request succeeds when every chunk has; it fails, once
every chunk has finished, with the first chunk failure: a split request
succeeds or fails as a whole.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from xdiskd.dmsg import constants as C
from xdiskd.interfaces import Done

OP_NAMES = {C.BLK_READ: "read", C.BLK_WRITE: "write", C.BLK_FLUSH: "flush",
            C.BLK_FREEBLKS: "trim"}


class Chunk:
    """
    One DMSG I/O: a slice of a L{Request}, or (I/O of one chunk, the
    common case) the request itself: a L{Request} is its own only chunk
    until it is split, so one object goes through the tag pool instead
    of two.

    @ivar request: the request this is a slice of (a L{Request}: itself).
    @ivar seq: position in the unit's issue order; re-queued chunks are
        put back in this order so a flush is never reordered ahead of
        writes issued before it.
    @ivar notBefore: earliest re-issue time after a non-LOSTLINK error.
    """

    __slots__ = ("cmd", "offset", "length", "data", "seq", "retries",
                 "notBefore", "txn", "index", "slot", "probe")

    request: "Request"
    cmd: int
    offset: int
    length: int
    data: Any
    seq: int
    probe: bool     # the request's (see Request), copied for the tag pool
    retries: int
    notBefore: float
    txn: Any
    index: int
    slot: Optional[List[Any]]

    def __lt__(self, other: "Chunk") -> bool:
        return self.seq < other.seq

    def __repr__(self) -> str:
        return "<%s %s seq=%d off=%d len=%d>" % (
            type(self).__name__, OP_NAMES.get(self.cmd, self.cmd), self.seq,
            self.offset, self.length)


class Piece(Chunk):
    """A chunk of a request cut into several (L{Request.split})."""

    __slots__ = ("request",)

    def __init__(self, request: "Request", cmd: int, offset: int,
                 length: int, data: Any, index: int) -> None:
        self.request = request
        self.probe = request.probe
        self.cmd = cmd
        self.offset = offset
        self.length = length
        self.data = data
        self.index = index
        self.seq = 0
        self.retries = 0
        self.notBefore = 0.0
        self.txn = None
        # Where a read's data goes: C{request.parts[index]}, or for a
        # piece of a divided chunk its own list's C{[index]}.
        self.slot = None


class Request(Chunk):
    """
    One operation on a unit: read, write, flush or trim.

    @ivar probe: fail instead of waiting when no path exists (the seed's
        B_FAILONDIS): set for I/O issued while the unit is not open.
    @ivar parts: for a split read, each chunk's data as it arrives; joined
        once at the end (no buffer is held while the request waits).
    @ivar chunks: what goes on the wire: C{[self]}, or the L{Piece}s.
    """

    __slots__ = ("unit", "deferred", "chunks", "pending",
                 "failure", "parts", "result", "started", "cancelled",
                 "scatter", "nested", "done")

    def __init__(self, unit: Any, cmd: int, offset: int, length: int,
                 probe: bool, done: Optional[Done] = None) -> None:
        self.unit = unit
        self.cmd = cmd
        self.offset = offset
        self.length = length
        self.probe = probe
        # Either a Deferred or, for callers that want no Deferred on the
        # hot path, a done(result, failure) callback (reads: the parts).
        self.done = done
        self.deferred: Optional[Deferred] = (
            Deferred(self._cancel) if done is None else None)
        self.chunks: List[Chunk] = _NONE
        self.pending = 0
        self.failure: Optional[Failure] = None
        self.parts: Optional[List[Any]] = None
        self.result: Any = None
        self.started = 0.0
        self.cancelled = False
        self.scatter = done is not None  # the list of parts, not joined
        self.nested = False     # parts holds lists (divided chunks)
        # As its own chunk (see Chunk).
        self.data = None
        self.index = 0
        self.seq = 0
        self.retries = 0
        self.notBefore = 0.0
        self.txn = None
        self.slot = None

    @property
    def request(self) -> "Request":  # type: ignore[override]
        """A request is its own chunk (until it is split)."""
        return self

    @property
    def finished(self) -> bool:
        """Every chunk has completed (or was withdrawn)."""
        return self.pending == 0

    def cancel(self) -> None:
        """
        Give up on a request made with a C{done} callback: chunks not yet
        on the wire are withdrawn, and C{done} is called at once with a
        L{CancelledError} failure (as a cancelled Deferred would fire).
        """
        done = self.done
        if self.cancelled or done is None or not self.pending:
            return
        self.cancelled = True
        self.done = None
        self.unit._cancel(self)
        done(None, Failure(CancelledError()))

    def split(self, data: Any, maxIO: int) -> List[Chunk]:
        """Cut this request into chunks of at most C{maxIO} bytes."""
        cmd = self.cmd
        if cmd == C.BLK_FLUSH or self.length <= maxIO:
            self.data = data
            self.chunks = [self]
        else:
            self.chunks = self._cut(self.offset, self.length, data, maxIO)
            if cmd == C.BLK_READ:
                self.parts = [b""] * len(self.chunks)
        self.pending = len(self.chunks)
        return self.chunks

    def _cut(self, offset: int, length: int, data: Any,
             maxIO: int) -> List[Chunk]:
        """Chunks of at most C{maxIO} bytes over C{length} bytes at
        C{offset}, numbered from 0; C{data} (if any) is cut into views."""
        view = memoryview(data) if data is not None else None
        chunks: List[Chunk] = []
        pos = 0
        while pos < length:
            n = min(maxIO, length - pos)
            chunks.append(Piece(
                self, self.cmd, offset + pos, n,
                view[pos:pos + n] if view is not None else None,
                len(chunks)))
            pos += n
        return chunks

    def divide(self, chunk: Chunk, maxIO: int) -> List[Chunk]:
        """
        Cut C{chunk} (not in flight) into pieces of at most C{maxIO}
        bytes, which replace it: the path it was cut for is gone and the
        one taking over accepts less.  The pieces keep its place in the
        issue order.
        """
        pieces = self._cut(chunk.offset, chunk.length, chunk.data, maxIO)
        for piece in pieces:
            piece.seq = chunk.seq
        if self.cmd == C.BLK_READ:
            slot: List[Any] = [b""] * len(pieces)
            if self.parts is None:
                self.parts = [slot]         # it was the only chunk
            else:
                (chunk.slot if chunk.slot is not None
                 else self.parts)[chunk.index] = slot
            for piece in pieces:
                piece.slot = slot
            self.nested = True
        chunk.data = None
        self.chunks = [c for c in self.chunks if c is not chunk] + pieces
        self.pending += len(pieces) - 1
        return pieces

    def chunkDone(self, chunk: Chunk, data: Any) -> None:
        """A chunk completed; C{data} is its read payload (or None)."""
        if self.cmd == C.BLK_READ:
            n = chunk.length
            have = 0 if data is None else len(data)
            if have > n:
                data = memoryview(data)[:n]
            elif have < n:
                # §8.4: zero-extend short data.
                data = (bytes(data) if have else b"") + bytes(n - have)
            if chunk.slot is not None:
                chunk.slot[chunk.index] = data
            elif self.parts is not None:
                self.parts[chunk.index] = data
            else:
                self.result = data
        self._settle()

    def chunkFailed(self, chunk: Chunk, failure: Failure) -> None:
        if self.failure is None:
            self.failure = failure
        self._settle()

    def _settle(self) -> None:
        self.pending -= 1
        if self.pending:
            return
        self.unit._requestDone(self)
        # Request, chunks and Deferred (its canceller) form reference
        # cycles that only the cyclic GC frees: drop every payload here,
        # or the cycles would hold megabytes until a full collection.
        parts, self.parts = self.parts, None
        if self.nested and parts is not None:
            parts = _flatten(parts)
        result, self.result = self.result, None
        for chunk in self.chunks:
            chunk.data = None
        self.chunks = _NONE
        failure, self.failure = self.failure, None
        if self.cancelled:
            return
        done = self.done
        if done is not None:
            self.done = None
            if failure is not None:
                done(None, failure)
            elif self.cmd == C.BLK_READ:
                done(parts if parts is not None else [result], None)
            else:
                done(None, None)
            return
        assert self.deferred is not None
        if failure is not None:
            self.deferred.errback(failure)
        elif self.cmd == C.BLK_READ:
            if self.scatter:
                self.deferred.callback(parts if parts is not None
                                       else [result])
            else:
                self.deferred.callback(b"".join(parts) if parts is not None
                                       else result)
        else:
            self.deferred.callback(None)

    def _cancel(self, d: Deferred) -> None:
        # Only chunks not yet on the wire can be withdrawn; the unit
        # decides.  The Deferred fails with CancelledError at once.
        self.cancelled = True
        self.unit._cancel(self)
        d.errback(Failure(CancelledError()))


_NONE: List[Chunk] = []     # shared: never added to


def _flatten(parts: List[Any]) -> List[Any]:
    """The buffers of C{parts}, whose items may be lists of parts."""
    out: List[Any] = []
    for p in parts:
        if type(p) is list:
            out.extend(_flatten(p))
        else:
            out.append(p)
    return out
