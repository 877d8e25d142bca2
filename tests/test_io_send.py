"""
Tests for L{xdiskd.tuning}: the lean socket reader, the sendmsg writer
and the malloc settings, over real UNIX sockets.
"""

import os
import socket
import sys
import tempfile
import time

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.unix import Server
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from xdiskd.io import send as tuning
from tests.daemons import parseOptions


class Sink(Protocol):
    """Collects what arrives; lends a buffer for the rest of each 64 KiB
    block, as a decoder would for a large payload."""

    def __init__(self, total, lend):
        self.total = total
        self.lend = lend
        self.got = bytearray()
        self.block = None
        self.lent = 0
        self.done = defer.Deferred()

    def connectionMade(self):
        self.installed = tuning.leanReader(
            self.transport, None, self.into if self.lend else None,
            self.filled)

    def into(self):
        rest = -len(self.got) % 65536
        if rest < 1024:
            return None
        self.block = bytearray(rest)
        return memoryview(self.block)

    def filled(self, n):
        self.lent += n
        self.got += self.block[:n]
        self._check()

    def dataReceived(self, data):
        self.got += data
        self._check()

    def _check(self):
        if len(self.got) >= self.total and not self.done.called:
            self.done.callback(bytes(self.got))


class LeanReaderTests(TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(dir="/tmp")
        self.path = os.path.join(self.dir, "s")
        self.protos = []

    def tearDown(self):
        for p in self.protos:
            if p.transport is not None:
                p.transport.loseConnection()
        return self.port.stopListening()

    def serve(self, total, lend):
        def build():
            p = Sink(total, lend)
            self.protos.append(p)
            return p
        self.port = reactor.listenUNIX(self.path, Factory.forProtocol(build))

    @defer.inlineCallbacks
    def roundTrip(self, lend):
        data = os.urandom(3 << 20)
        self.serve(len(data), lend)
        c = socket.socket(socket.AF_UNIX)
        c.connect(self.path)
        c.setblocking(False)
        view = memoryview(data)
        pos = 0

        def push():
            nonlocal pos
            try:
                pos += c.send(view[pos:pos + (256 << 10)])
            except BlockingIOError:
                pass
            if pos < len(data):
                reactor.callLater(0, push)
        push()
        while not self.protos:
            yield deferLater(0)
        got = yield self.protos[0].done
        c.close()
        self.assertTrue(self.protos[0].installed)
        self.assertEqual(got, data)
        return self.protos[0]

    def test_plain(self):
        """Without a lent buffer, every byte arrives in order."""
        return self.roundTrip(False)

    @defer.inlineCallbacks
    def test_lent(self):
        """Bytes read into lent buffers and fed ones interleave in
        order."""
        p = yield self.roundTrip(True)
        self.assertGreater(p.lent, 0)


def deferLater(t):
    d = defer.Deferred()
    reactor.callLater(t, d.callback, None)
    return d


class NotInstalledTests(SynchronousTestCase):
    def test_notASocket(self):
        """Transports without a plain socket keep their own reading."""
        t = StringTransport()
        self.assertFalse(tuning.leanReader(t))
        self.assertFalse(hasattr(t, "doRead"))

    def test_tlsStarted(self):
        """A transport with TLS on is left alone."""
        a, b = socket.socketpair(socket.AF_UNIX)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        t = Server(a, Protocol(), None, None, 1, reactor)
        self.addCleanup(t.stopReading)     # it registered itself
        t.TLS = True
        self.assertFalse(tuning.leanReader(t))


class SenderTests(SynchronousTestCase):
    def test_fallback(self):
        """A transport without a socket gets one joined write."""
        t = StringTransport()
        s = tuning.Sender(t)
        s.writeSeq([b"head", memoryview(b"payload")], 11)
        self.assertEqual(t.value(), b"headpayload")


class MallocTests(SynchronousTestCase):
    def test_glibc(self):
        """On glibc (Linux) the settings are taken."""
        if not sys.platform.startswith("linux"):
            raise self.skipTest("glibc only")
        self.assertTrue(tuning.tuneMalloc())


class LeanPollTests(SynchronousTestCase):
    """L{tuning.leanPoll}: epoll events go straight to _doReadOrWrite."""

    def setUp(self):
        from twisted.internet.epollreactor import EPollReactor
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.assertTrue(tuning.leanPoll(self.reactor))

    def reader(self, doRead):
        from twisted.internet.abstract import FileDescriptor
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        lost = []

        class Reader(FileDescriptor):
            def fileno(self):
                return a.fileno()

            def connectionLost(self, reason):
                lost.append(reason)
                FileDescriptor.connectionLost(self, reason)
        r = Reader(self.reactor)
        r.doRead = doRead
        self.reactor.addReader(r)
        b.send(b"x")
        return r, lost

    def test_readEventDelivered(self):
        """Straight to doRead: no callWithLogger (logPrefix, context)."""
        from twisted.python import log

        def notCalled(*a, **kw):
            raise AssertionError("callWithLogger used")
        self.patch(log, "callWithLogger", notCalled)
        seen = []
        r, lost = self.reader(lambda: seen.append(1))
        self.reactor.doIteration(1)
        self.assertEqual((seen, lost), ([1], []))

    def test_errorLoggedAndDisconnects(self):
        def boom():
            raise ValueError("bad")
        r, lost = self.reader(boom)
        self.reactor.doIteration(1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(lost), 1)
        self.assertNotIn(r, self.reactor.getReaders())

    def test_otherReactorsLeftAlone(self):
        from twisted.internet.testing import MemoryReactor
        self.assertFalse(tuning.leanPoll(MemoryReactor()))


class SpinWindowTests(SynchronousTestCase):
    def test_adapts(self):
        """Grows (from START, doubling) while I/O ends waits within the
        maximum; halves on a longer wait or a timer; 0 below START."""
        w = tuning.SpinWindow(100e-6)
        start = tuning.SpinWindow.START
        self.assertEqual(w.window, 0.0)
        w.blocked(50e-6, True)
        self.assertEqual(w.window, start)
        for _ in range(2):
            w.blocked(50e-6, True)
        self.assertEqual(w.window, 4 * start)
        for _ in range(5):
            w.blocked(90e-6, True)
        self.assertEqual(w.window, 100e-6)
        w.blocked(5e-3, True)           # an idle gap: too long to poll
        self.assertEqual(w.window, 50e-6)
        w.blocked(1e-3, False)          # a timer, no I/O
        self.assertEqual(w.window, 25e-6)
        w.blocked(1.0, False)
        w.blocked(1.0, False)
        self.assertEqual(w.window, 0.0)
        w.blocked(1.0, False)
        self.assertEqual(w.window, 0.0)

    def test_off(self):
        w = tuning.SpinWindow(0.0)
        w.blocked(1e-6, True)
        self.assertEqual(w.window, 0.0)


class PollOptionTests(SynchronousTestCase):
    def test_range(self):
        from twisted.python.usage import UsageError
        self.assertEqual(parseOptions()["poll-us"], 100)
        self.assertEqual(parseOptions("--poll-us", "0")["poll-us"], 0)
        for bad in ("-1", "10001"):
            self.assertRaises(UsageError, parseOptions, "--poll-us", bad)

    def test_daemonPolls(self):
        """The daemon's epoll reactor gets the --poll-us window."""
        from twisted.internet.epollreactor import EPollReactor
        from xdiskd.service import makeService
        for value, seconds in (("250", 250e-6), ("0", 0.0)):
            r = EPollReactor()
            self.addCleanup(r._poller.close)
            makeService(parseOptions("--no-nbd", "--poll-us", value), r)
            self.assertEqual(r.spinWindow.maximum, seconds)


class SpinPollTests(SynchronousTestCase):
    """leanPoll with a spin window: poll(0) until an event or the window
    ends, then block for the rest of the timeout."""

    def setUp(self):
        from twisted.internet.epollreactor import EPollReactor
        self.reactor = EPollReactor()
        real = self.reactor._poller
        self.addCleanup(real.close)
        self.calls = []
        calls = self.calls

        class Poller:
            def __getattr__(self, name):
                return getattr(real, name)

            def poll(self, timeout, maxevents):
                calls.append(timeout)
                return real.poll(timeout, maxevents)
        self.reactor._poller = Poller()

    def spinning(self, spinMax, window):
        self.assertTrue(tuning.leanPoll(self.reactor, spinMax))
        self.reactor.spinWindow.window = window
        return self.reactor.spinWindow

    def reader(self, seen):
        from twisted.internet.abstract import FileDescriptor
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)

        class Reader(FileDescriptor):
            def fileno(self):
                return a.fileno()

            def doRead(self):
                seen.append(a.recv(10))
        self.reactor.addReader(Reader(self.reactor))
        return b

    def test_offBlocksAtOnce(self):
        self.assertTrue(tuning.leanPoll(self.reactor))
        self.reactor.doIteration(0.01)
        self.assertEqual(self.calls, [0.01])

    def test_spinsThenBlocks(self):
        """No event: poll(0) for the window, then block for the rest of
        the timeout; the window (a timer woke it) halves."""
        spin = self.spinning(0.004, 0.004)
        self.reactor.doIteration(0.05)
        self.assertGreater(len(self.calls), 2)
        self.assertEqual(set(self.calls[:-1]), {0})
        self.assertTrue(0 < self.calls[-1] <= 0.05 - 0.004,
                        self.calls[-1])
        self.assertEqual(spin.window, 0.002)

    def test_eventWhileSpinning(self):
        """An event found by a poll(0) is handled; no blocking poll, and
        the window is kept."""
        seen = []
        self.reader(seen).send(b"x")
        spin = self.spinning(0.004, 0.004)
        self.reactor.doIteration(1)
        self.assertEqual((seen, self.calls), ([b"x"], [0]))
        self.assertEqual(spin.window, 0.004)

    def test_noSpinWithoutWait(self):
        """Timeout 0 (work is due at once): one poll(0), nothing learnt."""
        spin = self.spinning(0.004, 0.004)
        self.reactor.doIteration(0)
        self.assertEqual(self.calls, [0])
        self.assertEqual(spin.window, 0.004)

    def test_spinBoundedByTimeout(self):
        """A timer due before the window ends bounds the spin."""
        self.spinning(1.0, 1.0)
        before = time.monotonic()
        self.reactor.doIteration(0.01)
        self.assertLess(time.monotonic() - before, 0.5)


