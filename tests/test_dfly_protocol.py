"""
The Twisted wrapper of xdiskd.dfly.protocol: real DMSG links over the
negotiated stream in memory (iosim, Clock), every failure closing that
connection with one log line, and the io layer's fast paths falling back
over the encrypting transport.
"""

import os

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.io.internals import plainSocket
from xdiskd.io.read import leanReader
from xdiskd.io.send import Sender
from xdiskd.dfly.protocol import (
    DFlyFactory, EncryptedTransport, NegotiationFailed)
from xdiskd.dmsg.link import DMSGLink
from tests.dflykeys import loaded, rsaKey
from tests.dmsgpeer import RecordingReceiver

SCALE = float(os.environ.get("XDISKD_FUZZ_SCALE", "1"))
SERVER = IPv4Address("TCP", "10.0.0.1", 987)
CLIENT = IPv4Address("TCP", "10.0.0.2", 40000)


def cases(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=list(HealthCheck))


class _LinkFactory:
    """Builds one DMSGLink per connection, remembering it."""

    def __init__(self, receiver, clock):
        self.receiver = receiver
        self.clock = clock
        self.links = []

    def doStart(self):
        pass

    def doStop(self):
        pass

    def buildProtocol(self, addr):
        link = DMSGLink(self.receiver, clock=self.clock)
        self.links.append(link)
        return link


class _Silent(Protocol):
    """A peer that never sends a byte."""


