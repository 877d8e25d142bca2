"""
The negotiation of xdiskd.dfly.handshake: the block layout of
dmsg-crypto.md §3 (with §3.4's example block), the raw RSA of §4, the
acceptance rule of §3.3, key derivation (§6) and the choice of stream
format (§7.4), between two Negotiation objects and against a peer that
behaves as libdmsg does.
"""

import os
import struct

from twisted.trial.unittest import SynchronousTestCase

from xdiskd.dfly import handshake as H
from xdiskd.dfly import stream
from tests.dflykeys import privateKey, rsaKey

h = bytes.fromhex

# §3.4: the block sent by the service, as decrypted by the Python peer.
SPEC_BLOCK_HEAD = h(
    "0441588d4edba961324801000000000018"
    "26f79a104e7db92486f9843fa4686ccd23bc6141317d3acf8116eea3ea97d0"
    "5d98d3ce6793e9c5da585fa33fa7e96964de024b2c9d94ee05c3ed44f1925307"
    "539adf9f3337b60ed8d87e18f3cb6f37"
    "54657374696e67203120322033002613914ce58963a671075422c800a45974cc")


def A():
    return privateKey("A")


def B():
    return privateKey("B")


class BlockTests(SynchronousTestCase):
    def test_specBlockVerifies(self):
        """§3.4's block: version 1, the XOR-fold verifier, the quickmsg."""
        block = SPEC_BLOCK_HEAD + bytes(512 - len(SPEC_BLOCK_HEAD))
        peer = H.checkBlock(block)
        self.assertEqual(peer.quickmsg, b"Testing 1 2 3")
        self.assertEqual(peer.key.hex(), "1826f79a104e7db92486f9843fa4686c"
                         "cd23bc6141317d3acf8116eea3ea97d0")
        self.assertEqual(peer.fixed, h("5d98d3ce"))
        self.assertIsNone(peer.announced)
        self.assertEqual(H.verifier(peer.sess)[0], 0x18 ^ 0x26 ^ 0xf7 ^ 0x9a)

    def test_buildLayout(self):
        """§3.2: magic/version/flags LE, masks, verifier, NUL quickmsg."""
        block = H.buildBlock(b"xdiskd U", lambda n: b"\xff" * n)
        self.assertEqual(struct.unpack_from("<HHI", block, 8),
                         (0x4832, 1, 0))
        self.assertEqual(block[0], 0x3F)
        self.assertEqual(block[0x100], 0x3F)
        self.assertEqual(bytes(block[0x60:0x69]), b"xdiskd U\0")
        self.assertEqual(bytes(block[0x50:0x60]),
                         H.verifier(bytes(block[0x10:0x50])))
        self.assertEqual(bytes(block[0x69:0x80]), b"\xff" * 23)

    def test_allZeroRandomRefused(self):
        self.assertRaises(H.NegotiationError, H.buildBlock, b"x",
                          lambda n: bytes(n))

    def test_flippedVerifier(self):
        block = bytearray(SPEC_BLOCK_HEAD + bytes(400))
        block[0x5F] ^= 1
        e = self.assertRaises(H.BadBlock, H.checkBlock, bytes(block))
        self.assertIn("verifier", str(e))

    def test_flippedSess(self):
        block = bytearray(SPEC_BLOCK_HEAD + bytes(400))
        block[0x10] ^= 0x80
        self.assertRaises(H.BadBlock, H.checkBlock, bytes(block))

    def test_version2(self):
        block = bytearray(SPEC_BLOCK_HEAD + bytes(400))
        block[0x0A] = 2
        e = self.assertRaises(H.BadBlock, H.checkBlock, bytes(block))
        self.assertIn("version 2", str(e))

    def test_magicAndFlagsIgnored(self):
        """§3.3 (verified against the service): magic 0, flags ~0 pass."""
        block = bytearray(SPEC_BLOCK_HEAD + bytes(400))
        block[0x08:0x0A] = b"\0\0"
        block[0x0C:0x10] = b"\xff" * 4
        H.checkBlock(bytes(block))

    def test_swappedMagicSwapsVersion(self):
        block = bytearray(SPEC_BLOCK_HEAD + bytes(400))
        block[0x08:0x10] = struct.pack(">HHI", 0x4832, 1, 0)
        H.checkBlock(bytes(block))


