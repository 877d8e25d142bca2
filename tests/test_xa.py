"""
Tests for the import side (L{xdiskd.xa}): units from spans, the tag pool,
the seed's completion rules, failover and teardown, against the real
export side over in-memory links.
"""

import os

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.wire import LnkSpan
from xdiskd.errors import (
    MediaError, NoPathError, NotOpenError, OutOfRangeError, ReadOnlyError)
from xdiskd.interfaces import (
    IBlockDevice, IBlockDeviceRegistry, ICallbackBlockDevice)
from xdiskd.xa.importer import unitKey
from tests.dmsgpeer import Tap
from tests.stack import (
    Wire, exporterNode, importerNode, makeImage, readFile, run)

SIZE = 4 << 20


class Base(TestCase):
    def setUp(self):
        self.content = bytearray(os.urandom(SIZE))
        self.path = makeImage(self, fill=bytes(self.content))
        self.exp = exporterNode(self, [("serno/A", self.path, False)])
        self.imp, self.clock = importerNode()
        self.importer = self.imp.importer
        self.wire = Wire(self.exp, self.imp)
        self.wires = [self.wire]

    def unit(self, name="xa0"):
        return self.importer.lookup(name)

    def wait(self, d):
        return run(self.wires, d)

    def openUnit(self):
        u = self.unit()
        self.wait(u.open())
        self.assertEqual(u.state, "open")
        return u

    def _noOneShots(self):
        """Every I/O of the opens so far goes through Exporter._io (the
        one-shot answer of cached reads would bypass the hooks below)."""
        for export in self.exp.exporter.exports.values():
            for txn in export.opens:
                txn.onOneShot = None

    def _failChunk(self, offset, error, times=1):
        """Make the exporter answer the I/O at C{offset} with C{error}."""
        self._noOneShots()
        exporter = self.exp.exporter
        orig = exporter._io
        left = [times]

        def io(export, txn, msg, state):
            if msg.ext.offset == offset and left[0]:
                left[0] -= 1
                txn.reply(error)
                return True
            return orig(export, txn, msg, state)
        exporter._io = io


class UnitCreationTests(Base):
    def test_unitFromSpan(self):
        """A span creates xa0 with the span's size, sector and serial."""
        u = self.unit()
        verifyObject(IBlockDevice, u)
        verifyObject(IBlockDeviceRegistry, self.importer)
        self.assertEqual((u.name, u.serial, u.size, u.sectorSize),
                         ("xa0", b"serno/A", SIZE, 512))
        self.assertIs(self.importer.lookup("serno/A"), u)
        self.assertEqual(len(u.paths), 1)

    def test_importerLnkConn(self):
        """§9.1: importer LNK_CONN is CLIENT with mask 1<<BLOCK."""
        conn = self.wire.server.peerConn
        self.assertEqual((conn.peer_type, conn.peer_mask, conn.peer_label),
                         (C.PEER_CLIENT, 4, b"importer/xdisk"))

    def test_secondSpanSameLabel(self):
        """A second span with the same label is a second path."""
        Wire(self.exp, self.imp)
        self.assertEqual(len(self.importer.units), 1)
        self.assertEqual(len(self.unit().paths), 2)

    def test_labelTruncation(self):
        """Labels are compared on their first 63 bytes."""
        self.assertEqual(unitKey(b"a" * 70), b"a" * 63)
        self.assertEqual(unitKey(("é" * 40).encode()),
                         ("é" * 40).encode()[:63])

    def test_degenerateSpanIgnored(self):
        """A CREATE|DELETE span gets a return and makes no unit."""
        link = self.wire.server
        tap = Tap(self.wire.client)
        link.startTransaction(None, C.LNK_SPAN, LnkSpan(pfs_label=b"x"),
                              delete=True)
        self.wire.flush()
        self.assertEqual(len(self.importer.units), 1)
        self.assertEqual([m.cmd for m in tap.messages], [0xE80FFF01])


