"""
Tests for the hostile-input limits: per-link DMSG limits
(L{xdiskd.dmsg.limits}), the link's backlog while reading is paused,
the exporter's in-flight cap, the NBD handshake timeout, the NBD pauses
and STARTTLS injection, and private UNIX listeners.
"""

import os
import shutil
import stat
import tempfile

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.limits import LinkLimits, parseLinkLimits
from xdiskd.dmsg.wire import LnkSpan, Message
from xdiskd.export.server import Exporter
from xdiskd.export.spec import ExportSpec
from xdiskd.nbd import wire
from xdiskd.nbd.server import NBDServerFactory
from xdiskd.node import Node
from xdiskd.options import serverEndpointString
from tests.dmsgpeer import RecordingReceiver
from tests.rawpeer import HeldStore, RawPeer, io
from tests.test_nbd_server import MemoryDevice, Peer, Registry

MiB = 1 << 20


def aborted(transport):
    # StringTransport.abortConnection sets "disconnected".
    return getattr(transport, "disconnected", False)


class Logs:
    def __init__(self, case):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver,
                        self.events.append)

    def text(self):
        return "\n".join(formatEvent(e) for e in self.events)


def accepting():
    """A receiver that keeps every top-level transaction open."""
    r = RecordingReceiver(C.PEER_BLOCK, "test/limits")

    def accept(txn, msg):
        txn.onChild = lambda child, m: True
        txn.result(0)
        return True
    r.accept = accept
    return r


def heldExporter(store, **kw):
    exporter = Exporter(**kw)
    exporter.add(ExportSpec("serno/H", "/held.img", False, 512, "t/held"),
                 store)
    return Node(exporter=exporter, hostname="exp")


class ParseTests(SynchronousTestCase):
    def test_parse(self):
        self.assertEqual(parseLinkLimits([]), LinkLimits())
        self.assertEqual(
            parseLinkLimits(["buffered=4M", "handshake=2.5",
                             "children=7"]),
            LinkLimits()._replace(buffered=4 * MiB, handshake=2.5,
                                  children=7))
        for bad in ("x=1", "buffered", "inflight=1K", "stall=-1",
                    "transactions=ten"):
            self.assertRaises(ValueError, parseLinkLimits, [bad])


class TransactionLimitTests(SynchronousTestCase):
    def test_transactions(self):
        """One CREATE too many closes the link, naming the limit."""
        logs = Logs(self)
        peer = RawPeer(accepting(), LinkLimits(transactions=4))
        peer.handshake()
        # The peer's LNK_CONN is one open transaction already.
        peer.send(*[Message(C.LNK_SPAN | C.CREATE, 10 + i, ext=LnkSpan())
                    for i in range(3)])
        self.assertFalse(peer.aborted)
        self.assertEqual(len(peer.link.rx), 4)
        peer.send(Message(C.LNK_SPAN | C.CREATE, 20, ext=LnkSpan()),
                  Message(C.LNK_SPAN | C.CREATE, 21, ext=LnkSpan()))
        self.assertTrue(peer.aborted)
        self.assertEqual(len(peer.link.rx), 4)
        self.assertIn("closing: limit transactions=4 exceeded: 4 open "
                      "transactions of the peer", logs.text())

    def test_closedTransactionsDoNotCount(self):
        peer = RawPeer(RecordingReceiver(), LinkLimits(transactions=2))
        peer.handshake()
        for i in range(50):
            # CREATE|DELETE, answered at once (NOSUPP): gone right away.
            peer.send(Message(C.BLK_OPEN | C.CREATE | C.DELETE, 100 + i))
        self.assertFalse(peer.aborted)

    def test_children(self):
        logs = Logs(self)
        peer = RawPeer(accepting(), LinkLimits(children=3))
        peer.handshake()
        peer.send(Message(C.LNK_SPAN | C.CREATE, 10, ext=LnkSpan()))
        kids = [Message(C.BLK_OPEN | C.CREATE, 100 + i, 10)
                for i in range(3)]
        peer.send(*kids)
        self.assertFalse(peer.aborted)
        self.assertEqual(peer.link.rx[10].peerChildren, 3)
        peer.send(Message(C.BLK_OPEN | C.CREATE, 200, 10))
        self.assertTrue(peer.aborted)
        self.assertIn("limit children=3 exceeded", logs.text())

    def test_childrenCountDown(self):
        """Children that close free their slot."""
        peer = RawPeer(accepting(), LinkLimits(children=2))
        peer.handshake()
        peer.send(Message(C.LNK_SPAN | C.CREATE, 10, ext=LnkSpan()))
        for i in range(20):
            peer.send(Message(C.BLK_OPEN | C.CREATE, 100 + i, 10))
            txn = peer.link.rx[100 + i]
            txn.reply(0)
            peer.send(Message(C.LNK_ERROR | C.DELETE, 100 + i, 10))
        self.assertFalse(peer.aborted)
        self.assertEqual(peer.link.rx[10].peerChildren, 0)


