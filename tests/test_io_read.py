"""
Tests for L{xdiskd.io.read}: the lean socket reader, over real UNIX
sockets, and its fallback on other transports.
"""

import os
import socket
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.unix import Server
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from xdiskd.io.read import leanReader


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
        self.installed = leanReader(
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
            yield deferLater(reactor, 0)
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


class NotInstalledTests(SynchronousTestCase):
    def test_notASocket(self):
        """Transports without a plain socket keep their own reading."""
        t = StringTransport()
        self.assertFalse(leanReader(t))
        self.assertFalse(hasattr(t, "doRead"))

    def test_tlsStarted(self):
        """A transport with TLS on is left alone."""
        a, b = socket.socketpair(socket.AF_UNIX)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        t = Server(a, Protocol(), None, None, 1, reactor)
        self.addCleanup(t.stopReading)     # it registered itself
        t.TLS = True
        self.assertFalse(leanReader(t))
