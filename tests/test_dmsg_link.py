"""
Tests for L{xdiskd.dmsg.link}: two links driven against each other in
memory through the §7.2 exchange, stacked transactions, cascading close,
link loss, NOSUPP, PING and state violations.
"""

from twisted.logger import globalLogPublisher
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.link import DMSGLink, LinkError
from xdiskd.dmsg.wire import (
    BlkIO, BlkOpen, Decoder, Encoder, LnkSpan, Message)
from tests.dmsgpeer import RecordingReceiver, Tap, linkPair


class LogCapture:
    def __init__(self, case):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver,
                        self.events.append)

    def texts(self):
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.events]


def _acceptSpan(txn, msg):
    """Receiver side of a span: keep it open, accept children."""
    seen = []

    def handler(t, m):
        seen.append(m)
        if m.cmd & C.DELETE:
            t.reply(0)
    txn.handler = handler
    txn.data = seen
    txn.result(0)
    return True


class ConnExchangeTests(SynchronousTestCase):
    def test_bothReady(self):
        """§7.2: each side sends LNK_CONN, answers the peer's, is ready."""
        server, client, pump = linkPair()
        self.assertTrue(server.ready)
        self.assertTrue(client.ready)
        self.assertEqual(client.peerConn.peer_type, C.PEER_BLOCK)
        self.assertEqual(client.peerConn.peer_label, b"test/server")
        self.assertEqual(server.peerConn.peer_type, C.PEER_CLIENT)
        self.assertEqual(server.peerConn.peer_mask, 1 << C.PEER_BLOCK)
        self.assertEqual(server.receiver.kinds(), ["made", "ready"])
        self.assertEqual(client.receiver.kinds(), ["made", "ready"])

    def test_wireCmds(self):
        """The exchange is 0x80001106 then the result 0xA80FFF01."""
        t = StringTransport()
        link = DMSGLink(RecordingReceiver(), "x")
        link.makeConnection(t)
        [conn] = Decoder().feed(t.value())
        self.assertEqual(conn.cmd, 0x80001106)
        self.assertNotEqual(conn.msgid, 0)
        t.clear()
        # The peer's LNK_CONN, then its result to ours.
        enc = Encoder()
        peer = RecordingReceiver(C.PEER_BLOCK, "peer").conn
        data = b"".join(bytes(b) for b in enc.encode(
            Message(C.LNK_CONN | C.CREATE, 77, 0, 0, peer)))
        data += b"".join(bytes(b) for b in enc.encode(
            Message(0xA80FFF01, conn.msgid, 0, 0)))
        link.dataReceived(data)
        [result] = Decoder(verifySalt=False).feed(t.value())
        self.assertEqual((result.cmd, result.msgid, result.error),
                         (0xA80FFF01, 77, 0))
        self.assertTrue(link.ready)