class BacklogTests(SynchronousTestCase):
    def test_pausedLinkHandlesNothing(self):
        """While paused, messages wait; on resume they run in order."""
        peer = RawPeer(accepting())
        peer.handshake()
        peer.link.pauseReading("test")
        peer.send(*[Message(C.LNK_PING) for _ in range(5)])
        self.assertEqual(peer.poll(), [])
        self.assertEqual(peer.transport.producerState, "paused")
        peer.link.resumeReading("test")
        replies = peer.poll()
        self.assertEqual([m.cmd for m in replies],
                         [C.LNK_PING | C.REPLY] * 5)
        self.assertEqual(peer.transport.producerState, "producing")

    def test_buffered(self):
        """A transport that ignores our pause cannot make us hoard."""
        logs = Logs(self)
        limit = C.HDR_MAX + C.AUX_MAX
        peer = RawPeer(accepting(), LinkLimits(buffered=limit))
        peer.handshake()
        peer.link.pauseReading("test")
        for i in range(limit // 64):
            peer.send(Message(C.LNK_PING))
        self.assertFalse(peer.aborted)
        peer.send(Message(C.LNK_PING))
        self.assertTrue(peer.aborted)
        self.assertIn("limit buffered=%d exceeded" % (limit,), logs.text())
        # Closing drops the backlog; nothing runs after the close.
        peer.link.resumeReading("test")
        self.assertEqual(peer.poll(), [])

    def test_incompleteMessageCounts(self):
        logs = Logs(self)
        peer = RawPeer(accepting(), LinkLimits(
            buffered=C.HDR_MAX + C.AUX_MAX))
        peer.handshake()
        big = peer.encode(Message(C.LNK_PING, aux=bytes(C.AUX_MAX)))
        peer.link.pauseReading("test")
        peer.link.dataReceived(big)
        peer.link.dataReceived(big[:C.AUX_MAX])
        self.assertTrue(peer.aborted)
        self.assertIn("limit buffered", logs.text())


class ExporterBackPressureTests(SynchronousTestCase):
    """A peer that floods reads and never reads replies."""

    def setUp(self):
        self.store = HeldStore(256 * MiB)
        self.node = heldExporter(self.store, linkInflight=4 * MiB)
        self.peer = RawPeer(self.node)
        self.peer.handshake()
        [self.span] = self.peer.spans()

    def flood(self, n, size=MiB):
        return self.peer.encode(*[
            io(C.BLK_READ, 1000 + i, self.span, i * size, size)
            for i in range(n)])

    def test_inflightBounded(self):
        """
        100 MiB of reads in one chunk: reading and dispatch stop at the
        soft limit, so in flight stays below it plus one message.
        """
        ls = self.node.exporter.links[self.peer.link]
        self.peer.link.dataReceived(self.flood(100))
        self.assertLessEqual(ls.inflightBytes, 4 * MiB + MiB)
        self.assertEqual(len(self.store.held), 5)
        self.assertFalse(self.peer.aborted)
        self.assertEqual(self.peer.transport.producerState, "paused")
        # The store drains: the backlog runs, a few at a time, in order.
        for _ in range(200):
            if not self.store.held:
                break
            self.store.releaseAll()
            self.assertLessEqual(ls.inflightBytes, 4 * MiB + MiB)
        replies = [m for m in self.peer.poll()
                   if m.cmd & C.BASECMDMASK == C.LNK_ERROR]
        self.assertEqual(sorted(m.msgid for m in replies),
                         list(range(1000, 1100)))
        # The backlog was dispatched in arrival order.
        self.assertEqual(self.store.offsets, [i * MiB for i in range(100)])
        self.assertTrue(all(len(m.aux) == MiB for m in replies))

    def test_writeBlockedStopsDispatch(self):
        """The transport's buffer is full: no new work is started."""
        self.peer.link.pauseProducing()
        self.peer.link.dataReceived(self.flood(10, 4096))
        self.assertEqual(self.store.held, [])
        self.peer.link.resumeProducing()
        self.assertEqual(len(self.store.held), 10)

    def test_hardCap(self):
        """
        Past the hard cap (a peer around the pause; here the pause is
        lifted by hand) the link is closed.
        """
        logs = Logs(self)
        self.peer.link.limits = LinkLimits(inflight=4 * MiB)
        self.peer.link.dataReceived(self.flood(3))
        self.assertEqual(len(self.store.held), 3)    # 3 MiB > 2: paused
        self.peer.link.resumeReading("export-io")
        self.peer.send(io(C.BLK_READ, 2000, self.span, 0, MiB))
        self.assertEqual(len(self.store.held), 4)    # 4 MiB: at the cap
        self.assertFalse(self.peer.aborted)
        self.peer.link.resumeReading("export-io")
        self.peer.send(io(C.BLK_READ, 2001, self.span, 0, MiB))
        self.assertTrue(self.peer.aborted)
        self.assertEqual(len(self.store.held), 4)
        self.assertIn("limit inflight=4194304 exceeded: 4194304 bytes of "
                      "export I/O in flight, 1048576 more asked",
                      logs.text())


class WatchdogTests(SynchronousTestCase):
    def setUp(self):
        self.logs = Logs(self)
        self.clock = Clock()

    def test_handshakeTimeout(self):
        peer = RawPeer(accepting(), LinkLimits(handshake=5), self.clock)
        self.clock.advance(4.9)
        self.assertFalse(peer.aborted)
        self.clock.advance(0.2)
        self.assertTrue(peer.aborted)
        self.assertIn("limit handshake=5 exceeded: LNK_CONN not exchanged",
                      self.logs.text())

    def test_handshakeDone(self):
        peer = RawPeer(accepting(), LinkLimits(handshake=5), self.clock)
        peer.handshake()
        self.clock.advance(60)
        self.assertFalse(peer.aborted)

    def test_trickle(self):
        """One byte a minute: closed after at most two stall periods."""
        peer = RawPeer(accepting(), LinkLimits(stall=120), self.clock)
        peer.handshake()
        data = peer.encode(Message(C.LNK_PING))
        for i in range(len(data)):
            if peer.aborted:
                break
            peer.link.dataReceived(data[i:i + 1])
            self.clock.advance(60)
        self.assertTrue(peer.aborted)
        self.assertLessEqual(i, 4)
        self.assertIn("limit stall=120 exceeded: %d bytes of an incomplete "
                      "message, no progress" % (i,), self.logs.text())

    def test_slowButSteady(self):
        """Messages that complete keep the link alive."""
        peer = RawPeer(accepting(), LinkLimits(stall=10), self.clock)
        peer.handshake()
        data = peer.encode(*[Message(C.LNK_PING) for _ in range(20)])
        for i in range(0, len(data), 40):
            peer.link.dataReceived(data[i:i + 40])
            self.clock.advance(6)
        self.assertFalse(peer.aborted)
        self.clock.advance(100)
        self.assertFalse(peer.aborted)

    def test_pausedByUsIsNotStalling(self):
        peer = RawPeer(accepting(), LinkLimits(stall=10), self.clock)
        peer.handshake()
        peer.link.pauseReading("export-io")
        peer.link.dataReceived(peer.encode(Message(C.LNK_PING))[:10])
        self.clock.advance(100)
        self.assertFalse(peer.aborted)

    def test_peerNotReading(self):
        peer = RawPeer(accepting(), LinkLimits(stall=10), self.clock)
        peer.handshake()
        peer.link.pauseProducing()
        self.clock.advance(15)
        self.assertFalse(peer.aborted)
        peer.link.resumeProducing()
        peer.link.pauseProducing()
        self.clock.advance(10)
        self.assertFalse(peer.aborted)
        self.clock.advance(10)
        self.assertTrue(peer.aborted)
        self.assertIn("limit stall=10 exceeded: the peer reads none of "
                      "our messages", self.logs.text())

    def closedWithinSetting(self, start):
        """
        C{start(peer)} begins a stall condition in the middle of a check
        period: the link is open 119 s later and closed by 132 s (the
        setting, 120 s, plus a tenth and one step), not after two periods.
        """
        peer = RawPeer(accepting(), LinkLimits(stall=120), self.clock)
        peer.handshake()
        self.clock.advance(37)
        start(peer)
        for _ in range(119):
            self.clock.advance(1)
        self.assertFalse(peer.aborted)
        for _ in range(13):
            self.clock.advance(1)
        self.assertTrue(peer.aborted)

    def test_partialClosedWithinItsSetting(self):
        """An incomplete message that makes no progress."""
        self.closedWithinSetting(lambda peer: peer.link.dataReceived(
            peer.encode(Message(C.LNK_PING))[:10]))
        self.assertIn("limit stall=120 exceeded: 10 bytes of an incomplete "
                      "message, no progress", self.logs.text())

    def test_nonReaderClosedWithinItsSetting(self):
        """A peer that reads none of our replies."""
        self.closedWithinSetting(lambda peer: peer.link.pauseProducing())
        self.assertIn("limit stall=120 exceeded: the peer reads none of "
                      "our messages", self.logs.text())

    def test_timersStopWithTheLink(self):
        peer = RawPeer(accepting(), LinkLimits(), self.clock)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        peer.link.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SlowDevice(MemoryDevice):
    """A device whose open waits for the test."""

    def open(self):
        self.opening = Deferred()
        return self.opening


class NBDGuardTests(SynchronousTestCase):
    def connect(self, devices=None, transport=None, **kw):
        self.clock = Clock()
        self.factory = NBDServerFactory(
            Registry(devices or [MemoryDevice()]), clock=self.clock, **kw)
        proto = self.factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 4242))
        transport = transport or StringTransport(lenient=True)
        proto.makeConnection(transport)
        return Peer(proto, transport)

    def test_handshakeTimeout(self):
        logs = Logs(self)
        peer = self.connect(handshakeTimeout=10)
        peer.handshake()
        self.clock.advance(9)
        self.assertFalse(aborted(peer.transport))
        self.clock.advance(2)
        self.assertTrue(aborted(peer.transport))
        self.assertIn("did not finish the handshake in 10s", logs.text())

    def test_noTimeoutInTransmission(self):
        peer = self.connect(handshakeTimeout=10)
        peer.handshake()
        peer.go()
        self.clock.advance(1000)
        self.assertFalse(aborted(peer.transport))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_openingPausesAndDoesNotTimeOut(self):
        """
        While GO waits for the device, reading stops and the timeout
        waits too (we are the slow side).
        """
        dev = SlowDevice()
        peer = self.connect([dev], handshakeTimeout=10)
        peer.handshake()
        peer.option(wire.OPT_GO, wire.encodeExportRequest("xa0", ()))
        self.assertEqual(peer.transport.producerState, "paused")
        self.clock.advance(25)
        self.assertFalse(aborted(peer.transport))
        dev.opening.callback(None)
        self.assertEqual(peer.transport.producerState, "producing")
        self.assertEqual(peer.optionReplies()[-1][1], wire.REP_ACK)
        self.clock.advance(100)
        self.assertFalse(aborted(peer.transport))

    def test_repliesToNonReader(self):
        """Option replies count toward the send-buffer bound too."""
        devs = [MemoryDevice("xa%d" % i, "S%d" % i) for i in range(50)]
        peer = self.connect(devs, maxBufferedBytes=4096)
        peer.handshake()
        peer.proto.pauseProducing()       # the client reads nothing
        peer.send(wire.encodeOption(wire.OPT_LIST) * 100)
        self.assertEqual(peer.transport.producerState, "paused")
        answered = peer.transport.value().count(
            wire.optionReply(wire.OPT_LIST, wire.REP_ACK))
        self.assertLess(answered, 10)
        peer.proto.resumeProducing()
        self.assertEqual(peer.transport.value().count(
            wire.optionReply(wire.OPT_LIST, wire.REP_ACK)), 100)

    def test_startTLSInjection(self):
        """Bytes after STARTTLS, before TLS, are not taken as options."""
        from tests.test_nbd_server import TLSStringTransport
        logs = Logs(self)
        t = TLSStringTransport(lenient=True)
        peer = self.connect(transport=t, tlsContextFactory=object())
        peer.handshake()
        peer.send(wire.encodeOption(wire.OPT_STARTTLS)
                  + wire.encodeOption(wire.OPT_GO,
                                      wire.encodeExportRequest("xa0", ())))
        self.assertIsNone(t.tlsStarted)
        self.assertTrue(aborted(t))
        self.assertIn("sent data after STARTTLS", logs.text())

    def test_startTLSClean(self):
        from tests.test_nbd_server import TLSStringTransport
        t = TLSStringTransport(lenient=True)
        peer = self.connect(transport=t, tlsContextFactory=object())
        peer.handshake()
        peer.option(wire.OPT_STARTTLS)
        self.assertIsNotNone(t.tlsStarted)
        self.assertFalse(aborted(t))

    def test_peerCheckRefuses(self):
        logs = Logs(self)
        peer = self.connect(peerCheck=lambda t: "not welcome")
        peer.proto.handshakeCompleted()
        self.assertTrue(aborted(peer.transport))
        self.assertIn("refusing TLS client: not welcome", logs.text())


class _Nothing(Protocol):
    pass


class UnixListenerTests(TestCase):
    """UNIX listeners are private (mode 0600) and hold a lock file."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="xdl-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)

    @inlineCallbacks
    def listen(self, desc):
        port = yield serverFromString(reactor, desc).listen(
            Factory.forProtocol(_Nothing))
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def test_modeAndLock(self):
        path = os.path.join(self.dir, "x.sock")
        desc = serverEndpointString("unix:" + path, "600")
        yield self.listen(desc)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertTrue(os.path.islink(path + ".lock"))
        # A second daemon on the same socket is refused while we live.
        yield self.assertFailure(self.listen(desc), CannotListenError)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    @inlineCallbacks
    def test_configuredMode(self):
        path = os.path.join(self.dir, "y.sock")
        yield self.listen(serverEndpointString("unix:" + path, "660"))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)
        path = os.path.join(self.dir, "z.sock")
        yield self.listen(serverEndpointString(
            "unix:" + path + ":mode=644", "600"))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
