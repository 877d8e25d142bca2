"""
Tests for L{xdiskd.export.server}: a client-side peer built on the link
layer opens, reads, writes, flushes, trims and closes real files.
"""

import os

from twisted.trial.unittest import TestCase

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.wire import BlkIO, BlkOpen
from tests.dmsgpeer import RecordingReceiver, Tap
from tests.stack import Wire, exporterNode, makeImage, readFile

SIZE = 1 << 20


class ClientPeer(RecordingReceiver):
    """A bare link-layer client that keeps every span it is offered."""

    def __init__(self):
        RecordingReceiver.__init__(self)
        self.spans = {}

        def accept(txn, msg):
            self.spans[msg.ext.pfs_label.decode()] = (txn, msg.ext)

            def handler(t, m):
                if m.cmd & 0x40000000:
                    self.spans.pop(msg.ext.pfs_label.decode(), None)
                    t.reply(0)
            txn.handler = handler
            txn.result(0)
            return True
        self.accept = accept


class ExportServerTests(TestCase):
    def setUp(self):
        self.content = os.urandom(SIZE)
        self.path = makeImage(self, fill=self.content)
        self.roPath = makeImage(self, fill=self.content)
        self.node = exporterNode(self, [("serno/A", self.path, False),
                                        ("serno/RO", self.roPath, True)])
        self.peer = ClientPeer()
        self.wire = Wire(self.node, self.peer)
        self.link = self.wire.client

    def _span(self, serial="serno/A"):
        return self.peer.spans[serial][0]

    def _request(self, parent, cmd, offset, length, aux=None):
        got = []
        parent.startChild(cmd, BlkIO(offset, length), aux,
                          handler=lambda t, m: got.append(m), delete=True)
        self.wire.flush()
        [reply] = got
        return reply

    def _open(self, serial="serno/A", modes=3, error=0):
        got = []
        o = self._span(serial).startChild(C.BLK_OPEN, BlkOpen(modes),
                                          handler=lambda t, m: got.append(m))
        self.wire.flush()
        self.assertEqual([(m.cmd, m.error) for m in got],
                         [(0xA80FFF01, error)])
        return o

    def test_spansAdvertised(self):
        """§4.3: one BLOCK span per export, with size, blksize, labels."""
        self.assertEqual(sorted(self.peer.spans), ["serno/A", "serno/RO"])
        ext = self.peer.spans["serno/A"][1]
        self.assertEqual((ext.peer_type, ext.proto_version, ext.media_bytes,
                          ext.media_blksize, ext.peer_label),
                         (C.PEER_BLOCK, 1, SIZE, 512, b"testhost/serno/A"))
        self.assertEqual(self.link.peerConn.peer_type, C.PEER_BLOCK)

    def test_fullCycle(self):
        """Open, read, write, flush, trim, read back, close."""
        o = self._open()
        r = self._request(o, C.BLK_READ, 4096, 8192)
        self.assertEqual((r.cmd, r.error), (0xEC0FFF01, 0))
        self.assertEqual(bytes(r.aux), self.content[4096:4096 + 8192])
        new = os.urandom(65536)
        r = self._request(o, C.BLK_WRITE, 65536, 65536, new)
        self.assertEqual(r.error, 0)
        self.assertEqual(self._request(o, C.BLK_FLUSH, 0, 0).error, 0)
        r = self._request(o, C.BLK_READ, 65536, 65536)
        self.assertEqual(bytes(r.aux), new)
        self.assertEqual(self._request(o, C.BLK_FREEBLKS, 0, 65536).error, 0)
        r = self._request(o, C.BLK_READ, 0, 65536)
        self.assertEqual(bytes(r.aux), bytes(65536))
        expected = bytes(65536) + new + self.content[131072:]
        self.assertEqual(readFile(self.path), expected)
        tap = Tap(self.wire.server)
        o.reply(0)
        self.wire.flush()
        self.assertEqual([m.cmd for m in tap.messages], [0x680FFF01])
        self.assertEqual(tap.messages[0].error, 0)
        export = self.node.exporter.exports["serno/A"]
        self.assertEqual(export.opens, {})

    def test_oneShotRead(self):
        """
        A read the store can answer now is answered in the same call:
        the same reply as through a transaction, and no transaction is
        left on the server; a read the store cannot answer now goes the
        usual way, with the same reply.
        """
        o = self._open()
        server = self.wire.server
        export = self.node.exporter.exports["serno/A"]
        before = (len(server.rx), export.ops)
        r = self._request(o, C.BLK_READ, 512, 4096)
        self.assertEqual((r.cmd, r.error, bytes(r.aux)),
                         (0xEC0FFF01, 0, self.content[512:4608]))
        self.assertEqual((len(server.rx), export.ops),
                         (before[0], before[1] + 1))
        self.patch(export.store, "readNow", lambda offset, length: None)
        r = self._request(o, C.BLK_READ, 512, 4096)
        self.assertEqual((r.cmd, r.error, bytes(r.aux)),
                         (0xEC0FFF01, 0, self.content[512:4608]))
        self.assertEqual(export.ops, before[1] + 2)

    def test_probeReadOnSpan(self):
        """Probe I/O directly on the span works; its reply has no REVCIRC."""
        r = self._request(self._span(), C.BLK_READ, 0, 512)
        self.assertEqual((r.cmd, r.error), (0xE80FFF01, 0))
        self.assertEqual(bytes(r.aux), self.content[:512])

    def test_refusals(self):
        """
        Out of range, zero-length, oversized and read-only requests get
        0x22 and the files are unchanged.
        """
        o = self._open()
        bad = [
            (C.BLK_READ, SIZE - 512, 1024, None),
            (C.BLK_READ, SIZE, 512, None),
            (C.BLK_READ, 2**64 - 512, 512, None),
            (C.BLK_READ, 0, 0, None),
            (C.BLK_READ, 0, C.AUX_MAX + 512, None),
            (C.BLK_WRITE, SIZE - 100, 512, b"x" * 512),
            (C.BLK_WRITE, 0, 0, None),
            (C.BLK_WRITE, 0, C.AUX_MAX + 64, b"y" * 64),
            (C.BLK_FREEBLKS, SIZE - 512, 1024, None),
        ]
        for cmd, off, n, aux in bad:
            r = self._request(o, cmd, off, n, aux)
            self.assertEqual(r.error, C.ERR_IO, (hex(cmd), off, n))
        ro = self._open("serno/RO", C.BLKOPEN_RD)
        for cmd, aux in ((C.BLK_WRITE, b"z" * 512), (C.BLK_FREEBLKS, None)):
            r = self._request(ro, cmd, 0, 512, aux)
            self.assertEqual(r.error, C.ERR_IO)
        # Reads on the read-only export still work.
        self.assertEqual(self._request(ro, C.BLK_READ, 0, 512).error, 0)
        self.assertEqual(readFile(self.path), self.content)
        self.assertEqual(readFile(self.roPath), self.content)
        self.flushLoggedErrors()

    def test_writeOpenOnReadOnlyExportRefused(self):
        """
        Issue 17: a BLK_OPEN asking for write access to a read-only
        export gets DMSG_ERR_IO, as DragonFly's failed dev_dopen does; a
        read-only open of it works.
        """
        self._open("serno/RO", C.BLKOPEN_RD | C.BLKOPEN_WR, C.ERR_IO)
        self._open("serno/RO", C.BLKOPEN_WR, C.ERR_IO)
        export = self.node.exporter.exports["serno/RO"]
        self.assertEqual(len(export.opens), 0)
        ro = self._open("serno/RO", C.BLKOPEN_RD)
        self.assertEqual(self._request(ro, C.BLK_READ, 0, 512).error, 0)

    def test_openModesEnforced(self):
        """
        Issue 18, item 7: I/O that the open's modes do not allow is
        answered 0x22 and changes nothing; what they allow works.
        """
        rd = self._open("serno/A", C.BLKOPEN_RD)
        for cmd, aux in ((C.BLK_WRITE, b"z" * 512), (C.BLK_FREEBLKS, None)):
            r = self._request(rd, cmd, 0, 512, aux)
            self.assertEqual(r.error, C.ERR_IO, hex(cmd))
        self.assertEqual(self._request(rd, C.BLK_READ, 0, 512).aux,
                         self.content[:512])
        self.assertEqual(self._request(rd, C.BLK_FLUSH, 0, 0).error, 0)
        wr = self._open("serno/A", C.BLKOPEN_WR)
        self.assertEqual(self._request(wr, C.BLK_READ, 0, 512).error,
                         C.ERR_IO)
        self.assertEqual(self._request(wr, C.BLK_WRITE, 512, 512,
                                       b"w" * 512).error, 0)
        self.assertEqual(readFile(self.path),
                         self.content[:512] + b"w" * 512
                         + self.content[1024:])

    def test_seedOpenModes(self):
        """
        With enforceModes off (--seed-open-modes), a write under an RD
        open works on a read-write export, as DragonFly's xdisk client
        needs; a read-only export still refuses it.
        """
        self.node.exporter.enforceModes = False
        rd = self._open("serno/A", C.BLKOPEN_RD)
        self.assertEqual(self._request(rd, C.BLK_WRITE, 0, 512,
                                       b"s" * 512).error, 0)
        ro = self._open("serno/RO", C.BLKOPEN_RD)
        self.assertEqual(self._request(ro, C.BLK_WRITE, 0, 512,
                                       b"s" * 512).error, C.ERR_IO)
        self.assertEqual(readFile(self.path)[:512], b"s" * 512)
        self.assertEqual(readFile(self.roPath), self.content)

    def test_seedOpenModesOption(self):
        """--seed-open-modes reaches the daemon's exporter (off: enforce)."""
        from twisted.internet.testing import MemoryReactorClock
        from xdiskd.service import makeService
        from tests.daemons import parseOptions
        for flags, enforce in (([], True), (["--seed-open-modes"], False)):
            top = makeService(parseOptions(
                "--no-nbd", "--no-import", "--export",
                "serno/O=" + self.path, *flags), MemoryReactorClock())
            self.assertIs(top.node.exporter.enforceModes, enforce)
            self.assertIs(top.enforceModes, enforce)
            top.node.exporter.stop()

    def test_shortWriteZeroExtended(self):
        """§8.3: a WRITE whose aux is shorter than bytes is zero-extended."""
        o = self._open()
        r = self._request(o, C.BLK_WRITE, 0, 1024, b"q" * 100)
        self.assertEqual(r.error, 0)
        self.assertEqual(readFile(self.path)[:1024],
                         b"q" * 100 + bytes(924))

    def test_blkCloseInsideOpen(self):
        """§8.5: BLK_CLOSE within an open gets a NOSUPP result."""
        o = self._open()
        got = []
        o.handler = lambda t, m: got.append(m)
        o.send(C.BLK_CLOSE, BlkOpen(1))
        self.wire.flush()
        self.assertEqual([m.error for m in got], [C.ERR_NOSUPP])

    def test_twoLinksAndWithdraw(self):
        """Two links see the same spans; withdrawal DELETEs on both."""
        peer2 = ClientPeer()
        wire2 = Wire(self.node, peer2)
        self.assertEqual(sorted(peer2.spans), ["serno/A", "serno/RO"])
        taps = [Tap(self.wire.server), Tap(wire2.server)]
        d = self.node.exporter.withdraw("serno/A")
        self.wire.flush()
        wire2.flush()
        self.assertEqual(self.successResultOf(d), None)
        for tap in taps:
            self.assertEqual([m.cmd for m in tap.messages], [0x400FFF01])
        self.assertEqual(sorted(self.peer.spans), ["serno/RO"])
        self.assertEqual(sorted(peer2.spans), ["serno/RO"])

    def test_peerVanishesMidIO(self):
        """A peer lost mid-I/O leaves no open transactions behind."""
        o = self._open()
        o.startChild(C.BLK_WRITE, BlkIO(0, 512), b"w" * 512, delete=True)
        # Deliver the write to the server but not the reply to us.
        self.wire.pump.pump()
        self.wire.cut()
        export = self.node.exporter.exports["serno/A"]
        self.assertEqual(export.opens, {})
        self.assertEqual(export.spans, {})
        self.assertEqual(export.inflight, 0)
        server = self.wire.server
        self.assertEqual((server.tx, server.rx), ({}, {}))
        self.assertEqual(self.node.exporter.links, {})
        self.assertEqual(export.store.inFlight, 0)