class IOTests(Base):
    def test_readWrite(self):
        u = self.openUnit()
        data = os.urandom(10000)
        self.wait(u.write(12345, data))
        self.assertEqual(bytes(self.wait(u.read(12345, 10000))), data)
        self.wait(u.flush())
        self.wait(u.trim(0, 4096))
        self.assertEqual(bytes(self.wait(u.read(0, 4096))), bytes(4096))
        self.wait(u.close())
        self.assertEqual(u.state, "closed")
        self.content[12345:22345] = data
        self.content[0:4096] = bytes(4096)
        self.assertEqual(readFile(self.path), bytes(self.content))

    def test_outOfRange(self):
        u = self.openUnit()
        self.failureResultOf(u.read(SIZE - 10, 20), OutOfRangeError)
        self.failureResultOf(u.write(-1, b"x"), OutOfRangeError)

    def test_200Concurrent(self):
        """
        200 concurrent requests: never more than 63 I/O transactions on
        the wire, issued FIFO, all complete with correct data.
        """
        u = self.openUnit()
        issued = []
        maxInflight = [0]
        orig = u._issue

        def spy(parent, chunk):
            issued.append(chunk.offset)
            ok = orig(parent, chunk)
            maxInflight[0] = max(maxInflight[0], len(u.inflight))
            return ok
        u._issue = spy
        ds = [u.read(i * 4096, 4096) for i in range(200)]
        self.assertEqual(len(u.inflight), 63)
        self.assertEqual(len(u.queue), 137)
        results = [self.wait(d) for d in ds]
        self.assertEqual(maxInflight[0], 63)
        self.assertEqual(issued, [i * 4096 for i in range(200)])
        for i, r in enumerate(results):
            self.assertEqual(bytes(r),
                             bytes(self.content[i * 4096:(i + 1) * 4096]))

    def test_splitRead(self):
        """A 3.5 MiB read from an xdiskd exporter (it states 1 MiB I/Os
        in its span) is 4 chunks, reassembled."""
        u = self.openUnit()
        self.assertEqual(u.maxIO, C.AUX_MAX)
        n = 7 << 19
        d = u.read(4096, n)
        self.assertEqual(len(u.inflight), 4)
        self.assertEqual(bytes(self.wait(d)),
                         bytes(self.content[4096:4096 + n]))

    def test_splitWrite(self):
        u = self.openUnit()
        data = os.urandom(1 << 20)
        self.wait(u.write(0, data))
        self.assertEqual(readFile(self.path)[:1 << 20], data)

    def test_cacheMissAskedOnce(self):
        """A read the page cache cannot answer asks it once (on the
        one-shot path), then the store's threads without asking again."""
        u = self.openUnit()
        export = self.exp.exporter.exports["serno/A"]
        real = export.store
        calls = []

        class ColdCache:
            def __getattr__(self, name):
                return getattr(real, name)

            def readNow(self, offset, length):
                calls.append("readNow")
                return None

            def read(self, offset, length, nowait=True):
                calls.append(("read", nowait))
                return real.read(offset, length)
        export.store = ColdCache()
        got = self.wait(u.read(4096, 4096))
        self.assertEqual(bytes(got), bytes(self.content[4096:8192]))
        self.assertEqual(calls, ["readNow", ("read", False)])

    def test_splitReadOneChunkIOError(self):
        """One chunk failing 0x22 fails the whole split read."""
        u = self.openUnit()
        self._failChunk(3 << 20, C.ERR_IO)
        d = u.read(0, SIZE)
        self.assertRaises(MediaError, self.wait, d)
        self.assertEqual(u.stats.errors, 1)

    def test_splitReadOneChunkLostLink(self):
        """One chunk failing LOSTLINK is retried; the read succeeds."""
        u = self.openUnit()
        self._failChunk(3 << 20, C.ERR_LOSTLINK)
        d = u.read(0, SIZE)
        self.assertEqual(bytes(self.wait(d)), bytes(self.content))
        self.assertEqual(u.stats.retries, 1)

    def test_otherErrorRequeuedWithBackoff(self):
        """Errors other than 0x22 re-queue (seed rule), after a delay."""
        from twisted.logger import formatEvent, globalLogPublisher
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        u = self.openUnit()
        self._failChunk(0, C.ERR_PARAM, times=3)
        d = u.read(0, 512)
        for _ in range(10):
            self.wire.flush()
            self.clock.advance(1)
        self.assertEqual(bytes(self.successResultOf(d)),
                         bytes(self.content[:512]))
        self.assertEqual(u.stats.retries, 3)
        # Said once (not per retry), naming the error.
        said = [formatEvent(e) for e in events
                if "re-queued with back-off" in formatEvent(e)]
        self.assertEqual(len(said), 1)
        self.assertIn("error 0x23", said[0])

    def test_shortReadZeroExtended(self):
        """§8.4: short read data is zero-extended."""
        u = self.openUnit()
        self._noOneShots()
        exporter = self.exp.exporter
        orig = exporter._ioOK

        def short(result, txn, icmd):
            return orig(bytes(result[:100]), txn, icmd)
        exporter._ioOK = short
        r = self.wait(u.read(0, 512))
        self.assertEqual(bytes(r), bytes(self.content[:100]) + bytes(412))

    def test_flushBarrier(self):
        """A flush is not sent while earlier writes are in flight."""
        u = self.openUnit()
        order = []
        orig = u._issue

        def spy(parent, chunk):
            order.append((chunk.cmd, len(u.inflight)))
            return orig(parent, chunk)
        u._issue = spy
        ds = [u.write(i * 512, b"x" * 512) for i in range(3)]
        ds.append(u.flush())
        ds.append(u.write(4096, b"y" * 512))
        self.assertEqual([c for c, _ in order], [C.BLK_WRITE] * 3)
        for d in ds:
            self.wait(d)
        self.assertEqual(order[3], (C.BLK_FLUSH, 0))
        self.assertEqual(order[4][0], C.BLK_WRITE)


