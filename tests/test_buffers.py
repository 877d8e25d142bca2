"""
Tests for L{xdiskd.buffers}: reuse only of unreferenced buffers, within
a byte budget, and the takers that overwrite every reused byte.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from xdiskd import buffers
from xdiskd.buffers import BufferPool
from xdiskd.dmsg import constants as C
from xdiskd.dmsg.wire import Decoder, Encoder, Message

KiB = 1 << 10
MiB = 1 << 20


class BufferPoolTests(SynchronousTestCase):

    def test_reusedOnceUnreferenced(self) -> None:
        pool = BufferPool()
        a = pool.take(MiB)
        first = id(a)
        del a
        b = pool.take(MiB)
        self.assertEqual((id(b), pool.reused, pool.made), (first, 1, 1))

    def test_viewKeepsBufferInUse(self) -> None:
        """A memoryview anywhere (a payload slice) pins its buffer: the
        pool makes another one and the held bytes are untouched."""
        pool = BufferPool()
        a = pool.take(MiB)
        a[:] = b"\xab" * MiB
        view = memoryview(a)[4 * KiB:8 * KiB]
        del a
        b = pool.take(MiB)
        b[:] = bytes(MiB)
        self.assertEqual(bytes(view), b"\xab" * 4 * KiB)
        self.assertEqual((pool.reused, pool.made), (0, 2))
        view.release()
        del b
        pool.take(MiB)
        self.assertEqual(pool.reused, 1)

    def test_smallNotPooled(self) -> None:
        pool = BufferPool(minimum=64 * KiB)
        a = pool.take(4 * KiB)
        self.assertEqual((len(a), bytes(a)), (4 * KiB, bytes(4 * KiB)))
        self.assertEqual((pool.made, pool.held), (0, 0))

    def test_keepPerSize(self) -> None:
        """At most C{keep} buffers of one size are kept; more in use at
        once are plain allocations."""
        pool = BufferPool(keep=2)
        held = [pool.take(MiB) for _ in range(4)]
        self.assertEqual((pool.made, pool.held), (4, 2 * MiB))
        del held
        pool.take(MiB)
        self.assertEqual(pool.reused, 1)

    def test_budget(self) -> None:
        """The bytes kept never exceed the budget: the sizes first asked
        for go first; buffers over a quarter of it are never kept."""
        pool = BufferPool(keep=8, budget=4 * MiB, minimum=64 * KiB)
        sizes = [MiB - 64 * k for k in range(5)]
        for size in sizes:
            pool.take(size)
            self.assertLessEqual(pool.held, 4 * MiB)
        self.assertEqual(sorted(pool._bySize), sorted(sizes[1:]))
        self.assertEqual(pool.held, sum(sizes[1:]))
        pool.take(MiB + 1)
        self.assertNotIn(MiB + 1, pool._bySize)


class TakersOverwriteTests(SynchronousTestCase):
    """Every taker of the shared pool leaves no old byte visible."""

    def setUp(self) -> None:
        buffers.pool.clear()
        buffers.pool.reused = 0
        self.addCleanup(buffers.pool.clear)

    def dirty(self, size: int) -> None:
        """Leave a free pooled buffer of C{size} full of 0xEE."""
        b = buffers.take(size)
        b[:] = b"\xee" * size

    def test_decoderPayloadsIntact(self) -> None:
        """Large DMSG payloads received in place into reused buffers:
        each message keeps its own bytes, none shows another's."""
        enc = Encoder()
        size = 256 * KiB
        sent = [Message(C.LNK_ERROR | C.CREATE | C.DELETE | C.REPLY, i + 1,
                        7, 0, None, os.urandom(size)) for i in range(4)]
        d = Decoder()
        got = []
        for m in sent:
            data = b"".join(enc.encode(m))
            self.dirty(len(data))
            got.extend(d.feed(data[:C.HDR_SIZE * 2]))
            pos = C.HDR_SIZE * 2
            while pos < len(data):
                view = d.recvBuffer(32 * KiB)
                self.assertIsNotNone(view)
                n = min(len(view), 64 * KiB)
                view[:n] = data[pos:pos + n]
                view.release()
                got.extend(d.filled(n))
                pos += n
        self.assertEqual([bytes(m.aux) for m in got],
                         [m.aux for m in sent])
        self.assertGreater(buffers.pool.reused, 0)

    def test_nbdWritePayloads(self) -> None:
        """Large NBD WRITE payloads received in pieces into reused
        buffers: each request keeps its own bytes."""
        from xdiskd.nbd import wire
        from tests.test_nbd_wire import transmitting
        size = 256 * KiB
        conn = transmitting(maxPayload=size)
        sent, got = [], []
        for cookie in range(4):
            payload = os.urandom(size)
            sent.append(payload)
            self.dirty(size)
            data = wire.encodeRequest(0, wire.CMD_WRITE, cookie, 0, size) + payload
            conn.receiveData(data[:1000])
            self.assertIs(conn.nextEvent(), wire.NEED_DATA)
            pos = 1000
            while pos < len(data):
                view = conn.recvBuffer(1)
                n = min(len(view), 64 * KiB)
                view[:n] = data[pos:pos + n]
                view.release()
                conn.filled(n)
                pos += n
            got.append(conn.nextEvent())
        self.assertEqual([bytes(r.data) for r in got], sent)
        self.assertGreater(buffers.pool.reused, 0)

    def test_cachedReadTailZeroed(self) -> None:
        """A page-cache read that ends at the end of the file returns
        zeros past it, not a reused buffer's old bytes."""
        from twisted.internet import reactor
        from xdiskd.export.spec import ExportSpec
        from xdiskd.export.store import makeStorePool, openStore
        if not hasattr(os, "RWF_NOWAIT"):
            raise self.skipTest("no RWF_NOWAIT")
        pool = makeStorePool(1)
        pool.start()
        self.addCleanup(pool.stop)
        path = self.mktemp()
        data = os.urandom(MiB)
        with open(path, "wb") as f:
            f.write(data)
        store = openStore(ExportSpec("s", path), reactor, pool)
        self.addCleanup(store.close)
        os.truncate(path, MiB - 100)    # shrunk under the export
        data = data[:MiB - 100]
        self.dirty(256 * KiB)
        got = store.readNow(MiB - 256 * KiB, 256 * KiB)
        self.assertIsNotNone(got)
        self.assertEqual(bytes(got), data[MiB - 256 * KiB:] + bytes(100))
        self.assertEqual(buffers.pool.reused, 1)
