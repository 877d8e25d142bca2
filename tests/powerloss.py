#!/usr/bin/env python3
"""
A store that loses power, for tests only (never a user option).

L{VolatileStore} keeps every write since the last flush in an overlay in
its own memory, as a disk cache that dies with the power would; only a
flush (C{fdatasync} in the real store) puts them on the backing file.
Reads see the overlay over the file, so two stores over one file behave
like two heads of one shared disk: each sees what the other flushed, not
what it merely acknowledged.

Run as a script it is an exporter host whose power can be cut:

    python tests/powerloss.py --boot FILE --log LOG -- XDISKD-OPTIONS...

runs the real xdiskd daemon (makeService) with every export's store
replaced by a L{VolatileStore}, whose incarnation comes from the "boot id"
in FILE.  SIGKILL of that process is the power loss (the overlay lives
in it); write a new boot id to FILE before restarting it to present a
fresh boot, as a rebooted host would.
"""

import argparse
import hashlib
import os
import struct
import sys

from twisted.internet.defer import fail, succeed

SECTOR = 512
_ZERO = bytes(SECTOR)


class VolatileStore:
    """
    An L{xdiskd.interfaces.IBackingStore} over C{path} whose writes since
    the last flush live in memory (see the module docstring).

    @ivar incarnation: what the exporter states (this "boot").
    """

    readOnly = False

    def __init__(self, path, size, incarnation):
        self.path = path
        self.size = size
        self.incarnation = incarnation
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.overlay = {}          # sector number -> SECTOR bytes
        self.dead = False
        self.flushes = 0

    def powerLoss(self):
        """Cut the power: the overlay is gone, nothing answers any more."""
        self.overlay = {}
        self.dead = True

    def _check(self):
        if self.dead:
            from xdiskd.errors import MediaError
            return fail(MediaError("power lost"))
        return None

    def read(self, offset, length, nowait=True):
        dead = self._check()
        if dead is not None:
            return dead
        buf = bytearray(os.pread(self._fd, length, offset).ljust(
            length, b"\0"))
        if self.overlay:
            first, last = offset // SECTOR, (offset + length - 1) // SECTOR
            for s in range(first, last + 1):
                data = self.overlay.get(s)
                if data is not None:
                    at = s * SECTOR - offset
                    lo, hi = max(at, 0), min(at + SECTOR, length)
                    buf[lo:hi] = data[lo - at:hi - at]
        return succeed(buf)

    def write(self, offset, data):
        dead = self._check()
        if dead is not None:
            return dead
        view = memoryview(data)
        if offset % SECTOR or len(view) % SECTOR:
            raise ValueError("unaligned test write")
        base = offset // SECTOR
        for i in range(len(view) // SECTOR):
            self.overlay[base + i] = bytes(view[i * SECTOR:(i + 1) * SECTOR])
        return succeed(None)

    def discard(self, offset, length):
        dead = self._check()
        if dead is not None:
            return dead
        for s in range(offset // SECTOR, (offset + length) // SECTOR):
            self.overlay[s] = _ZERO
        return succeed(None)

    def flush(self):
        dead = self._check()
        if dead is not None:
            return dead
        overlay, self.overlay = self.overlay, {}
        run = []
        start = None
        for s in sorted(overlay):
            if start is not None and s == start + len(run):
                run.append(overlay[s])
                continue
            if run:
                os.pwrite(self._fd, b"".join(run), start * SECTOR)
            start, run = s, [overlay[s]]
        if run:
            os.pwrite(self._fd, b"".join(run), start * SECTOR)
        os.fdatasync(self._fd)
        self.flushes += 1
        return succeed(None)

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        return succeed(None)


def bootIncarnation(boot, path):
    """The incarnation of C{path} on the boot named C{boot} (bytes)."""
    digest = hashlib.sha256(b"test boot\0" + boot + b"\0" +
                            path.encode()).digest()
    return struct.unpack_from("<Q", digest)[0] or 1


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--boot", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("xdiskd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    args = a.xdiskd[1:] if a.xdiskd[:1] == ["--"] else a.xdiskd
    with open(a.boot, "rb") as f:
        boot = f.read().strip()

    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from xdiskd.options import Options
    from xdiskd.service import makeService

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(open(a.log, "a"))], redirectStandardIO=False)
    options = Options()
    options.parseOptions(args)
    top = makeService(options, reactor)
    for export in top.node.exporter.exports.values():
        real = export.store
        export.store = VolatileStore(real.path, real.size,
                                     bootIncarnation(boot, real.path))
        export.incarnation = export.store.incarnation
        real.close()
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))