class CallbackIOTests(Base):
    """startRead/startWrite: the same I/O with a done callback."""

    def start(self, method, *args):
        results = []
        handle = method(*args, lambda r, f: results.append((r, f)))
        return handle, results

    def test_provides(self):
        verifyObject(ICallbackBlockDevice, self.unit())

    def test_readWrite(self):
        """A split write and read (3 chunks) complete with the data."""
        u = self.openUnit()
        data = os.urandom(5 << 19)
        handle, results = self.start(u.startWrite, 4096, data)
        self.assertFalse(handle.finished)
        self.wire.flush()
        self.assertTrue(handle.finished)
        self.assertEqual(results, [(None, None)])
        handle, results = self.start(u.startRead, 4096, len(data))
        self.wire.flush()
        [(parts, failure)] = results
        self.assertIsNone(failure)
        self.assertEqual(len(parts), 3)
        self.assertEqual(b"".join(bytes(p) for p in parts), data)
        self.assertEqual(readFile(self.path)[4096:4096 + len(data)], data)
        self.assertEqual(u.requests, {})
        self.assertEqual(u.bytesQueued, 0)

    def test_refusedAtOnce(self):
        """Refusals call done before returning, and return None."""
        u = self.openUnit()
        handle, results = self.start(u.startRead, SIZE - 512, 1024)
        self.assertIsNone(handle)
        [(r, f)] = results
        self.assertIsNone(r)
        f.trap(OutOfRangeError)
        u.readOnly = True
        handle, results = self.start(u.startWrite, 0, b"x" * 512)
        self.assertIsNone(handle)
        results[0][1].trap(ReadOnlyError)
        handle, results = self.start(u.startRead, 0, 0)
        self.assertEqual((handle, results), (None, [([], None)]))

    def test_mediaError(self):
        """One chunk failing 0x22 fails the split write, once."""
        u = self.openUnit()
        self._failChunk(1 << 20, C.ERR_IO)
        handle, results = self.start(u.startWrite, 0, bytes(3 << 20))
        self.wire.flush()
        [(r, f)] = results
        self.assertIsNone(r)
        f.trap(MediaError)
        self.assertEqual(u.stats.errors, 1)

    def test_cancel(self):
        """
        Cancelling withdraws the chunks not on the wire and calls done
        with CancelledError at once; a reply for a chunk that was on the
        wire is then ignored.
        """
        u = self.openUnit()
        u.maxTags = 3                 # the open holds one: 2 on the wire
        handle, results = self.start(u.startRead, 0, 4 << 20)
        self.assertEqual((len(u.inflight), len(u.queue)), (2, 2))
        handle.cancel()
        self.assertEqual(len(u.queue), 0)
        [(r, f)] = results
        self.assertIsNone(r)
        f.trap(CancelledError)
        handle.cancel()
        self.wire.flush()
        self.assertEqual(len(results), 1)
        self.assertEqual((u.inflight, u.requests, u.bytesQueued),
                         ({}, {}, 0))

    def test_survivesLostLink(self):
        """Like any I/O of an open unit, it waits for a path and is
        re-issued: done is called once, with the data."""
        u = self.openUnit()
        handle, results = self.start(u.startRead, 8192, 4096)
        self.wire.kill()
        self.assertEqual(results, [])
        self.assertFalse(handle.finished)
        self.wires.append(Wire(self.exp, self.imp))
        for w in self.wires:
            w.flush()
        [(parts, failure)] = results
        self.assertIsNone(failure)
        self.assertEqual(b"".join(bytes(p) for p in parts),
                         bytes(self.content[8192:12288]))


