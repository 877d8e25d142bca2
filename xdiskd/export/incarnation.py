"""
An export's incarnation: which page cache its acknowledged writes live in
until they are flushed.  The exporter states it in its span
(L{xdiskd.dmsg.wire.LnkSpan.media_incarnation}); an importer that lost
its open compares the value of the path it re-opens on with the one its
unflushed writes were acknowledged on (L{xdiskd.xa.window}).

The rule: an acknowledged export write is a C{pwrite} into the kernel's
page cache (L{xdiskd.export.store.FileStore}, inline or on the I/O
threads, never C{O_DIRECT}).  It survives the exporter I{process}: a
SIGKILL or a restart loses nothing, and a restarted exporter of the same
file on the same boot must state the same value, so the importer
replays nothing.  It does not survive the I{host} (a crash, a power loss,
a reboot), nor is it seen by another host exporting the same shared
disk; either must state a different value.  So the incarnation is a hash
of

  - the kernel's boot id (C{/proc/sys/kernel/random/boot_id}, 128 random
    bits the kernel draws at every boot: new after a reboot, different on
    every host), and
  - the identity of the page cache within that boot: the device number
    of a block device (its buffer cache), or C{(st_dev, st_ino)} of a
    regular file.

No state file is needed: the boot id already is the random value a file
under /run would hold, and it goes away at exactly the right moment.
Without a boot id (not Linux) the value is random per process start: then
every exporter restart is taken as a loss and replayed.

Limits (README, durability contract): a store that can lose written
pages while the host stays up (a FUSE or network file system whose
server crashes, a device whose volatile write cache loses power on its
own) is not covered by the page-cache rule; such a store states its own
value through an C{incarnation} attribute (the test power-loss store
does), and the importer's C{--unflushed} setting decides what a lost
window does.  An inode number reused by a new file during an outage looks
like the old file.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from typing import Any, Optional

BOOT_ID = "/proc/sys/kernel/random/boot_id"

_FILE = struct.Struct("<QQ")
_DEVICE = struct.Struct("<Q")
_U64 = struct.Struct("<Q")


def bootId(path: str = BOOT_ID) -> Optional[bytes]:
    """The kernel's boot id, or None where there is none."""
    try:
        with open(path, "rb") as f:
            value = f.read(64).strip()
    except OSError:
        return None
    return value or None


#: Used when the kernel has no boot id: one random value per process.
_PROCESS = os.urandom(16)


def pageCacheIncarnation(st: os.stat_result,
                         boot: Optional[bytes]) -> int:
    """
    The non-zero incarnation of the file or device C{st} describes, on
    the boot C{boot} (None: this process only).
    """
    if stat.S_ISBLK(st.st_mode):
        ident = b"blk" + _DEVICE.pack(st.st_rdev)
    else:
        ident = b"reg" + _FILE.pack(st.st_dev, st.st_ino)
    digest = hashlib.sha256(b"xdiskd incarnation\0"
                            + (boot if boot is not None else _PROCESS)
                            + b"\0" + ident).digest()
    return _U64.unpack_from(digest)[0] or 1


def incarnationOf(store: Any, boot: Optional[bytes] = None) -> int:
    """
    The incarnation an export of C{store} states: the store's own
    C{incarnation} attribute if it has one (a store that knows better
    than the page cache rule), else L{pageCacheIncarnation} of its path
    on this boot.
    """
    stated = getattr(store, "incarnation", None)
    if stated is not None:
        return int(stated) & 0xFFFFFFFFFFFFFFFF or 1
    if boot is None:
        boot = bootId()
    path = getattr(store, "path", None)
    try:
        st = os.stat(path)  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        # No path to name: nothing ties it to a page cache we know.
        return _U64.unpack_from(hashlib.sha256(
            _PROCESS + repr(id(store)).encode()).digest())[0] or 1
    return pageCacheIncarnation(st, boot)
