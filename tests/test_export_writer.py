"""
Tests for L{xdiskd.export.writer}: a store's writer thread, fed one batch
per read of the socket, in arrival order with the reads, discards and
flushes behind its writes.  The reactor is a stand-in whose
C{callFromThread} queues what the thread hands back; the test delivers
it (waiting at most 10 s for the thread).
"""

import errno
import os
import queue
import threading
from contextlib import contextmanager

from twisted.trial.unittest import SynchronousTestCase

from xdiskd.errors import MediaError
from xdiskd.export.spec import ExportSpec
from xdiskd.export.store import makeStorePool, openStore
from xdiskd.io.send import beginBatch, endBatch
from tests.daemons import Daemon, nbdURI, nbdsh, requireTools, waitNBD

KiB = 1 << 10


@contextmanager
def batch():
    """One read of a socket (L{xdiskd.io.send}'s batch scope)."""
    beginBatch()
    try:
        yield
    finally:
        endBatch()


class ThreadReactor:
    """callFromThread queues; L{deliver} runs what came, in order."""

    def __init__(self):
        self.calls = queue.Queue()

    def callFromThread(self, f, *a, **kw):
        self.calls.put((f, a, kw))

    def deliver(self, n=1):
        for _ in range(n):
            f, a, kw = self.calls.get(timeout=10)
            f(*a, **kw)

    def idle(self):
        return self.calls.empty()


class Roomy:
    def roomy(self):
        return True


class WriterTests(SynchronousTestCase):

    def setUp(self):
        self.path = self.mktemp()
        with open(self.path, "wb") as f:
            f.truncate(1 << 20)
        self.reactor = ThreadReactor()
        self.store = self.open("all")

    def open(self, writeThread, pool=None):
        store = openStore(ExportSpec("s", self.path), self.reactor, pool,
                          writeThread=writeThread)
        self.addCleanup(self.closed, store)
        return store

    def settle(self, store=None):
        """Deliver until the thread has nothing outstanding."""
        writer = (store or self.store)._writer
        while writer.outstanding:
            self.reactor.deliver()

    def closed(self, store):
        store.close()
        writer = store._writer
        self.settle(store)
        if writer._thread is not None:
            writer._thread.join(10)
            self.assertFalse(writer._thread.is_alive())

    def fileAt(self, offset, n):
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(n)

    def test_oneBatchPerRead(self):
        """The writes of one read of the socket (a batch scope) go to the
        thread together when it ends, and come back together."""
        writer = self.store._writer
        with batch():
            ds = [self.store.write(i * 4 * KiB, bytes([i + 1]) * 4 * KiB)
                  for i in range(3)]
            self.assertEqual((writer.batches, writer.outstanding), (0, 3))
        self.assertEqual(writer.batches, 1)
        for d in ds:
            self.assertNoResult(d)
        self.reactor.deliver(1)
        for d in ds:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual((writer.jobs, writer.outstanding), (3, 0))
        self.assertTrue(self.reactor.idle())
        self.assertEqual(self.fileAt(8 * KiB, 4 * KiB), b"\3" * 4 * KiB)

    def test_outsideABatchAtOnce(self):
        d = self.store.write(0, b"x" * 512)
        self.assertEqual(self.store._writer.batches, 1)
        self.reactor.deliver()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.fileAt(0, 512), b"x" * 512)

    def test_readAfterWriteSeesIt(self):
        """A read that arrives after a write still on the thread is made
        after it (not from the page cache at once)."""
        with batch():
            w = self.store.write(4 * KiB, b"n" * 4 * KiB)
            self.assertIsNone(self.store.readNow(4 * KiB, 4 * KiB))
            r = self.store.read(4 * KiB, 4 * KiB)
        self.reactor.deliver()
        self.assertIsNone(self.successResultOf(w))
        self.assertEqual(bytes(self.successResultOf(r)), b"n" * 4 * KiB)
        self.assertEqual(self.store._writer.jobs, 2)
        # Nothing outstanding: reads are answered at once again.
        self.assertEqual(bytes(self.store.readNow(4 * KiB, 4 * KiB)),
                         b"n" * 4 * KiB)

    def test_readElsewhereAtOnce(self):
        """A read of a range no outstanding write or discard touches is
        answered as without the thread."""
        with batch():
            w = self.store.write(4 * KiB, b"n" * 4 * KiB)
            d = self.store.discard(16 * KiB, 4 * KiB)
            self.assertEqual(bytes(self.store.readNow(0, 4 * KiB)),
                             bytes(4 * KiB))
            self.assertEqual(bytes(self.store.readNow(8 * KiB, 8 * KiB)),
                             bytes(8 * KiB))
            self.assertIsNone(self.store.readNow(12 * KiB, 8 * KiB))
            r = self.store.read(0, 4 * KiB)
        self.assertEqual(bytes(self.successResultOf(r)), bytes(4 * KiB))
        self.settle()
        self.assertIsNone(self.successResultOf(w))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.store._writer.jobs, 2)

    def test_flushAfterTheWritesBeforeIt(self):
        """A flush starts once the writes that arrived before it were
        made, not waiting for writes that arrived after it."""
        syncs = []
        real = os.fdatasync
        self.patch(os, "fdatasync", lambda fd: syncs.append(fd) or real(fd))
        inside, go = threading.Event(), threading.Event()
        realPwrite = os.pwrite

        def pwrite(fd, data, offset):
            if offset == 0:
                inside.set()
                go.wait(10)
            return realPwrite(fd, data, offset)
        self.patch(os, "pwrite", pwrite)
        a = self.store.write(0, b"a" * 512)
        self.assertTrue(inside.wait(10))  # the thread took a alone
        f = self.store.flush()
        b = self.store.write(512, b"b" * 512)
        self.assertEqual(syncs, [])
        self.assertNoResult(f)
        go.set()
        self.reactor.deliver()          # a's batch
        self.assertIsNone(self.successResultOf(a))
        self.assertEqual(len(syncs), 1)
        self.assertIsNone(self.successResultOf(f))
        self.assertEqual(self.store._writer.outstanding, 1)
        self.settle()                   # b's
        self.assertIsNone(self.successResultOf(b))

    def test_discardAfterWrite(self):
        with batch():
            self.store.write(0, b"w" * 8 * KiB)
            d = self.store.discard(0, 4 * KiB)
        self.reactor.deliver()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.fileAt(0, 8 * KiB),
                         bytes(4 * KiB) + b"w" * 4 * KiB)

    def test_errorIsMediaError(self):
        def pwrite(fd, data, offset):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.patch(os, "pwrite", pwrite)
        d = self.store.write(0, b"x" * 512)
        ok = self.store.write(512, b"y" * 0)   # zero bytes: nothing done
        self.settle()
        e = self.failureResultOf(d, MediaError).value
        self.assertEqual(e.__cause__.errno, errno.EIO)
        self.assertIn("write 512 bytes at 0", str(e))
        self.assertIsNone(self.successResultOf(ok))

    def test_loneSmallWriteInline(self):
        """auto: a small write alone in its read with nothing outstanding
        is made at once in the calling thread (as without a writer
        thread); with others in its read, or behind outstanding work, it
        goes to the thread; a write of 64 KiB or more goes to the thread
        only behind outstanding work."""
        pool = makeStorePool(1)
        pool.start()
        self.addCleanup(pool.stop)
        store = self.open("auto", pool)
        store._gauge = Roomy()      # whatever this machine's dirty pages
        writer = store._writer
        self.assertIsNone(self.successResultOf(store.write(0, b"s" * 4096)))
        with batch():
            d = store.write(0, b"t" * 4096)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual((writer.batches, writer.lone), (0, 2))
        with batch():
            one = store.write(64 * KiB, b"1" * 4096)
            two = store.write(68 * KiB, b"2" * 4096)
        behind = store.write(64 * KiB, b"B" * 64 * KiB)   # large, behind
        self.assertEqual((writer.batches, writer.lone), (2, 2))
        self.settle(store)
        for d in (one, two, behind):
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.fileAt(64 * KiB, 8 * KiB), b"B" * 8 * KiB)
        # 64 KiB and more, nothing outstanding: as without the thread.
        self.assertIsNone(self.successResultOf(
            store.write(0, b"L" * 64 * KiB)))
        self.assertEqual((writer.batches, writer.lone), (2, 2))
        self.assertEqual(self.fileAt(0, 4096), b"L" * 4096)

    def test_readOnlyHasNoWriter(self):
        os.chmod(self.path, 0o644)
        store = openStore(ExportSpec("s", self.path, readOnly=True),
                          self.reactor, None, writeThread="all")
        self.addCleanup(store.close)
        self.assertIsNone(store._writer)


