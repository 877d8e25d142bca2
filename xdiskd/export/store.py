"""
The backing store of an export: positional I/O on a local regular file or
block device.

L{openStore} opens the path named by an L{ExportSpec} and returns a
L{FileStore}, which implements L{IBackingStore}.  Every method returns a
L{Deferred}.  The system calls run on a bounded L{ThreadPool} (see
L{makeStorePool} and L{StorePoolService}) so that device latency never
blocks the reactor; a store opened in I{inline} mode makes the same calls
in the calling thread instead and returns already-fired Deferreds, which is
cheaper for files that live in the page cache.

Failures reach the caller as L{xdiskd.errors} exceptions only:
L{MediaError} (an C{OSError} from the kernel, kept as C{__cause__}),
L{OutOfRangeError}, L{ReadOnlyError}, and L{NotOpenError} (after
L{FileStore.close}, or once the pool has stopped).  A store that cannot be
opened raises L{StoreError} from L{openStore}.

This module is Linux-specific: discard uses C{fallocate(2)} and the block
device C{BLKZEROOUT} ioctl.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from xdiskd.buffers import take as _takeBuffer
from xdiskd.dmsg import constants as C
from xdiskd.export.dirty import gauge as dirtyGauge
from xdiskd.export.pool import LeanPool, submit
from xdiskd.errors import (
    MediaError,
    NotOpenError,
    OutOfRangeError,
    ReadOnlyError,
    XDiskError,
)
from xdiskd.export.spec import ExportSpec
from xdiskd.export.writer import CALL, READ, WRITE, BatchWriter
from xdiskd.export.sysio import (  # tests patch these names here
    _UNSUPPORTED, _describe, _deviceSectorSize, _punchHole, _readFull,
    _writeFull, _writeZeros, _zeroOutDevice)
from xdiskd.interfaces import IBackingStore

if TYPE_CHECKING:
    # PEP 688: anything exporting a buffer (bytes, bytearray, memoryview,
    # array, mmap ...), which is what L{FileStore.write} accepts.
    from typing_extensions import Buffer

_T = TypeVar("_T")

#: Threads in a store pool unless told otherwise.
DEFAULT_POOL_THREADS = 4

#: Pool mode: page-aligned writes up to this size are made in the calling
#: thread while the page cache has room for them (L{xdiskd.export.dirty}).
INLINE_WRITE_MAX = 1 << 20
#: An inline write that slept (a voluntary context switch: throttled, a
#: lock, the device) and took longer than this (seconds) sends writes to
#: the pool for INLINE_BACKOFF seconds.  Time alone misleads on a busy
#: machine: a 1 MiB page-cache copy preempted by other processes took
#: over 2 ms without ever waiting.
INLINE_SLOW = 0.002
INLINE_BACKOFF = 5.0
_PAGE_MASK = 4095
#: --write-thread: none, lone writes in the reactor, every write.
WRITE_THREAD_MODES = ("off", "auto", "all")
#: auto: writes this large and larger go the way they go without the
#: thread unless others are outstanding on it (measured: 64 KiB writes in
#: the 70/30 mix and 1 MiB writes cost the exporter more CPU on the
#: thread, 4 KiB writes at QD32 less).
WRITE_THREAD_BELOW = 64 << 10


_RUSAGE_THREAD: int = getattr(resource, "RUSAGE_THREAD", -1)


def _voluntarySwitches() -> int:
    """
    This thread's voluntary context switches so far; -1 where unknown
    (not Linux), and every slow write then counts as one that slept.
    """
    if _RUSAGE_THREAD < 0:
        return -1
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


class StoreError(XDiskError):
    """
    A backing store could not be opened: the message names the path and
    the reason.  This is a start-up error, raised by L{openStore}.
    """


def makeStorePool(threads: int = DEFAULT_POOL_THREADS, name: str = "xdiskd-store") -> ThreadPool:
    """
    Create (but do not start) a thread pool for store I/O.

    Operations queued before L{ThreadPool.start} wait until it is called.
    Close every store using the pool, and wait for the close Deferreds,
    before stopping it: work still queued when the pool stops is dropped.

    @param threads: The number of threads, which bounds the number of
        system calls in progress at once.
    @param name: The pool's name, used in thread names.
    """
    return ThreadPool(minthreads=threads, maxthreads=threads, name=name)


class StorePoolService(Service):
    """
    Own a store thread pool's lifetime: started with the service, stopped
    (joining its threads) with it.

    @ivar pool: The L{ThreadPool} to pass to L{openStore}.
    """

    def __init__(self, threads: int = DEFAULT_POOL_THREADS,
                 lean: bool = True) -> None:
        self.pool: Any = (LeanPool(threads) if lean
                          else makeStorePool(threads))

    def startService(self) -> None:
        Service.startService(self)
        self.pool.start()

    def stopService(self) -> Optional[Deferred[None]]:
        Service.stopService(self)
        self.pool.stop()
        return None


def _releaseView(result: _T, view: memoryview) -> _T:
    view.release()
    return result


@implementer(IBackingStore)
class FileStore:
    """
    An open regular file or block device, exported as one disk.

    Use L{openStore} to create one.  Offsets and lengths are the caller's
    to check; the store refuses anything outside C{[0, size)} with
    L{OutOfRangeError} as a last line of defence.

    A buffer passed to L{write} must not change until the returned
    Deferred fires: the write may still be in progress on another thread.

    @ivar path: The path opened.
    @ivar size: The size in bytes, fixed when the store was opened.
    @ivar readOnly: True if opened read-only; L{write} and L{discard} then
        fail with L{ReadOnlyError}.
    @ivar blksize: The export's block size; C{size} is a multiple of it.
    @ivar isBlockDevice: True for a block device, False for a regular file.
    """

    def __init__(
        self,
        fd: int,
        path: str,
        size: int,
        readOnly: bool,
        blksize: int,
        isBlockDevice: bool,
        reactor: IReactorFromThreads,
        pool: Optional[ThreadPool],
        nowait: bool = True,
        inlineWriteMax: int = INLINE_WRITE_MAX,
        gauge: Any = None,
        writeThread: str = "off",
    ) -> None:
        """
        Wrap an open file descriptor; the store owns it from now on.

        @param pool: The thread pool for system calls, or None for inline
            mode (system calls in the calling thread).
        @param inlineWriteMax: pool mode: page-aligned writes up to this
            many bytes are made in the calling thread while C{gauge} (a
            L{xdiskd.export.dirty.DirtyGauge}) says the page cache has
            room; 0 never.
        @param writeThread: C{"off"}: no writer thread; C{"all"}: every
            write goes to the store's writer thread in batches
            (L{BatchWriter}); C{"auto"}: writes smaller than
            L{WRITE_THREAD_BELOW} go to the thread unless alone in their
            read of the socket with nothing outstanding (then they are
            made here as without a thread, if that does not wait);
            larger ones go the way they go without the thread unless
            others are outstanding on it.
        """
        self._fd = fd
        self.path = path
        self.size = size
        self.readOnly = readOnly
        self.blksize = blksize
        self.isBlockDevice = isBlockDevice
        self._reactor = reactor
        self._pool = pool
        self._inFlight = 0
        self._closing = False
        self._closeResult: Optional[Failure] = None
        self._closed = False
        self._closeWaiters: list[Deferred[None]] = []
        # Cleared the first time the file system refuses to punch a hole,
        # so later discards go straight to writing zeros.
        self._canPunch = True
        self._sectorSize = _deviceSectorSize(fd) if isBlockDevice else 1
        # Pool mode: try reads and writes in the reactor thread first with
        # RWF_NOWAIT, which fails with EAGAIN instead of waiting for the
        # device; only then hand over to the pool.  Page-cache hits cost
        # no thread hand-off.  Cleared per direction when refused.
        self._nowaitRead = (nowait and pool is not None
                            and hasattr(os, "RWF_NOWAIT"))
        self._nowaitWrite = self._nowaitRead
        self.nowaitHits = 0
        self.nowaitMisses = 0
        self._gauge = gauge if gauge is not None else dirtyGauge
        self._inlineWriteMax = inlineWriteMax if pool is not None else 0
        self._inlineOffUntil = 0.0
        self.inlineWrites = 0
        self.slowInlineWrites = 0
        self._writer: Optional[BatchWriter] = None
        self._threadBelow = 0
        if writeThread not in WRITE_THREAD_MODES:
            raise ValueError("write thread mode %r not in %s" % (
                writeThread, "|".join(WRITE_THREAD_MODES)))
        if writeThread != "off" and not readOnly:
            self._threadBelow = (WRITE_THREAD_BELOW if writeThread == "auto"
                                 else C.AUX_MAX + 1)
            self._writer = BatchWriter(
                lambda: self._fd, path, reactor,
                C.AUX_MAX + 1 if writeThread == "auto" else 0,
                self._writeNow)

    def __repr__(self) -> str:
        mode = "ro" if self.readOnly else "rw"
        how = "inline" if self.inline else "pool"
        return f"<FileStore {self.path!r} {self.size} bytes {mode} {how}>"

    @property
    def inline(self) -> bool:
        """
        True if system calls run in the calling thread (inline mode).
        """
        return self._pool is None

    @property
    def inFlight(self) -> int:
        """
        The number of operations handed to the pool and not yet finished.
        """
        return self._inFlight

    # -- IBackingStore

    def read(self, offset: int, length: int,
             nowait: bool = True) -> Deferred[bytearray]:
        """
        Read C{length} bytes at C{offset}.

        @param nowait: False when the caller has just tried L{readNow}:
            do not ask the page cache again, go to the pool.
        @return: A Deferred firing with a new C{bytearray} of exactly
            C{length} bytes (zeros where the file has since shrunk).
        """
        refused = self._refuse("read", offset, length, writing=False)
        if refused is not None:
            return defer.fail(refused)
        writer = self._writer
        if writer is not None and writer.outstanding and writer.overlaps(
                offset, length):
            # After the writes that arrived before it (writer.py).
            return self._viaWriter(writer, READ, offset, length)
        if nowait and self._nowaitRead:
            buf = self._readNowait(offset, length)
            if buf is not None:
                return defer.succeed(buf)
        return self._run(f"read {length} bytes at {offset}", _readFull,
                         self._fd, offset, length)

    def readNow(self, offset: int, length: int) -> Optional[bytearray]:
        """
        The C{length} bytes at C{offset} if the page cache has them all,
        read here without blocking (in inline mode: read here); else None
        (use L{read}, which also reports errors).
        """
        if self._refuse("read", offset, length, writing=False) is not None:
            return None
        writer = self._writer
        if writer is not None and writer.outstanding and writer.overlaps(
                offset, length):
            return None     # read() orders it after those writes
        if self._nowaitRead:
            return self._readNowait(offset, length)
        if self._pool is None:
            # Inline mode reads in the reactor thread anyway.
            try:
                return _readFull(self._fd, offset, length)
            except OSError:
                return None     # read() tries again and reports it
        return None

    def _readNowait(self, offset: int, length: int) -> Optional[bytearray]:
        """
        One C{preadv2(RWF_NOWAIT)}: the data if the page cache had all of
        it (or the file ends), else None for the pool to do it.
        """
        buf = _takeBuffer(length)   # old bytes: all overwritten below
        try:
            n = os.preadv(self._fd, [buf], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            self.nowaitMisses += 1
            return None
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._nowaitRead = False
            return None
        if n < length and offset + n < os.fstat(self._fd).st_size:
            self.nowaitMisses += 1
            return None
        if n < length:
            buf[n:] = bytes(length - n)     # past the end of the file
        self.nowaitHits += 1
        return buf

    def write(self, offset: int, data: Buffer) -> Deferred[None]:
        """
        Write C{data} (any contiguous bytes-like object) at C{offset}.

        @return: A Deferred firing with None once all of C{data} is
            written (not necessarily durable; see L{flush}).
        """
        try:
            view = memoryview(data)
            if view.itemsize != 1 or view.ndim != 1 or not view.contiguous:
                view = view.cast("B")
        except (TypeError, ValueError):
            return defer.fail()
        refused = self._refuse("write", offset, view.nbytes, writing=True)
        writer = self._writer
        if refused is not None:
            d: Deferred[None] = defer.fail(refused)
        elif writer is not None and (
                writer.outstanding or view.nbytes < self._threadBelow):
            d = self._viaWriter(writer, WRITE, offset, view)
        else:
            try:
                done = (self._writeNowait(offset, view)
                        if self._nowaitWrite else 0)
            except MediaError:
                d = defer.fail()
                return d.addBoth(_releaseView, view)
            if done == view.nbytes:
                d = defer.succeed(None)
            elif (not done and view.nbytes <= self._inlineWriteMax
                  and not (offset | view.nbytes) & _PAGE_MASK
                  and self._roomForInline()):
                d = self._writeInline(offset, view)
            else:
                d = self._run(f"write {view.nbytes} bytes at {offset}",
                              _writeFull, self._fd, offset + done,
                              view[done:])
        # Let the caller resize its buffer again once we are done with it.
        return d.addBoth(_releaseView, view)

    def _writeNow(self, offset: int, view: memoryview) -> bool:
        """
        For the writer thread's lone small writes: write in the calling
        thread if that does not wait, as L{write} without a writer thread
        would (raising L{MediaError}); False leaves it to the thread.
        """
        done = self._writeNowait(offset, view) if self._nowaitWrite else 0
        if done:
            # A part written is written again by the thread: same bytes.
            return done == view.nbytes
        if (view.nbytes <= self._inlineWriteMax
                and not (offset | view.nbytes) & _PAGE_MASK
                and self._roomForInline()):
            self._inlineWrite(offset, view)
            return True
        return False

    def _roomForInline(self) -> bool:
        if self._inlineOffUntil:
            if time.monotonic() < self._inlineOffUntil:
                return False
            self._inlineOffUntil = 0.0
        return bool(self._gauge.roomy())

    def _writeInline(self, offset: int, view: memoryview) -> Deferred[None]:
        """
        Write in the calling thread (the page cache has room); a write
        that was slow anyway sends writes to the pool for a while.
        """
        try:
            self._inlineWrite(offset, view)
        except MediaError:
            return defer.fail()
        return defer.succeed(None)

    def _inlineWrite(self, offset: int, view: memoryview) -> None:
        """L{_writeInline}, raising L{MediaError}."""
        self.inlineWrites += 1
        switches = _voluntarySwitches()
        t = time.monotonic()
        self._call(f"write {view.nbytes} bytes at {offset}",
                   _writeFull, self._fd, offset, view)
        t2 = time.monotonic()
        if t2 - t > INLINE_SLOW and (
                switches < 0 or _voluntarySwitches() != switches):
            self.slowInlineWrites += 1
            self._inlineOffUntil = t2 + INLINE_BACKOFF

    def _writeNowait(self, offset: int, view: memoryview) -> int:
        """
        One C{pwritev2(RWF_NOWAIT)}: how many bytes went into the page
        cache without waiting (the pool writes the rest).
        """
        try:
            n = os.pwritev(self._fd, [view], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            self.nowaitMisses += 1
            return 0
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._nowaitWrite = False
                return 0
            raise MediaError(f"{self.path}: write: {_describe(e)}") from e
        self.nowaitHits += 1
        return n

    def flush(self) -> Deferred[None]:
        """
        C{fdatasync} the file or device.

        @return: A Deferred firing with None once every write that fired
            before this call is durable.
        """
        what = "flush"
        refused = self._refuse(what, 0, 0, writing=False)
        if refused is not None:
            return defer.fail(refused)
        writer = self._writer
        if writer is not None and writer.outstanding:
            # Once the writes that arrived before it are made; later
            # writes go on meanwhile.
            d: Deferred[None] = Deferred()
            self._inFlight += 1
            d.addBoth(self._opDone)
            writer.afterOutstanding(lambda: self._run(
                what, os.fdatasync, self._fd).chainDeferred(d))
            return d
        return self._run(what, os.fdatasync, self._fd)

    def discard(self, offset: int, length: int) -> Deferred[None]:
        """
        Discard a range; it then reads as zeros.

        On a regular file this punches a hole (freeing the blocks), or
        writes zeros if the file system cannot.  On a block device it asks
        the device to zero the range without a data transfer (unmapping
        where the device can), then falls back to C{BLKZEROOUT} and last to
        writing zeros.

        @return: A Deferred firing with None.
        """
        what = f"discard {length} bytes at {offset}"
        refused = self._refuse(what, offset, length, writing=True)
        if refused is not None:
            return defer.fail(refused)
        writer = self._writer
        if writer is not None and writer.outstanding:
            how = self._discardDevice if self.isBlockDevice else (
                self._discardFile)
            return self._viaWriter(writer, CALL, offset,
                                   (lambda: how(offset, length), length))
        if self.isBlockDevice:
            return self._run(what, self._discardDevice, offset, length)
        return self._run(what, self._discardFile, offset, length)

    def close(self) -> Deferred[None]:
        """
        Close the store: refuse new operations at once, then close the
        file descriptor once the operations in progress have finished.
        The thread pool is shared and is not stopped.

        @return: A Deferred firing with None when the descriptor is closed
            (or failing with L{MediaError} if C{close(2)} failed).  Every
            call returns a new Deferred for the same event.
        """
        d: Deferred[None] = Deferred()
        if self._closed:
            if isinstance(self._closeResult, Failure):
                d.errback(self._closeResult)
            else:
                d.callback(None)
            return d
        self._closeWaiters.append(d)
        if not self._closing:
            self._closing = True
            if self._inFlight == 0:
                self._closeFd()
        return d

    # -- discard strategies, run in a pool thread (or inline)

    def _discardFile(self, offset: int, length: int) -> None:
        if self._canPunch:
            try:
                _punchHole(self._fd, offset, length)
                return
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
                self._canPunch = False
        _writeZeros(self._fd, offset, length)

    def _discardDevice(self, offset: int, length: int) -> None:
        # fallocate and BLKZEROOUT want whole logical sectors: write zeros
        # over a partial head and tail, and zero the middle in the kernel.
        sector = self._sectorSize
        end = offset + length
        start = -(-offset // sector) * sector
        stop = end // sector * sector
        if stop <= start:
            _writeZeros(self._fd, offset, length)
            return
        _writeZeros(self._fd, offset, start - offset)
        _writeZeros(self._fd, stop, end - stop)
        if self._canPunch:
            try:
                _punchHole(self._fd, start, stop - start)
                return
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
                self._canPunch = False
        try:
            _zeroOutDevice(self._fd, start, stop - start)
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise
            _writeZeros(self._fd, start, stop - start)

    # -- dispatch

    def _refuse(
        self, what: str, offset: int, length: int, writing: bool
    ) -> Optional[XDiskError]:
        """
        Return the error an operation fails with before it starts, or None
        if it may start.
        """
        if self._closing:
            return NotOpenError(f"{self.path}: {what}: store is closed")
        if writing and self.readOnly:
            return ReadOnlyError(f"{self.path}: {what}: store is read-only")
        if offset < 0 or length < 0 or offset + length > self.size:
            return OutOfRangeError(
                f"{self.path}: {what}: outside the store (size {self.size})"
            )
        if self._pool is not None and self._pool.joined:
            # ThreadPool silently drops work once stopped.
            return NotOpenError(f"{self.path}: {what}: store thread pool is stopped")
        return None

    def _call(self, what: str, f: Callable[..., _T], *args: object) -> _T:
        """
        Call C{f}, turning an C{OSError} into a L{MediaError}.
        """
        try:
            return f(*args)
        except OSError as e:
            raise MediaError(f"{self.path}: {what}: {_describe(e)}") from e

    def _run(self, what: str, f: Callable[..., _T], *args: object) -> Deferred[_T]:
        """
        Run C{f(*args)} in the pool (or inline), counted as in flight.
        """
        if self._pool is None:
            try:
                return defer.succeed(self._call(what, f, *args))
            except Exception:
                return defer.fail()
        self._inFlight += 1
        d = submit(self._reactor, self._pool, self._call, what, f, *args)
        d.addBoth(self._opDone)
        return d

    def _viaWriter(self, writer: BatchWriter, kind: int, offset: int,
                   arg: Any) -> Deferred[Any]:
        """Hand one operation to the writer thread, counted in flight."""
        self._inFlight += 1
        d = writer.submit(kind, offset, arg)
        d.addBoth(self._opDone)
        return d

    def _opDone(self, result: _T) -> _T:
        self._inFlight -= 1
        if self._closing and self._inFlight == 0 and not self._closed:
            self._closeFd()
        return result

    def _closeFd(self) -> None:
        if self._writer is not None:
            self._writer.stop()
        # close(2) of the last reference to a block device writes back its
        # dirty pages, so it belongs on the pool like any other I/O.
        if self._pool is None or not self._pool.started:
            d = defer.maybeDeferred(self._call, "close", os.close, self._fd)
        else:
            d = submit(self._reactor, self._pool, self._call, "close", os.close, self._fd)
        d.addBoth(self._fdClosed)

    def _fdClosed(self, result: Optional[Failure]) -> None:
        self._closed = True
        self._closeResult = result
        self._fd = -1
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)


def openStore(
    spec: ExportSpec,
    reactor: IReactorFromThreads,
    pool: Optional[ThreadPool] = None,
    inline: bool = False,
    nowait: bool = True,
    inlineWriteMax: int = INLINE_WRITE_MAX,
    writeThread: str = "off",
) -> FileStore:
    """
    Open the file or block device of an export.

    The path is opened C{O_RDWR}, or C{O_RDONLY} for a read-only export.
    Its size is C{st_size} for a regular file and the end offset for a
    block device; it must be a non-zero multiple of C{spec.blksize}.

    @param spec: The export.
    @param reactor: The reactor that receives results from pool threads.
    @param pool: The thread pool for system calls (see L{makeStorePool});
        None selects inline mode.
    @param inline: True to make system calls in the calling thread even if
        a pool is given.
    @param nowait: with a pool, first try reads and writes in the calling
        thread with C{RWF_NOWAIT} (page-cache hits never wait for the
        device); the pool does what would block.
    @param inlineWriteMax: with a pool, page-aligned writes up to this
        many bytes go to the page cache in the calling thread while it
        has room for them (see L{FileStore}); 0 never.
    @param writeThread: off, auto or all: which writes go to one writer
        thread of the store, in batches (see L{FileStore}).
    @return: The open store.
    @raise StoreError: if the path is missing, not openable, neither a
        regular file nor a block device, or of an unusable size.
    """
    path = spec.path

    def refuse(reason: str) -> StoreError:
        return StoreError(f"cannot export {path!r} (serial {spec.serial!r}): {reason}")

    # Look before opening: open(2) of a FIFO would block until a writer came.
    try:
        st = os.stat(path)
    except OSError as e:
        raise refuse(_describe(e)) from e
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise refuse("not a regular file or block device")

    flags = (os.O_RDONLY if spec.readOnly else os.O_RDWR) | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise refuse(_describe(e)) from e
    try:
        st = os.fstat(fd)
        isBlockDevice = stat.S_ISBLK(st.st_mode)
        if isBlockDevice:
            size = os.lseek(fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            size = st.st_size
        else:
            raise refuse("not a regular file or block device")
        if size == 0:
            raise refuse("size is zero")
        if size % spec.blksize:
            raise refuse(f"size {size} is not a multiple of blksize {spec.blksize}")
    except OSError as e:
        os.close(fd)
        raise refuse(_describe(e)) from e
    except BaseException:
        os.close(fd)
        raise
    return FileStore(
        fd,
        path,
        size,
        spec.readOnly,
        spec.blksize,
        isBlockDevice,
        reactor,
        None if inline else pool,
        nowait,
        inlineWriteMax,
        writeThread=writeThread,
    )
