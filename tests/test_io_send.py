"""
Tests for L{xdiskd.io.send}: the sendmsg writer over real UNIX sockets,
its queue, producer pausing and fallback.
"""

import os
import socket
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from xdiskd.io.send import Sender
from xdiskd.io.sockets import tuneTransport


class SenderTests(SynchronousTestCase):
    def test_fallback(self):
        """A transport without a socket gets one joined write."""
        t = StringTransport()
        s = Sender(t)
        s.writeSeq([b"head", memoryview(b"payload")], 11)
        self.assertEqual(t.value(), b"headpayload")


class Source(Protocol):
    """Writes through a Sender as fast as it is let, and counts pauses."""

    def connectionMade(self):
        tuneTransport(self.transport, sockbuf=64 << 10)
        self.sender = Sender(self.transport)
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
            yield deferLater(reactor, 0)
        return c, self.protos[0]

    @defer.inlineCallbacks
    def drain(self, c, total):
        got = bytearray()
        while len(got) < total:
            try:
                data = c.recv(1 << 20)
            except BlockingIOError:
                yield deferLater(reactor, 0.001)
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
            yield deferLater(reactor, 0.001)
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
