"""
Tests for L{xdiskd.dmsg.integrity}: two xdiskd peers on a UNIX or TLS
link agree, through a bit of LNK_CONN's reserved03, to skip the aux
CRC; DragonFly peers (the bit clear) and plain TCP keep it, and a peer
that skips it without agreement is still caught.
"""

import struct

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.test.iosim import FakeTransport, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.integrity import NO_AUX_CRC, agreed, guaranteesIntegrity
from xdiskd.dmsg.link import DMSGLink
from xdiskd.dmsg.wire import (
    HEADER, Decoder, Encoder, LnkConn, Message, crc32c, encodeMessage)
from tests.dmsgpeer import RecordingReceiver

UNIX = UNIXAddress("/tmp/i19-x.sock")
TCP = IPv4Address("TCP", "127.0.0.1", 4242)

# A LNK_CONN as DragonFly's kernel xdisk sends it (spec §4.2): reserved03
# at 0x84..0x8B zero.  Header fields other than cmd and CRCs left 0.
DRAGONFLY_CONN = LnkConn(peer_mask=1 << C.PEER_BLOCK,
                         peer_type=C.PEER_BLOCK, peer_label=b"dfly/xa0")


def paddedCRC(data):
    """aux_crc as DragonFly computes it: over the padded payload."""
    return crc32c(data + bytes(-len(data) & C.ALIGN_MASK))


def auxCRCs(frames):
    """(cmd, aux_bytes, aux_crc) of each message in the raw C{frames}."""
    out = []
    data = b"".join(frames)
    d = Decoder(verifyCRC=False, verifySalt=False)
    pos = 0
    for m in d.feed(data):
        hdr = HEADER.unpack_from(data, pos)
        cmd, auxCRC, auxBytes = hdr[6], hdr[7], hdr[8]
        out.append((cmd, auxBytes, auxCRC))
        hbytes = (cmd & C.SIZE) * C.ALIGN
        pos += hbytes + ((auxBytes + C.ALIGN_MASK) & ~C.ALIGN_MASK)
    return out


def tap(link):
    """Keep a raw copy of every frame C{link} writes."""
    frames = []
    write = link._sendSeq

    def tapped(bufs, size):
        frames.append(b"".join(bytes(b) for b in bufs))
        write(bufs, size)
    link._sendSeq = tapped
    return frames


class WireTests(SynchronousTestCase):
    def test_xflagsIsReserved03(self):
        """xflags is the u64 at 0x84 (DragonFly's reserved03), nothing
        else of the header moves."""
        buf = bytearray(384)
        LnkConn(peer_mask=4, xflags=NO_AUX_CRC).packInto(buf)
        self.assertEqual(struct.unpack_from("<Q", buf, 0x84)[0], NO_AUX_CRC)
        self.assertEqual(struct.unpack_from("<Q", buf, 0x70)[0], 4)
        plain = bytearray(384)
        LnkConn(peer_mask=4).packInto(plain)
        self.assertEqual(plain[:0x84] + plain[0x8C:],
                         buf[:0x84] + buf[0x8C:])

    def test_dragonflyConnHasNoFlags(self):
        """A DragonFly LNK_CONN (reserved03 zero) reads as xflags 0."""
        frames = encodeMessage(Message(C.LNK_CONN | C.CREATE, 1,
                                       ext=DRAGONFLY_CONN))
        msg, = Decoder().feed(b"".join(bytes(f) for f in frames))
        self.assertEqual(msg.ext.xflags, 0)
        self.assertFalse(agreed(LnkConn(xflags=NO_AUX_CRC), msg.ext))

    def test_encoderWithoutCRC(self):
        """Without auxCRC the payload goes as is with aux_crc 0; hdr_crc
        still covers the header."""
        msg = Message(C.DBG_SHELL | C.CREATE, 1, aux=b"abcde")
        frames = encodeMessage(msg, auxCRC=False)
        (cmd, n, crc), = auxCRCs(frames)
        self.assertEqual((n, crc), (5, 0))
        raw = b"".join(bytes(f) for f in frames)
        d = Decoder()
        d.verifyAuxCRC = False
        self.assertEqual(bytes(d.feed(raw)[0].aux), b"abcde")
        bad = bytearray(raw)
        bad[0x30] ^= 1                  # a header byte: hdr_crc catches
        d = Decoder()
        d.verifyAuxCRC = False
        from xdiskd.dmsg.wire import HeaderCRCError
        self.assertRaises(HeaderCRCError, d.feed, bytes(bad))