class StackedTransactionTests(SynchronousTestCase):
    def setUp(self):
        self.server, self.client, self.pump = linkPair()
        self.client.receiver.accept = _acceptSpan
        self.serverTap = Tap(self.server)
        self.clientTap = Tap(self.client)
        # Server advertises a span; it accepts BLK_OPEN children on it.
        self.opens = []
        self.ios = []
        self.span = self.server.startTransaction(
            None, C.LNK_SPAN, LnkSpan(media_bytes=4096, media_blksize=512,
                                      pfs_label=b"s"), None, self._spanReply)
        self.span.onChild = self._openReceived
        self.pump.flush()
        [(_, self.cspan, _)] = [e for e in self.client.receiver.events
                                if e[0] == "txn"]

    def _spanReply(self, txn, msg):
        if msg.cmd & C.DELETE:
            txn.reply(0)

    def _openReceived(self, txn, msg):
        self.opens.append(txn)

        def openHandler(t, m):
            if m.cmd & C.DELETE:
                t.reply(0)
        txn.handler = openHandler
        txn.onChild = self._ioReceived
        txn.result(0)

    def _ioReceived(self, txn, msg):
        self.ios.append((txn, msg))

    def _clientOpen(self):
        replies = []
        o = self.cspan.startChild(C.BLK_OPEN, BlkOpen(1),
                                  handler=lambda t, m: replies.append(m))
        self.pump.flush()
        return o, replies

    def test_spanAndOpenFlags(self):
        """§3.3: span 0x80001207, result 0xA80FFF01, BLK_OPEN 0x84500102."""
        self.assertEqual(self.serverTap.cmds(), [0x80001207])
        o, replies = self._clientOpen()
        self.assertEqual(self.clientTap.messages[-1].cmd, 0x84500102)
        self.assertEqual(self.clientTap.messages[-1].circuit,
                         self.span.msgid)
        self.assertEqual([m.cmd for m in replies], [0xA80FFF01])
        self.assertEqual(self.serverTap.messages[-1].circuit,
                         self.span.msgid)

    def test_ioStreamingReplies(self):
        """
        An I/O stacked on the client's open (0xC0500302); the server
        streams three replies, the last with DELETE; the handler sees all
        in order and both tables end empty of it.
        """
        o, _ = self._clientOpen()
        got = []
        io = o.startChild(C.BLK_READ, BlkIO(0, 512),
                          handler=lambda t, m: got.append(m), delete=True)
        self.pump.flush()
        self.assertEqual(self.clientTap.messages[-1].cmd, 0xC0500302)
        [(stxn, smsg)] = self.ios
        self.assertEqual(smsg.ext, BlkIO(0, 512))
        stxn.send(C.LNK_ERROR, aux=b"a" * 10)
        stxn.send(C.LNK_ERROR, aux=b"b" * 10)
        stxn.send(C.LNK_ERROR, aux=b"c" * 10, delete=True)
        self.pump.flush()
        self.assertEqual([bytes(m.aux) for m in got],
                         [b"a" * 10, b"b" * 10, b"c" * 10])
        self.assertEqual([m.cmd for m in self.serverTap.messages[-3:]],
                         [0xAC0FFF01, 0x2C0FFF01, 0x6C0FFF01])
        self.assertTrue(io.closed)
        self.assertNotIn(io.msgid, self.client.tx)
        self.assertNotIn(stxn.msgid, self.server.rx)
        self.assertEqual(self.client.violations, 0)
        self.assertEqual(self.server.violations, 0)

    def test_probeIOOnSpan(self):
        """I/O directly on the server's span carries REVCIRC (0xC4500302)."""
        got = []
        self.cspan.startChild(C.BLK_READ, BlkIO(0, 512), delete=True,
                              handler=lambda t, m: got.append(m))
        self.pump.flush()
        self.assertEqual(self.clientTap.messages[-1].cmd, 0xC4500302)

    def test_closeOpen(self):
        """§8.5: client return 0x440FFF01, server return 0x680FFF01."""
        o, replies = self._clientOpen()
        closed = []
        o.whenClosed().addCallback(closed.append)
        o.reply(0)
        self.pump.flush()
        self.assertEqual(self.clientTap.messages[-1].cmd, 0x440FFF01)
        self.assertEqual(self.serverTap.messages[-1].cmd, 0x680FFF01)
        self.assertEqual(closed, [o])
        self.assertEqual(self.server.rx.keys() & {o.msgid}, set())

    def test_spanWithdrawCascades(self):
        """
        §6.8: withdrawing the span fails the client's open and its I/O
        locally with LOSTLINK; nothing about them goes on the wire.
        """
        o, replies = self._clientOpen()
        got = []
        io = o.startChild(C.BLK_READ, BlkIO(0, 512), delete=True,
                          handler=lambda t, m: got.append(m))
        self.pump.flush()
        before = len(self.clientTap.messages)
        self.span.reply(0)            # withdrawal: 0x400FFF01
        self.pump.flush()
        self.assertEqual(self.serverTap.messages[-1].cmd, 0x400FFF01)
        self.assertEqual([m.error for m in got], [C.ERR_LOSTLINK])
        self.assertTrue(got[0].cmd & C.DELETE)
        self.assertEqual(replies[-1].error, C.ERR_LOSTLINK)
        # Only the span's return went out from the client.
        self.assertEqual([m.cmd for m in self.clientTap.messages[before:]],
                         [0x680FFF01])
        self.assertEqual(self.client.tx, {self.client.connTxn.msgid:
                                          self.client.connTxn})
        # Only the LNK_CONN transactions remain.
        self.assertEqual([t.icmd for t in self.server.rx.values()],
                         [C.LNK_CONN])
        self.assertEqual([t.icmd for t in self.server.tx.values()],
                         [C.LNK_CONN])
        self.assertTrue(io.closed and o.closed and self.span.closed)
        # The server's own children of the span were failed too.
        self.assertTrue(self.opens[0].closed)
        self.assertEqual(self.server.violations, 0)
        self.assertEqual(self.client.violations, 0)

    def _ioInFlight(self, o):
        got = []
        io = o.startChild(C.BLK_READ, BlkIO(0, 512), delete=True,
                          handler=lambda t, m: got.append(m))
        self.pump.flush()
        [(stxn, _)] = self.ios
        return io, stxn, got

    def _onlyConnLeft(self):
        for table in (self.client.tx, self.server.rx):
            self.assertEqual([t.icmd for t in table.values()],
                             [C.LNK_CONN])

    def test_lateReplyAfterOurCloseDropped(self):
        """
        §6.4, §6.8: we close an open with a read in flight, and the
        server's reply crosses our DELETE: the read was failed locally
        once (LOSTLINK), the reply is dropped silently, not a violation.
        """
        o, _ = self._clientOpen()
        io, stxn, got = self._ioInFlight(o)
        o.reply(0)
        self.assertEqual([m.error for m in got], [C.ERR_LOSTLINK])
        self.assertIn(io.msgid, self.client.tx)      # waits for the peer
        stxn.send(C.LNK_ERROR, aux=b"r" * 512, delete=True)
        self.pump.flush()
        self.assertEqual(len(got), 1)
        self.assertEqual((self.client.violations, self.client.lateMessages),
                         (0, 1))
        self.assertEqual(self.server.violations, 0)
        self.assertTrue(o.closed)
        self._onlyConnLeft()

    def test_lateTransactionReleasedByParentDelete(self):
        """A peer that never answers the failed read (it saw our close
        first): the server's DELETE of the open releases it."""
        o, _ = self._clientOpen()
        io, stxn, got = self._ioInFlight(o)
        o.reply(0)
        self.pump.flush()
        self.assertEqual(len(got), 1)
        self.assertEqual((self.client.violations, self.client.lateMessages),
                         (0, 0))
        self.assertTrue(io.closed and o.closed)
        self._onlyConnLeft()

    def test_lateTransactionReleasedByLinkLoss(self):
        o, _ = self._clientOpen()
        io, stxn, got = self._ioInFlight(o)
        o.reply(0)
        self.client.transport.loseConnection()
        self.pump.flush()
        self.assertEqual(len(got), 1)
        self.assertEqual(self.client.tx, {})

    def test_lateCreateUnderParentWeClosedDropped(self):
        """
        The server closes the open while the client, not knowing yet,
        stacks a new read on it: the server drops that CREATE silently
        (the client fails the read itself when the close arrives).
        """
        o, replies = self._clientOpen()
        self.opens[0].reply(0)
        got = []
        o.startChild(C.BLK_READ, BlkIO(0, 512), delete=True,
                     handler=lambda t, m: got.append(m))
        self.pump.flush()
        self.assertEqual(self.ios, [])
        self.assertEqual((self.server.violations, self.server.lateMessages),
                         (0, 1))
        self.assertEqual(self.client.violations, 0)
        self.assertEqual([m.error for m in got], [C.ERR_LOSTLINK])
        o.reply(0)
        self.pump.flush()
        self._onlyConnLeft()

    def test_createUnderParentPeerClosedIsViolation(self):
        """Stacking on a transaction one has closed oneself is still a
        violation: only a close by the receiver excuses it."""
        o, _ = self._clientOpen()
        sopen = self.opens[0]
        self.client._write(Message(C.LNK_ERROR | C.DELETE, o.msgid,
                                   o.circuit, 0))
        o.txDelete = True
        self.client._write(Message(C.BLK_READ | C.CREATE | C.DELETE, 999,
                                   o.msgid, 0, BlkIO(0, 512)))
        self.pump.flush()
        self.assertTrue(sopen.rxDelete)
        self.assertEqual(self.server.violations, 1)

    def test_childUnderClosedParentRefused(self):
        o, _ = self._clientOpen()
        o.reply(0)
        self.assertRaises(LinkError, o.startChild, C.BLK_READ,
                          BlkIO(0, 512))

    def test_linkLossMidTransaction(self):
        """§7.4: link loss fails every open transaction with LOSTLINK."""
        o, replies = self._clientOpen()
        got = []
        o.startChild(C.BLK_WRITE, BlkIO(0, 512), b"x" * 512, delete=True,
                     handler=lambda t, m: got.append(m))
        self.client.transport.loseConnection()
        self.pump.flush()
        self.assertEqual([m.error for m in got], [C.ERR_LOSTLINK])
        self.assertEqual(replies[-1].error, C.ERR_LOSTLINK)
        self.assertEqual(self.client.tx, {})
        self.assertEqual(self.client.rx, {})
        self.assertEqual(self.server.tx, {})
        self.assertEqual(self.server.rx, {})
        self.assertIn("lost", self.client.receiver.kinds())
        self.assertIn("lost", self.server.receiver.kinds())
        self.assertRaises(LinkError, self.client.startTransaction, None,
                          C.LNK_SPAN)


