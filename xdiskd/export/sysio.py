"""
The system calls behind L{xdiskd.export.store}: full positional reads and
writes, hole punching, zeroing and device queries, each a plain function
that raises C{OSError}, for the store to run inline or on its pool.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from typing import Callable, Optional

# fallocate(2) modes, <linux/falloc.h>.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

# <linux/fs.h>: BLKSSZGET = _IO(0x12, 104), BLKZEROOUT = _IO(0x12, 127).
BLKSSZGET = 0x1268
BLKZEROOUT = 0x127F

# Size of the zero buffer for discards the kernel cannot do for us.
_ZERO_CHUNK = 1 << 20
_ZEROS = bytes(_ZERO_CHUNK)

# errnos meaning "this file or device cannot do that", as opposed to
# "the medium failed": they select the next fallback, not an error.
_UNSUPPORTED = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.ENOTTY, errno.EINVAL}
)


def _loadFallocate() -> Optional[Callable[[int, int, int, int], int]]:
    """
    Find C{fallocate(2)} in the C library; C{os} offers only
    C{posix_fallocate}, which cannot punch holes.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    # fallocate64 takes a 64-bit off_t on every ABI; plain fallocate may
    # not on 32-bit ones.
    for name in ("fallocate64", "fallocate"):
        func = getattr(libc, name, None)
        if func is not None:
            func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            func.restype = ctypes.c_int
            return func  # type: ignore[no-any-return]
    return None


_fallocate = _loadFallocate()


def _readFull(fd: int, offset: int, length: int) -> bytearray:
    """
    Read C{length} bytes at C{offset} into one new buffer.  Bytes past the
    end of the file are left as zeros.
    """
    buf = bytearray(length)
    with memoryview(buf) as view:
        done = 0
        while done < length:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                break
            done += n
    return buf


def _writeFull(fd: int, offset: int, data: memoryview) -> None:
    """
    Write all of C{data} at C{offset}, resuming after short writes.
    """
    total = data.nbytes
    done = 0
    while done < total:
        n = os.pwrite(fd, data[done:], offset + done)
        if n == 0:
            # Would loop forever; the kernel should have said ENOSPC.
            raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} (write made no progress)")
        done += n


def _writeZeros(fd: int, offset: int, length: int) -> None:
    """
    Overwrite a range with zeros, a chunk at a time.
    """
    end = offset + length
    with memoryview(_ZEROS) as zeros:
        while offset < end:
            n = min(_ZERO_CHUNK, end - offset)
            _writeFull(fd, offset, zeros[:n])
            offset += n


def _punchHole(fd: int, offset: int, length: int) -> None:
    """
    C{fallocate(fd, PUNCH_HOLE | KEEP_SIZE, offset, length)}: deallocate a
    range of a file, or zero a range of a block device without writing.

    @raise OSError: as the kernel reports; C{EOPNOTSUPP} if the file system
        or device cannot do it (or the C library lacks fallocate).
    """
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if _fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _zeroOutDevice(fd: int, offset: int, length: int) -> None:
    """
    C{BLKZEROOUT}: have the block layer zero a range (with a write-zeroes
    command, or by writing zero pages itself).
    """
    fcntl.ioctl(fd, BLKZEROOUT, struct.pack("=QQ", offset, length))


def _deviceSectorSize(fd: int) -> int:
    """
    The logical sector size of a block device (512 if unknown).
    """
    try:
        buf = fcntl.ioctl(fd, BLKSSZGET, struct.pack("=i", 0))
    except OSError:
        return 512
    (size,) = struct.unpack("=i", buf)
    return size if size > 0 else 512


def _describe(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "?")
    return f"[Errno {e.errno} {name}] {e.strerror}"
