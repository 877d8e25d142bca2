"""
An xa unit: one remote disk, reached through one or more spans (paths),
with the seed's BLK state machine (xdisk.c: xa_open, xa_close, xa_start,
xa_done, xa_release, xa_sync_completion, xa_bio_completion,
xa_restart_deferred) rebuilt on Deferreds.

Open life cycle (C{state}), each transition in one place below:

  CLOSED   --open()----------------> OPENING  (BLK_OPEN sent on first live span)
  OPENING  --result 0--------------> OPEN     (queued I/O restarted, after
                                              a replay of lost unflushed
                                              writes: xa/window.py)
  OPENING  --error / lost----------> CLOSED   (first open fails the caller)
                                     or STALLED (re-open: unit already open)
  OPEN     --open txn lost---------> STALLED  (I/O re-queued; re-open at once
                                               on another live span, or when
                                               a span appears)
  STALLED  --span available--------> OPENING
  STALLED  --stallTimeout s--------> STALLED, failing fast (queued and new
                                     I/O fail with EIO until an open works)
  OPEN     --better path-----------> OPEN, moving (no new I/O issued; once
                                     none is in flight a FLUSH on the old
                                     open, then it is closed) --> OPENING
  OPEN     --last close()----------> CLOSING  (return sent, wait for DELETE)
  CLOSING  --server's DELETE-------> CLOSED

Paths: an open goes to the best live span (L{pathRank}): spans on links
in hold-down (redialled after a failure, not yet proven) or far slower
than another live path come last, then arrival order.  An open on a path
that has become far slower than another moves (L{reconsiderPath}): the
importer asks every few seconds.  A link that dies
silently is closed by its liveness check (dmsg/liveness.py), which to the
unit is a lost open like any other.

I/O size: a READ/WRITE is cut into chunks of at most C{maxIO} bytes, the
smallest limit among the unit's paths (each span states its exporter's:
1 MiB for xdiskd, 128 KiB for DragonFly, which states none), capped by
the importer's setting.  A chunk cut for a path that has since gone is cut
again at issue if the path that takes it over accepts less.

Tags: C{maxTags} per unit (MAXTAGS, 64), issued and completed by the
L{xdiskd.xa.tags.TagPool} this class mixes in.
"""

from __future__ import annotations

from time import perf_counter
from collections import deque
from typing import Any, Deque, Dict, List, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.link import LinkError, Transaction
from xdiskd.dmsg.wire import BlkOpen, Message
from xdiskd.errors import (
    NoPathError, NotOpenError, OutOfRangeError, ReadOnlyError,
    UnitGoneError)
from xdiskd.interfaces import Done, ICallbackBlockDevice
from xdiskd.labels import show
from xdiskd.xa.paths import farSlower, isLive, msText, pathRTT, pathRank
from xdiskd.xa.request import Chunk, Request
from xdiskd.xa.states import CLOSED, CLOSING, OPEN, OPENING, STALLED
from xdiskd.xa.stats import UnitStats
from xdiskd.xa.tags import TagPool
from xdiskd.xa.window import DEFAULT_WINDOW, REPLAY, UnflushedWindow

MAXTAGS = 64
DEFAULT_MAX_IO = C.AUX_MAX       # the cap; each path may state less
TRIM_CHUNK = 1 << 30             # FREEBLKS length is a u32
# READ/WRITE bytes accepted and not finished beyond which the unit reports
# itself congested, so front ends stop taking requests (flat memory however
# many clients there are).
CONGESTION_BYTES = 32 << 20



_OPEN_RETRY = 1.0                 # seconds between failed re-open attempts


