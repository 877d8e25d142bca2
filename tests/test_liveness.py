"""
Tests for L{xdiskd.dmsg.liveness}: the rules that tell a dead DMSG link
from a quiet one, driven by a Clock on a link over a StringTransport (no
sockets, no sleeps).
"""

import socket

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.liveness import isPingAnswer, tuneKeepalive
from xdiskd.dmsg.wire import BlkOpen, Message
from tests.rawpeer import RawPeer
from tests.test_limits import Logs, accepting

T = 5.0


class LivenessTests(SynchronousTestCase):
    def setUp(self):
        self.logs = Logs(self)
        self.clock = Clock()
        self.peer = RawPeer(accepting(), clock=self.clock, linkTimeout=T)
        self.peer.handshake()

    def pings(self):
        self.peer.poll()
        return [m for m in self.peer.sent if m.cmd == C.LNK_PING]

    def advance(self, seconds, step=0.125):
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)

    def waitOnPeer(self):
        """Stack a BLK_OPEN of ours, as an importer's unit does."""
        span = self.peer.link.startTransaction(None, C.LNK_SPAN)
        self.peer.send(Message(C.LNK_ERROR | C.CREATE | C.REPLY
                               | C.REVTRANS, span.msgid))
        return self.peer.link.startTransaction(span, C.BLK_OPEN,
                                               BlkOpen(C.BLKOPEN_RD))

    def test_idleProbedEveryThird(self):
        """An idle link sends one PING at a time, every T/3 or so."""
        self.advance(2.0)
        self.assertEqual(len(self.pings()), 1)
        self.advance(3.0)
        # Unanswered: no second PING while the first is outstanding.
        self.assertEqual(len(self.pings()), 1)
        self.peer.send(Message(C.LNK_PING | C.REPLY))
        self.advance(2.0)
        self.assertEqual(len(self.pings()), 2)

    def test_quietPeerThatNeverAnswersLives(self):
        """
        A peer that answers no PING (the DragonFly kernel's xdisk) and
        is owed nothing is never declared dead for being quiet.
        """
        self.advance(120.0, step=1.0)
        self.assertFalse(self.peer.aborted)
        self.assertEqual(self.peer.link.deadReason, None)

    def test_silentWithIOInFlightIsDead(self):
        """
        Waiting on the peer, nothing received for T: closed between T
        and T + T/5, with one log line naming the silence and the count.
        """
        self.waitOnPeer()
        self.peer.send(Message(C.LNK_PING))      # last sign of life
        self.advance(T - 0.25)
        self.assertFalse(self.peer.aborted)
        self.advance(T / 5 + 0.25)
        self.assertTrue(self.peer.aborted)
        text = self.logs.text()
        self.assertIn("raw: dead: nothing received for", text)
        self.assertIn("with 1 transactions waiting on the peer "
                      "(transactions waiting on the peer); closing", text)
        self.assertIn("nothing received for", self.peer.link.deadReason)

    def test_trafficKeepsItAlive(self):
        """Anything received counts as life, PING answers or not."""
        self.waitOnPeer()
        for _ in range(60):
            self.advance(1.0, step=0.5)
            self.peer.send(Message(C.LNK_PING))
        self.assertFalse(self.peer.aborted)

    def test_answeringPeerGoneQuiet(self):
        """
        A peer that has answered PINGs and stops, with nothing else
        owed: dead after T (a standby path known dead before use).
        """
        self.advance(2.0)
        self.peer.send(Message(C.LNK_PING | C.REPLY))
        self.assertEqual(self.peer.link.liveness.pingsAnswered, 1)
        self.advance(T + 2 * T / 3)
        self.assertTrue(self.peer.aborted)
        self.assertIn("(a PING unanswered)", self.logs.text())

    def test_dragonflyDiskServerQuirk(self):
        """The disk server's one-way LNK_ERROR|REPLY answers a PING."""
        self.advance(2.0)
        self.peer.send(Message(C.LNK_ERROR | C.REPLY, error=C.ERR_NOSUPP))
        self.assertEqual(self.peer.link.liveness.pingsAnswered, 1)
        self.assertIsNotNone(self.peer.link.liveness.rtt)

    def test_pausedByUsIsNotSilence(self):
        """While we do not read, what the peer sent waits: not silence."""
        self.waitOnPeer()
        self.peer.link.pauseReading("test")
        self.advance(4 * T)
        self.assertFalse(self.peer.aborted)
        self.peer.link.resumeReading("test")
        self.advance(T + T / 5 + 0.25)
        self.assertTrue(self.peer.aborted)

    def test_pausedStillPings(self):
        """
        While we do not read (an exporter behind a slow disk), a PING
        still goes out every T/3, so the peer keeps hearing from us.
        """
        self.advance(2.0)
        self.assertEqual(len(self.pings()), 1)    # outstanding, unread
        self.peer.link.pauseReading("export-io")
        self.advance(10.0)
        self.assertGreaterEqual(len(self.pings()), 6)
        self.peer.link.resumeReading("export-io")
        n = len(self.pings())
        self.advance(10.0)
        self.assertEqual(len(self.pings()), n)    # one outstanding again

    def test_rttIsLeastOfRecent(self):
        live = self.peer.link.liveness
        for delay in (0.5, 0.125, 0.25):
            while live.pingOutstanding is None:
                self.clock.advance(0.125)
            self.advance(delay)
            self.peer.send(Message(C.LNK_PING | C.REPLY))
        self.assertEqual(live.rtt, 0.125)

    def test_noPingBeforeLnkConn(self):
        peer = RawPeer(accepting(), clock=self.clock, linkTimeout=T)
        self.advance(3.0)
        peer.poll()
        self.assertEqual([m for m in peer.sent if m.cmd == C.LNK_PING], [])

    def test_offByDefault(self):
        peer = RawPeer(accepting(), clock=self.clock)
        self.assertIsNone(peer.link.liveness)

    def test_timerStopsWithTheLink(self):
        self.peer.link.connectionLost()
        self.assertEqual([c for c in self.clock.getDelayedCalls()
                          if c.active()], [])

    def test_pingAnswerNotAnswered(self):
        """A PING|REPLY is never answered (no ping-pong between peers)."""
        self.peer.poll()
        before = len(self.peer.sent)
        self.peer.send(Message(C.LNK_PING | C.REPLY))
        self.peer.poll()
        self.assertEqual(len(self.peer.sent), before)
        self.assertTrue(isPingAnswer(C.LNK_PING | C.REPLY))
        self.assertFalse(isPingAnswer(C.LNK_PING))


