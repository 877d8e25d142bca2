"""
The tag pool of an xa unit (the seed's xa_start / xa_release /
xa_bio_completion): which queued chunk goes on the wire next, on which
open, and what happens to its single reply.

Tags: C{maxTags} per unit (MAXTAGS, 64).  While an open exists it holds
one, so at most 63 I/O transactions are on the wire; the rest of the
requests wait in C{queue}, FIFO by sequence number.  A tag is owned by an
in-flight chunk from the moment its transaction is sent until its single
reply (or simulated LOSTLINK) arrives.  A chunk whose reply is an error
other than DMSG_ERR_IO is put back in the queue, in its place by
sequence number, and issued again once an open exists (with a back-off
for errors other than LOSTLINK); DMSG_ERR_IO fails it.

L{TagPool} is a mixin of L{xdiskd.xa.unit.XAUnit}: the unit owns the
state (open, paths, window), the pool the issue and completion rules.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, Optional

from twisted.logger import Logger
from twisted.python.failure import Failure

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.link import LinkError, Transaction
from xdiskd.dmsg.wire import BlkIO, Message
from xdiskd.errors import MediaError, NoPathError, NotOpenError
from xdiskd.xa.request import OP_NAMES, Chunk, Request
from xdiskd.xa.states import OPEN

if TYPE_CHECKING:
    from xdiskd.xa.stats import UnitStats
    from xdiskd.xa.window import UnflushedWindow


class TagPool:
    """Issue and completion of a unit's chunks (see the module docstring)."""

    log: Logger
    # Owned by the unit (xdiskd.xa.unit.XAUnit.__init__).
    name: str
    label: str
    state: str
    reactor: Any
    maxIO: int
    maxTags: int
    opencnt: int
    openTxn: Optional[Transaction]
    queue: Deque[Chunk]
    inflight: Dict[Transaction, Chunk]
    stats: "UnitStats"
    window: "UnflushedWindow"
    _moving: bool
    _openIO: int
    _spanIO: Dict[Transaction, int]
    _kickCall: Any
    _odd: Dict[int, int]

    def _firstLiveSpan(self) -> Optional[Transaction]:
        raise NotImplementedError

    def _moveWhenIdle(self) -> None:
        raise NotImplementedError

    def _requestDone(self, req: Request) -> None:
        raise NotImplementedError

    def _tagsFree(self) -> int:
        held = 1 if self.openTxn is not None else 0
        return self.maxTags - held - len(self.inflight)

    def _kick(self) -> None:
        """Start queued chunks while tags are free (FIFO)."""
        if self._moving:
            self._moveWhenIdle()
            return
        queue = self.queue
        while queue:
            chunk = queue[0]
            if chunk.probe:
                parent = self._firstLiveSpan()
                if parent is None:
                    queue.popleft()
                    self._chunkFailed(chunk, NoPathError(
                        "%s (%s): no live path for probe I/O" % (
                            self.name, self.label)))
                    continue
                limit = self._spanIO.get(parent, self.maxIO)
            elif (self.state == OPEN and self.openTxn is not None
                  and not (self.openTxn.txDelete or self.openTxn.rxDelete
                           or self.openTxn.dying)       # isOpen
                  and not self._moving):
                if chunk.seq > self.window.gate:
                    return    # a replay goes first (xa/window.py)
                parent = self.openTxn
                limit = self._openIO
            else:
                return        # stalled: wait for an open
            if chunk.length > limit and (chunk.cmd == C.BLK_READ
                                         or chunk.cmd == C.BLK_WRITE):
                # Cut for a path that is gone; this one takes less.
                queue.popleft()
                queue.extendleft(reversed(chunk.request.divide(chunk,
                                                               limit)))
                continue
            if len(self.inflight) >= self.maxTags - 1:
                return        # all tags busy (the open holds one)
            if chunk.cmd == C.BLK_FLUSH and self.inflight and min(
                    c.seq for c in self.inflight.values()) < chunk.seq and (
                    self.window.barrier(chunk)):
                return        # barrier: earlier I/O still in flight
            if chunk.notBefore:
                now = self.reactor.seconds()
                if chunk.notBefore > now:
                    if self._kickCall is None:
                        self._kickCall = self.reactor.callLater(
                            chunk.notBefore - now, self._delayedKick)
                    return
                chunk.notBefore = 0.0
            queue.popleft()
            if not self._issue(parent, chunk):
                return


    def _delayedKick(self) -> None:
        self._kickCall = None
        self._kick()

    def _issue(self, parent: Any, chunk: Chunk) -> bool:
        try:
            txn = parent.link.startTransaction(
                parent, chunk.cmd, BlkIO(chunk.offset, chunk.length),
                chunk.data, self._ioMessage, True)
        except LinkError:
            # The parent died under us; its own teardown restarts us.
            bisect.insort(self.queue, chunk)
            return False
        txn.data = chunk
        chunk.txn = txn
        self.inflight[txn] = chunk
        if chunk.cmd == C.BLK_FLUSH:
            self.window.issued(chunk)     # what it covers (xa/window.py)
        return True

    def _ioMessage(self, txn: Transaction, msg: Message) -> None:
        """xa_bio_completion: the single reply to one I/O."""
        chunk = self.inflight.pop(txn, None)
        if chunk is None:
            return
        chunk.txn = None
        error = msg.error
        io = txn.link.io
        io.importOps += 1
        if error == 0:
            cmd = chunk.cmd
            if cmd == C.BLK_READ or cmd == C.BLK_WRITE:
                io.importBytes += chunk.length
            if cmd != C.BLK_READ and self.window.completed(chunk):
                self._kick()     # held for room in the unflushed window
                return
            chunk.request.chunkDone(chunk, msg.aux)
            if self.queue or self._moving:
                self._kick()
            return
        if error != C.ERR_IO and not chunk.probe:
            io.importRetries += 1
        else:
            io.importErrors += 1
        if error == C.ERR_IO:
            # A real media error (or a refused request): fail it.
            self._chunkFailed(chunk, MediaError(
                "%s: %s of %d bytes at %d failed on the server (0x22)" % (
                    self.name, _opName(chunk.cmd), chunk.length,
                    chunk.offset)))
        elif chunk.probe:
            # Probe I/O fails instead of waiting for a path.
            self._chunkFailed(chunk, NoPathError(
                "%s: probe %s failed: error %#x" % (
                    self.name, _opName(chunk.cmd), error)))
        elif self.opencnt == 0:
            # The last close took it (its BLK_OPEN went): re-queue only
            # while the unit is open, as the seed does.
            self._chunkFailed(chunk, NotOpenError("%s closed" % (
                self.name,)))
        else:
            # Re-queue: device open, error is not DMSG_ERR_IO.
            self._requeue(chunk, error)
        self._kick()

    def _requeue(self, chunk: Chunk, error: int) -> None:
        self.stats.retries += 1
        if error != C.ERR_LOSTLINK:
            # The seed re-queues on any error but 0x22: a server that
            # keeps answering e.g. PARAM is retried forever, so say so
            # (first time per error code, then every 1000th).
            n = self._odd.get(error, 0) + 1
            self._odd[error] = n
            if n == 1 or n % 1000 == 0:
                self.log.warn("{unit}: {op} at {off} got error {e:#x} from "
                              "the server; re-queued with back-off "
                              "({n} so far)", unit=self.name,
                              op=_opName(chunk.cmd), off=chunk.offset,
                              e=error, n=n)
            chunk.retries += 1
            chunk.notBefore = self.reactor.seconds() + min(
                1.0, 0.01 * (2 ** min(chunk.retries, 7)))
        bisect.insort(self.queue, chunk)

    def _chunkFailed(self, chunk: Chunk, error: Exception) -> None:
        chunk.request.chunkFailed(chunk, Failure(error))


    def _failQueued(self, error: Exception) -> None:
        queue, self.queue = self.queue, deque()
        for chunk in queue:
            self._chunkFailed(chunk, error)

    def _cancel(self, req: Request) -> None:
        """A caller gave up on C{req}: withdraw its chunks not yet sent."""
        mine = [c for c in self.queue if c.request is req]
        if mine:
            self.queue = deque(c for c in self.queue if c.request is not req)
            for c in mine:
                req.pending -= 1
            if req.pending == 0:
                self._requestDone(req)


def _opName(cmd: int) -> str:
    return OP_NAMES.get(cmd, hex(cmd))