class RSATests(SynchronousTestCase):
    def test_roundTrip(self):
        """Own private key then peer's public; peer undoes it (§4)."""
        a, b = A(), B()
        block = H.buildBlock(b"t")
        wire = H.encryptBlock(block, a, b.public)
        self.assertEqual(len(wire), 512)
        self.assertNotEqual(wire, bytes(block))
        self.assertEqual(H.decryptBlock(wire, b, a.public), bytes(block))

    def test_intermediateBelowTwoTopBits(self):
        """Each piece's s = m^d_own has bits 7 and 6 of its top byte clear."""
        a, b = A(), B()
        wire = H.encryptBlock(H.buildBlock(b"t"), a, b.public)
        for o in (0, 256):
            c = int.from_bytes(wire[o:o + 256], "big")
            s = pow(c, b.d, b.n)
            self.assertLess(s, 1 << (8 * 256 - 2))

    def test_counterBumpedAtOffset4(self):
        """The retry counter is the LE u32 at piece offset 4, bumped
        before the first attempt too; sess and verf are untouched."""
        a, b = A(), B()
        block = H.buildBlock(b"t", lambda n: b"\x11" * n)
        before = bytes(block)
        H.encryptBlock(block, a, b.public)
        for o in (0, 256):
            n0, = struct.unpack_from("<I", before, o + 4)
            n1, = struct.unpack_from("<I", block, o + 4)
            self.assertGreaterEqual((n1 - n0) % (1 << 32), 1)
            self.assertLess((n1 - n0) % (1 << 32), 64)
        self.assertEqual(block[0x10:0x60], before[0x10:0x60])
        self.assertEqual(block[8:0x100], before[8:0x100])

    def test_wrongReceiverKey(self):
        """Decrypting with keys that do not fit fails, never passes."""
        a, b, c = A(), B(), privateKey("C")
        for _ in range(3):
            block = H.buildBlock(b"t")
            wire = H.encryptBlock(block, a, b.public)
            try:
                plain = H.decryptBlock(wire, c, a.public)
            except H.KeyMismatch:
                continue
            self.assertRaises(H.BadBlock, H.checkBlock, plain)

    def test_aboveModulus(self):
        a, b = A(), B()
        e = self.assertRaises(H.KeyMismatch, H.decryptBlock, b"\xff" * 512,
                              b, a.public)
        self.assertIn("above our modulus", str(e))

    def test_4096(self):
        """4096-bit keys: one 512-byte piece (§2.5)."""
        a, b = privateKey("A4", 4096), privateKey("B4", 4096)
        block = H.buildBlock(b"t")
        wire = H.encryptBlock(block, a, b.public)
        self.assertEqual(H.decryptBlock(wire, b, a.public), bytes(block))

    def test_sizesMustMatch(self):
        self.assertRaises(H.KeyTooSmall, H.Negotiation, A(),
                          privateKey("B4", 4096).public)

    def test_1024Refused(self):
        """libdmsg fails at random with 1024-bit keys: refused (§2.5)."""
        from xdiskd.dfly.keys import PrivateKey
        pn = rsaKey("S", 1024).private_numbers()
        small = PrivateKey(pn.public_numbers.n, pn.public_numbers.e, pn.d,
                           pn.p, pn.q, pn.dmp1, pn.dmq1, pn.iqmp)
        self.assertRaises(H.KeyTooSmall, H.Negotiation, small, small.public)


def libdmsgPeer(own, peer, fmt, quickmsg=b"Testing 1 2 3"):
    """
    What libdmsg sends: its block (quickmsg "Testing 1 2 3"), then its
    LNK_CONN (here: 384 zero bytes) in C{fmt}.  Returns (wire, sess).
    """
    block = H.buildBlock(quickmsg)
    sess = bytes(block[0x10:0x50])
    wire = H.encryptBlock(block, own, peer)
    tx = stream.sender(fmt, sess[:32], sess[32:36])
    return wire, tx.update(bytes(384)), sess