class Handle:
    """A transport as tuneKeepalive sees it: getHandle() and no more."""

    def __init__(self, sock):
        self.sock = sock

    def getHandle(self):
        return self.sock


class KeepaliveTests(SynchronousTestCase):
    def tcpSocket(self):
        """A connected TCP socket on loopback, closed at cleanup."""
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        sock = socket.create_connection(server.getsockname())
        self.addCleanup(sock.close)
        return sock

    def test_tcpSocket(self):
        """TCP sockets get keepalive and a user timeout matching T."""
        sock = self.tcpSocket()
        self.assertTrue(tuneKeepalive(Handle(sock), 6.0))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET,
                                         socket.SO_KEEPALIVE), 1)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP,
                                         socket.TCP_KEEPIDLE), 6)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP,
                                         socket.TCP_KEEPINTVL), 2)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP,
                                         socket.TCP_KEEPCNT), 3)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP,
                                         socket.TCP_USER_TIMEOUT), 9000)

    def test_throughAWrappingTransport(self):
        """dfly:'s encrypting transport names the TCP one underneath."""
        sock = self.tcpSocket()

        class Encrypting:
            lowerTransport = Handle(sock)
        self.assertTrue(tuneKeepalive(Encrypting(), 5.0))
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP,
                                         socket.TCP_USER_TIMEOUT), 7500)

    def test_unixSocketUntouched(self):
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertFalse(tuneKeepalive(Handle(a), 5.0))
        self.assertEqual(a.getsockopt(socket.SOL_SOCKET,
                                      socket.SO_KEEPALIVE), 0)
