"""
The DMSG link layer: one Twisted protocol per connection (an "iocom" in
DragonFly's terms) with the transaction state of spec §6.

A L{Transaction} is created by the side that sends CREATE without REPLY
and lives until DELETE went both ways (§6.4).  Each side keeps two tables:
C{tx} for transactions it created and C{rx} for those the peer created;
REVTRANS on a received message selects C{tx}, its absence C{rx} (§6.3).
CREATE messages name their parent by C{circuit}, looked up in C{tx} when
REVCIRC is set and in C{rx} otherwise (§6.2).

Upper layers see a transaction through two callables:
  - C{txn.handler(txn, msg)}: a message of this transaction arrived
    (closing messages arrive as LNK_ERROR: dispatch on C{txn.icmd}, §6.6);
  - C{txn.onChild(child, msg)}: the peer stacked a new transaction on this
    one (the root's is the receiver's C{transactionReceived}).

When a transaction is half-closed (DELETE sent or received) or the link is
lost, every transaction stacked under it is failed locally with a
simulated LNK_ERROR|DELETE carrying LOSTLINK, through its own handler,
deepest first; anything sent on a failed ("dying") transaction is dropped,
so nothing about the children goes on the wire (§6.8, §7.4).

Failed children of a transaction that I{we} closed first stay in their
tables ("late"): the peer has not heard of the close yet and may still
answer them (an importer closing a unit with reads in flight gets the
exporter's replies).  What arrives on a late transaction is dropped
silently and counted in C{lateMessages}, not as a violation; the entry
goes once the peer closes it or the ancestor, or the link is lost.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IHandshakeListener, IPushProducer, ISSLTransport)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from xdiskd.dmsg import constants as C, integrity
from xdiskd.dmsg.limits import DEFAULT_LIMITS, LinkLimits, Watchdog
from xdiskd.dmsg.liveness import Liveness, isPingAnswer, tuneKeepalive
from xdiskd.io.read import leanReader
from xdiskd.io.send import Sender, beginBatch, endBatch
from xdiskd.io.sockets import tuneTransport
from xdiskd.labels import clean, show
from xdiskd.dmsg.wire import (
    BytesLike, Decoder, Encoder, Extension, FramingError, LnkConn, Message)

from xdiskd.dmsg.transaction import (  # noqa: F401 (re-exported)
    Handler, LinkIO)
from xdiskd.dmsg import transaction

# A transaction does not import its link (it is given one); a transaction
# of a DMSGLink is typed as one.
if TYPE_CHECKING:
    Transaction = transaction.Transaction["DMSGLink"]
else:
    Transaction = transaction.Transaction

_linkIds = itertools.count(1)

# CREATE|DELETE|REPLY|REVTRANS: the one reply to a one-message transaction
# of ours.
_ONE_REPLY = C.CREATE | C.DELETE | C.REPLY | C.REVTRANS

# Log at most this many protocol violations per link (then every 1000th).
_VIOLATION_LOG_LIMIT = 20


class LinkError(Exception):
    """A transaction cannot be started or used (link or parent gone)."""


@implementer(IPushProducer, IHandshakeListener)
class DMSGLink(Protocol):
    """
    One DMSG connection.  The factory's C{receiver} (an
    L{xdiskd.interfaces.ILinkReceiver}) is told about the connection and
    its top-level transactions; this class handles framing, the
    transaction tables, LNK_CONN (§7.2), PING and NOSUPP answers, and
    enforces the link's L{LinkLimits} (timers only when given a C{clock}).

    While reading is paused no message is handled: the rest of what was
    already read waits in a backlog, so a layer that pauses (in-flight
    I/O, a peer not reading our replies) stops the work at once.

    @ivar peerConn: the peer's LNK_CONN extension, once received.
    @ivar ourConn: the LNK_CONN extension we sent (with what we offer,
        L{xdiskd.dmsg.integrity}).
    @ivar ready: our LNK_CONN has been answered with error 0.
    @ivar peerCheck: None, or C{f(transport)} called once a TLS handshake
        completes, returning None to go on or why the peer is refused.
    """

    log = Logger()

    def __init__(self, receiver: Any, name: str = "",
                 verifyCRC: bool = True, verifySalt: bool = True,
                 limits: LinkLimits = DEFAULT_LIMITS,
                 clock: Any = None, linkTimeout: float = 0.0) -> None:
        self.receiver = receiver
        self.id = next(_linkIds)
        self.name = name or "link%d" % (self.id,)
        self.decoder = Decoder(verifyCRC, verifySalt)
        self.encoder = Encoder()
        self.tx: Dict[int, Transaction] = {}
        self.rx: Dict[int, Transaction] = {}
        self.root = Transaction(self, 0, None, 0, False)
        self.root.onChild = self._topLevel
        self._msgids = itertools.count(1)
        self.peerConn: Optional[LnkConn] = None
        self.ourConn: Optional[LnkConn] = None
        self.connTxn: Optional[Transaction] = None
        self.ready = False
        self.connected = False
        self.violations = 0
        self.lateMessages = 0
        self.io = LinkIO()
        self._writeFull = False
        self.messagesIn = 0
        self.messagesOut = 0
        self.bytesIn = 0
        self._pauses: Dict[str, None] = {}
        self._lostWaiters: List[Deferred] = []
        self.limits = limits
        self.peerCheck: Optional[Callable[[Any], Optional[str]]] = None
        self.writeResumes = 0
        self._backlog: Deque[Message] = deque()
        self._backlogBytes = 0
        self._draining = False
        self._closing = False
        self._watchdog = (Watchdog(self, clock, limits)
                          if clock is not None else None)
        self.liveness = (Liveness(self, clock, linkTimeout)
                         if clock is not None and linkTimeout > 0 else None)
        #: Why this link was declared dead (None: it was not).
        self.deadReason: Optional[str] = None
        #: Why the connection ended, as Twisted said (None: it has not).
        self.lostReason: Optional[str] = None
        self.connectedAt: Optional[float] = None
        self._clock = clock

    def __repr__(self) -> str:
        return "<DMSGLink %s>" % (self.name,)

    # ---------------------------------------------------------------
    # Connection life cycle

    def connectionMade(self) -> None:
        self.connected = True
        if self.name == "link%d" % (self.id,):
            peer = self.transport.getPeer()  # type: ignore[union-attr]
            self.name = "link%d(%s)" % (self.id, _addr(peer))
        tuneTransport(self.transport)
        self._sender = Sender(self.transport)
        self._sendSeq = self._sender.writeSeq
        # Only pass-through wrappers (endpoints, ClientService) sit
        # between a plain socket transport and us: read straight in.
        leanReader(self.transport, self.dataReceived, self._recvBuffer,
                   self._filled, self._canRead)
        if not ISSLTransport.providedBy(self.transport):
            # Over TLS this waits for handshakeCompleted: TLS pauses its
            # producer during the handshake, and pausing our reading then
            # would starve the handshake.
            self.transport.registerProducer(self, True)  # type: ignore
        self.ourConn = integrity.offer(self, self.receiver.localConn())
        self.connTxn = self.startTransaction(
            None, C.LNK_CONN, self.ourConn, None, self._connReply)
        self.log.info("{link}: connected, LNK_CONN sent", link=self.name)
        if self._watchdog is not None:
            self._watchdog.start()
        if self.liveness is not None:
            self.connectedAt = self._clock.seconds()
            tuneKeepalive(self.transport, self.liveness.timeout)
            self.liveness.start()
        self.receiver.linkMade(self)

    def connectionLost(self, reason: Failure = Failure(
            ConnectionError("lost"))) -> None:
        if not self.connected:
            return
        self.connected = False
        self.ready = False
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.liveness is not None:
            self.liveness.stop()
        self._backlog.clear()
        self._backlogBytes = 0
        # §7.4: nothing is sent; fail everything locally, deepest first.
        for child in list(self.root.children):
            self._abort(child, C.ERR_LOSTLINK)
        self.lostReason = reason.getErrorMessage()
        self.log.info("{link}: disconnected ({why})", link=self.name,
                      why=self.lostReason)
        self.receiver.linkLost(self, reason)
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(self)

    def whenLost(self) -> Deferred:
        """A Deferred that fires once the connection is gone."""
        if not self.connected:
            return succeed(self)
        d: Deferred = Deferred()
        self._lostWaiters.append(d)
        return d

    def close(self, why: str = "closed") -> None:
        """Drop the connection now (abort, do not wait for the peer)."""
        if self.transport is not None and self.connected:
            self.log.info("{link}: closing: {why}", link=self.name, why=why)
            self._abortTransport()

    def declareDead(self, silence: float, owed: str) -> None:
        """
        Close the link: nothing arrived for C{silence} seconds while
        C{owed} (see L{xdiskd.dmsg.liveness}).  To the layers above this
        is a lost connection, as any other.
        """
        if self.transport is None or not self.connected:
            return
        waiting = self.waitingCount()
        self.deadReason = "nothing received for %.1f s (%s)" % (silence,
                                                                 owed)
        self.log.warn("{link}: dead: nothing received for {silence} s with "
                      "{waiting} transactions waiting on the peer ({owed}); "
                      "closing", link=self.name,
                      silence="%.1f" % (silence,), waiting=waiting,
                      owed=owed)
        self._abortTransport()

    def waitingCount(self) -> int:
        """Transactions of ours waiting on the peer (as awaitingReplies)."""
        return sum(1 for txn in self.tx.values() if _waitsOnPeer(txn))

    def sendPing(self) -> None:
        """A one-way LNK_PING (liveness probe)."""
        self._write(Message(C.LNK_PING))

    def limitExceeded(self, name: str, value: Any, detail: str) -> None:
        """Close the link because the peer went over limit C{name}."""
        if self.transport is not None and self.connected:
            self.log.warn("{link}: closing: limit {name}={value} exceeded: "
                          "{detail}", link=self.name, name=name, value=value,
                          detail=detail)
            self._abortTransport()

    def _abortTransport(self) -> None:
        # Nothing more is handled, even before connectionLost arrives.
        if not self._closing:
            self._closing = True
            self._backlog.clear()
            self._backlogBytes = 0
            self.transport.abortConnection()  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        """
        IHandshakeListener: TLS is up.  Log the peer's certificate
        subject and let C{peerCheck} refuse it.
        """
        check = self.peerCheck
        why = check(self.transport) if check is not None else None
        if why is not None:
            self.log.warn("{link}: refusing TLS peer: {why}",
                          link=self.name, why=clean(str(why)))
            self._abortTransport()
        else:
            self.log.info("{link}: TLS up, peer {subject}", link=self.name,
                          subject=show(_peerSubject(self.transport)))
            self.transport.registerProducer(self, True)  # type: ignore

    # ---------------------------------------------------------------
    # Back-pressure.  Reading stops while any reason holds: the
    # transport's write buffer is full ("write", via IPushProducer) or a
    # layer above has too much in flight.  Messages already read wait in
    # the backlog and are handled, in order, once every reason is gone.

    @property
    def readingPaused(self) -> bool:
        return bool(self._pauses)

    @property
    def writeBlocked(self) -> bool:
        """The transport's send buffer is full (the peer is not reading)."""
        return self._writeFull

    def awaitingReplies(self) -> bool:
        """
        Some transaction of ours (an open, an I/O, a forwarded one) still
        waits for the peer.  Our own LNK_CONN and spans wait for nothing.
        """
        for txn in self.tx.values():
            if _waitsOnPeer(txn):
                return True
        return False

    def pauseReading(self, reason: str) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._pauses[reason] = None

    def resumeReading(self, reason: str) -> None:
        if self._pauses.pop(reason, 0) is None and not self._pauses:
            if self._backlog:
                self._drain()
            if self.transport is not None and self.connected and (
                    not self._pauses):
                self.transport.resumeProducing()  # type: ignore

    def pauseProducing(self) -> None:
        self._writeFull = True
        # Stop taking requests while the peer does not read our replies,
        # but never stop reading replies we are waiting for: two daemons
        # that both wait on each other would otherwise both stop reading
        # with full send buffers, and deadlock.  What we send is bounded
        # by our own tags and limits.
        if not self.awaitingReplies():
            self.pauseReading("write")

    def resumeProducing(self) -> None:
        self._writeFull = False
        self.writeResumes += 1
        self.resumeReading("write")

    def stopProducing(self) -> None:
        pass

    # ---------------------------------------------------------------
    # Receiving

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        beginBatch()
        try:
            self._dataReceived(data)
        finally:
            endBatch()

    def _canRead(self) -> bool:
        return not self._pauses and not self._closing and bool(self.connected)

    def _recvBuffer(self) -> Optional[memoryview]:
        """Where the rest of a large message can be read without a copy."""
        if self._closing:
            return None
        return self.decoder.recvBuffer()

    def _filled(self, count: int) -> None:
        """C{count} bytes were read into L{_recvBuffer}'s view."""
        if self._closing:
            return
        beginBatch()
        try:
            self._dataReceived(count, True)
        finally:
            endBatch()

    def _dataReceived(self, data: Any, filled: bool = False) -> None:
        try:
            if filled:
                self.bytesIn += data
                messages = self.decoder.filled(data)
            else:
                self.bytesIn += len(data)
                messages = self.decoder.feed(data)
        except FramingError as e:
            self.log.warn("{link}: framing error, closing: {cause}: {e}",
                          link=self.name, cause=type(e).__name__, e=e)
            self._abortTransport()
            return
        if self._pauses or self._draining or self._backlog:
            self._queue(messages, 0)
        else:
            self._draining = True
            try:
                for i, msg in enumerate(messages):
                    if not self._handle(msg):
                        break
                    if self._pauses:
                        self._queue(messages, i + 1, front=True)
                        break
            finally:
                self._draining = False
        if self._backlog and not self._pauses:
            self._drain()
        held = self.decoder.buffered + self._backlogBytes
        if held > self.limits.buffered:
            self.limitExceeded("buffered", self.limits.buffered,
                               "%d bytes not yet handled" % (held,))

    def _queue(self, messages: List[Message], start: int,
               front: bool = False) -> None:
        # front: these were read before anything already queued.
        if self._closing:
            return
        rest = messages[start:]
        if front:
            self._backlog.extendleft(reversed(rest))
        else:
            self._backlog.extend(rest)
        for msg in rest:
            self._backlogBytes += _wireSize(msg)

    def _drain(self) -> None:
        """Handle the backlog, in order, while reading is not paused."""
        if self._draining:
            return
        self._draining = True
        try:
            backlog = self._backlog
            while backlog and not self._pauses:
                msg = backlog.popleft()
                self._backlogBytes -= _wireSize(msg)
                if not self._handle(msg):
                    break
        finally:
            self._draining = False

    def _handle(self, msg: Message) -> bool:
        """Handle one message; False once the link is going away."""
        if not self.connected or self._closing:
            return False
        self.messagesIn += 1
        try:
            self._receive(msg)
        except Exception:
            self.log.failure("{link}: error handling {msg}, closing",
                             link=self.name, msg=msg)
            self._abortTransport()
            return False
        return True

    def _violation(self, why: str, msg: Message) -> None:
        """A state-rule violation: drop the message, log (rate-limited)."""
        self.violations += 1
        n = self.violations
        if n <= _VIOLATION_LOG_LIMIT or n % 1000 == 0:
            self.log.warn("{link}: dropped {msg}: {why} (violation #{n})",
                          link=self.name, msg=msg, why=why, n=n)

    def _receive(self, msg: Message) -> None:
        cmd = msg.cmd
        if cmd & _ONE_REPLY == _ONE_REPLY:
            # The single reply to a one-message transaction of ours (an
            # I/O): the rules below, for the case that passes them all.
            txn = self.tx.get(msg.msgid)
            if (txn is not None and txn.txDelete and not txn.rxCreate
                    and not txn.rxDelete and not txn.late
                    and not txn.children and txn.parent is not None
                    and txn.parent.msgid == msg.circuit):
                txn.rxCreate = txn.rxDelete = True
                handler = txn.handler
                if handler is not None:
                    handler(txn, msg)
                else:
                    txn.reply(0)
                # _maybeGone: DELETE went both ways.
                if self.tx.get(txn.msgid) is txn:
                    del self.tx[txn.msgid]
                parent = txn.parent
                if txn in parent.children:
                    del parent.children[txn]
                waiters = txn._closedWaiters
                if waiters:
                    txn._closedWaiters = None
                    for d in waiters:
                        d.callback(txn)
                return
        if cmd & C.CREATE and not cmd & C.REPLY:
            # §6.4: the peer opens a transaction.
            if msg.msgid == 0:
                return self._violation("CREATE with msgid 0", msg)
            if msg.msgid in self.rx:
                return self._violation("duplicate CREATE", msg)
            circuit = msg.circuit
            if circuit == 0:
                parent = self.root
            else:
                p = (self.tx if cmd & C.REVCIRC else self.rx).get(circuit)
                if p is not None and not p.rxDelete and (
                        p.txDelete or p.late):
                    # §6.8: raced our close of the parent; the peer
                    # fails it on its side when the close arrives.
                    self.lateMessages += 1
                    return
                if p is None or not p.isOpen:
                    return self._violation("no open parent", msg)
                parent = p
            limits = self.limits
            if len(self.rx) >= limits.transactions:
                return self.limitExceeded(
                    "transactions", limits.transactions,
                    "%d open transactions of the peer" % (len(self.rx),))
            if parent.peerChildren >= limits.children:
                return self.limitExceeded(
                    "children", limits.children,
                    "%d transactions of the peer under %r" % (
                        parent.peerChildren, parent))
            if cmd & C.DELETE:
                oneShot = parent.onOneShot
                if oneShot is not None and oneShot(parent, msg):
                    return
            txn = Transaction(self, msg.msgid, parent,
                              cmd & C.BASECMDMASK, False)
            txn.rxCreate = True
            if cmd & C.DELETE:
                txn.rxDelete = True
            self.rx[msg.msgid] = txn
            parent.children[txn] = None
            parent.peerChildren += 1
            onChild = parent.onChild
            if onChild is None or onChild(txn, msg) is False:
                # §6.9: unsupported new transaction → NOSUPP return.
                txn.reply(C.ERR_NOSUPP)
            self._maybeGone(txn)
            return
        table = self.tx if cmd & C.REVTRANS else self.rx
        found = table.get(msg.msgid) if msg.msgid else None
        if found is None:
            if not cmd & (C.CREATE | C.DELETE):
                # §6.4: no transaction matches: a one-way message.
                return self._oneWay(msg)
            if cmd & C.ABORT:
                return  # §6.7: raced the close, discard silently
            return self._violation("unknown transaction", msg)
        txn = found
        if txn.late:
            return self._lateMessage(txn, msg)
        if msg.circuit != txn.circuit:
            return self._violation("circuit mismatch", msg)
        if cmd & C.CREATE:
            # First reply to a transaction of ours.
            if not txn.ours or txn.rxCreate:
                return self._violation("unexpected CREATE|REPLY", msg)
            txn.rxCreate = True
        elif not txn.rxCreate:
            return self._violation("message before CREATE", msg)
        if txn.rxDelete:
            return self._violation("message after DELETE", msg)
        if cmd & C.DELETE:
            txn.rxDelete = True
            # §6.8: a closing parent takes its children with it.
            if txn.children:
                for child in list(txn.children):
                    self._abort(child, C.ERR_LOSTLINK)
        self._dispatch(txn, msg)
        self._maybeGone(txn)

    def _lateMessage(self, txn: Transaction, msg: Message) -> None:
        """
        The peer still talks on a transaction failed here when we closed
        an ancestor: drop it; its DELETE ends the wait for its subtree.
        """
        self.lateMessages += 1
        if msg.cmd & C.DELETE:
            self._release(txn)

    def _dispatch(self, txn: Transaction, msg: Message) -> None:
        handler = txn.handler
        if handler is not None:
            handler(txn, msg)
        elif msg.cmd & C.DELETE:
            txn.reply(0)

    def _oneWay(self, msg: Message) -> None:
        """§6.9: one-way messages.  Answer PING; never answer LNK_ERROR."""
        base = msg.cmd & C.CMDSWMASK
        if base == C.LNK_PING:
            self._write(Message(C.LNK_PING | C.REPLY))
        elif self.liveness is not None and isPingAnswer(msg.cmd):
            self.liveness.pingAnswered()

    def _topLevel(self, txn: Transaction, msg: Message) -> Any:
        if txn.icmd == C.LNK_CONN:
            # §7.2: answer the peer's LNK_CONN with a result, keep it open.
            self.peerConn = msg.ext  # type: ignore[assignment]
            if integrity.agree(self, self.ourConn, msg.ext):
                self.log.info("{link}: both ends skip the aux CRC",
                              link=self.name)
            txn.handler = _closeOnDelete
            if not txn.rxDelete:
                txn.result(0)
            self.log.info(
                "{link}: peer LNK_CONN type={ptype} mask={mask:#x} "
                "label={label}", link=self.name,
                ptype=getattr(msg.ext, "peer_type", None),
                mask=getattr(msg.ext, "peer_mask", 0),
                label=show(getattr(msg.ext, "peer_label", b"")))
            return True
        return self.receiver.transactionReceived(txn, msg)

    def _connReply(self, txn: Transaction, msg: Message) -> None:
        if msg.cmd & C.CREATE and not txn.dying:
            if msg.error == 0:
                self.ready = True
                self.log.info("{link}: LNK_CONN exchange complete",
                              link=self.name)
                self.receiver.linkReady(self)
            else:
                self.log.warn("{link}: peer refused our LNK_CONN: {e:#x}",
                              link=self.name, e=msg.error)
        if msg.cmd & C.DELETE:
            txn.reply(0)

    # ---------------------------------------------------------------
    # Sending

    def startTransaction(self, parent: Optional[Transaction], cmd: int,
                         ext: Optional[Extension] = None,
                         aux: Optional[BytesLike] = None,
                         handler: Optional[Handler] = None,
                         delete: bool = False) -> Transaction:
        """
        Open a transaction of ours: C{cmd} (a base command) with CREATE,
        stacked on C{parent} (None: top level).

        @raise LinkError: the link is down or the parent is not open.
        """
        if parent is None:
            parent = self.root
        if not self.connected:
            raise LinkError("%s is not connected" % (self.name,))
        if parent is not self.root and (
                parent.txDelete or parent.rxDelete or parent.dying):  # isOpen
            raise LinkError("parent %r is not open" % (parent,))
        msgid = next(self._msgids)
        txn = Transaction(self, msgid, parent, cmd & C.BASECMDMASK, True)
        txn.handler = handler
        self.tx[msgid] = txn
        parent.children[txn] = None
        if delete:
            # One message (e.g. an I/O): what _sendOn would send, with
            # nothing for it to check.
            txn.txCreate = txn.txDelete = True
            cmd = (cmd & C.BASECMDMASK) | C.CREATE | C.DELETE
            if parent.msgid and not parent.ours:
                cmd |= C.REVCIRC
            self._write(Message(cmd, msgid, parent.msgid, 0, ext, aux))
        else:
            self._sendOn(txn, cmd, ext, aux, 0, False)
        return txn

    def _sendOn(self, txn: Transaction, cmd: int,
                ext: Optional[Extension], aux: Optional[BytesLike],
                error: int, delete: bool) -> None:
        if txn.txDelete:
            return  # §6.6 rule 1
        cmd &= C.BASECMDMASK
        if not txn.txCreate:
            cmd |= C.CREATE
            txn.txCreate = True
        if not txn.ours:
            cmd |= C.REPLY | C.REVTRANS
        parent = txn.parent
        if parent is not None and parent.msgid and not parent.ours:
            cmd |= C.REVCIRC
        if delete:
            cmd |= C.DELETE
            txn.txDelete = True
        if not txn.dying:
            self._write(Message(cmd, txn.msgid, txn.circuit, error, ext,
                                aux))
        if delete:
            # The peer may still answer the children until it has seen
            # this DELETE (unless it closed txn first): keep them late.
            late = not txn.rxDelete
            for child in list(txn.children):
                self._abort(child, C.ERR_LOSTLINK, late)
            self._maybeGone(txn)

    def answer(self, parent: Transaction, msg: Message, error: int = 0,
               aux: Optional[BytesLike] = None) -> None:
        """
        Answer C{msg}, a one-message transaction of the peer's (CREATE
        and DELETE in one) under C{parent}, with the LNK_ERROR return
        that also closes it (§6.6): what C{txn.send(LNK_ERROR, aux=aux,
        error=error, delete=True)} would send, without the transaction
        ever existing here.  Only from C{parent.onOneShot}.
        """
        cmd = C.LNK_ERROR | C.CREATE | C.DELETE | C.REPLY | C.REVTRANS
        if parent.msgid and not parent.ours:
            cmd |= C.REVCIRC
        self._write(Message(cmd, msg.msgid, parent.msgid, error, None, aux))

    def _write(self, msg: Message) -> None:
        if self.connected:
            self.messagesOut += 1
            # Header, payload and padding go to sendmsg as they are.
            out = self.encoder.encode(msg)
            n = 0
            for b in out:
                n += len(b)
            self._sendSeq(out, n)

    # ---------------------------------------------------------------
    # Teardown

    def _abort(self, txn: Transaction, error: int,
               late: bool = False) -> None:
        """
        Fail C{txn} and its subtree locally (§6.8): a simulated
        LNK_ERROR|DELETE through each handler; nothing is transmitted.
        With C{late}, members the peer has not closed stay in their
        tables as late transactions (see the module docstring); without
        it, late ones failed before are released.
        """
        self._markDying(txn)
        self._failTree(txn, error, late)

    def _markDying(self, txn: Transaction) -> None:
        # First mark the whole subtree, so no handler can stack new work
        # on a transaction that is about to fail.
        if not txn.closed:
            txn.dying = True
        for child in txn.children:
            self._markDying(child)

    def _failTree(self, txn: Transaction, error: int, late: bool) -> None:
        for child in list(txn.children):
            self._failTree(child, error, late)
        if txn.closed:
            return
        if txn.late:
            # Failed before, when an ancestor was closed.
            if not late:
                self._release(txn)
            return
        keep = late and not txn.rxDelete
        if not txn.rxDelete:
            cmd = C.LNK_ERROR | C.DELETE
            if not txn.rxCreate:
                cmd |= C.CREATE
                txn.rxCreate = True
            if txn.ours:
                cmd |= C.REPLY
            # One kept late is closed for the layers above only.
            txn.rxDelete = not keep
            try:
                self._dispatch(txn, Message(cmd, txn.msgid, txn.circuit,
                                            error))
            except Exception:
                self.log.failure("{link}: error failing {txn}",
                                 link=self.name, txn=txn)
        txn.txDelete = True
        if keep:
            # Only the table entry waits: let go of the layers above.
            txn.late = True
            txn.handler = txn.onChild = txn.onOneShot = None
            txn.data = None
        self._maybeGone(txn)

    def _release(self, txn: Transaction) -> None:
        """The peer closed late C{txn}: it and its subtree are gone."""
        for child in list(txn.children):
            self._release(child)
        txn.rxDelete = txn.txDelete = True
        self._maybeGone(txn)

    def _maybeGone(self, txn: Transaction) -> None:
        if not (txn.txDelete and txn.rxDelete):
            return
        table = self.tx if txn.ours else self.rx
        if table.get(txn.msgid) is txn:
            del table[txn.msgid]
        parent = txn.parent
        if parent is not None and txn in parent.children:
            del parent.children[txn]
            if not txn.ours:
                parent.peerChildren -= 1
        waiters = txn._closedWaiters
        if waiters:
            txn._closedWaiters = None
            for d in waiters:
                d.callback(txn)


