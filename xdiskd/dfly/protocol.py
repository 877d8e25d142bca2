"""
The Twisted side of DragonFly links: a protocol wrapper that runs the
negotiation of L{xdiskd.dfly.handshake} on a fresh connection, then
hands the DMSG link a transport that encrypts what it writes and gives it
what it reads decrypted.  The DMSG codec, link, relay and limits do not
know; they see an ordinary transport.

Per connection, by the peer's numeric address (L{KeyDirectory.decide}):
  - C{remote/<ip>.pub}: negotiate, then the encrypted stream;
  - C{remote/<ip>.none}: the DMSG link gets the socket's own transport
    (no byte negotiated, and the plain fast paths of
    L{xdiskd.io} apply);
  - neither: refused, with one log line naming the files looked for.

The negotiation has a timeout (libdmsg has none; its comment promises
10 s).  Every failure closes that connection only and logs one line
naming the cause.  The wrapped protocol gets C{makeConnection} only
once the stream is up (and C{connectionLost} only then): for a client
endpoint, the connection is made when the negotiation is done, and a
failed negotiation is a failed connection attempt (a C{ClientService}
retries it with its back-off).

The handshake's RSA (a few ms with GMP, more with 4096-bit keys or
without it, L{xdiskd.dfly.bigint}) runs in the reactor's thread pool
when the clock is a reactor with one, with GMP allowed to release the
GIL, so other links and NBD clients are not held up.  The connection is
not read meanwhile, so what the peer sent (its close included) is seen
in order after the RSA's outcome, as it was inline.  With a plain clock
(tests) it runs inline.

Over the encrypted transport the link's lean reader and eager sender do
not apply (it is not a socket transport: L{xdiskd.io} falls back to
plain C{write}); they are used here instead, under the encryption, on
the socket transport.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.internet.interfaces import (
    IConsumer, IPushProducer, IStreamClientEndpoint, IStreamServerEndpoint,
    ITransport)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from xdiskd.dfly import bigint
from xdiskd.dfly.handshake import BLOCK_SIZE, Established, Negotiation, \
    NegotiationError
from xdiskd.dfly.keys import Encrypted, KeyDirectory, Plain, Refused
from xdiskd.dfly.stream import StreamError
from xdiskd.io.read import leanReader
from xdiskd.io.send import Sender
from xdiskd.io.sockets import tuneTransport

#: Seconds the whole negotiation (handshake and format) may take.
NEGOTIATION_TIMEOUT = 10.0
#: Bytes a peer may send while our RSA runs: its block, the 80 bytes
#: that tell its format, and then some DMSG (its LNK_CONN and more).
_PENDING_LIMIT = 1 << 20

log = Logger(namespace="xdiskd.dfly")
#: How a plain DMSG stream starts (magic 0x4832, little-endian).
DMSG_MAGIC = b"\x32\x48"


class NegotiationFailed(ConnectionError):
    """A client connection closed before its stream was up."""


def _where(addr: Any) -> str:
    host = getattr(addr, "host", None)
    port = getattr(addr, "port", None)
    if host is None:
        return str(addr)
    return "%s:%s" % (host, port) if port is not None else str(host)


@implementer(ITransport, IPushProducer, IConsumer)
class EncryptedTransport:
    """
    What the DMSG link writes to: encrypts and sends on C{lower}; reading
    pauses and resumes C{lower}; producers register with C{lower}.
    """

    def __init__(self, owner: "DFlyProtocol", lower: Any, tx: Any) -> None:
        self._owner = owner
        self._lower = lower
        self._tx = tx
        self._sender = Sender(lower)
        self.paused = False
        self.bytesOut = 0

    # ITransport
    def write(self, data: bytes) -> None:
        self.writeSequence((data,))

    def writeSequence(self, seq: Any) -> None:
        if self._owner.state != "encrypted":
            return
        out: List[bytes] = []
        size = 0
        try:
            for b in seq:
                c = self._tx.update(b)
                if c:
                    out.append(c)
                    size += len(c)
        except StreamError as e:
            self._owner.fail(str(e))
            return
        if size:
            self.bytesOut += size
            self._sender.writeSeq(out, size)

    def loseConnection(self) -> None:
        self._sender.flush()
        self._lower.loseConnection()

    def abortConnection(self) -> None:
        self._lower.abortConnection()

    @property
    def lowerTransport(self) -> Any:
        """The TCP transport underneath (for socket options only, such as
        the link's keepalive: never write to it, that bypasses the
        cipher)."""
        return self._lower

    def getPeer(self) -> Any:
        return self._lower.getPeer()

    def getHost(self) -> Any:
        return self._lower.getHost()

    # IConsumer
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._lower.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._lower.unregisterProducer()

    # IPushProducer: the link pausing its reading
    def pauseProducing(self) -> None:
        self.paused = True
        self._lower.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self._lower.resumeProducing()

    def stopProducing(self) -> None:
        self._lower.stopProducing()


class DFlyProtocol(Protocol):
    """
    Negotiates, then carries C{wrappedProtocol} (a DMSG link).

    @ivar state: C{"new"}, C{"negotiating"}, C{"plain"}, C{"encrypted"}
        or C{"closed"}.
    @ivar established: the L{Established} stream once up.
    """

    def __init__(self, factory: "DFlyFactory", wrapped: Any) -> None:
        self.factory = factory
        self.wrappedProtocol = wrapped
        self.state = "new"
        self.where = "?"
        self.established: Optional[Established] = None
        self._negotiation: Optional[Negotiation] = None
        self._timer: Any = None
        self._rx: Any = None
        self._lowerTransport: Any = None
        self._made = False
        self._waiter: Optional[Deferred] = None
        # RSA in a thread: bytes that arrive meanwhile wait here.
        self._busy = False
        self._pending = bytearray()

    def whenUp(self) -> Deferred:
        """
        Fires with the wrapped protocol once the stream is up (or at once
        for a plain link); fails with L{NegotiationFailed} if the
        connection closes first.  Cancelling it closes the connection.
        """
        if self._made:
            return _fired(self.wrappedProtocol)
        if self.state == "closed":
            return _failed("connection closed during the negotiation")
        self._waiter = Deferred(lambda d: self.fail("connection cancelled"))
        return self._waiter

    def _makeWrapped(self, transport: Any) -> None:
        self._made = True
        self.wrappedProtocol.makeConnection(transport)
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(self.wrappedProtocol)

    def logPrefix(self) -> str:
        return "dfly"

    # ---------------------------------------------------------------
    def connectionMade(self) -> None:
        t = self.transport
        assert t is not None
        peer = t.getPeer()
        self.where = _where(peer)
        decision = self.factory.keys.decide(getattr(peer, "host", "") or "")
        if isinstance(decision, Refused):
            self.fail("refused: " + decision.why)
            return
        if isinstance(decision, Plain):
            self.state = "plain"
            log.info("dfly {where}: plain DMSG, nothing negotiated ({path})",
                     where=self.where, path=decision.path)
            self._makeWrapped(t)
            return
        assert isinstance(decision, Encrypted)
        keys = self.factory.keys.own
        assert keys is not None
        try:
            neg = self._negotiation = Negotiation(
                keys.private, decision.peer, self.factory.format)
        except NegotiationError as e:
            self.fail(str(e))
            return
        self.state = "negotiating"
        tuneTransport(t)
        self._timer = self.factory.clock.callLater(
            self.factory.timeout, self._timedOut)
        self._offload(neg.start).addCallbacks(
            self._started, self._rsaFailed, errbackArgs=("",))

    def _offload(self, f: Callable[..., Any], *args: Any) -> Deferred:
        """Run C{f} off the reactor, not reading until it is done."""
        self._busy = True
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        return self.factory.offload(f, *args).addBoth(self._idle)

    def _idle(self, result: Any) -> Any:
        self._busy = False
        if self.state == "negotiating" and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        return result

    def _started(self, block: bytes) -> None:
        if self.state != "negotiating":
            return
        # libdmsg writes its block first, then reads: so do we.
        assert self.transport is not None
        self.transport.write(block)
        self._feed()

    def _feed(self) -> None:
        """Hand what arrived to the negotiation (RSA off the reactor)."""
        neg = self._negotiation
        if self._busy or self.state != "negotiating" or neg is None or (
                not self._pending):
            return
        data = bytes(self._pending)
        self._pending.clear()
        if neg.stage == "handshake" and neg.received + len(data) >= (
                BLOCK_SIZE):
            self._offload(neg.receive, data).addCallbacks(
                self._received, self._rsaFailed,
                errbackArgs=("negotiation failed: ",))
            return
        try:
            est = neg.receive(data)
        except NegotiationError as e:
            self.fail("negotiation failed: %s" % (e,))
            return
        if est is not None:
            self._up(est)

    def _received(self, est: Optional[Established]) -> None:
        if self.state != "negotiating":
            return
        if est is None:
            self._feed()
            return
        self._up(est)
        if self._pending and self.state == "encrypted":
            # Arrived while the RSA ran: after what the negotiation kept.
            more = bytes(self._pending)
            self._pending.clear()
            self.dataReceived(more)

    def _rsaFailed(self, f: Failure, prefix: str) -> None:
        if f.check(NegotiationError):
            self.fail(prefix + str(f.value))
        else:
            log.failure("dfly {where}: negotiation crashed", f,
                        where=self.where)
            self.fail("negotiation failed: internal error")

    def dataReceived(self, data: bytes) -> None:
        state = self.state
        if state == "encrypted":
            try:
                plain = self._rx.update(data)
            except StreamError as e:
                self.fail(str(e))
                return
            if plain:
                self.wrappedProtocol.dataReceived(plain)
        elif state == "plain":
            self.wrappedProtocol.dataReceived(data)
        elif state == "negotiating":
            if len(self._pending) + len(data) > _PENDING_LIMIT:
                self.fail("peer sent %d bytes before the negotiation was "
                          "done" % (len(self._pending) + len(data),))
                return
            self._pending += data
            self._feed()

    def _up(self, est: Established) -> None:
        self._cancelTimer()
        self.state = "encrypted"
        self.established = est
        self._rx = est.rx
        t = self.transport
        self._lowerTransport = t
        log.info("dfly {where}: encrypted link up (sending format "
                 "{tx}, receiving {rx}; peer says {msg!r})",
                 where=self.where, tx=est.txFormat, rx=est.rxFormat,
                 msg=est.peerMessage.decode("ascii", "backslashreplace"))
        et = EncryptedTransport(self, t, est.tx)
        leanReader(t, self.dataReceived,
                   canRead=lambda: not et.paused and self.state == (
                       "encrypted"))
        self._makeWrapped(et)
        if est.rest and self.state == "encrypted":
            self.wrappedProtocol.dataReceived(est.rest)

    def _timedOut(self) -> None:
        self._timer = None
        neg = self._negotiation
        detail = ""
        if neg is not None:
            detail = " (%s stage: %d of %d bytes received)" % (
                neg.stage, neg.received, neg.needed)
        self.fail("negotiation timed out after %g s%s" % (
            self.factory.timeout, detail))

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def fail(self, why: str) -> None:
        """Close this connection now, logging C{why} once."""
        if self.state == "closed":
            return
        negotiating = self.state == "negotiating"
        self.state = "closed"
        self._cancelTimer()
        log.warn("dfly {where}: closing: {why}", where=self.where, why=why)
        if self.transport is None:
            return
        if negotiating:
            # Our 512 bytes still go out (they fit any socket buffer): the
            # peer then logs why it refused too, not just an EOF.
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Failure(
            ConnectionError("lost"))) -> None:
        self._cancelTimer()
        state, self.state = self.state, "closed"
        if state == "negotiating":
            neg = self._negotiation
            assert neg is not None
            log.warn("dfly {where}: negotiation failed: {why}",
                     where=self.where, why=_closedDuring(neg, reason))
        elif state == "encrypted" and self._rx.pending:
            log.warn("dfly {where}: stream ended inside a chunk ({n} "
                     "bytes of an incomplete one): truncated",
                     where=self.where, n=self._rx.pending)
        if self._made:
            self.wrappedProtocol.connectionLost(reason)
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.errback(NegotiationFailed(
                "%s: connection closed before the stream was up" % (
                    self.where,)))


def _fired(result: Any) -> Deferred:
    d: Deferred = Deferred()
    d.callback(result)
    return d


def _failed(why: str) -> Deferred:
    d: Deferred = Deferred()
    d.errback(NegotiationFailed(why))
    return d


def _closedDuring(neg: Negotiation, reason: Failure) -> str:
    """Why a connection closed during the negotiation, as far as we can tell."""
    how = reason.getErrorMessage()
    if neg.stage == "handshake" and neg.received == 0:
        return ("closed by the peer before its handshake (%s): it has no "
                "key or .none for our address, or a bad key" % (how,))
    if neg.stage == "handshake" and neg.head.startswith(DMSG_MAGIC):
        return ("closed by the peer after %d of 512 handshake bytes (%s), "
                "which look like plain DMSG: it has a .none file for us, "
                "we a .pub for it" % (neg.received, how))
    if neg.stage == "handshake":
        return ("closed by the peer after %d of 512 handshake bytes (%s): "
                "it probably rejected ours (wrong key for us, or it "
                "expects plain DMSG)" % (neg.received, how))
    return ("closed by the peer after the handshake, %d of 80 stream bytes "
            "received (%s)" % (neg.received, how))


class DFlyFactory(Factory):
    """
    Wraps C{wrappedFactory}'s protocols in L{DFlyProtocol}.

    @param keys: the loaded L{KeyDirectory}.
    @param format: C{"auto"}, C{"U"} or C{"T"}.
    """

    noisy = False
    protocol = DFlyProtocol   # type: ignore[assignment]

    def __init__(self, wrappedFactory: Any, keys: KeyDirectory,
                 format: str = "auto", clock: Any = None,
                 timeout: float = NEGOTIATION_TIMEOUT) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.wrappedFactory = wrappedFactory
        self.keys = keys
        self.format = format
        self.clock = clock
        self.timeout = timeout
        pool = getattr(clock, "getThreadPool", None)
        self._pool = pool() if pool is not None else None

    def offload(self, f: Callable[..., Any], *args: Any) -> Deferred:
        """C{f(*args)} in the reactor's thread pool (inline without one)."""
        if self._pool is None:
            return maybeDeferred(f, *args)
        return deferToThreadPool(self.clock, self._pool, _releasingGIL,
                                 f, *args)

    def startFactory(self) -> None:
        self.wrappedFactory.doStart()

    def stopFactory(self) -> None:
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr: Any) -> Optional[Protocol]:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return DFlyProtocol(self, wrapped)


