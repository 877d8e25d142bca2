"""
Tests for L{xdiskd.export.store}, on real files in a temporary directory.

Most tests run twice: with a thread pool and in inline mode.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import shutil
import subprocess
import threading
from typing import Any, Optional

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from xdiskd.errors import (
    MediaError,
    NotOpenError,
    OutOfRangeError,
    ReadOnlyError,
)
from xdiskd.export import store as storeModule
from xdiskd.export.spec import ExportSpec
from xdiskd.export.store import (
    FileStore,
    StoreError,
    StorePoolService,
    makeStorePool,
    openStore,
)
from xdiskd.interfaces import IBackingStore

MiB = 1 << 20

# An fd number that can never be open: far above any RLIMIT_NOFILE.
_BAD_FD = 1 << 30


def _fdPath(fd: int) -> Optional[str]:
    """
    Return what C{fd} of this process refers to, or None if it is closed.
    """
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return None


def _pattern(length: int, seed: int = 0) -> bytes:
    """
    Return C{length} bytes of non-repeating-looking, non-zero data.
    """
    return bytes((i * 7 + seed) % 251 + 1 for i in range(length))


def _canPunchHoles(directory: str) -> Optional[str]:
    """
    Return None if the file system at C{directory} can punch holes and
    frees blocks doing so; else the reason it cannot.
    """
    probe = os.path.join(directory, "punch-probe")
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"\1" * MiB)
        os.fsync(fd)
        before = os.fstat(fd).st_blocks
        try:
            storeModule._punchHole(fd, 0, MiB)
        except OSError as e:
            return f"fallocate(PUNCH_HOLE) fails here: {e}"
        if os.fstat(fd).st_blocks >= before:
            return "punching a hole does not free blocks on this file system"
        return None
    finally:
        os.close(fd)
        os.unlink(probe)


class OpenStoreTests(TestCase):
    """
    L{openStore} opens regular files and refuses everything else with a
    clear L{StoreError}.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def makeFile(self, size: int, name: str = "disk.img") -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.truncate(size)
        return path

    def openStore(self, text: str, **kw: Any) -> FileStore:
        serial, _, rest = text.partition("=")
        store = openStore(ExportSpec(serial, rest, **kw), reactor, None)
        self.addCleanup(store.close)
        return store

    def assertStoreError(self, path: str, *fragments: str, **kw: Any) -> StoreError:
        e = self.assertRaises(
            StoreError, openStore, ExportSpec("s", path, **kw), reactor, None
        )
        message = str(e)
        self.assertIn(repr(path), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return e

    def test_interface(self) -> None:
        store = self.openStore("s=" + self.makeFile(MiB))
        self.assertTrue(verifyObject(IBackingStore, store))

    def test_sizeFromFile(self) -> None:
        """
        The size of a regular file is its length; path and mode are kept.
        """
        path = self.makeFile(3 * MiB + 4096)
        store = self.openStore("s=" + path, blksize=4096)
        self.assertEqual(store.size, 3 * MiB + 4096)
        self.assertEqual(store.path, path)
        self.assertEqual(store.blksize, 4096)
        self.assertFalse(store.readOnly)
        self.assertFalse(store.isBlockDevice)

    def test_readWriteMode(self) -> None:
        """
        A read-write export is opened O_RDWR, a read-only one O_RDONLY.
        """
        path = self.makeFile(MiB)
        rw = self.openStore("s=" + path)
        ro = self.openStore("t=" + path, readOnly=True)
        self.assertEqual(fcntl.fcntl(rw._fd, fcntl.F_GETFL) & os.O_ACCMODE, os.O_RDWR)
        self.assertEqual(fcntl.fcntl(ro._fd, fcntl.F_GETFL) & os.O_ACCMODE, os.O_RDONLY)
        self.assertTrue(ro.readOnly)

    def test_notMultipleOfBlksize(self) -> None:
        path = self.makeFile(MiB + 512)
        self.assertStoreError(
            path, "size 1049088 is not a multiple of blksize 4096", blksize=4096
        )

    def test_zeroSize(self) -> None:
        self.assertStoreError(self.makeFile(0), "size is zero")

    def test_missing(self) -> None:
        self.assertStoreError(os.path.join(self.dir, "nope"), "ENOENT")

    def test_underMissingDirectory(self) -> None:
        self.assertStoreError(os.path.join(self.dir, "nodir", "disk.img"), "ENOENT")

    def test_underAFile(self) -> None:
        """
        A path through a regular file (ENOTDIR) cannot be opened.
        """
        path = os.path.join(self.makeFile(MiB), "disk.img")
        self.assertStoreError(path, "ENOTDIR")

    def test_directory(self) -> None:
        self.assertStoreError(self.dir, "not a regular file or block device")

    def test_characterDevice(self) -> None:
        self.assertStoreError("/dev/null", "not a regular file or block device")

    def test_fifo(self) -> None:
        """
        A FIFO is refused without opening it (which would block).
        """
        path = os.path.join(self.dir, "fifo")
        os.mkfifo(path)
        self.assertStoreError(path, "not a regular file or block device")

    def test_fdNotLeaked(self) -> None:
        """
        A refused file is closed again.
        """
        path = self.makeFile(MiB + 512)
        before = set(os.listdir("/proc/self/fd"))
        self.assertRaises(
            StoreError, openStore, ExportSpec("s", path, blksize=4096), reactor, None
        )
        self.assertEqual(set(os.listdir("/proc/self/fd")), before)

    def test_cause(self) -> None:
        """
        The L{StoreError} keeps the L{OSError} as its cause.
        """
        e = self.assertStoreError(os.path.join(self.dir, "nope"))
        self.assertIsInstance(e.__cause__, OSError)

    def test_inlineSelection(self) -> None:
        """
        No pool, or C{inline=True}, selects inline mode.
        """
        path = self.makeFile(MiB)
        pool = makeStorePool(2)
        pool.start()
        self.addCleanup(pool.stop)
        spec = ExportSpec("s", path)
        for store, inline in [
            (openStore(spec, reactor, None), True),
            (openStore(spec, reactor, pool, inline=True), True),
            (openStore(spec, reactor, pool, nowait=False), False),
        ]:
            self.addCleanup(store.close)
            self.assertEqual(store.inline, inline)


class StoreTestsMixin:
    """
    Behaviour of an open L{FileStore}; subclasses choose the mode.

    @ivar inline: True for inline mode, False for a thread pool.
    """

    inline: bool
    pool: Optional[ThreadPool]

    # Provided by TestCase.
    mktemp: Any
    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertIsInstance: Any
    assertFailure: Any
    assertFalse: Any
    assertTrue: Any
    assertLess: Any
    assertIs: Any
    successResultOf: Any
    patch: Any

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        if self.inline:
            self.pool = None
        else:
            pool = self.pool = makeStorePool(4)
            pool.start()
            self.addCleanup(lambda: None if pool.joined else pool.stop())

    def makeFile(self, size: int, name: str = "disk.img", data: bytes = b"") -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
            f.truncate(size)
        return path

    nowait = False
    writeThread = "off"

    def openStore(self, path: str, cleanup: bool = True, **kw: Any) -> FileStore:
        store = openStore(ExportSpec("s", path, **kw), reactor, self.pool,
                          nowait=self.nowait,
                          writeThread=self.writeThread)
        if cleanup:
            # Registered after pool.stop, so it runs first.
            self.addCleanup(store.close)
        return store

    def assertMediaError(self, d: Deferred[Any], code: int) -> Deferred[Any]:
        """
        Assert that C{d} fails with a L{MediaError} caused by an L{OSError}
        with errno C{code}, naming it in the message.
        """

        def check(e: MediaError) -> None:
            cause = e.__cause__
            assert isinstance(cause, OSError), cause
            self.assertEqual(cause.errno, code)
            self.assertIn(errno.errorcode[code], str(e))
            self.assertIn(os.strerror(code), str(e))

        return self.assertFailure(d, MediaError).addCallback(check)

    @defer.inlineCallbacks
    def test_roundTrip(self) -> Any:
        """
        Data written reads back, in place, and the file holds it.
        """
        path = self.makeFile(4 * MiB)
        store = self.openStore(path)
        data = _pattern(128 * 1024)
        result = yield store.write(MiB + 512, data)
        self.assertIs(result, None)
        got = yield store.read(MiB + 512, len(data))
        self.assertEqual(bytes(got), data)
        around = yield store.read(MiB, 512)
        self.assertEqual(bytes(around), bytes(512))
        with open(path, "rb") as f:
            f.seek(MiB + 512)
            self.assertEqual(f.read(len(data)), data)

    @defer.inlineCallbacks
    def test_readReturnsExactBuffer(self) -> Any:
        """
        A read fires with a resizable C{bytearray} of exactly the length
        asked for, not shared with any other read.
        """
        store = self.openStore(self.makeFile(MiB, data=_pattern(MiB)))
        a, b = yield defer.gatherResults([store.read(0, 4096), store.read(0, 4096)])
        self.assertIsInstance(a, bytearray)
        self.assertEqual(len(a), 4096)
        self.assertEqual(a, b)
        a[0] ^= 0xFF
        self.assertEqual(bytes(b), _pattern(4096))
        a.extend(b"no views left")
        empty = yield store.read(MiB, 0)
        self.assertEqual(len(empty), 0)

    @defer.inlineCallbacks
    def test_writeBytesLike(self) -> Any:
        """
        Writes accept bytearray, memoryview slices and typed arrays, and
        leave the caller's buffer resizable afterwards.
        """
        store = self.openStore(self.makeFile(MiB))
        buf = bytearray(_pattern(8192))
        yield store.write(0, buf)
        buf.extend(b"resizable again")
        yield store.write(8192, memoryview(buf)[:4096])
        words = array.array("H", range(2048))
        yield store.write(16384, words)
        got = yield store.read(0, 16384 + 4096)
        self.assertEqual(bytes(got[:8192]), _pattern(8192))
        self.assertEqual(bytes(got[8192:12288]), _pattern(4096))
        self.assertEqual(bytes(got[16384:]), words.tobytes())

    @defer.inlineCallbacks
    def test_shortTransfers(self) -> Any:
        """
        Short reads and short writes are resumed until the whole buffer
        is transferred.
        """
        realPreadv, realPwrite = os.preadv, os.pwrite
        calls = {"preadv": 0, "pwrite": 0}

        def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
            calls["preadv"] += 1
            return realPreadv(fd, [buffers[0][:1000]], offset)

        def pwrite(fd: int, data: memoryview, offset: int) -> int:
            calls["pwrite"] += 1
            return realPwrite(fd, data[:1000], offset)

        self.patch(os, "preadv", preadv)
        self.patch(os, "pwrite", pwrite)
        store = self.openStore(self.makeFile(MiB))
        data = _pattern(10000)
        yield store.write(512, data)
        got = yield store.read(512, 10000)
        self.assertEqual(bytes(got), data)
        self.assertEqual(calls, {"preadv": 10, "pwrite": 10})

    def test_writeNoProgress(self) -> Deferred[Any]:
        """
        A write that makes no progress fails with L{MediaError} instead of
        looping forever.
        """
        self.patch(os, "pwrite", lambda fd, data, offset: 0)
        store = self.openStore(self.makeFile(MiB))
        return self.assertMediaError(store.write(0, b"x" * 512), errno.EIO)

    def test_writeNonContiguous(self) -> Deferred[Any]:
        """
        A non-contiguous view fails the Deferred instead of raising.
        """
        store = self.openStore(self.makeFile(MiB))
        return self.assertFailure(
            store.write(0, memoryview(b"abcdefgh")[::2]), TypeError
        )

    @defer.inlineCallbacks
    def test_sparseReadsZeros(self) -> Any:
        """
        The unwritten part of a sparse file reads as zeros.
        """
        path = self.makeFile(16 * MiB, data=b"head")
        store = self.openStore(path)
        got = yield store.read(8 * MiB, 128 * 1024)
        self.assertEqual(got, bytes(128 * 1024))

    @defer.inlineCallbacks
    def test_readPastEndOfFile(self) -> Any:
        """
        If the file shrank after opening, the part past its end reads as
        zeros and the buffer still has the length asked for.
        """
        path = self.makeFile(MiB, data=_pattern(MiB))
        store = self.openStore(path)
        os.truncate(path, 4096)
        got = yield store.read(0, 8192)
        self.assertEqual(bytes(got), _pattern(4096) + bytes(4096))
        got = yield store.read(65536, 4096)
        self.assertEqual(got, bytes(4096))

    @defer.inlineCallbacks
    def test_discardReadsZeros(self) -> Any:
        """
        A discarded range reads as zeros; its neighbours are untouched,
        also for a range not aligned to file system blocks.
        """
        data = _pattern(MiB)
        store = self.openStore(self.makeFile(MiB, data=data))
        yield store.discard(65536, 131072)
        yield store.discard(4000, 100)
        got = yield store.read(0, MiB)
        expected = bytearray(data)
        expected[65536 : 65536 + 131072] = bytes(131072)
        expected[4000:4100] = bytes(100)
        self.assertEqual(bytes(got), bytes(expected))

    @defer.inlineCallbacks
    def test_discardFreesBlocks(self) -> Any:
        """
        Discarding from a regular file punches a hole: the file keeps its
        size and loses allocated blocks.
        """
        reason = _canPunchHoles(self.dir)
        if reason is not None:
            raise SkipTest(reason)
        path = self.makeFile(8 * MiB)
        store = self.openStore(path)
        yield store.write(0, b"\1" * (8 * MiB))
        yield store.flush()
        before = os.stat(path)
        yield store.discard(MiB, 4 * MiB)
        after = os.stat(path)
        self.assertEqual(after.st_size, 8 * MiB)
        # 4 MiB is 8192 blocks of 512 bytes.
        self.assertLess(after.st_blocks, before.st_blocks - 8000)

    @defer.inlineCallbacks
    def test_discardFallsBackToZeros(self) -> Any:
        """
        If the file system cannot punch holes, discard writes zeros, and
        stops trying to punch.
        """
        calls = []

        def refuse(fd: int, offset: int, length: int) -> None:
            calls.append((offset, length))
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

        self.patch(storeModule, "_punchHole", refuse)
        store = self.openStore(self.makeFile(4 * MiB, data=_pattern(4 * MiB)))
        yield store.discard(512, 3 * MiB)
        yield store.discard(0, 512)
        got = yield store.read(0, 4 * MiB)
        self.assertEqual(bytes(got), bytes(3 * MiB + 512) + _pattern(4 * MiB)[3 * MiB + 512 :])
        self.assertEqual(calls, [(512, 3 * MiB)])

    def deviceStore(self, data: bytes, sectorSize: int) -> FileStore:
        """
        Return a store over a regular file that takes the block device
        discard path, with the given logical sector size.
        """
        path = self.makeFile(len(data), data=data)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        store = FileStore(fd, path, len(data), False, 512, True, reactor, self.pool)
        self.addCleanup(store.close)
        store._sectorSize = sectorSize
        return store

    @defer.inlineCallbacks
    def test_deviceDiscardAligns(self) -> Any:
        """
        On a block device, discard zeroes whole sectors in the kernel and
        writes zeros over a partial head and tail.
        """
        punched = []
        realPunch = storeModule._punchHole

        def punch(fd: int, offset: int, length: int) -> None:
            punched.append((offset, length))
            realPunch(fd, offset, length)

        self.patch(storeModule, "_punchHole", punch)
        data = _pattern(64 * 1024)
        store = self.deviceStore(data, 4096)
        yield store.discard(4000, 10000)  # 4000..14000: sectors 4096..12288
        yield store.discard(20000, 100)  # inside one sector: zeros only
        yield store.discard(32768, 8192)  # aligned
        got = yield store.read(0, len(data))
        expected = bytearray(data)
        expected[4000:14000] = bytes(10000)
        expected[20000:20100] = bytes(100)
        expected[32768:40960] = bytes(8192)
        self.assertEqual(bytes(got), bytes(expected))
        self.assertEqual(punched, [(4096, 8192), (32768, 8192)])

    @defer.inlineCallbacks
    def test_deviceDiscardFallbacks(self) -> Any:
        """
        If the device cannot zero by fallocate, discard tries BLKZEROOUT
        (which a regular file refuses with ENOTTY) and then writes zeros.
        """
        punched = []
        zeroedOut = []
        realZeroOut = storeModule._zeroOutDevice

        def refuse(fd: int, offset: int, length: int) -> None:
            punched.append((offset, length))
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

        def zeroOut(fd: int, offset: int, length: int) -> None:
            zeroedOut.append((offset, length))
            realZeroOut(fd, offset, length)

        self.patch(storeModule, "_punchHole", refuse)
        self.patch(storeModule, "_zeroOutDevice", zeroOut)
        data = _pattern(64 * 1024)
        store = self.deviceStore(data, 512)
        yield store.discard(1024, 4096)
        yield store.discard(8192, 1024)
        got = yield store.read(0, len(data))
        expected = bytearray(data)
        expected[1024:5120] = bytes(4096)
        expected[8192:9216] = bytes(1024)
        self.assertEqual(bytes(got), bytes(expected))
        self.assertEqual(punched, [(1024, 4096)])
        self.assertEqual(zeroedOut, [(1024, 4096), (8192, 1024)])

    def test_discardMediaError(self) -> Deferred[Any]:
        """
        A real error from fallocate is a L{MediaError}, not a fallback.
        """

        def fail(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        self.patch(storeModule, "_punchHole", fail)
        store = self.openStore(self.makeFile(MiB))
        return self.assertMediaError(store.discard(0, 4096), errno.EIO)

    @defer.inlineCallbacks
    def test_flush(self) -> Any:
        """
        L{FileStore.flush} calls fdatasync on the store's descriptor.
        """
        synced = []
        realSync = os.fdatasync

        def fdatasync(fd: int) -> None:
            synced.append(fd)
            realSync(fd)

        self.patch(os, "fdatasync", fdatasync)
        store = self.openStore(self.makeFile(MiB))
        yield store.write(0, b"x" * 512)
        result = yield store.flush()
        self.assertIs(result, None)
        self.assertEqual(synced, [store._fd])

    @defer.inlineCallbacks
    def test_readOnly(self) -> Any:
        """
        A read-only store reads and flushes but refuses writes and
        discards, leaving the file alone.
        """
        data = _pattern(MiB)
        path = self.makeFile(MiB, data=data)
        store = self.openStore(path, readOnly=True)
        yield self.assertFailure(store.write(0, b"x" * 512), ReadOnlyError)
        yield self.assertFailure(store.discard(0, 4096), ReadOnlyError)
        yield store.flush()
        got = yield store.read(0, MiB)
        self.assertEqual(bytes(got), data)

    @defer.inlineCallbacks
    def test_outOfRange(self) -> Any:
        """
        Anything outside C{[0, size)} fails with L{OutOfRangeError}; the
        last bytes and an empty read at the end are fine.
        """
        store = self.openStore(self.makeFile(MiB))
        for d in [
            store.read(-512, 512),
            store.read(0, -1),
            store.read(MiB - 512, 1024),
            store.read(MiB + 512, 512),
            store.write(MiB - 1, b"ab"),
            store.write(-1, b"a"),
            store.discard(MiB - 512, 1024),
            store.discard(0, -512),
        ]:
            yield self.assertFailure(d, OutOfRangeError)
        got = yield store.read(MiB - 512, 512)
        self.assertEqual(len(got), 512)
        got = yield store.read(MiB, 0)
        self.assertEqual(len(got), 0)
        yield store.write(MiB - 512, b"z" * 512)

    def test_closedDescriptorIsMediaError(self) -> Deferred[Any]:
        """
        An OS error (here EBADF, from a descriptor that was closed under
        the store) fails the operation with L{MediaError}.
        """
        store = self.openStore(self.makeFile(MiB), cleanup=False)
        realFd, store._fd = store._fd, _BAD_FD
        os.close(realFd)
        d = defer.gatherResults(
            [
                self.assertMediaError(store.read(0, 512), errno.EBADF),
                self.assertMediaError(store.write(0, b"x"), errno.EBADF),
                self.assertMediaError(store.flush(), errno.EBADF),
                self.assertMediaError(store.discard(0, 4096), errno.EBADF),
            ]
        )

        @d.addCallback
        def closeFails(_: object) -> Deferred[Any]:
            return self.assertMediaError(store.close(), errno.EBADF)

        @d.addCallback
        def closeFailsAgain(_: object) -> Deferred[Any]:
            return self.assertMediaError(store.close(), errno.EBADF)

        return d

    def test_readOnlyDescriptorIsMediaError(self) -> Deferred[Any]:
        """
        A write through a descriptor opened O_RDONLY fails with
        L{MediaError} (EBADF).
        """
        path = self.makeFile(MiB)
        store = self.openStore(path)
        os.close(store._fd)
        store._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return self.assertMediaError(store.write(0, b"x" * 512), errno.EBADF)

    @defer.inlineCallbacks
    def test_close(self) -> Any:
        """
        L{FileStore.close} closes the descriptor; every call fires; later
        operations fail with L{NotOpenError}.
        """
        path = self.makeFile(MiB)
        store = self.openStore(path)
        fd = store._fd
        first = store.close()
        second = store.close()
        yield defer.gatherResults([first, second])
        self.assertFalse(_fdPath(fd) == os.path.realpath(path))
        yield store.close()
        for d in [
            store.read(0, 512),
            store.write(0, b"x"),
            store.flush(),
            store.discard(0, 512),
        ]:
            yield self.assertFailure(d, NotOpenError)


class PoolStoreTests(StoreTestsMixin, TestCase):
    """
    L{FileStore} with a thread pool.
    """

    inline = False

    @defer.inlineCallbacks
    def test_runsOnPoolThread(self) -> Any:
        """
        The system calls run on a pool thread, and the Deferred fires
        later, in the reactor thread.
        """
        threads = []
        realPreadv = os.preadv

        def preadv(*a: Any) -> int:
            threads.append(threading.current_thread())
            return realPreadv(*a)

        self.patch(os, "preadv", preadv)
        store = self.openStore(self.makeFile(MiB))
        d = store.read(0, 512)
        self.assertFalse(d.called)
        self.assertEqual(store.inFlight, 1)
        yield d
        self.assertEqual(store.inFlight, 0)
        self.assertEqual(len(threads), 1)
        self.assertTrue(threads[0] is not threading.current_thread())
        self.assertIn("xdiskd-store", threads[0].name)

    @defer.inlineCallbacks
    def test_closeWaitsForInFlight(self) -> Any:
        """
        L{FileStore.close} refuses new operations at once but closes the
        descriptor only after the operations in progress finish.
        """
        release = threading.Event()
        started = threading.Event()
        realRead = storeModule._readFull

        def slowRead(fd: int, offset: int, length: int) -> bytearray:
            started.set()
            release.wait(10)
            return realRead(fd, offset, length)

        self.patch(storeModule, "_readFull", slowRead)
        data = _pattern(4096)
        path = self.makeFile(MiB, data=data)
        store = self.openStore(path)
        fd = store._fd
        reading = store.read(0, 4096)
        closing = store.close()
        self.assertTrue(started.wait(10))
        # Let the reactor run a little: nothing may close yet.
        yield deferLater(0.05)
        self.assertFalse(closing.called)
        self.assertEqual(_fdPath(fd), os.path.realpath(path))
        self.assertEqual(store.inFlight, 1)
        yield self.assertFailure(store.read(0, 512), NotOpenError)
        release.set()
        got = yield reading
        self.assertEqual(bytes(got), data)
        yield closing
        self.assertEqual(store.inFlight, 0)
        self.assertFalse(_fdPath(fd) == os.path.realpath(path))

    def test_stoppedPool(self) -> Deferred[Any]:
        """
        Once the pool has stopped, operations fail with L{NotOpenError}
        instead of never firing, and close still closes.
        """
        path = self.makeFile(MiB)
        store = self.openStore(path)
        assert self.pool is not None
        self.pool.stop()
        fd = store._fd
        d = self.assertFailure(store.read(0, 512), NotOpenError)

        @d.addCallback
        def close(_: object) -> Deferred[None]:
            return store.close()

        @d.addCallback
        def closed(_: object) -> None:
            self.assertFalse(_fdPath(fd) == os.path.realpath(path))

        return d

    @defer.inlineCallbacks
    def test_manyInFlight(self) -> Any:
        """
        More requests than threads all complete, with the right data.
        """
        data = _pattern(4 * MiB)
        store = self.openStore(self.makeFile(4 * MiB, data=data))
        chunk = 65536
        results = yield defer.gatherResults(
            [store.read(i, chunk) for i in range(0, 4 * MiB, chunk)]
        )
        self.assertEqual(b"".join(bytes(r) for r in results), data)


class NowaitStoreTests(TestCase):
    """
    Pool mode with RWF_NOWAIT: page-cache reads are served in the
    calling thread; what would block goes to the pool.
    """

    def setUp(self) -> None:
        if not hasattr(os, "RWF_NOWAIT"):
            raise SkipTest("no RWF_NOWAIT on this platform")
        self.pool = makeStorePool(2)
        self.pool.start()
        self.addCleanup(self.pool.stop)

    def _store(self, data: bytes) -> FileStore:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        store = openStore(ExportSpec("s", path), reactor, self.pool)
        self.addCleanup(store.close)
        return store

    def test_cachedReadInline(self) -> None:
        data = os.urandom(MiB)
        store = self._store(data)
        d = store.read(4096, 8192)
        # Fired already: no thread hand-off for a page-cache hit.
        self.assertEqual(bytes(self.successResultOf(d)), data[4096:12288])
        self.assertEqual((store.nowaitHits, store.inFlight), (1, 0))

    def _cacheWouldBlock(self) -> None:
        """From now on every RWF_NOWAIT read finds the cache cold."""
        real = os.preadv

        def eagain(fd: int, bufs: Any, offset: int, flags: int = 0) -> int:
            if flags:
                raise BlockingIOError(errno.EAGAIN, "would block")
            return real(fd, bufs, offset)
        self.patch(os, "preadv", eagain)

    def test_readNow(self) -> None:
        """readNow: cached bytes at once; None where read() must answer
        (past the end, or the cache would block)."""
        data = os.urandom(MiB)
        store = self._store(data)
        self.assertEqual(bytes(store.readNow(8192, 4096) or b""),
                         data[8192:12288])
        self.assertIsNone(store.readNow(MiB - 4096, 8192))
        self._cacheWouldBlock()
        self.assertIsNone(store.readNow(0, 4096))
        self.assertEqual(store.inFlight, 0)

    @defer.inlineCallbacks
    def test_wouldBlockGoesToPool(self) -> Any:
        data = os.urandom(MiB)
        store = self._store(data)
        self._cacheWouldBlock()
        d = store.read(0, 4096)
        self.assertEqual(store.inFlight, 1)
        got = yield d
        self.assertEqual(bytes(got), data[:4096])
        self.assertEqual(store.nowaitMisses, 1)


class WriterThreadStoreTests(StoreTestsMixin, TestCase):
    """
    L{FileStore} with a pool and every write on its writer thread
    (C{--write-thread all}): the same behaviour.
    """

    inline = False
    writeThread = "all"


class InlineStoreTests(StoreTestsMixin, TestCase):
    """
    L{FileStore} in inline mode.
    """

    inline = True

    def test_alreadyFired(self) -> None:
        """
        Inline operations return Deferreds that have already fired.
        """
        store = self.openStore(self.makeFile(MiB))
        self.assertTrue(store.inline)
        self.assertIs(self.successResultOf(store.write(0, b"abc")), None)
        self.assertEqual(bytes(self.successResultOf(store.read(0, 3))), b"abc")
        self.assertIs(self.successResultOf(store.flush()), None)
        self.assertIs(self.successResultOf(store.discard(0, 512)), None)
        self.assertIs(self.successResultOf(store.close()), None)


class StorePoolServiceTests(TestCase):
    """
    L{StorePoolService} starts and stops its pool.
    """

    def test_lifecycle(self) -> Deferred[Any]:
        service = StorePoolService(threads=2)
        self.assertFalse(service.pool.started)
        self.assertEqual(service.pool.threads, 2)
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "disk.img")
        with open(path, "wb") as f:
            f.write(b"service")
            f.truncate(MiB)
        store = openStore(ExportSpec("s", path), reactor, service.pool)
        # Queued before the pool starts: runs once it does.
        d = store.read(0, 7)
        service.startService()
        self.assertTrue(service.pool.started)

        @d.addCallback
        def read(data: bytearray) -> Deferred[None]:
            self.assertEqual(bytes(data), b"service")
            return store.close()

        @d.addCallback
        def stop(_: object) -> None:
            service.stopService()
            self.assertTrue(service.pool.joined)

        return d


class BlockDeviceTests(TestCase):
    """
    L{FileStore} on a loop block device.  Attaching a loop device changes
    the machine's state, so this runs only if C{XDISKD_TEST_LOOP=1}.
    """

    def setUp(self) -> None:
        if os.environ.get("XDISKD_TEST_LOOP") != "1":
            raise SkipTest(
                "loop device tests attach a system-wide loop device; "
                "set XDISKD_TEST_LOOP=1 to run them"
            )
        losetup = shutil.which("losetup")
        if losetup is None or os.geteuid() != 0:
            raise SkipTest("needs root and losetup")
        directory = self.mktemp()
        os.makedirs(directory)
        self.backing = os.path.join(directory, "loop.img")
        with open(self.backing, "wb") as f:
            f.write(_pattern(MiB))
            f.truncate(8 * MiB)
        try:
            self.device = subprocess.run(
                [losetup, "--find", "--show", self.backing],
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except (subprocess.SubprocessError, OSError) as e:
            raise SkipTest(f"losetup cannot attach a loop device here: {e}")
        self.addCleanup(
            subprocess.run, [losetup, "--detach", self.device], check=False, timeout=30
        )
        self.pool = makeStorePool(2)
        self.pool.start()
        self.addCleanup(self.pool.stop)

    @defer.inlineCallbacks
    def test_blockDevice(self) -> Any:
        """
        A block device's size comes from the device; reads, writes and
        discards (aligned or not) work.
        """
        store = openStore(ExportSpec("s", self.device), reactor, self.pool)
        self.addCleanup(store.close)
        self.assertTrue(store.isBlockDevice)
        self.assertEqual(store.size, 8 * MiB)
        got = yield store.read(0, 4096)
        self.assertEqual(bytes(got), _pattern(4096))
        yield store.write(MiB, b"\xaa" * 65536)
        yield store.discard(MiB + 100, 8192)
        yield store.discard(0, 65536)
        yield store.flush()
        got = yield store.read(0, MiB + 65536)
        expected = bytearray(_pattern(MiB)) + b"\xaa" * 65536
        expected[0:65536] = bytes(65536)
        expected[MiB + 100 : MiB + 100 + 8192] = bytes(8192)
        self.assertEqual(bytes(got), bytes(expected))


def deferLater(seconds: float) -> Deferred[None]:
    """
    Fire after C{seconds} of real reactor time.
    """
    from twisted.internet.task import deferLater as _deferLater

    return _deferLater(reactor, seconds, lambda: None)