class WriterE2ETests(SynchronousTestCase):
    """
    A real daemon (export and import in one, over a UNIX socket) with
    every export write on the writer thread, driven by libnbd: pipelined
    writes, and reads and trims sent right behind writes to the same
    range, see them.
    """

    def setUp(self):
        requireTools("nbdinfo")
        self.d = Daemon(self, "node", [])
        self.img = os.path.join(self.d.dir, "disk.img")
        sock = os.path.join(self.d.dir, "nbd.sock")
        dmsg = os.path.join(self.d.dir, "dmsg.sock")
        self.d.args += [
            "--image", self.img + "=64M", "--export", "serno/W=" + self.img,
            "--listen", "unix:" + dmsg, "--connect", "unix:" + dmsg,
            "--nbd", "unix:" + sock, "--write-thread", "all"]
        self.d.start()
        waitNBD(sock)
        self.uri = nbdURI(sock)

    def test_orderedBehindWrites(self):
        script = r"""
import os, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
K = 65536
data = [os.urandom(K) for i in range(64)]
bufs = [nbd.Buffer(K) for i in range(64)]
cookies = []
for i in range(64):
    cookies.append(h.aio_pwrite(data[i], i * K))
    cookies.append(h.aio_pread(bufs[i], i * K))
trim = h.aio_trim(4096, 0)
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies + [trim]:
    assert h.aio_command_completed(c)
for i in range(64):
    assert bufs[i].to_bytearray() == data[i], i
h.flush()
back = h.pread(64 * K, 0)
assert back[:4096] == bytes(4096)
assert back[4096:] == b"".join(data)[4096:]
print("ok")
"""
        self.assertIn("ok", nbdsh(self.uri, script).stdout.decode())
        with open(self.img, "rb") as f:
            self.assertEqual(f.read(4096), bytes(4096))