class TransportTests(SynchronousTestCase):
    def test_kinds(self):
        """UNIX sockets and TLS guarantee integrity; TCP does not."""
        self.assertTrue(guaranteesIntegrity(StringTransport(UNIX)))
        self.assertFalse(guaranteesIntegrity(StringTransport(TCP)))
        tls = StringTransport(TCP)
        directlyProvides(tls, ISSLTransport)
        self.assertTrue(guaranteesIntegrity(tls))
        self.assertFalse(guaranteesIntegrity(None))


def pair(serverAddr, clientAddr):
    """Two xdiskd links through iosim, each transport with its own host
    address; the LNK_CONN exchange is pumped through."""
    sRecv = RecordingReceiver(C.PEER_BLOCK, "test/server")
    cRecv = RecordingReceiver()
    sRecv.accept = cRecv.accept = lambda txn, msg: True
    client, server, pump = connectedServerAndClient(
        lambda: DMSGLink(sRecv, "server"),
        lambda: DMSGLink(cRecv, "client"),
        clientTransportFactory=lambda p: FakeTransport(
            p, False, hostAddress=clientAddr, peerAddress=serverAddr),
        serverTransportFactory=lambda p: FakeTransport(
            p, True, hostAddress=serverAddr, peerAddress=clientAddr))
    frames = (tap(server), tap(client))
    pump.flush()
    return server, client, pump, frames, (sRecv, cRecv)


class NegotiationTests(SynchronousTestCase):
    def exchange(self, serverAddr, clientAddr):
        """Each side opens a transaction with a payload; return what the
        wire carried for it in each direction, and what arrived."""
        server, client, pump, frames, recvs = pair(serverAddr, clientAddr)
        self.assertTrue(server.ready and client.ready)
        payload = bytes(range(256)) * 17       # 4352 bytes, padded
        client.startTransaction(None, C.DBG_SHELL, aux=payload)
        server.startTransaction(None, C.DBG_SHELL, aux=payload[::-1])
        pump.flush()
        self.assertTrue(server.connected and client.connected)
        got = [bytes(e[2].aux) for r in recvs for e in r.events
               if e[0] == "txn"]
        self.assertEqual(got, [payload, payload[::-1]])
        wire = [[x for x in auxCRCs(f) if x[0] & C.CMDSWMASK
                 == C.DBG_SHELL] for f in frames]
        return server, client, wire, payload

    def test_unixBothWays(self):
        """Over UNIX both offer, both skip: the payloads go with aux_crc
        0 each way and arrive intact."""
        server, client, wire, payload = self.exchange(UNIX, UNIX)
        for link in (server, client):
            self.assertEqual(link.ourConn.xflags & NO_AUX_CRC, NO_AUX_CRC)
            self.assertEqual(link.peerConn.xflags & NO_AUX_CRC, NO_AUX_CRC)
            self.assertFalse(link.encoder.auxCRC)
            self.assertFalse(link.decoder.verifyAuxCRC)
        self.assertEqual(wire, [[(wire[0][0][0], len(payload), 0)],
                                [(wire[1][0][0], len(payload), 0)]])

    def test_tcpKeepsCRC(self):
        """Over TCP nothing is offered and every payload has its CRC."""
        server, client, wire, payload = self.exchange(TCP, TCP)
        for link in (server, client):
            self.assertEqual(link.ourConn.xflags, 0)
            self.assertTrue(link.encoder.auxCRC)
            self.assertTrue(link.decoder.verifyAuxCRC)
        # wire: what the server sent, then what the client sent.
        self.assertEqual([w[0][2] for w in wire],
                         [crc32c(payload[::-1]), crc32c(payload)])

    def test_oneSideOffers(self):
        """One side offers, the other does not: neither skips."""
        server, client, wire, payload = self.exchange(UNIX, TCP)
        self.assertEqual(server.ourConn.xflags, NO_AUX_CRC)
        self.assertEqual(client.ourConn.xflags, 0)
        for link in (server, client):
            self.assertTrue(link.encoder.auxCRC)
            self.assertTrue(link.decoder.verifyAuxCRC)
        self.assertEqual([w[0][2] for w in wire],
                         [crc32c(payload[::-1]), crc32c(payload)])


