"""
Transmission-phase commands of the NBD server: checks, the calls on the
block device, read-modify-write for unaligned requests, and the reply bytes.

L{Transmission.handle} takes one L{xdiskd.nbd.wire.Request} and returns a
L{Deferred} that fires with the list of byte strings to send as the reply
(to be written with C{writeSequence}), or None when the request was
cancelled.  It never fails: device errors become NBD error replies.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import (CancelledError, Deferred, FirstError,
                                    gatherResults, succeed)
from twisted.python.failure import Failure

from xdiskd import errors
from xdiskd.interfaces import ICallbackBlockDevice
from xdiskd.labels import clean
from xdiskd.nbd import wire
from xdiskd.nbd.options import Export

#: WRITE_ZEROES with NO_HOLE writes zeros in pieces of at most this size.
ZERO_CHUNK = 1 << 20
_ZEROES = memoryview(bytes(ZERO_CHUNK))

#: Device failures and the NBD error each becomes; anything else is EIO
#: and is reported through the C{unexpected} callback.
ERRNO_MAP: Sequence[Tuple[type, int]] = (
    (errors.MediaError, wire.EIO),
    (errors.NoPathError, wire.EIO),
    (errors.OutOfRangeError, wire.EINVAL),
    (errors.ReadOnlyError, wire.EPERM),
    (errors.UnitGoneError, wire.ESHUTDOWN),
)

_ALLOWED_FLAGS = {
    wire.CMD_READ: wire.CMD_FLAG_FUA | wire.CMD_FLAG_DF,
    wire.CMD_WRITE: wire.CMD_FLAG_FUA,
    wire.CMD_FLUSH: wire.CMD_FLAG_FUA,
    wire.CMD_TRIM: wire.CMD_FLAG_FUA,
    wire.CMD_CACHE: wire.CMD_FLAG_FUA,
    wire.CMD_WRITE_ZEROES: (wire.CMD_FLAG_FUA | wire.CMD_FLAG_NO_HOLE
                            | wire.CMD_FLAG_FAST_ZERO),
    wire.CMD_BLOCK_STATUS: wire.CMD_FLAG_FUA | wire.CMD_FLAG_REQ_ONE,
}


def _gather(deferreds: List[Deferred]) -> Deferred:
    """Like L{gatherResults}, but fail with the first original failure."""
    def unwrap(f: Failure) -> Failure:
        return f.value.subFailure if f.check(FirstError) else f
    return gatherResults(deferreds, consumeErrors=True).addErrback(unwrap)


#: L{Transmission.start}: this request takes the Deferred way.
NOT_DIRECT = object()


class Refused(Exception):
    """A request fails its checks; C{errno} is the NBD error to send."""

    def __init__(self, errno: int, message: str) -> None:
        Exception.__init__(self, message)
        self.errno = errno


class SectorLocks:
    """
    Range locks over a device's bytes, shared by every connection to it.

    Aligned writes take shared locks (they may run together); a
    read-modify-write takes an exclusive lock on the sectors it rewrites,
    so it neither loses a concurrent write to the same sector nor runs
    beside another RMW of it.  Waiters are granted in arrival order.
    """

    def __init__(self) -> None:
        self._held: Dict[int, Tuple[int, int, bool]] = {}
        self._exclusiveHeld = 0
        self._waiting: List[Tuple[int, int, int, bool, Deferred]] = []
        self._next = 0

    def _conflicts(self, start: int, end: int, exclusive: bool,
                   others: Sequence[Tuple[int, int, bool]]) -> bool:
        for s, e, x in others:
            if (exclusive or x) and s < end and start < e:
                return True
        return False

    def run(self, start: int, end: int, exclusive: bool,
            operation: Callable[[], Deferred]) -> Deferred:
        """
        Run C{operation} while holding [start, end); release when the
        Deferred it returns fires.
        """
        self._next += 1
        token = self._next
        if (not exclusive and not self._exclusiveHeld
                and not self._waiting) or not self._conflicts(
                    start, end, exclusive, list(self._held.values())
                    + [(s, e, x) for _, s, e, x, _ in self._waiting]):
            self._grant(token, start, end, exclusive)
            return self._call(token, operation)
        d: Deferred = Deferred(lambda _: self._cancelWait(token))
        self._waiting.append((token, start, end, exclusive, d))
        return d.addCallback(lambda _: self._call(token, operation))

    def tryShared(self, start: int, end: int) -> Optional[int]:
        """
        Take a shared lock on [start, end) if it can be granted at once
        (no exclusive lock held or waited for): its token, for
        L{release}; else None (use L{run}).
        """
        if self._exclusiveHeld or self._waiting:
            return None
        self._next += 1
        self._held[self._next] = (start, end, False)
        return self._next

    def release(self, token: int) -> None:
        """Release a lock L{tryShared} granted."""
        self._release(token)

    def _cancelWait(self, token: int) -> None:
        self._waiting = [w for w in self._waiting if w[0] != token]
        self._wake()

    def _grant(self, token: int, start: int, end: int,
               exclusive: bool) -> None:
        self._held[token] = (start, end, exclusive)
        if exclusive:
            self._exclusiveHeld += 1

    def _call(self, token: int,
              operation: Callable[[], Deferred]) -> Deferred:
        try:
            d = operation()
        except Exception:
            d = Deferred()
            d.errback(Failure())

        def release(result: object) -> object:
            self._release(token)
            return result
        return d.addBoth(release)

    def _release(self, token: int) -> None:
        _, _, exclusive = self._held.pop(token)
        if exclusive:
            self._exclusiveHeld -= 1
        if self._waiting:
            self._wake()

    def _wake(self) -> None:
        blocked: List[Tuple[int, int, bool]] = []
        ready = []
        for entry in list(self._waiting):
            _, start, end, excl, _ = entry
            busy = list(self._held.values()) + blocked
            if self._conflicts(start, end, excl, busy):
                blocked.append((start, end, excl))
                continue
            self._waiting.remove(entry)
            self._grant(entry[0], start, end, excl)
            ready.append(entry[4])
        for d in ready:
            d.callback(None)

    def idle(self) -> bool:
        """Return True if nothing holds or waits for a lock."""
        return not self._held and not self._waiting


class _Direct:
    """
    The device's C{done(result, failure)} for one plain READ or WRITE of
    L{Transmission.start}: builds the reply and hands it on, one object
    per request instead of a closure per layer.
    """

    __slots__ = ("transmission", "req", "reply", "key", "cost", "token")

    def __init__(self, transmission: "Transmission", req: wire.Request,
                 reply: Callable[[Optional[List[Any]], int, int], None],
                 key: int, cost: int, token: Optional[int]) -> None:
        self.transmission = transmission
        self.req = req
        self.reply = reply
        self.key = key
        self.cost = cost
        self.token = token      # a WRITE's shared lock

    def __call__(self, result: Any, failure: Optional[Failure]) -> None:
        t = self.transmission
        req = self.req
        pieces: Optional[List[Any]]
        if self.token is not None:
            t.locks.release(self.token)
            pieces = ([wire.simpleReply(0, req.cookie)] if failure is None
                      else t._failed(failure, req))
        elif failure is None:
            n = 0
            for p in result:
                n += len(p)
            if n != req.length:
                # Checked as on the Deferred path.
                pieces = t._failed(Failure(RuntimeError(
                    "device read %d bytes, %d asked" % (n, req.length))),
                    req)
            elif not t.structured:
                pieces = [wire.simpleReply(0, req.cookie), *result]
            else:
                # One chunk, marked DONE: all data is in hand.
                pieces = [wire.offsetDataHeader(req.cookie, req.offset, n,
                                                True), *result]
        else:
            pieces = t._failed(failure, req)
        self.reply(pieces, self.key, self.cost)


class Transmission:
    """
    Executes the requests of one connection in the transmission phase.

    @param export: what option haggling settled.
    @param locks: the L{SectorLocks} of the export's device.
    @param unexpected: called with the L{Failure} of a device error that
        is not an L{xdiskd.errors.XDiskError} subclass we map.
    """

    def __init__(self, export: Export, locks: SectorLocks,
                 unexpected: Callable[[Failure], None]) -> None:
        self.export = export
        self.device: Any = export.device
        self.size = int(self.device.size)
        self.sector = export.minimumBlock
        self.locks = locks
        self.unexpected = unexpected
        self.readOnly = bool(export.flags & wire.FLAG_READ_ONLY)
        self.structured = export.structuredReplies
        self.maxPayload = export.maxPayload
        # READ/WRITE without Deferreds (see start) on devices that can.
        self.direct = ICallbackBlockDevice.providedBy(self.device)
        self._handlers: Dict[int, Callable[[wire.Request], Deferred]] = {
            wire.CMD_READ: self._read,
            wire.CMD_WRITE: self._write,
            wire.CMD_FLUSH: self._flush,
            wire.CMD_TRIM: self._trim,
            wire.CMD_CACHE: self._cache,
            wire.CMD_WRITE_ZEROES: self._writeZeroes,
            wire.CMD_BLOCK_STATUS: self._blockStatus,
        }

    # -- entry point -------------------------------------------------------
    def handle(self, req: wire.Request) -> Deferred:
        """
        Execute C{req}.

        @return: a L{Deferred} firing with the reply as a list of bytes, or
            None if it was cancelled.  It does not fail.
        """
        try:
            handler = self._handlers.get(req.type)
            if handler is None:
                raise Refused(wire.EINVAL, "unknown command %d" % (req.type,))
            if req.flags & ~_ALLOWED_FLAGS[req.type]:
                raise Refused(wire.EINVAL, "bad flags 0x%x for command %d"
                              % (req.flags, req.type))
            d = handler(req)
        except Refused as e:
            return succeed(self.errorReply(req.cookie, e.errno, str(e)))
        except Exception:
            return succeed(self._failed(Failure(), req))
        return d.addErrback(self._failed, req)

    def start(self, req: wire.Request,
              reply: Callable[[Optional[List[Any]], int, int], None],
              key: int, cost: int) -> Any:
        """
        Execute C{req} without a Deferred if it is a plain READ or WRITE
        (no flags, aligned, in range, not empty) and the device is an
        L{ICallbackBlockDevice}: C{reply(pieces, key, cost)} is called
        with the reply pieces, or None if the request was cancelled, as
        L{handle}'s Deferred would fire.

        @return: L{NOT_DIRECT} if C{req} must go through L{handle};
            else the device's handle for the request (with C{cancel()}
            and C{finished}), or None if C{reply} was called already.
        """
        offset, length = req.offset, req.length
        sector = self.sector
        if (not self.direct or req.flags or not length
                or length > self.maxPayload or offset + length > self.size
                or offset % sector or length % sector):
            return NOT_DIRECT
        kind = req.type
        if kind == wire.CMD_READ:
            return self.device.startRead(offset, length, _Direct(
                self, req, reply, key, cost, None))
        if kind != wire.CMD_WRITE or self.readOnly:
            return NOT_DIRECT
        token = self.locks.tryShared(offset, offset + length)
        if token is None:
            return NOT_DIRECT
        return self.device.startWrite(offset, req.data, _Direct(
            self, req, reply, key, cost, token))

    def oversized(self, req: wire.OversizedWrite) -> List[bytes]:
        """Return the reply to a WRITE whose payload was skipped."""
        return self.errorReply(req.cookie, wire.EINVAL,
                               "WRITE of %d bytes is over the maximum %d"
                               % (req.length, self.maxPayload))

    def errorReply(self, cookie: int, errno: int, message: str) -> List[bytes]:
        """Return the reply bytes for a failed request."""
        if self.structured:
            return [wire.errorChunk(cookie, errno, message)]
        return [wire.simpleReply(errno, cookie)]

    def _failed(self, f: Failure, req: wire.Request) -> Optional[List[bytes]]:
        if f.check(CancelledError):
            return None
        if f.check(Refused):
            return self.errorReply(req.cookie, f.value.errno,
                                   clean(str(f.value)))
        for cls, errno in ERRNO_MAP:
            if f.check(cls):
                return self.errorReply(req.cookie, errno, clean(str(f.value)))
        self.unexpected(f)
        return self.errorReply(req.cookie, wire.EIO, "internal error")

    # -- checks --------------------------------------------------------------
    def _check(self, req: wire.Request, rangeErrno: int,
               limited: bool) -> bool:
        """Check range and size; return True if C{req} is aligned."""
        offset, length = req.offset, req.length
        if limited and length > self.maxPayload:
            raise Refused(wire.EINVAL, "length %d is over the maximum %d"
                          % (length, self.maxPayload))
        if offset + length > self.size:
            raise Refused(rangeErrno, "request reaches past the end of the "
                          "device (%d bytes)" % (self.size,))
        sector = self.sector
        if offset % sector == 0 and length % sector == 0:
            return True
        if self.export.blockSizeAgreed:
            raise Refused(wire.EINVAL, "request not aligned to %d bytes"
                          % (sector,))
        return False

    def _checkWritable(self) -> None:
        if self.readOnly:
            raise Refused(wire.EPERM, "export is read-only")

    def _done(self, req: wire.Request, d: Deferred) -> Deferred:
        """Flush after C{d} if FUA, then reply success."""
        cookie = req.cookie
        if req.flags & wire.CMD_FLAG_FUA:
            d.addCallback(lambda _: self.device.flush())
        return d.addCallback(lambda _: [wire.simpleReply(0, cookie)])

    # -- commands ------------------------------------------------------------
    def _read(self, req: wire.Request) -> Deferred:
        offset, length = req.offset, req.length
        aligned = self._check(req, wire.EINVAL, True)
        if length == 0:
            return succeed(self._readReply(b"", req))
        if aligned:
            return self.device.readv(offset, length).addCallback(
                self._readvReply, req)
        else:
            start, end = self._cover(offset, length)
            skip = offset - start
            d = self.device.read(start, end - start).addCallback(
                lambda data: bytes(memoryview(data)[skip:skip + length]))
        return d.addCallback(self._readReply, req)

    def _readvReply(self, parts: List[Any], req: wire.Request) -> List[Any]:
        n = 0
        for p in parts:
            n += len(p)
        if n != req.length:
            raise RuntimeError("device read %d bytes, %d asked"
                               % (n, req.length))
        if not self.structured:
            return [wire.simpleReply(0, req.cookie)] + parts
        # One chunk, marked DONE: all data is in hand, no error can follow.
        return [wire.offsetDataHeader(req.cookie, req.offset, n, True)
                ] + parts

    def _readReply(self, data: Any, req: wire.Request) -> List[bytes]:
        # Any buffer will do: the connection sends with sendmsg.
        if len(data) != req.length:
            raise RuntimeError("device read %d bytes, %d asked"
                               % (len(data), req.length))
        if not self.structured:
            return [wire.simpleReply(0, req.cookie), data]
        if not data:
            return [wire.structuredNone(req.cookie)]
        # One chunk, marked DONE: all data is in hand, no error can follow.
        return [wire.offsetDataHeader(req.cookie, req.offset, len(data),
                                      True), data]

    def _write(self, req: wire.Request) -> Deferred:
        self._checkWritable()
        aligned = self._check(req, wire.ENOSPC, True)
        offset, data = req.offset, req.data
        if not req.length:
            d = succeed(None)
        elif aligned:
            d = self.locks.run(offset, offset + req.length, False,
                               lambda: self.device.write(offset, data))
        else:
            d = self._patch(offset, data)
        return self._done(req, d)

    def _flush(self, req: wire.Request) -> Deferred:
        d = self.device.flush()
        cookie = req.cookie
        return d.addCallback(lambda _: [wire.simpleReply(0, cookie)])

    def _trim(self, req: wire.Request) -> Deferred:
        self._checkWritable()
        self._check(req, wire.EINVAL, False)
        # proto.md: a server MAY round offset up and length down.
        start = self._roundUp(req.offset)
        end = req.offset + req.length
        end -= end % self.sector
        if start < end:
            d = self.locks.run(start, end, False,
                               lambda: self.device.trim(start, end - start))
        else:
            d = succeed(None)
        return self._done(req, d)

    def _cache(self, req: wire.Request) -> Deferred:
        self._check(req, wire.EINVAL, True)
        return succeed([wire.simpleReply(0, req.cookie)])

    def _writeZeroes(self, req: wire.Request) -> Deferred:
        self._checkWritable()
        self._check(req, wire.ENOSPC, False)
        noHole = req.flags & wire.CMD_FLAG_NO_HOLE
        if noHole and req.flags & wire.CMD_FLAG_FAST_ZERO:
            # Writing zeros is no faster than a WRITE: fail fast.
            raise Refused(wire.ENOTSUP, "fast zero needs a hole")
        offset, end = req.offset, req.offset + req.length
        head = min(self._roundUp(offset), end)
        tail = max(end - end % self.sector, head)
        steps = []
        if offset < head:
            steps.append(self._patch(offset, _ZEROES[:head - offset]))
        if head < tail:
            if noHole:
                steps.append(self.locks.run(
                    head, tail, False, lambda: self._zeroFill(head, tail)))
            else:
                # A trimmed range reads as zeros (IBlockDevice.trim).
                steps.append(self.locks.run(
                    head, tail, False,
                    lambda: self.device.trim(head, tail - head)))
        if tail < end:
            steps.append(self._patch(tail, _ZEROES[:end - tail]))
        return self._done(req, _gather(steps))

    def _zeroFill(self, start: int, end: int) -> Deferred:
        """Write zeros over [start, end), one chunk after the other."""
        d: Deferred = succeed(None)
        for pos in range(start, end, ZERO_CHUNK):
            d.addCallback(self._zeroChunk, pos, min(ZERO_CHUNK, end - pos))
        return d

    def _zeroChunk(self, _: object, pos: int, length: int) -> Deferred:
        return self.device.write(pos, _ZEROES[:length])

    def _blockStatus(self, req: wire.Request) -> Deferred:
        contextId = self.export.metaContextId
        if contextId is None or not self.structured:
            raise Refused(wire.EINVAL, "no metadata context negotiated")
        self._check(req, wire.EINVAL, False)
        if not req.length:
            raise Refused(wire.EINVAL, "zero-length block status")
        # No allocation query on the backend: the range is data (flags 0),
        # which proto.md says is always safe to report.
        return succeed([wire.blockStatusChunk(
            req.cookie, contextId, [(req.length, 0)])])

    # -- read-modify-write -----------------------------------------------
    def _roundUp(self, offset: int) -> int:
        rest = offset % self.sector
        return offset + self.sector - rest if rest else offset

    def _cover(self, offset: int, length: int) -> Tuple[int, int]:
        start = offset - offset % self.sector
        end = min(self._roundUp(offset + length), self.size)
        return start, end

    def _patch(self, offset: int, data: Any) -> Deferred:
        """
        Write C{data} at an unaligned C{offset}: read the partial sectors
        at either end, patch them, write the covering aligned range back.
        """
        start, end = self._cover(offset, len(data))
        return self.locks.run(start, end, True,
                              lambda: self._rmw(start, end, offset, data))

    def _rmw(self, start: int, end: int, offset: int, data: Any) -> Deferred:
        sector = self.sector
        stop = offset + len(data)
        reads = []
        if offset != start:
            reads.append((start, self.device.read(start, min(sector,
                                                             end - start))))
        lastStart = max(end - sector, start)
        if stop != end and not (reads and lastStart == start):
            reads.append((lastStart, self.device.read(lastStart,
                                                      end - lastStart)))

        def patch(blocks: List[Any]) -> Deferred:
            buf = bytearray(end - start)
            for (at, _), block in zip(reads, blocks):
                buf[at - start:at - start + len(block)] = block
            buf[offset - start:stop - start] = data
            return self.device.write(start, buf)

        return _gather([d for _, d in reads]).addCallback(patch)