class NegotiationTests(SynchronousTestCase):
    def pair(self, fmtA="auto", fmtB="auto"):
        a, b = A(), B()
        na = H.Negotiation(a, b.public, fmtA)
        nb = H.Negotiation(b, a.public, fmtB)
        return na, nb, na.start(), nb.start()

    def test_xdiskdPeers(self):
        """Two xdiskd sides: U both ways, settled by the handshake
        alone (each names its format), keys from each sender's sess."""
        na, nb, wa, wb = self.pair()
        ea = na.receive(wb)
        eb = nb.receive(wa)
        self.assertEqual((ea.txFormat, ea.rxFormat, eb.txFormat,
                          eb.rxFormat), ("U", "U", "U", "U"))
        self.assertEqual(ea.peerMessage, b"xdiskd U")
        data = os.urandom(1000)
        self.assertEqual(eb.rx.update(ea.tx.update(data)), data)
        self.assertEqual(ea.rx.update(eb.tx.update(data)), data)

    def test_fragments(self):
        """The peer's 512 bytes may come in 7-byte pieces (§5)."""
        na, nb, wa, wb = self.pair()
        results = [na.receive(wb[i:i + 7]) for i in range(0, 512, 7)]
        self.assertEqual(results.count(None), len(results) - 1)
        self.assertIsInstance(results[-1], H.Established)

    def test_forcedT(self):
        na, nb, wa, wb = self.pair("T", "T")
        ea, eb = na.receive(wb), nb.receive(wa)
        self.assertEqual((ea.txFormat, eb.rxFormat), ("T", "T"))
        self.assertEqual(eb.rx.update(ea.tx.update(bytes(64))), bytes(64))

    def test_autoAgainstForcedT(self):
        """Each direction has its sender's format: auto sends U to a
        peer that sends T."""
        na, nb, wa, wb = self.pair("auto", "T")
        ea = na.receive(wb)
        self.assertEqual((ea.txFormat, ea.rxFormat), ("U", "T"))
        e = self.assertRaises(H.FormatMismatch, nb.receive, wa)
        self.assertIn("peer sends stream format U but this endpoint is "
                      "format=t", str(e))

    def test_streamBytesAfterBlock(self):
        """Bytes after the 512th are the stream's first, decrypted."""
        na, nb, wa, wb = self.pair()
        eb = nb.receive(wa)
        msg = eb.tx.update(b"hello".ljust(64, b"\0"))
        ea = na.receive(wb + msg)
        self.assertEqual(ea.rest, b"hello".ljust(64, b"\0"))

    def libdmsg(self, fmt, ours="auto"):
        a, b = A(), B()
        n = H.Negotiation(a, b.public, ours)
        mine = n.start()
        wire, conn, sess = libdmsgPeer(b, a.public, fmt)
        self.assertEqual(H.decryptBlock(mine, b, a.public)[0x60:0x69],
                         b"xdiskd U" + b"\0")
        return n, wire, conn, sess

    def test_libdmsgU(self):
        """A libdmsg peer names nothing: detect from 80 stream bytes."""
        n, wire, conn, sess = self.libdmsg("U")
        self.assertIsNone(n.receive(wire))
        self.assertEqual(n.stage, "format")
        self.assertIsNone(n.receive(conn[:79]))
        e = n.receive(conn[79:])
        self.assertEqual((e.txFormat, e.rxFormat), ("U", "U"))
        self.assertEqual(e.rest, bytes(384))
        self.assertEqual(e.peerMessage, b"Testing 1 2 3")

    def test_libdmsgT(self):
        n, wire, conn, sess = self.libdmsg("T")
        e = n.receive(wire + conn)
        self.assertEqual((e.txFormat, e.rxFormat), ("T", "T"))
        self.assertEqual(e.rest, bytes(384))
        # our T goes out under our own sess, chunk counter from 0
        self.assertEqual(len(e.tx.update(bytes(64))), 80)

    def test_libdmsgForcedMismatch(self):
        """Forced U against a T peer refuses before sending anything."""
        n, wire, conn, sess = self.libdmsg("T", ours="U")
        e = self.assertRaises(H.FormatMismatch, n.receive, wire + conn)
        self.assertIn("nothing sent", str(e))

    def test_libdmsgForcedMatch(self):
        n, wire, conn, sess = self.libdmsg("U", ours="U")
        self.assertEqual(n.receive(wire + conn).rxFormat, "U")

    def test_wrongPeerKey(self):
        """The peer signed with another key than its remote/ file."""
        a, b, c = A(), B(), privateKey("C")
        n = H.Negotiation(a, b.public)
        n.start()
        wire = H.encryptBlock(H.buildBlock(b"x"), c, a.public)
        self.assertRaises(H.NegotiationError, n.receive, wire)

    def test_version2Refused(self):
        a, b = A(), B()
        n = H.Negotiation(a, b.public)
        n.start()
        block = H.buildBlock(b"x")
        struct.pack_into("<H", block, 0x0A, 2)
        e = self.assertRaises(H.BadBlock, n.receive,
                              H.encryptBlock(block, b, a.public))
        self.assertIn("version 2", str(e))

    def test_progress(self):
        n = H.Negotiation(A(), B().public)
        n.start()
        n.receive(b"x" * 100)
        self.assertEqual((n.stage, n.received, n.needed),
                         ("handshake", 100, 512))