class LateReplyTests(Base):
    """
    Spec §6.4, §6.8: a transaction lives until DELETE went both ways.
    Closing a unit with I/O on the wire (an NBD client that disconnects
    with reads in flight) fails that I/O locally, but the exporter's
    replies already on their way are dropped silently, not counted as
    protocol violations.
    """

    def _inflight(self, u, results):
        u.maxTags = 3                 # the open holds one: 2 on the wire
        handle = u.startRead(0, 4 << 20,
                             lambda r, f: results.append((r, f)))
        self.assertEqual((len(u.inflight), len(u.queue)), (2, 2))
        return handle

    def _assertQuiet(self):
        self.assertEqual((self.wire.client.violations,
                          self.wire.server.violations), (0, 0))
        # Nothing is left over on either side once both DELETEs went.
        self.assertEqual(len(self.wire.client.tx), 1)     # LNK_CONN
        self.assertEqual(len(self.wire.server.rx), 1)

    def test_cancelThenCloseWithReadsInFlight(self):
        """The NBD disconnect path: cancel every request, close the unit."""
        u = self.openUnit()
        results = []
        handle = self._inflight(u, results)
        handle.cancel()
        d = u.close()
        self.wire.flush()
        self.successResultOf(d)
        self.assertEqual(u.state, "closed")
        self._assertQuiet()
        self.assertEqual((u.inflight, u.requests, len(u.queue),
                          u.bytesQueued), ({}, {}, 0, 0))
        [(r, f)] = results
        f.trap(CancelledError)

    def test_closeWithSplitReadInFlight(self):
        """A split request still running when the last open goes fails
        as a whole, once; nothing of it is re-queued for a later open."""
        u = self.openUnit()
        results = []
        self._inflight(u, results)
        d = u.close()
        self.wire.flush()
        self.successResultOf(d)
        self._assertQuiet()
        [(r, f)] = results
        self.assertIsNone(r)
        f.trap(NotOpenError)
        self.assertEqual((u.inflight, u.requests, len(u.queue),
                          u.bytesQueued), ({}, {}, 0, 0))
        # A later open starts clean: no chunk of the old request is sent.
        self.wait(u.open())
        self.assertEqual((len(u.inflight), len(u.queue)), (0, 0))

    def test_withdrawnWhileReadsOnTheWay(self):
        """
        The exporter withdraws the span while reads it has not seen yet
        are on the wire: it drops them silently (it closed their parent
        first), the importer re-queues them, and neither side counts a
        violation or keeps a transaction.
        """
        u = self.openUnit()
        results = []
        self._inflight(u, results)
        self.exp.exporter.withdraw("serno/A")
        self.wire.flush()
        self.assertEqual(results, [])
        self.assertEqual(u.state, "stalled")
        self.assertEqual(len(u.queue), 4)
        self._assertQuiet()
        self.assertGreater(self.wire.server.lateMessages, 0)

    def test_reopenWhileLateRepliesArrive(self):
        """Re-opening while the old open drains: the late replies of the
        old open's I/O do not disturb the new open's I/O."""
        u = self.openUnit()
        results = []
        self._inflight(u, results)
        u.close()
        opened = u.open()
        self.wire.flush()
        self.successResultOf(opened)
        self.assertEqual(bytes(self.wait(u.read(4096, 512))),
                         bytes(self.content[4096:4608]))
        self.assertEqual(self.wire.client.violations, 0)
        self.assertEqual(self.wire.server.violations, 0)