class _DFlyEndpoint:
    """C{wrapped}, the keys and format, and C{desc} for log lines."""

    def __init__(self, wrapped: Any, keys: KeyDirectory,
                 format: str = "auto", clock: Any = None,
                 desc: str = "") -> None:
        self.desc = desc
        self.wrapped = wrapped
        self.keys = keys
        self.format = format
        self.clock = clock

    def __repr__(self) -> str:
        return "<%s %s>" % (type(self).__name__,
                            self.desc or repr(self.wrapped))


@implementer(IStreamServerEndpoint)
class DFlyServerEndpoint(_DFlyEndpoint):
    """Listens on C{wrapped}; every connection negotiates first."""

    def listen(self, protocolFactory: Any) -> Deferred:
        return self.wrapped.listen(DFlyFactory(
            protocolFactory, self.keys, self.format, self.clock))


@implementer(IStreamClientEndpoint)
class DFlyClientEndpoint(_DFlyEndpoint):
    """
    Connects with C{wrapped}, negotiates, then fires with the protocol
    (a failed negotiation fails the connection attempt).
    """

    def connect(self, protocolFactory: Any) -> Deferred:
        d = self.wrapped.connect(DFlyFactory(
            protocolFactory, self.keys, self.format, self.clock))
        return d.addCallback(lambda p: p.whenUp())


def _releasingGIL(f: Callable[..., Any], *args: Any) -> Any:
    """In a pool thread: let GMP release the GIL while it computes."""
    bigint.releaseGIL()
    return f(*args)
