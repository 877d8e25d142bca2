"""
The NBD server: a thin Twisted protocol over L{xdiskd.nbd.wire}, serving
the block devices of an L{IBlockDeviceRegistry}.

Option haggling is decided by L{xdiskd.nbd.options.Negotiator}, requests
are executed by L{xdiskd.nbd.commands.Transmission}; this module moves
bytes, bounds the work in flight, and owns the connection's lifetime
(device open/close, DISC, shutdown).
"""

from typing import Any, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from xdiskd.labels import clean
from xdiskd.nbd import wire
from xdiskd.nbd.budget import MemoryBudget
from xdiskd.nbd.commands import NOT_DIRECT, SectorLocks, Transmission
from xdiskd.nbd.options import (CLOSE, STARTTLS, TRANSMIT, Decision, Export,
                                Negotiator)
from xdiskd.io.read import leanReader
from xdiskd.io.send import Sender, beginBatch, endBatch
from xdiskd.io.sockets import tuneTransport

log = Logger(namespace="xdiskd.nbd.server")

#: Default bound on READ/WRITE bytes in flight per connection.
MAX_INFLIGHT_BYTES = 32 * 1024 * 1024
#: Default bound on requests in flight per connection.
MAX_INFLIGHT_REQUESTS = 1024
#: Default bound on reply bytes written after the transport reported a
#: full send buffer.
MAX_BUFFERED_BYTES = 8 * 1024 * 1024

# reasons to stop reading from the client
_PAUSE_INFLIGHT = 1
_PAUSE_TRANSPORT = 2
_PAUSE_STOPPED = 4
_PAUSE_DEVICE = 8
_PAUSE_OPENING = 16     # GO/EXPORT_NAME waits for the device to open
_PAUSE_BUDGET = 32      # the daemon-wide NBD memory budget (budget.py)

#: Default seconds from connection to the transmission phase.
HANDSHAKE_TIMEOUT = 30.0