class PathTests(Base):
    def test_probeNoSpanFails(self):
        """Probe I/O with no live span fails at once with NoPathError."""
        u = self.unit()
        self.wire.cut()
        f = self.failureResultOf(u.read(0, 512), NoPathError)
        self.assertIn("no live path", f.getErrorMessage())

    def test_probeLostLinkFails(self):
        """Probe I/O (unit not open) fails on a lost link."""
        u = self.unit()
        d = u.read(0, 512)
        self.wire.kill()
        self.failureResultOf(d, NoPathError)

    def test_openNoSpanFails(self):
        u = self.unit()
        self.wire.cut()
        self.failureResultOf(u.open(), NoPathError)
        self.assertEqual(u.opencnt, 0)

    def test_killAndReconnectMidWriteStream(self):
        """
        The link dies mid-stream of writes; on reconnect every write
        completes exactly once and the file holds the expected bytes.
        """
        u = self.openUnit()
        expected = bytearray(self.content)
        ds = []
        for i in range(300):
            data = os.urandom(4096)
            off = (i * 7919 * 512) % (SIZE - 4096)
            expected[off:off + 4096] = data
            ds.append(u.write(off, data))
        done = []
        for d in ds:
            d.addBoth(done.append)
        for _ in range(3):
            self.wire.pump.pump()
        self.assertLess(len(done), 300)
        self.wire.cut()
        self.assertEqual(u.state, "stalled")
        self.assertEqual(len(u.inflight), 0)
        self.assertTrue(u.stats.retries > 0)
        self.assertLess(len(done), 300)
        # Reconnect: the exporter re-advertises, I/O resumes.
        self.wires.append(Wire(self.exp, self.imp))
        for w in self.wires:
            w.flush()
        self.assertEqual(len(done), 300)
        self.assertEqual([r for r in done if r is not None], [])
        self.assertEqual(readFile(self.path), bytes(expected))
        self.assertEqual(u.state, "open")

    def test_twoPathsDropOne(self):
        """Two paths; dropping the one in use moves I/O to the other."""
        w2 = Wire(self.exp, self.imp)
        self.wires.append(w2)
        u = self.openUnit()
        self.assertIs(u.openTxn.link, self.wire.client)
        ds = [u.read(i * 4096, 4096) for i in range(100)]
        self.wire.pump.pump()
        self.wire.cut()
        self.assertEqual(u.state, "opening")
        self.assertIs(u.openTxn.link, w2.client)
        for i, d in enumerate(ds):
            self.assertEqual(bytes(self.wait(d)),
                             bytes(self.content[i * 4096:(i + 1) * 4096]))
        self.assertEqual(u.stats.failovers, 1)
        self.assertEqual(u.stats.errors, 0)

    def test_spanWithdrawnFailover(self):
        """Withdrawing one of two spans fails the open over."""
        path2 = self.path
        exp2 = exporterNode(self, [("serno/A", path2, False)])
        w2 = Wire(exp2, self.imp)
        self.wires.append(w2)
        u = self.openUnit()
        d = self.exp.exporter.withdraw("serno/A")
        self.wait(d)
        self.wire.flush()
        self.assertEqual([s.link for s in u.spans], [w2.client])
        r = self.wait(u.read(0, 512))
        self.assertEqual(bytes(r), bytes(self.content[:512]))

    def test_closeWaitsForServerDelete(self):
        u = self.openUnit()
        tap = Tap(self.wire.client)
        d = u.close()
        self.assertNoResult(d)
        self.assertEqual(u.state, "closing")
        self.wire.flush()
        self.successResultOf(d)
        self.assertEqual([m.cmd for m in tap.messages], [0x440FFF01])

    def test_stalledOpenCountsWithoutPath(self):
        """A second open of a stalled unit succeeds; I/O waits."""
        u = self.openUnit()
        self.wire.cut()
        self.successResultOf(u.open())
        d = u.read(0, 512)
        self.assertNoResult(d)
        self.wires.append(Wire(self.exp, self.imp))
        self.assertEqual(bytes(self.wait(d)), bytes(self.content[:512]))