@implementer(ICallbackBlockDevice)
class XAUnit(TagPool):
    """
    One remote disk (see the module docstring for the state machine).

    @ivar serial: the span's pfs_label, bytes (its identity).
    @ivar label: C{serial} as shown in NBD, logs, control and metrics
        (L{xdiskd.labels.show}).
    @ivar spans: the span transactions for this label, arrival order.
    @ivar openTxn: our BLK_OPEN transaction (the seed's open_tag).
    """

    log = Logger()

    def __init__(self, importer: Any, number: int, serial: bytes,
                 peerLabel: bytes, size: int, sectorSize: int,
                 maxIO: int = DEFAULT_MAX_IO, maxTags: int = MAXTAGS,
                 readOnly: bool = False, stallTimeout: float = 0.0,
                 window: int = DEFAULT_WINDOW,
                 unflushed: str = REPLAY) -> None:
        self.importer = importer
        self.reactor = importer.reactor
        self.number = number
        self.name = "xa%d" % (number,)
        self.serial = serial
        self.label = show(serial)
        self.peerLabel = peerLabel
        self.createdBy: Any = None
        self.size = size
        self.sectorSize = sectorSize or 1
        self.maxIOCap = maxIO
        self.maxIO = maxIO
        self.maxTags = maxTags
        # Configured read-only (--readonly-unit), or the exporter refused a
        # write open (then until the unit is next opened from closed).
        self.configuredReadOnly = readOnly
        self.readOnly = readOnly
        self._openModes = 0
        self.spans: List[Transaction] = []
        self._spanIO: Dict[Transaction, int] = {}
        self._spanInc: Dict[Optional[Transaction], int] = {}
        self._openIO = maxIO
        self.state = CLOSED
        self.opencnt = 0
        self.openTxn: Optional[Transaction] = None
        self.queue: Deque[Chunk] = deque()
        self.inflight: Dict[Transaction, Chunk] = {}
        self.requests: Dict[Request, None] = {}
        self.stats = UnitStats()
        self.gone = False
        self._seq = 0
        self._openWaiters: List[Deferred] = []
        self._closeWaiters: List[Deferred] = []
        self._retryCall: Any = None
        self._kickCall: Any = None
        self._closingTxn: Optional[Transaction] = None
        self._odd: Dict[int, int] = {}
        self.bytesQueued = 0
        self.congestionBytes = CONGESTION_BYTES
        self._uncongestedWaiters: List[Deferred] = []
        self._stalledSince: Optional[float] = None
        #: Seconds without a usable path before I/O fails fast (0: never).
        self.stallTimeout = stallTimeout
        self._stallCall: Any = None
        #: The stall outlasted stallTimeout: I/O fails with EIO now.
        self.failingFast = False
        #: Moving the open to a better path: nothing new is issued.
        self._moving = False
        # Acknowledged writes not yet flushed, replayed after a lost open
        # (xa/window.py).
        self.window = UnflushedWindow(self, window, unflushed)

    def __repr__(self) -> str:
        return "<XAUnit %s serial=%s %s opencnt=%d spans=%d q=%d f=%d>" % (
            self.name, self.label, self.state, self.opencnt,
            len(self.spans), len(self.queue), len(self.inflight))

    @property
    def paths(self) -> List[str]:
        """The links this unit's live spans arrive on."""
        return [s.link.name for s in self.spans if isLive(s)]

    @property
    def idle(self) -> bool:
        """No spans, no opens, no I/O: a candidate for teardown."""
        return (not self.spans and self.opencnt == 0 and not self.queue
                and not self.inflight and self.state == CLOSED)

    # ---------------------------------------------------------------
    # Paths (called by the importer)

    def spanAdded(self, span: Transaction,
                  maxIO: Optional[int] = None, incarnation: int = 0) -> None:
        """
        A path: C{span}, whose exporter takes READ/WRITEs of up to
        C{maxIO} bytes (None: any size up to the unit's cap) and states
        C{incarnation} (0: none, L{xdiskd.export.incarnation}).
        """
        self.spans.append(span)
        self._spanInc[span] = incarnation
        limit = self.maxIOCap if maxIO is None else min(maxIO,
                                                        self.maxIOCap)
        sector = self.sectorSize
        self._spanIO[span] = max(sector, limit - limit % sector)
        self.maxIO = min(self._spanIO.values())
        self.log.info("{unit}: path added via {link} ({n} paths)",
                      unit=self.name, link=span.link.name,
                      n=len(self.spans))
        # §9.2: a unit open but without an open transaction re-opens on
        # the new span and restarts queued I/O.
        if self.state == STALLED:
            self._startOpen()
        else:
            self._kick()

    def spanRemoved(self, span: Transaction) -> None:
        if span in self.spans:
            self.spans.remove(span)
        self._spanIO.pop(span, None)
        self._spanInc.pop(span, None)
        if self._spanIO:
            self.maxIO = min(self._spanIO.values())
        self.log.info("{unit}: path via {link} gone ({n} left)",
                      unit=self.name, link=span.link.name,
                      n=len(self.spans))
        if self.state == STALLED:
            self._startOpen()

    def _firstLiveSpan(self) -> Optional[Transaction]:
        """The best live span (L{pathRank}), or None."""
        ranked = pathRank(self.spans, self.reactor.seconds())
        return ranked[0] if ranked else None

    # ---------------------------------------------------------------
    # Open / close

    def open(self) -> Deferred:
        """
        Count an open.  The first sends BLK_OPEN on the first live span
        and fires when the server answers (xa_open); later ones count at
        once, even while the unit is stalled without a path.
        """
        if self.gone:
            return fail(UnitGoneError("%s is gone" % (self.name,)))
        self.importer._touch(self)
        self.opencnt += 1
        if self.opencnt > 1 and self.state != OPENING:
            return succeed(None)
        d: Deferred = Deferred()
        self._openWaiters.append(d)
        if self.state in (CLOSED, CLOSING):
            # A first open asks for write access again (unless configured
            # read-only): the export may have changed since.
            self.readOnly = self.configuredReadOnly
            if self.state == CLOSING:
                # Re-open while the old open drains: it is forgotten; a
                # new BLK_OPEN goes out now.
                self.openTxn = None
            self._startOpen()
        return d

    def close(self) -> Deferred:
        """
        Drop an open.  The last closes the BLK_OPEN transaction (a return,
        §8.5) and fires when the server's DELETE arrived.
        """
        if self.opencnt <= 0:
            return fail(NotOpenError("%s is not open" % (self.name,)))
        self.opencnt -= 1
        if self.opencnt:
            return succeed(None)
        self._cancelRetry()
        self.window.closed()
        # Requests that cannot be issued without an open fail now.
        self._failQueued(NotOpenError("%s closed" % (self.name,)))
        txn = self.openTxn
        self.openTxn = None
        d: Deferred = Deferred()
        if txn is None or txn.closed:
            self._setState(CLOSED)
            self._stalledEnd()
            self.importer._check(self)
            d.callback(None)
            return d
        self._setState(CLOSING)
        self._closingTxn = txn
        self._closeWaiters.append(d)
        txn.reply(0)             # 0x440FFF01; the server answers DELETE
        return d

    def _startOpen(self) -> None:
        """xa_restart_deferred: issue BLK_OPEN on the first live span."""
        self._cancelRetry()
        span = self._firstLiveSpan()
        if span is None:
            if self.opencnt and self._openWaiters and self.state in (
                    CLOSED, CLOSING):
                # First open with no path: fail the caller (ENXIO).
                self.opencnt -= len(self._openWaiters)
                self._setState(CLOSED)
                self._fireOpen(NoPathError(
                    "%s (%s) has no live path" % (self.name, self.label)))
                self.importer._check(self)
            else:
                self._stall()
            return
        modes = C.BLKOPEN_RD if self.readOnly else (
            C.BLKOPEN_RD | C.BLKOPEN_WR)
        try:
            txn = span.startChild(C.BLK_OPEN, BlkOpen(modes),
                                  handler=self._openMessage)
        except LinkError:
            self._stall()
            return
        self._openModes = modes
        self.openTxn = txn
        self._openIO = self._spanIO.get(span, self.maxIO)
        self._setState(OPENING)

    def _openMessage(self, txn: Transaction, msg: Message) -> None:
        """xa_sync_completion: replies on our BLK_OPEN transaction."""
        current = txn is self.openTxn
        if msg.cmd & C.CREATE and current:
            if msg.error == 0:
                self._setState(OPEN)
                self._stalledEnd()
                self.log.info("{unit}: open via {link}", unit=self.name,
                              link=txn.link.name)
                # Before anyone waiting on the open can issue I/O.
                self.window.opened(self._spanInc.get(txn.parent, 0),
                                   txn.link.name)
                self._fireOpen(None)
                self._kick()
            elif msg.error == C.ERR_IO and self._openModes & C.BLKOPEN_WR:
                # A read-only export refuses write opens with 0x22 (as
                # DragonFly's dev_dopen failure does): open read-only and
                # say so to NBD (the READ_ONLY flag of every new client).
                self.log.warn("{unit}: {link} refuses write access to "
                              "{serial}; opening it read-only",
                              unit=self.name, link=txn.link.name,
                              serial=self.label)
                self.openTxn = None
                txn.reply(0)
                self.readOnly = True
                self._startOpen()
                return
            else:
                self.log.warn("{unit}: BLK_OPEN via {link} refused: "
                              "{e:#x}", unit=self.name,
                              link=txn.link.name, e=msg.error)
                self.openTxn = None
                txn.reply(0)
                self._openFailed(msg.error)
        if msg.cmd & C.DELETE:
            txn.reply(0)
            if txn is self.openTxn:
                # Lost open (span withdrawn, link lost, server closed it):
                # its I/O was failed with LOSTLINK and re-queued already.
                self.openTxn = None
                if self.state == OPENING:
                    self._openFailed(msg.error or C.ERR_LOSTLINK)
                elif self.state == OPEN:
                    self.stats.failovers += 1
                    self.window.openLost()
                    # Its I/O was re-queued just before (children fail
                    # first, §6.8): one line per event, with the count.
                    self.log.info("{unit}: open via {link} lost ({e:#x}); "
                                  "{queued} chunks queued for re-issue; "
                                  "re-opening", unit=self.name,
                                  link=txn.link.name, e=msg.error,
                                  queued=len(self.queue))
                    self._setState(STALLED)
                    self._startOpen()
            elif txn is self._closingTxn:
                # §8.5: the server's DELETE completes our close.
                self._closingTxn = None
                if self.state == CLOSING:
                    self._setState(CLOSED)
                    self._stalledEnd()
                waiters, self._closeWaiters = self._closeWaiters, []
                for d in waiters:
                    d.callback(None)
                self.importer._check(self)

    def _openFailed(self, error: int) -> None:
        if error == C.ERR_LOSTLINK and self._firstLiveSpan() is not None:
            # That path died while opening: try the next one at once.
            self._startOpen()
            return
        if self._openWaiters and self.opencnt <= len(self._openWaiters):
            # Nobody had the unit open before: fail the open() calls.
            self.opencnt -= len(self._openWaiters)
            self._setState(CLOSED)
            self._fireOpen(NoPathError(
                "%s (%s): BLK_OPEN failed with error %#x" % (
                    self.name, self.label, error)))
            self._failQueued(NotOpenError("%s not open" % (self.name,)))
            self.importer._check(self)
        else:
            # Re-open after failover failed: try again later.
            self._stall()
            self._retryCall = self.reactor.callLater(_OPEN_RETRY,
                                                     self._retryOpen)

    def _retryOpen(self) -> None:
        self._retryCall = None
        if self.state == STALLED:
            self._startOpen()

    def _cancelRetry(self) -> None:
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None

    def _stall(self) -> None:
        self._setState(STALLED)
        if self._stalledSince is None:
            self._stalledSince = self.reactor.seconds()
            self.stats.stalls += 1
            if self.stallTimeout > 0:
                self._stallCall = self.reactor.callLater(
                    self.stallTimeout, self._stallExpired)

    def _stalledEnd(self) -> None:
        if self._stallCall is not None and self._stallCall.active():
            self._stallCall.cancel()
        self._stallCall = None
        if self._stalledSince is not None:
            stalled = self.reactor.seconds() - self._stalledSince
            self.stats.maxStall = max(self.stats.maxStall, stalled)
            self._stalledSince = None
            if self.failingFast:
                self.failingFast = False
                self.log.info("{unit}: usable again after {s} s without a "
                              "path; I/O no longer fails",
                              unit=self.name, s="%.1f" % (stalled,))

    @property
    def stalledFor(self) -> float:
        """Seconds the unit has been without a usable path (0: it has one)."""
        if self._stalledSince is None:
            return 0.0
        return self.reactor.seconds() - self._stalledSince

    def _stallExpired(self) -> None:
        """--stall-timeout: fail what waits, and what comes, with EIO."""
        self._stallCall = None
        if self.state not in (STALLED, OPENING) or self._stalledSince is None:
            return
        self.failingFast = True
        self.stats.failFasts += 1
        self.log.warn("{unit} ({serial}): no usable path for {s} s "
                      "(--stall-timeout); failing {n} queued and all new "
                      "I/O with EIO until a path returns", unit=self.name,
                      serial=self.label, s="%.1f" % (self.stalledFor,),
                      n=len(self.queue))
        self._failQueued(NoPathError("%s (%s): no usable path for %.0f s" % (
            self.name, self.label, self.stallTimeout)))

    def _fireOpen(self, error: Optional[Exception]) -> None:
        waiters, self._openWaiters = self._openWaiters, []
        for d in waiters:
            if error is None:
                d.callback(None)
            else:
                d.errback(Failure(error))

    def _setState(self, state: str) -> None:
        self.state = state

    # ---------------------------------------------------------------
    # I/O entry points (IBlockDevice)

    def read(self, offset: int, length: int) -> Deferred:
        return self._submit(C.BLK_READ, offset, length, None)

    def readv(self, offset: int, length: int) -> Deferred:
        return self._submit(C.BLK_READ, offset, length, None, True)

    def write(self, offset: int, data: Any) -> Deferred:
        if self.readOnly:
            return fail(ReadOnlyError("%s is read-only" % (self.name,)))
        return self._submit(C.BLK_WRITE, offset, len(data), data)

    def flush(self) -> Deferred:
        return self._submit(C.BLK_FLUSH, 0, 0, None)

    def trim(self, offset: int, length: int) -> Deferred:
        if self.readOnly:
            return fail(ReadOnlyError("%s is read-only" % (self.name,)))
        return self._submit(C.BLK_FREEBLKS, offset, length, None)

    def startRead(self, offset: int, length: int,
                  done: Done) -> Optional[Request]:
        """
        L{readv} without a Deferred: C{done(parts, None)} with the list
        of buffers, or C{done(None, failure)}.

        @return: the request (C{cancel()} withdraws what is not yet on
            the wire and calls C{done} with C{CancelledError}), or None
            when it ended at once (C{done} was called).
        """
        return self._start(C.BLK_READ, offset, length, None, done)

    def startWrite(self, offset: int, data: Any,
                   done: Done) -> Optional[Request]:
        """L{write} without a Deferred, as L{startRead}."""
        if self.readOnly:
            done(None, Failure(ReadOnlyError("%s is read-only" % (
                self.name,))))
            return None
        return self._start(C.BLK_WRITE, offset, len(data), data, done)

    def _start(self, cmd: int, offset: int, length: int, data: Any,
               done: Done) -> Optional[Request]:
        if (self.gone or self.failingFast or offset < 0 or length <= 0
                or offset + length > self.size):
            error = self._refusal(offset, length)
            if error is not None:
                done(None, Failure(error))
                return None
            done([] if cmd == C.BLK_READ else None, None)   # length 0
            return None
        return self._enqueue(cmd, offset, length, data, done)

    def _submit(self, cmd: int, offset: int, length: int,
                data: Any, scatter: bool = False) -> Deferred:
        error = self._refusal(offset, length)
        if error is not None:
            return fail(error)
        if length == 0 and cmd != C.BLK_FLUSH:
            return succeed(None if cmd != C.BLK_READ else
                           [] if scatter else b"")
        req = self._enqueue(cmd, offset, length, data, None, scatter)
        return req.deferred  # type: ignore[return-value]

    def _refusal(self, offset: int, length: int) -> Optional[Exception]:
        if self.gone:
            return UnitGoneError("%s is gone" % (self.name,))
        if self.failingFast:
            return NoPathError("%s (%s): no usable path for %.0f s" % (
                self.name, self.label, self.stalledFor))
        if offset < 0 or length < 0 or offset + length > self.size:
            return OutOfRangeError(
                "%s: %d bytes at %d outside %d-byte disk" % (
                    self.name, length, offset, self.size))
        return None

    def _enqueue(self, cmd: int, offset: int, length: int, data: Any,
                 done: Optional[Done], scatter: bool = False) -> Request:
        req = Request(self, cmd, offset, length, self.opencnt == 0, done)
        if scatter:
            req.scatter = True
        req.started = perf_counter()
        self.requests[req] = None
        self.stats.started += 1
        if cmd == C.BLK_READ or cmd == C.BLK_WRITE:
            self.bytesQueued += length
            if length <= self.maxIO:
                # One chunk: the request itself (Request.split).
                req.data = data
                req.chunks = [req]
                req.pending = 1
                req.seq = self._seq = self._seq + 1
                self.queue.append(req)
                self._kick()
                return req
        maxIO = TRIM_CHUNK if cmd == C.BLK_FREEBLKS else self.maxIO
        for chunk in req.split(data, maxIO):
            self._seq += 1
            chunk.seq = self._seq
            self.queue.append(chunk)
        self._kick()
        return req

    # ---------------------------------------------------------------
    # Moving off a slow path

    def reconsiderPath(self) -> bool:
        """
        Move the open off its path when that path is demoted (far slower
        than another live path, L{pathRank}) and a better one exists:
        I/O already on the wire finishes, a FLUSH makes it stable on the
        old path, the old open is closed and a new one made on the best
        path; requests wait meanwhile, as in a failover.

        @return: whether a move started.
        """
        txn = self.openTxn
        if self.state != OPEN or self._moving or txn is None:
            return False
        ranked = pathRank(self.spans, self.reactor.seconds())
        current = txn.parent
        if not ranked or ranked[0] is current or current not in ranked:
            return False
        if not farSlower(current, ranked[0]):
            return False
        self._moving = True
        self.stats.moves += 1
        self.log.info("{unit}: path via {old} is far slower (PING {a} ms) "
                      "than via {new} ({b} ms); moving the open",
                      unit=self.name, old=txn.link.name,
                      new=ranked[0].link.name, a=msText(pathRTT(current)),
                      b=msText(pathRTT(ranked[0])))
        self._moveWhenIdle()
        return True

    def _moveWhenIdle(self) -> None:
        """Once nothing is in flight: FLUSH on the old open, then move."""
        if not self._moving or self.inflight:
            return
        txn = self.openTxn
        if self.state != OPEN or txn is None or not txn.isOpen:
            self._moving = False      # lost meanwhile: a failover now
            return
        req = Request(self, C.BLK_FLUSH, 0, 0, False, self._movedFlush)
        req.started = perf_counter()
        self.stats.start(C.BLK_FLUSH)
        [chunk] = req.split(None, self.maxIO)
        # Numbered after every write acknowledged so far, so the unflushed
        # window releases what it covers (xa/window.py).
        self._seq += 1
        chunk.seq = self._seq
        if not self._issue(txn, chunk):
            self.queue.remove(chunk)       # _issue re-queued it
            self._moving = False

    def _movedFlush(self, result: Any, failure: Optional[Failure]) -> None:
        self._moving = False
        txn = self.openTxn
        if self.state != OPEN or txn is None:
            self._kick()              # the open was lost: failover rules
            return
        if failure is not None:
            self.log.warn("{unit}: FLUSH before moving failed ({why}); "
                          "staying on {link}", unit=self.name,
                          why=failure.getErrorMessage(), link=txn.link.name)
            self._kick()
            return
        self.openTxn = None
        txn.reply(0)                  # close the old open (§8.5)
        self._startOpen()

    @property
    def congested(self) -> bool:
        """Too many request bytes accepted: front ends should wait."""
        return self.bytesQueued >= self.congestionBytes

    def whenUncongested(self) -> Deferred:
        """Fires once the unit holds at most half its congestion bytes."""
        if self.bytesQueued <= self.congestionBytes // 2:
            return succeed(None)
        d: Deferred = Deferred()
        self._uncongestedWaiters.append(d)
        return d

    def _requestDone(self, req: Request) -> None:
        self.requests.pop(req, None)
        if req.cmd == C.BLK_READ or req.cmd == C.BLK_WRITE:
            self.bytesQueued -= req.length
            if (self._uncongestedWaiters
                    and self.bytesQueued <= self.congestionBytes // 2):
                waiters, self._uncongestedWaiters = (
                    self._uncongestedWaiters, [])
                for d in waiters:
                    d.callback(None)
        self.stats.finish(req.cmd, req.length, req.failure is not None,
                          perf_counter() - req.started)
        if self.opencnt == 0:
            self.importer._check(self)

    # ---------------------------------------------------------------
    # Teardown (the seed's compiled-out xa_terminate_check)

    def destroy(self) -> None:
        """Remove the unit: fail anything left (there should be nothing)."""
        self.gone = True
        self._cancelRetry()
        if self._stallCall is not None and self._stallCall.active():
            self._stallCall.cancel()
        self._stallCall = None
        self.window.closed()
        self._failQueued(UnitGoneError("%s removed" % (self.name,)))

    def snapshot(self) -> Dict[str, Any]:
        """State and counters, for the control API and metrics."""
        return dict(name=self.name, serial=self.label, size=self.size,
                    sectorSize=self.sectorSize, state=self.state,
                    opencnt=self.opencnt, paths=self.paths,
                    spans=len(self.spans), queued=len(self.queue),
                    inflight=len(self.inflight),
                    readOnly=self.readOnly, maxIO=self.maxIO,
                    failingFast=self.failingFast,
                    stalledFor=round(self.stalledFor, 3),
                    window=self.window.snapshot(),
                    stats=self.stats.asDict())