@implementer(IPushProducer, IHandshakeListener)
class NBDServerProtocol(Protocol):
    """
    One NBD connection, server side.

    It registers itself as a streaming producer with its transport: when
    the transport's send buffer fills, and more than the factory's
    C{maxBufferedBytes} of replies were written since, it stops reading
    requests; likewise while more than C{maxInflightBytes} of READ/WRITE
    data or C{maxInflightRequests} requests are in flight, and while the
    factory's L{MemoryBudget} (shared by every connection) says so.
    """

    factory: Any  # an NBDServerFactory
    transport: Any

    def __init__(self) -> None:
        # Deferreds, or handles of direct requests (see _request).
        self._pending: Dict[int, Any] = {}
        self._nextKey = 0
        self._inflightBytes = 0
        self._pauses = 0
        self._readingPaused = False
        self._draining = False
        self._connected = False
        self._stopped = False
        self._closing = False
        self._disconnecting = False
        self._transportFull = False
        self._writtenSinceFull = 0
        self._replyHeld = 0     # reply bytes written while the buffer is full
        self.budgetHeld = 0     # what the factory's budget counts for us
        self._device: Any = None
        self._transmission: Optional[Transmission] = None
        self._logged: Set[type] = set()
        self._suppressed = 0
        self._closedWaiters: List[Deferred] = []
        self._handshakeCall: Any = None

    # -- Twisted callbacks -------------------------------------------------
    def connectionMade(self) -> None:
        f = self.factory
        self._conn = wire.NBDServerConnection(
            maxPayload=f.maxPayload, discardLimit=f.discardLimit)
        self._negotiator = Negotiator(
            f.registry, tlsRequired=f.tlsRequired,
            tlsAvailable=f.tlsContextFactory is not None,
            maxPayload=f.maxPayload)
        self._connected = True
        f.connections.add(self)
        f.budget.add(self)
        tuneTransport(self.transport)
        self._writer = Sender(self.transport)
        # STARTTLS may come: the reader looks the protocol up each time.
        leanReader(self.transport, None, self._conn.recvBuffer,
                   self._filled, self._canRead)
        self.transport.registerProducer(self, True)
        self.transport.write(self._conn.greeting())
        if f.clock is not None:
            # Slow-loris guard: haggling (and TLS) must end in time.
            self._handshakeCall = f.clock.callLater(f.handshakeTimeout,
                                                    self._handshakeDue)

    def dataReceived(self, data: bytes) -> None:
        self._take(self._conn.receiveData, data)

    def _canRead(self) -> bool:
        return not self._pauses and not self._stopped and self._connected

    def _filled(self, count: int) -> None:
        """C{count} payload bytes were read into the codec's buffer."""
        self._take(self._conn.filled, count)

    def _take(self, give: Any, arg: Any) -> None:
        # Hand what was read to the codec, act on it, send the replies
        # produced meanwhile together.
        if self._stopped:
            return
        beginBatch()
        try:
            give(arg)
            self._drain()
        finally:
            endBatch()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connected = False
        self._stopped = True
        self._cancelHandshakeTimer()
        pending, self._pending = self._pending, {}
        for d in pending.values():
            if d is not _STARTING:
                d.cancel()
        if self._device is not None:
            device, self._device = self._device, None
            self.factory.releaseLocks(device)
            self._closeDevice(device)
        if self._suppressed:
            log.warn("NBD connection closed; {count} more unexpected errors "
                     "were not logged", count=self._suppressed)
        self.factory.connections.discard(self)
        self.factory.budget.remove(self)
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            d.callback(None)

    # -- IPushProducer: the transport's send buffer --------------------------
    def pauseProducing(self) -> None:
        self._transportFull = True
        self._writtenSinceFull = 0

    def resumeProducing(self) -> None:
        self._transportFull = False
        if self._replyHeld:
            # The send buffer is empty again: its replies are gone.
            self.factory.budget.change(self, -self._replyHeld)
            self._replyHeld = 0
        self._unpause(_PAUSE_TRANSPORT)

    # -- the daemon-wide memory budget (L{MemoryBudget}) --------------------
    def budgetPaused(self) -> None:
        self._pause(_PAUSE_BUDGET)

    def budgetResumed(self) -> None:
        self._unpause(_PAUSE_BUDGET)

    def stopProducing(self) -> None:
        self._pauses |= _PAUSE_STOPPED

    # -- public --------------------------------------------------------------
    def whenClosed(self) -> Deferred:
        """Return a L{Deferred} that fires when the connection is lost."""
        if not self._connected and self._stopped:
            return succeed(None)
        d: Deferred = Deferred()
        self._closedWaiters.append(d)
        return d

    def shutdown(self) -> Deferred:
        """
        Stop serving: while haggling close at once; in transmission stop
        reading, finish the requests in flight, then close.

        @return: L{whenClosed}.
        """
        d = self.whenClosed()
        if not self._connected:
            return d
        self._negotiator.shuttingDown = True
        if self._transmission is None:
            self._close()
        else:
            self._finish()
        return d

    # -- reading -----------------------------------------------------------
    def _pause(self, reason: int) -> None:
        self._pauses |= reason
        if not self._readingPaused and self._connected and not self._stopped:
            self._readingPaused = True
            self.transport.pauseProducing()

    def _unpause(self, reason: int) -> None:
        if not self._pauses & reason:
            return
        self._pauses &= ~reason
        if self._pauses:
            return
        self._drain()
        if (not self._pauses and self._readingPaused and self._connected
                and not self._stopped):
            self._readingPaused = False
            self.transport.resumeProducing()

    def _drain(self) -> None:
        """Act on every complete message the codec holds, unless paused."""
        if self._draining:
            return
        self._draining = True
        try:
            conn = self._conn
            while not self._pauses and not self._stopped:
                try:
                    event = conn.nextEvent()
                except wire.NBDProtocolError as e:
                    self._protocolError(e)
                    return
                if isinstance(event, wire.Request):
                    if event.type == wire.CMD_DISC:
                        self._finish()
                        return
                    self._request(event)
                elif event is wire.NEED_DATA or event is wire.PAUSED:
                    return
                elif isinstance(event, wire.OptionRequest):
                    self._option(event)
                elif isinstance(event, wire.OversizedWrite):
                    assert self._transmission is not None
                    self._write(self._transmission.oversized(event))
                elif isinstance(event, wire.ClientFlags):
                    self._clientFlags(event)
        except Exception:
            # A bug here must not reach the reactor; drop this client.
            self._bug(Failure())
        finally:
            self._draining = False

    def _protocolError(self, error: wire.NBDProtocolError) -> None:
        log.warn("NBD client {peer} broke the protocol: {error}; closing",
                 peer=_peer(self.transport), error=clean(str(error)))
        self._close()

    def _clientFlags(self, flags: wire.ClientFlags) -> None:
        if self.factory.tlsRequired and not flags.fixedNewstyle:
            # TLS needs fixed newstyle; this client can never get there.
            self._close()
            return
        self._negotiator.clientFlags(flags)

    # -- haggling ----------------------------------------------------------
    def _option(self, event: wire.OptionRequest) -> None:
        result = self._negotiator.handleOption(event.option, event.data)
        if isinstance(result, Deferred):
            if not result.called:
                # Read nothing more until the device has opened.
                self._pause(_PAUSE_OPENING)
            result.addCallback(self._decided).addErrback(self._bug)
        else:
            self._decided(result)

    def _decided(self, decision: Decision) -> None:
        export = decision.export
        if self._stopped:
            if export is not None:
                # The device opened after the client left or was closed.
                self._closeDevice(export.device)
            return
        if decision.replies:
            # Counted like replies: a client that never reads stops us.
            self._write(decision.replies)
        action = decision.action
        if action == CLOSE:
            self._close()
            return
        if action == TRANSMIT:
            assert export is not None
            self._enterTransmission(export)
            self._conn.startTransmission()
        elif action == STARTTLS:
            if self._conn.buffered:
                # Plaintext sent after STARTTLS would be read as if it had
                # come through TLS (STARTTLS command injection).
                log.warn("NBD client {peer} sent data after STARTTLS "
                         "before the TLS handshake; closing",
                         peer=_peer(self.transport))
                self._abort()
                return
            self._conn.resumeOptions()
            # The ACK must leave in clear before TLS starts.
            self._writer.flush()
            self.transport.startTLS(self.factory.tlsContextFactory)
            self._negotiator.tlsStarted()
        elif self._conn.held:
            self._conn.resumeOptions()
        if self._pauses & _PAUSE_OPENING:
            self._unpause(_PAUSE_OPENING)
        else:
            self._drain()

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: STARTTLS finished; vet the client."""
        check = self.factory.peerCheck
        why = check(self.transport) if check is not None else None
        if why is not None:
            log.warn("NBD client {peer}: refusing TLS client: {why}",
                     peer=_peer(self.transport), why=clean(str(why)))
            self._abort()

    def _handshakeDue(self) -> None:
        self._handshakeCall = None
        if self._transmission is not None or self._stopped:
            return
        f = self.factory
        if self._pauses & _PAUSE_OPENING:
            # We are the slow side (the device is opening): wait on.
            self._handshakeCall = f.clock.callLater(f.handshakeTimeout,
                                                    self._handshakeDue)
            return
        log.warn("NBD client {peer} did not finish the handshake in {t}s; "
                 "closing", peer=_peer(self.transport), t=f.handshakeTimeout)
        self._abort()

    def _cancelHandshakeTimer(self) -> None:
        call, self._handshakeCall = self._handshakeCall, None
        if call is not None and call.active():
            call.cancel()

    def _enterTransmission(self, export: Export) -> None:
        self._cancelHandshakeTimer()
        self._device = export.device
        locks = self.factory.locksFor(export.device)
        self._transmission = Transmission(export, locks, self._unexpected)

    # -- transmission --------------------------------------------------------
    def _request(self, req: wire.Request) -> None:
        kind = req.type
        cost = (min(req.length, self.factory.maxPayload)
                if kind == wire.CMD_READ or kind == wire.CMD_WRITE else 0)
        self._inflightBytes += cost
        key = self._nextKey = self._nextKey + 1
        f = self.factory
        if cost:
            f.budget.change(self, cost)
        if (self._inflightBytes > f.maxInflightBytes
                or len(self._pending) >= f.maxInflightRequests):
            self._pause(_PAUSE_INFLIGHT)
        transmission = self._transmission
        assert transmission is not None
        pending = self._pending
        if transmission.direct:
            # Plain READ/WRITE on a callback device: no Deferred.
            pending[key] = _STARTING
            handle = transmission.start(req, self._replied, key, cost)
            if handle is NOT_DIRECT:
                del pending[key]
            else:
                if key in pending:
                    pending[key] = handle
                self._checkCongestion()
                return
        d = transmission.handle(req)
        if not d.called:
            pending[key] = d
        self._checkCongestion()
        d.addCallback(self._replied, key, cost).addErrback(self._bug)

    def _checkCongestion(self) -> None:
        device = self._device
        if (getattr(device, "congested", False)
                and not self._pauses & _PAUSE_DEVICE):
            # The unit holds enough for every client: wait until it
            # drains, so memory stays flat as clients are added.
            self._pause(_PAUSE_DEVICE)
            device.whenUncongested().addCallback(  # type: ignore
                lambda _: self._unpause(_PAUSE_DEVICE))

    def _replied(self, pieces: Optional[List[bytes]], key: int,
                 cost: int) -> None:
        # Also called from the device's completion (direct requests): a
        # bug here is ours, not the device's (nor the DMSG link's that
        # delivered the reply).
        try:
            self._pending.pop(key, None)
            self._inflightBytes -= cost
            if pieces is not None and self._connected:
                self._write(pieces)
            f = self.factory
            if cost:
                f.budget.change(self, -cost)
            if (self._pauses & _PAUSE_INFLIGHT
                    and self._inflightBytes <= f.maxInflightBytes
                    and len(self._pending) < f.maxInflightRequests):
                self._unpause(_PAUSE_INFLIGHT)
            if self._disconnecting and not self._pending:
                self._close()
        except Exception:
            self._bug(Failure())

    def _write(self, pieces: List[bytes]) -> None:
        n = 0
        for p in pieces:
            n += len(p)
        self._writer.writeSeq(pieces, n)
        if self._transportFull:
            self._replyHeld += n
            self.factory.budget.change(self, n)
            self._writtenSinceFull += n
            if self._writtenSinceFull > self.factory.maxBufferedBytes:
                self._pause(_PAUSE_TRANSPORT)

    def _finish(self) -> None:
        """DISC or shutdown: read no more, close once nothing is pending."""
        self._disconnecting = True
        self._pause(_PAUSE_STOPPED)
        if not self._pending:
            self._close()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stopped = True
        if self._connected:
            # Replies collected in this batch go out before the close.
            self._writer.flush()
            # A registered producer would keep the transport open.
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def _abort(self) -> None:
        """Close without flushing: the client may not be reading at all."""
        self._close()
        if self._connected:
            self.transport.abortConnection()

    # -- failures ----------------------------------------------------------
    def _closeDevice(self, device: Any) -> None:
        try:
            device.close()
        except Exception:
            log.failure("closing {name} failed", name=device.name)

    def _unexpected(self, f: Failure) -> None:
        if f.type in self._logged:
            self._suppressed += 1
            return
        self._logged.add(f.type)
        log.failure("unexpected error in an NBD request", f)

    def _bug(self, f: Failure) -> None:
        log.failure("NBD server bug", f)
        self._close()


#: A direct request's place in C{_pending} while it is being started.
_STARTING: Any = None


def _peer(transport: Any) -> str:
    try:
        return str(transport.getPeer())
    except Exception:
        return "?"


class NBDServerFactory(Factory):
    """
    Serves the devices of C{registry} over NBD.

    @param registry: the L{IBlockDeviceRegistry} naming the exports.
    @param tlsRequired: FORCEDTLS mode: every option but STARTTLS and
        ABORT is refused until TLS runs (needs C{tlsContextFactory}).
    @param tlsContextFactory: a TLS server context factory (as for
        C{ITLSTransport.startTLS}); None answers STARTTLS with ERR_UNSUP.
    @param maxPayload: largest READ/WRITE accepted, and the maximum block
        size advertised.
    @param discardLimit: WRITEs above C{maxPayload} and up to this have
        their payload skipped and get EINVAL; larger ones close the
        connection.
    @param peerCheck: None, or C{f(transport)} called when STARTTLS's
        handshake is done, returning None or why the client is refused
        (see L{xdiskd.tls.PeerPolicy}).
    @param clock: an C{IReactorTime} for the handshake timeout (None: no
        timeout).
    @param handshakeTimeout: seconds from connection to transmission;
        slower clients are disconnected (time spent opening the device
        does not count).
    @param budget: the L{MemoryBudget} shared with the daemon's other
        NBD listeners (None: one of its own, 256 MiB).
    @ivar connections: the live L{NBDServerProtocol}s.
    """

    protocol = NBDServerProtocol
    noisy = False   # no "Starting factory <...object at 0x...>" lines

    def __init__(self, registry: Any,
                 tlsRequired: bool = False,
                 tlsContextFactory: Any = None,
                 maxPayload: int = wire.MAX_PAYLOAD,
                 maxInflightBytes: int = MAX_INFLIGHT_BYTES,
                 maxInflightRequests: int = MAX_INFLIGHT_REQUESTS,
                 maxBufferedBytes: int = MAX_BUFFERED_BYTES,
                 discardLimit: int = wire.DISCARD_LIMIT,
                 peerCheck: Any = None, clock: Any = None,
                 handshakeTimeout: float = HANDSHAKE_TIMEOUT,
                 budget: Optional[MemoryBudget] = None) -> None:
        if tlsRequired and tlsContextFactory is None:
            raise ValueError("tlsRequired needs a tlsContextFactory")
        self.peerCheck = peerCheck
        self.clock = clock
        self.handshakeTimeout = handshakeTimeout
        self.registry = registry
        self.tlsRequired = tlsRequired
        self.tlsContextFactory = tlsContextFactory
        self.maxPayload = maxPayload
        self.maxInflightBytes = maxInflightBytes
        self.maxInflightRequests = maxInflightRequests
        self.maxBufferedBytes = maxBufferedBytes
        self.discardLimit = discardLimit
        self.budget = budget if budget is not None else MemoryBudget()
        self.connections: Set[NBDServerProtocol] = set()
        self._locks: Dict[int, Tuple[Any, SectorLocks, int]] = {}

    def locksFor(self, device: Any) -> SectorLocks:
        """Return the L{SectorLocks} every connection to C{device} shares."""
        entry = self._locks.get(id(device))
        if entry is None:
            entry = (device, SectorLocks(), 0)
        self._locks[id(device)] = (device, entry[1], entry[2] + 1)
        return entry[1]

    def releaseLocks(self, device: Any) -> None:
        """Drop one connection's use of C{device}'s locks."""
        entry = self._locks.get(id(device))
        if entry is None:
            return
        if entry[2] <= 1:
            del self._locks[id(device)]
        else:
            self._locks[id(device)] = (device, entry[1], entry[2] - 1)

    def shutdown(self) -> Deferred:
        """
        Stop every connection (see L{NBDServerProtocol.shutdown}).

        @return: a L{Deferred} firing when all of them are closed.
        """
        return DeferredList([p.shutdown() for p in list(self.connections)])
