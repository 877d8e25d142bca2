"""
The DragonFly handshake's RSA runs off the reactor thread when the
factory's clock is a real reactor (L{xdiskd.dfly.protocol}); a real TCP
connection on loopback, both ends ours.
"""

import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from xdiskd.dfly import handshake
from xdiskd.dfly.protocol import DFlyClientEndpoint, DFlyServerEndpoint
from tests.dflykeys import loaded


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _Probe(Protocol):
    def __init__(self):
        self.got = Deferred()

    def dataReceived(self, data):
        self.got.callback(data)


class RSAOffTheReactorTests(TestCase):
    @inlineCallbacks
    def test_handshakeInPoolThreads(self):
        """
        Both ends' start() and block-completing receive() run in pool
        threads, not the reactor's; the stream then carries data.
        """
        threads = []
        start, receive = handshake.Negotiation.start, (
            handshake.Negotiation.receive)

        def recordStart(neg):
            threads.append(("start", threading.current_thread()))
            return start(neg)

        def recordReceive(neg, data):
            if neg.stage == "handshake":
                threads.append(("receive", threading.current_thread()))
            return receive(neg, data)

        self.patch(handshake.Negotiation, "start", recordStart)
        self.patch(handshake.Negotiation, "receive", recordReceive)
        a = loaded(self, "A", peers=[("127.0.0.1", "B")])
        b = loaded(self, "B", peers=[("127.0.0.1", "A")])
        server = DFlyServerEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), a,
            "auto", reactor, "test")
        port = yield server.listen(Factory.forProtocol(_Echo))
        self.addCleanup(port.stopListening)
        client = DFlyClientEndpoint(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            b, "auto", reactor, "test")
        probe = yield client.connect(Factory.forProtocol(_Probe))
        self.addCleanup(probe.transport.loseConnection)
        probe.transport.write(b"ping over the encrypted stream")
        got = yield probe.got
        self.assertEqual(got, b"ping over the encrypted stream")
        self.assertEqual(sorted(kind for kind, _ in threads),
                         ["receive", "receive", "start", "start"])
        main = threading.main_thread()
        self.assertEqual([t for _, t in threads if t is main], [])


class WhileRSARunsTests(TestCase):
    """What arrives while the RSA runs (the offload held by the test)."""

    def setUp(self):
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport
        from xdiskd.dfly.protocol import DFlyFactory
        from tests.test_dfly_protocol import CLIENT, _LinkFactory
        from tests.dmsgpeer import RecordingReceiver
        self.clock = Clock()
        keys = loaded(self, "A", peers=[("10.0.0.2", "B")])
        factory = DFlyFactory(_LinkFactory(RecordingReceiver(), self.clock),
                              keys, "auto", self.clock)
        self.calls = []

        def held(f, *args):
            d = Deferred()
            self.calls.append((f, args, d))
            return d

        factory.offload = held
        self.proto = factory.buildProtocol(CLIENT)
        self.transport = StringTransport(peerAddress=CLIENT)
        self.proto.makeConnection(self.transport)

    def test_notReadWhileBusy(self):
        """Reading pauses while our block is made, and resumes after."""
        [(f, args, d)] = self.calls
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.transport.value(), b"")
        d.callback(f(*args))
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(len(self.transport.value()), 512)

    def test_boundedWhileBusy(self):
        """A peer that sends more than 1 MiB before the negotiation is
        done is closed, with a line saying so."""
        from twisted.logger import capturedLogs
        [(f, args, d)] = self.calls
        d.callback(f(*args))
        self.proto.dataReceived(bytes(512))     # the RSA of its block runs
        self.assertEqual(len(self.calls), 2)
        with capturedLogs() as events:
            self.proto.dataReceived(bytes((1 << 20) + 1))
        self.assertEqual(self.proto.state, "closed")
        self.assertTrue(any("before the negotiation was done" in
                            e.get("why", "") for e in events))