def _waitsOnPeer(txn: Transaction) -> bool:
    return not txn.rxDelete and txn.icmd != C.LNK_CONN and (
        txn.icmd != C.LNK_SPAN)


def _wireSize(msg: Message) -> int:
    """Bytes C{msg} took on the wire (without aux padding)."""
    aux = msg.aux
    return (msg.cmd & C.SIZE) * C.ALIGN + (len(aux) if aux is not None
                                            else 0)


def _peerSubject(transport: Any) -> str:
    get = getattr(transport, "getPeerCertificate", None)
    cert = get() if get is not None else None
    if cert is None:
        return "without a certificate"
    # pyOpenSSL's X509 (Twisted's TLS) or a cryptography certificate.
    cert = getattr(cert, "to_cryptography", lambda: cert)()
    return str(cert.subject.rfc4514_string())


def _closeOnDelete(txn: Transaction, msg: Message) -> None:
    if msg.cmd & C.DELETE:
        txn.reply(0)


def _addr(addr: Any) -> str:
    host = getattr(addr, "host", None)
    if host is not None:
        return "%s:%s" % (host, getattr(addr, "port", ""))
    name = getattr(addr, "name", None)
    if name:
        return name.decode() if isinstance(name, bytes) else str(name)
    return "unix"


class DMSGFactory(Factory):
    """
    Builds a L{DMSGLink} per connection for C{receiver} (an
    L{xdiskd.interfaces.ILinkReceiver}).  Used for listeners and, through
    ClientService, for outbound links alike.
    """

    noisy = False   # no "Starting factory <...object at 0x...>" lines

    def __init__(self, receiver: Any, name: str = "",
                 verifyCRC: bool = True, verifySalt: bool = True,
                 limits: LinkLimits = DEFAULT_LIMITS, clock: Any = None,
                 peerCheck: Optional[Callable[[Any], Optional[str]]] = None,
                 linkTimeout: float = 0.0) -> None:
        self.receiver = receiver
        self.linkTimeout = linkTimeout
        self.name = name
        self.verifyCRC = verifyCRC
        self.verifySalt = verifySalt
        self.limits = limits
        self.clock = clock
        self.peerCheck = peerCheck

    def buildProtocol(self, addr: Any) -> DMSGLink:
        link = DMSGLink(self.receiver, verifyCRC=self.verifyCRC,
                        verifySalt=self.verifySalt, limits=self.limits,
                        clock=self.clock, linkTimeout=self.linkTimeout)
        link.peerCheck = self.peerCheck
        if self.name:
            link.name = "link%d(%s)" % (link.id, self.name)
        link.factory = self
        return link