class TeardownTests(Base):
    def test_lingerAndNumbering(self):
        """
        Units with no spans, opens or I/O are torn down after the linger
        period; their numbers are reused lowest first.
        """
        path2 = makeImage(self)
        path3 = makeImage(self)
        exp2 = exporterNode(self, [("serno/B", path2, False)])
        w2 = Wire(exp2, self.imp)
        self.assertEqual([u.name for u in self.importer.devices()],
                         ["xa0", "xa1"])
        self.wire.cut()
        w2.cut()
        self.clock.advance(59)
        self.assertEqual(len(self.importer.units), 2)
        self.clock.advance(2)
        self.assertEqual(self.importer.units, {})
        exp3 = exporterNode(self, [("serno/C", path3, False)])
        Wire(exp3, self.imp)
        Wire(self.exp, self.imp)
        self.assertEqual(sorted((u.name, u.serial)
                                for u in self.importer.devices()),
                         [("xa0", b"serno/C"), ("xa1", b"serno/A")])

    def test_openUnitNotTornDown(self):
        u = self.openUnit()
        self.wire.cut()
        self.clock.advance(3600)
        self.assertIs(self.importer.lookup("xa0"), u)
        self.wait(u.close())
        self.clock.advance(61)
        self.assertIsNone(self.importer.lookup("xa0"))

    def test_spanReturnCancelsLinger(self):
        u = self.unit()
        self.wire.cut()
        self.clock.advance(30)
        self.wires.append(Wire(self.exp, self.imp))
        self.clock.advance(100)
        self.assertIs(self.importer.lookup("xa0"), u)


class CongestionTests(Base):
    def test_congestedAndDrains(self):
        """
        Accepted READ/WRITE bytes past the limit make the unit congested;
        whenUncongested fires once half has drained.
        """
        u = self.openUnit()
        u.congestionBytes = 1 << 20
        ds = [u.read(i * 65536, 65536) for i in range(16)]
        self.assertTrue(u.congested)
        waited = u.whenUncongested()
        self.assertNoResult(waited)
        for d in ds:
            self.wait(d)
        self.successResultOf(waited)
        self.assertFalse(u.congested)
        self.assertEqual(u.bytesQueued, 0)

    def test_splitReadHoldsNoBufferWhileQueued(self):
        """A queued split read holds no result buffer before data comes."""
        u = self.openUnit()
        d = u.read(0, SIZE)
        [req] = list(u.requests)
        self.assertEqual(req.parts, [b""] * 4)
        self.assertEqual(bytes(self.wait(d)), bytes(self.content))


class IOSizeTests(Base):
    """
    Per-path DMSG I/O size: an xdiskd exporter states 1 MiB in its span
    (media.block.reserved01), a DragonFly one states nothing and takes at
    most 128 KiB (§8.3, else PARAM); a unit cuts requests for its
    smallest path, and cuts again chunks left by a lost larger path.
    """

    def dragonflyExporter(self):
        """A second exporter of the same disk that behaves like DragonFly:
        no limit stated, READ/WRITE over 131072 refused with PARAM.
        Returns the list of I/O lengths it is asked for."""
        node = exporterNode(self, [("serno/A", self.path, False)])
        exporter = node.exporter
        for export in exporter.exports.values():
            ext = export.spanExt()._replace(media_maxio=0)
            export.spanExt = lambda ext=ext: ext
        asked = []
        oneShot, io = exporter._openOneShot, exporter._io

        def openOneShot(parent, msg):
            if msg.ext.length > C.MAXPHYS:
                return False        # let _io refuse it
            asked.append(msg.ext.length)
            return oneShot(parent, msg)

        def ioHook(export, txn, msg, state):
            asked.append(msg.ext.length)
            if msg.ext.length > C.MAXPHYS:
                txn.reply(C.ERR_PARAM)
                return True
            return io(export, txn, msg, state)
        exporter._openOneShot = openOneShot
        exporter._io = ioHook
        return node, asked

    def test_exporterStatesItsLimit(self):
        span = self.exp.exporter.exports["serno/A"].spanExt()
        self.assertEqual(span.media_maxio, C.AUX_MAX)
        self.assertEqual(self.unit().maxIO, C.AUX_MAX)

    def test_importerCap(self):
        """--max-io caps what a path states."""
        imp, clock = importerNode(maxIO=65536)
        w = Wire(self.exp, imp)
        self.wires.append(w)
        self.assertEqual(imp.importer.lookup("xa0").maxIO, 65536)

    def test_dragonflyPath(self):
        """A path that states nothing gets 128 KiB I/Os, and the unit
        takes the smallest of its paths; it grows back when that path
        goes."""
        node, asked = self.dragonflyExporter()
        w2 = Wire(node, self.imp)
        self.wires.append(w2)
        u = self.openUnit()
        self.assertEqual(u.maxIO, C.MAXPHYS)
        d = u.read(0, 1 << 20)
        self.assertEqual(len(u.inflight), 8)
        self.assertEqual(bytes(self.wait(d)), bytes(self.content[:1 << 20]))
        w2.cut()
        self.assertEqual(u.maxIO, C.AUX_MAX)

    def test_failoverToSmallerPathCutsAgain(self):
        """Chunks of 1 MiB queued for a lost xdiskd path are cut into
        128 KiB pieces for the DragonFly path that takes over: reads and
        writes complete with the right bytes and nothing is refused."""
        u = self.openUnit()
        data = os.urandom(2 << 20)
        w = u.write(0, data)
        r = u.read(2 << 20, (1 << 20) + 4096)
        rv = u.readv(0, 1 << 20)
        self.assertEqual(max(c.length for c in u.inflight.values()),
                         C.AUX_MAX)
        self.wire.kill()
        self.assertEqual(u.state, "stalled")
        node, asked = self.dragonflyExporter()
        self.wires.append(Wire(node, self.imp))
        self.assertIsNone(self.wait(w))
        self.assertEqual(bytes(self.wait(r)),
                         bytes(self.content[2 << 20:(3 << 20) + 4096]))
        parts = self.wait(rv)
        self.assertEqual(b"".join(bytes(p) for p in parts), data[:1 << 20])
        self.assertEqual(readFile(self.path)[:2 << 20], data)
        self.assertTrue(asked)
        self.assertLessEqual(max(asked), C.MAXPHYS)
        self.assertEqual((u.stats.errors, u.maxIO), (0, C.MAXPHYS))