class RawPeerTests(SynchronousTestCase):
    """The link under test on a UNIX transport; the far end hand-made."""

    def setUp(self):
        self.receiver = RecordingReceiver(C.PEER_BLOCK, "test/x")
        self.receiver.accept = lambda txn, msg: True
        self.transport = StringTransport(UNIX)
        self.link = DMSGLink(self.receiver, "x")
        self.link.makeConnection(self.transport)
        self.encoder = Encoder()

    def send(self, *msgs, crc=True):
        data = b""
        for m in msgs:
            m.salt = self.encoder.sequence & 0xFF
            self.encoder.sequence += 1
            data += b"".join(bytes(b) for b in encodeMessage(m, crc))
        self.link.dataReceived(data)

    def handshake(self, xflags):
        self.send(Message(C.LNK_CONN | C.CREATE, 1,
                          ext=DRAGONFLY_CONN._replace(xflags=xflags)),
                  Message(C.LNK_ERROR | C.CREATE | C.REPLY | C.REVTRANS, 1))

    def test_dragonflyPeerKeepsCRC(self):
        """We offer, a DragonFly peer (bit clear) does not: we keep
        computing and checking the CRC."""
        self.assertEqual(self.link.ourConn.xflags, NO_AUX_CRC)
        self.handshake(0)
        self.assertTrue(self.link.ready)
        self.assertTrue(self.link.encoder.auxCRC)
        self.assertTrue(self.link.decoder.verifyAuxCRC)
        self.transport.clear()
        self.link.startTransaction(None, C.DBG_SHELL, aux=b"12345678")
        (_, n, crc), = auxCRCs([self.transport.value()])
        self.assertEqual((n, crc), (8, paddedCRC(b"12345678")))

    def test_skipWithoutAgreementCaught(self):
        """A peer that did not offer, yet sends aux_crc 0, fails the
        check: the link closes."""
        self.handshake(0)
        self.send(Message(C.DBG_SHELL | C.CREATE, 5, aux=b"tampered"),
                  crc=False)
        self.assertTrue(self.transport.disconnecting)
        self.assertNotIn("txn", self.receiver.kinds())

    def test_skipBeforeItsConnCaught(self):
        """Payloads without CRC before the peer's LNK_CONN are checked."""
        self.send(Message(C.DBG_SHELL | C.CREATE, 5, aux=b"early"),
                  crc=False)
        self.assertTrue(self.transport.disconnecting)

    def test_offeredOverTCPOnlyByPeer(self):
        """On TCP we do not offer: a peer's bit changes nothing, and its
        CRC-less payload is caught."""
        t = StringTransport(TCP)
        link = DMSGLink(self.receiver, "tcp")
        link.makeConnection(t)
        self.link, self.transport = link, t
        self.encoder = Encoder()
        self.handshake(NO_AUX_CRC)
        self.assertEqual(link.ourConn.xflags, 0)
        self.assertTrue(link.decoder.verifyAuxCRC and link.encoder.auxCRC)
        self.send(Message(C.DBG_SHELL | C.CREATE, 5, aux=b"x" * 64),
                  crc=False)
        self.assertTrue(t.disconnecting)

    def test_agreedInOneRead(self):
        """The peer's LNK_CONN with the bit and CRC-less payloads after
        it, in one read: they are taken (the check stops right after
        that LNK_CONN, in stream order)."""
        data = b""
        for m, crc in (
                (Message(C.LNK_CONN | C.CREATE, 1,
                         ext=DRAGONFLY_CONN._replace(xflags=NO_AUX_CRC)),
                 True),
                (Message(C.LNK_ERROR | C.CREATE | C.REPLY | C.REVTRANS, 1),
                 True),
                (Message(C.DBG_SHELL | C.CREATE, 5, aux=b"fast"), False)):
            m.salt = self.encoder.sequence & 0xFF
            self.encoder.sequence += 1
            data += b"".join(bytes(b) for b in encodeMessage(m, crc))
        self.link.dataReceived(data)
        self.assertFalse(self.transport.disconnecting)
        got = [bytes(e[2].aux) for e in self.receiver.events
               if e[0] == "txn"]
        self.assertEqual(got, [b"fast"])
        self.assertFalse(self.link.encoder.auxCRC)