class UnknownAndOneWayTests(SynchronousTestCase):
    def test_unknownCommandNOSUPP(self):
        """§6.9: an unsupported new transaction gets a NOSUPP return."""
        server, client, pump = linkPair()
        got = []
        client.startTransaction(None, C.DBG_SHELL,
                                handler=lambda t, m: got.append(m))
        pump.flush()
        self.assertEqual([(m.cmd, m.error) for m in got],
                         [(0xE80FFF01, C.ERR_NOSUPP)])

    def test_ping(self):
        """PING is answered with a one-way PING|REPLY; that is not."""
        server, client, pump = linkPair()
        tap = Tap(server)
        client._write(Message(C.LNK_PING))
        pump.flush()
        self.assertEqual(tap.cmds(), [0x20000101])
        self.assertEqual(tap.messages[0].msgid, 0)

    def test_oneWayErrorNotAnswered(self):
        server, client, pump = linkPair()
        tap = Tap(server)
        client._write(Message(C.LNK_ERROR | C.REPLY, 0, 0, C.ERR_NOSUPP))
        client._write(Message(C.LNK_PING | C.REPLY))
        pump.flush()
        self.assertEqual(tap.cmds(), [])


class ViolationTests(SynchronousTestCase):
    def setUp(self):
        self.server, self.client, self.pump = linkPair()
        self.log = LogCapture(self)

    def _assertStillWorks(self):
        tap = Tap(self.server)
        self.client._write(Message(C.LNK_PING))
        self.pump.flush()
        self.assertEqual(tap.cmds(), [0x20000101])

    def test_duplicateCreate(self):
        self.client.receiver.accept = _acceptSpan
        span = self.server.startTransaction(None, C.LNK_SPAN, LnkSpan())
        self.pump.flush()
        self.server._write(Message(C.LNK_SPAN | C.CREATE, span.msgid, 0, 0,
                                   LnkSpan()))
        self.pump.flush()
        self.assertEqual(self.client.violations, 1)
        self.assertTrue(any("duplicate CREATE" in t
                            for t in self.log.texts()))
        self._assertStillWorks()

    def test_deleteForUnknownMsgid(self):
        self.server._write(Message(C.LNK_ERROR | C.DELETE, 12345, 0, 0))
        self.pump.flush()
        self.assertEqual(self.client.violations, 1)
        self._assertStillWorks()

    def test_abortDeleteUnknownSilent(self):
        """§6.7: ABORT|DELETE for a gone transaction is discarded quietly."""
        self.server._write(Message(C.LNK_ERROR | C.DELETE | C.ABORT, 999))
        self.pump.flush()
        self.assertEqual(self.client.violations, 0)
        self._assertStillWorks()

    def test_missingParent(self):
        self.server._write(Message(C.BLK_READ | C.CREATE | C.DELETE, 5, 4242,
                                   0, BlkIO(0, 512)))
        self.pump.flush()
        self.assertEqual(self.client.violations, 1)
        self._assertStillWorks()

    def test_framingErrorClosesOnlyThatLink(self):
        """A framing error closes the link with one log line naming it."""
        other = linkPair()
        self.client.transport.write(b"\x00" * 64)
        self.pump.flush()
        self.assertFalse(self.server.connected)
        self.assertEqual(
            [t for t in self.log.texts() if "framing error" in t],
            ["server: framing error, closing: BadMagicError: bad magic "
             "0x0000"])
        # The other pair is untouched.
        oserver, oclient, opump = other
        self.assertTrue(oserver.connected and oserver.ready)

    def test_handlerExceptionClosesLink(self):
        """A bug in a handler closes that link; it never reaches the reactor."""
        def boom(txn, msg):
            raise RuntimeError("boom")
        self.client.receiver.accept = boom
        self.server.startTransaction(None, C.LNK_SPAN, LnkSpan())
        self.pump.flush()
        self.assertFalse(self.client.connected)
        self.flushLoggedErrors(RuntimeError)


class WriteBackPressureTests(SynchronousTestCase):
    """
    A full send buffer stops a link from taking requests, but never from
    reading the replies it waits for (or two daemons could deadlock).
    """

    def setUp(self):
        self.server, self.client, self.pump = linkPair()

    def test_pausesWhenAwaitingNothing(self):
        link = self.server
        link.pauseProducing()
        self.assertTrue(link.readingPaused)
        self.assertTrue(link.writeBlocked)
        link.resumeProducing()
        self.assertFalse(link.readingPaused)
        self.assertFalse(link.writeBlocked)

    def test_keepsReadingWhileAwaitingReplies(self):
        link = self.client
        link.startTransaction(None, C.BLK_OPEN, BlkOpen(1))
        link.pauseProducing()
        self.assertFalse(link.readingPaused)
        # The stall watchdog still sees that the peer is not reading.
        self.assertTrue(link.writeBlocked)
        link.resumeProducing()
        self.assertFalse(link.writeBlocked)

    def test_ownSpansAwaitNothing(self):
        link = self.server
        link.startTransaction(None, C.LNK_SPAN, LnkSpan())
        link.pauseProducing()
        self.assertTrue(link.readingPaused)