class Source(Protocol):
    """Writes through a Sender as fast as it is let, and counts pauses."""

    def connectionMade(self):
        tuning.tuneTransport(self.transport, sockbuf=64 << 10)
        self.sender = tuning.Sender(self.transport)
        self.pauses = 0
        self.resumes = 0
        self.transport.registerProducer(self, True)

    def pauseProducing(self):
        self.pauses += 1

    def resumeProducing(self):
        self.resumes += 1

    def stopProducing(self):
        pass


class SenderQueueTests(TestCase):
    """What the socket does not take waits as views in the Sender, goes
    out first, pauses the producer, and is not lost by a close."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(dir="/tmp")
        self.path = os.path.join(self.dir, "s")
        self.protos = []

        def build():
            p = Source()
            self.protos.append(p)
            return p
        self.port = reactor.listenUNIX(self.path, Factory.forProtocol(build))
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def connect(self):
        c = socket.socket(socket.AF_UNIX)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        c.connect(self.path)
        c.setblocking(False)
        self.addCleanup(c.close)
        while not self.protos:
            yield deferLater(0)
        return c, self.protos[0]

    @defer.inlineCallbacks
    def drain(self, c, total):
        got = bytearray()
        while len(got) < total:
            try:
                data = c.recv(1 << 20)
            except BlockingIOError:
                yield deferLater(0.001)
                continue
            if not data:
                break
            got += data
        return bytes(got)

    @defer.inlineCallbacks
    def test_queuedInOrderWithoutJoins(self):
        c, p = yield self.connect()
        pieces = [os.urandom(n) for n in (100, 256 << 10, 7, 1 << 20,
                                          3000, 2 << 20)]
        for piece in pieces:
            p.sender.writeSeq([piece[:10], memoryview(piece)[10:]],
                              len(piece))
        t = p.transport
        self.assertGreater(p.sender.queued, 0)
        # Twisted's own buffer holds nothing: no join, no copy.
        self.assertEqual((t._tempDataBuffer, len(t.dataBuffer) - t.offset),
                         ([], 0))
        self.assertEqual(p.pauses, 1)
        direct = b"after-the-queue"
        t.write(direct)         # through the transport: still in order
        p.sender.write(b"last")
        total = sum(map(len, pieces)) + len(direct) + 4
        got = yield self.drain(c, total)
        self.assertEqual(got, b"".join(pieces) + direct + b"last")
        while p.resumes == 0:
            yield deferLater(0.001)
        self.assertEqual((p.sender.queued, len(p.sender.queue)), (0, 0))

    @defer.inlineCallbacks
    def test_closeAfterQueue(self):
        """loseConnection sends the queue before closing (once the
        producer is gone, as Twisted requires)."""
        c, p = yield self.connect()
        data = os.urandom(3 << 20)
        p.sender.write(data)
        self.assertGreater(p.sender.queued, 0)
        p.transport.unregisterProducer()
        p.transport.loseConnection()
        got = yield self.drain(c, len(data) + 1)
        self.assertEqual(got, data)