class ReadOnlyExportTests(TestCase):
    """Issue 17, defect 2: a ,ro export imported is served read-only."""

    def setUp(self):
        self.content = os.urandom(SIZE)
        self.path = makeImage(self, fill=self.content)
        self.exp = exporterNode(self, [("serno/RO", self.path, True)])
        self.imp, self.clock = importerNode()
        self.wires = [Wire(self.exp, self.imp)]
        self.unit = self.imp.importer.lookup("serno/RO")

    def test_opensReadOnlyAfterRefusal(self):
        """
        The exporter refuses the write open (0x22); the unit opens
        read-only, reads work, writes fail locally, and NBD GO after the
        open advertises NBD_FLAG_READ_ONLY.
        """
        from xdiskd.nbd import wire
        from xdiskd.nbd.options import Negotiator
        u = self.unit
        # Before the open, the span's READ_ONLY flag says so already.
        self.assertTrue(u.readOnly)
        d = Negotiator(self.imp.importer).handleOption(
            wire.OPT_GO, wire.encodeExportRequest("xa0"))
        decision = run(self.wires, d)
        self.assertEqual(u.state, "open")
        self.assertTrue(u.readOnly)
        self.assertTrue(decision.export.flags & wire.FLAG_READ_ONLY)
        self.assertFalse(decision.export.flags & wire.FLAG_SEND_TRIM)
        [txn] = self.exp.exporter.exports["serno/RO"].opens
        self.assertEqual(txn.data.modes, C.BLKOPEN_RD)
        self.assertEqual(run(self.wires, u.read(0, 4096)),
                         self.content[:4096])
        self.failureResultOf(u.write(0, b"x" * 512), ReadOnlyError)
        self.assertEqual(readFile(self.path), self.content)

    def test_firstOpenAsksWriteAgain(self):
        """
        Once closed, the next first open asks for write access again
        (the export may have changed), and falls back again.
        """
        u = self.unit
        run(self.wires, u.open())
        run(self.wires, u.close())
        self.assertEqual(u.state, "closed")
        sent = []
        orig = self.exp.exporter._open

        def spy(export, txn, msg):
            sent.append(msg.ext.modes)
            return orig(export, txn, msg)
        self.exp.exporter._open = spy
        run(self.wires, u.open())
        self.assertEqual(sent, [C.BLKOPEN_RD | C.BLKOPEN_WR, C.BLKOPEN_RD])
        self.assertTrue(u.readOnly)