class _Base(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.lines = []
        globalLogPublisher.addObserver(self._observe)
        self.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        if event.get("log_namespace") in ("xdiskd.dfly",) or "link" in (
                event.get("log_namespace") or ""):
            self.lines.append(formatEvent(event))

    def logged(self, needle):
        return [line for line in self.lines if needle in line]

    def side(self, keys, fmt="auto"):
        recv = RecordingReceiver()
        links = _LinkFactory(recv, self.clock)
        factory = DFlyFactory(links, keys, fmt, self.clock)
        return factory, links, recv

    def connectPair(self, serverKeys, clientKeys, fmtS="auto", fmtC="auto",
                    client=None):
        sf, self.sLinks, self.sRecv = self.side(serverKeys, fmtS)
        cf, self.cLinks, self.cRecv = self.side(clientKeys, fmtC)
        self.server = sf.buildProtocol(CLIENT)
        self.client = client or cf.buildProtocol(SERVER)
        self.sWire = []
        self.cWire = []
        sio = FakeTransport(self.server, True, SERVER, CLIENT)
        cio = FakeTransport(self.client, False, CLIENT, SERVER)
        self._tap(sio, self.sWire)
        self._tap(cio, self.cWire)
        self.pump = connect(self.server, sio, self.client, cio,
                            greet=False, clock=self.clock)
        self.sio, self.cio = sio, cio
        for _ in range(30):
            self.pump.pump()
        return self.server, self.client

    def _tap(self, transport, into):
        write = transport.write

        def tapped(data):
            into.append(bytes(data))
            write(data)
        transport.write = tapped

    def serverKeys(self, peer="B", none=False):
        return loaded(self, "A", peers=[] if none or peer is None else [
            ("10.0.0.2", peer)], none=["10.0.0.2"] if none else [])

    def clientKeys(self, peer="A", none=False):
        return loaded(self, "B", peers=[] if none or peer is None else [
            ("10.0.0.1", peer)], none=["10.0.0.1"] if none else [])


class EncryptedLinkTests(_Base):
    def test_dmsgOverTheStream(self):
        """Both DMSG links finish LNK_CONN over the encrypted stream;
        the wire carries no plaintext DMSG header."""
        s, c = self.connectPair(self.serverKeys(), self.clientKeys())
        self.assertEqual((s.state, c.state), ("encrypted", "encrypted"))
        self.assertTrue(self.sLinks.links[0].ready and self.cLinks.links[0].ready)
        wire = b"".join(self.sWire)
        self.assertEqual(len(self.sWire[0]), 512)
        self.assertNotIn(b"\x32\x48\x00\x00", wire[512:])
        self.assertEqual(self.logged("encrypted link up (sending format U, "
                                     "receiving U; peer says 'xdiskd U')"),
                         [self.lines[i] for i in range(len(self.lines))
                          if "encrypted link up" in self.lines[i]])
        self.assertEqual(len(self.logged("encrypted link up")), 2)

    def test_formatT(self):
        s, c = self.connectPair(self.serverKeys(), self.clientKeys(),
                                "T", "T")
        self.assertEqual(s.established.txFormat, "T")
        self.assertTrue(self.sLinks.links[0].ready and self.cLinks.links[0].ready)

    def test_linkSeesOrdinaryTransport(self):
        """The link's transport is the encrypting one; the io layer's socket
        paths do not take it (they would bypass the cipher)."""
        s, c = self.connectPair(self.serverKeys(), self.clientKeys())
        et = self.sLinks.links[0].transport
        self.assertIsInstance(et, EncryptedTransport)
        self.assertIsNone(plainSocket(et))
        self.assertFalse(leanReader(et))
        self.assertIsNone(Sender(et).sock)
        self.assertEqual(et.getPeer(), CLIENT)

    def test_pauseReachesSocket(self):
        """The link pausing its reading pauses the socket transport."""
        s, c = self.connectPair(self.serverKeys(), self.clientKeys())
        link = self.sLinks.links[0]
        calls = []
        self.sio.pauseProducing = lambda: calls.append("pause")
        self.sio.resumeProducing = lambda: calls.append("resume")
        link.pauseReading("test")
        self.assertTrue(link.transport.paused)
        link.resumeReading("test")
        self.assertFalse(link.transport.paused)
        self.assertEqual(calls, ["pause", "resume"])

    def test_badTagClosesLink(self):
        """Format T: a corrupted chunk closes that link, naming it."""
        s, c = self.connectPair(self.serverKeys(), self.clientKeys(),
                                "T", "T")
        s.dataReceived(os.urandom(80))
        self.assertEqual(s.state, "closed")
        self.assertTrue(self.sio.disconnecting)
        self.assertEqual(len(self.logged("closing: format T: bad tag on "
                                         "chunk")), 1)

    def test_corruptUIsFramingError(self):
        """Format U: corruption reaches DMSG as garbage; the link's
        framing check closes it."""
        s, c = self.connectPair(self.serverKeys(), self.clientKeys())
        s.dataReceived(os.urandom(64))
        self.assertTrue(self.sio.disconnecting)
        self.assertEqual(len(self.logged("framing error, closing: ")), 1)
        for _ in range(5):
            self.pump.pump()
        self.assertFalse(self.sLinks.links[0].connected)
        self.assertFalse(self.cLinks.links[0].connected)

    def test_truncatedT(self):
        s, c = self.connectPair(self.serverKeys(), self.clientKeys(),
                                "T", "T")
        s.dataReceived(b"\0" * 30)
        s.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(len(self.logged("stream ended inside a chunk (30 "
                                         "bytes")), 1)
        self.assertFalse(self.sLinks.links[0].connected)


class RefusalTests(_Base):
    def test_noKey(self):
        """No file for the peer: refused at once, one line naming both
        files; nothing sent; the DMSG link never starts."""
        s, c = self.connectPair(self.serverKeys(peer=None),
                                self.clientKeys())
        self.assertEqual(self.sWire, [])
        lines = self.logged("refused: no key for peer 10.0.0.2 (looked for")
        self.assertEqual(len(lines), 1)
        self.assertIn("10.0.0.2.pub and ", lines[0])
        self.assertIn("10.0.0.2.none", lines[0])
        self.assertEqual(self.sLinks.links[0].transport, None)
        self.assertEqual(len(self.logged("closed by the peer before its "
                                         "handshake")), 1)
        self.assertEqual(self.cRecv.events, [])

    def test_plainBothSides(self):
        """.none on both: plain DMSG from the first byte, no bytes
        negotiated; the link sits on the socket transport itself."""
        s, c = self.connectPair(self.serverKeys(none=True),
                                self.clientKeys(none=True))
        self.assertEqual((s.state, c.state), ("plain", "plain"))
        self.assertTrue(self.sLinks.links[0].ready)
        self.assertEqual(self.sWire[0][:2], b"\x32\x48")
        self.assertIs(self.sLinks.links[0].transport, self.sio)

    def test_noneOnOneSide(self):
        """.none on the server only: each side closes with a line."""
        s, c = self.connectPair(self.serverKeys(none=True),
                                self.clientKeys())
        self.assertEqual(c.state, "closed")
        self.assertFalse(self.sLinks.links[0].connected)
        self.assertEqual(len(self.logged(
            "negotiation failed: closed by the peer after 384 of 512 "
            "handshake bytes (Connection was closed cleanly: Connection "
            "done.), which look like plain DMSG: it has a .none file for "
            "us, we a .pub for it")), 1)

    def test_wrongPeerKey(self):
        """The server holds another key for the client: both refuse."""
        s, c = self.connectPair(self.serverKeys(peer="C"),
                                self.clientKeys())
        self.assertEqual((s.state, c.state), ("closed", "closed"))
        self.assertEqual(len(self.logged(
            "dfly 10.0.0.2:40000: closing: negotiation failed: peer's "
            "handshake")), 1)
        self.assertEqual(self.sRecv.events, [])
        self.assertEqual(self.cRecv.events, [])

    def test_timeout(self):
        """A peer that sends nothing: closed after 10 s, saying where."""
        rsaKey("A")
        s, c = self.connectPair(self.serverKeys(), None, client=_Silent())
        self.assertEqual(s.state, "negotiating")
        self.clock.advance(9.9)
        self.assertEqual(s.state, "negotiating")
        self.clock.advance(0.2)
        self.assertEqual(s.state, "closed")
        self.assertEqual(self.logged(
            "dfly 10.0.0.2:40000: closing: negotiation timed out after 10 s "
            "(handshake stage: 0 of 512 bytes received)"), [self.lines[-1]])

    def test_timerCancelledWhenUp(self):
        self.connectPair(self.serverKeys(), self.clientKeys())
        self.assertEqual(self.clock.getDelayedCalls()
                         and [d for d in self.clock.getDelayedCalls()
                              if d.func.__name__ == "_timedOut"], [])


class WhenUpTests(_Base):
    def test_upFiresWithWrapped(self):
        s, c = self.connectPair(self.serverKeys(), self.clientKeys())
        self.assertIs(self.successResultOf(c.whenUp()), c.wrappedProtocol)

    def test_refusedFails(self):
        sf, links, recv = self.side(self.serverKeys(peer=None))
        p = sf.buildProtocol(CLIENT)
        p.makeConnection(FakeTransport(p, True, SERVER, CLIENT))
        self.failureResultOf(p.whenUp(), NegotiationFailed)

    def test_waitingThenLost(self):
        sf, links, recv = self.side(self.serverKeys())
        p = sf.buildProtocol(CLIENT)
        p.makeConnection(FakeTransport(p, True, SERVER, CLIENT))
        d = p.whenUp()
        self.assertNoResult(d)
        p.connectionLost(Failure(ConnectionError("x")))
        self.failureResultOf(d, NegotiationFailed)

    def test_cancelCloses(self):
        sf, links, recv = self.side(self.serverKeys())
        p = sf.buildProtocol(CLIENT)
        t = FakeTransport(p, True, SERVER, CLIENT)
        p.makeConnection(t)
        d = p.whenUp()
        d.cancel()
        self.assertTrue(t.disconnecting)
        self.assertEqual(p.state, "closed")
        self.failureResultOf(d)


class FuzzTests(_Base):
    """Arbitrary peer bytes, during the negotiation and in the stream."""

    def setUp(self):
        _Base.setUp(self)
        self.keys = self.serverKeys()
        self.failures = []
        globalLogPublisher.addObserver(self._failure)
        self.addCleanup(globalLogPublisher.removeObserver, self._failure)

    def _failure(self, event):
        if "log_failure" in event:
            self.failures.append(event)

    @cases(30)
    @given(st.binary(max_size=1500), st.integers(1, 600))
    def test_negotiationTakesAnything(self, data, cut):
        """Garbage for a handshake never raises: the connection waits
        for more or is closed with a line."""
        sf, links, recv = self.side(self.keys)
        p = sf.buildProtocol(CLIENT)
        t = FakeTransport(p, True, SERVER, CLIENT)
        p.makeConnection(t)
        for o in range(0, len(data), cut):
            p.dataReceived(data[o:o + cut])
        self.assertIn(p.state, ("negotiating", "closed"))
        self.assertEqual(p.state == "closed", t.disconnecting)
        self.assertEqual(self.failures, [])

    @cases(8)
    @given(st.binary(min_size=1, max_size=3000),
           st.sampled_from(["U", "T"]))
    def test_streamTakesAnything(self, data, fmt):
        """Garbage after a good negotiation closes the link or waits;
        nothing raises, nothing is logged as a failure."""
        s, c = self.connectPair(self.keys, self.clientKeys(), fmt, fmt)
        s.dataReceived(data)
        self.assertIn(s.state, ("encrypted", "closed"))
        self.assertEqual(self.failures, [])
