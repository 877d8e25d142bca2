"""
Tests for L{xdiskd.export.local}: a node's own exports served to a front
end in the same process, straight from the store; and (with real NBD
clients) C{--nbd-local}.
"""

import hashlib
import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from xdiskd.errors import (
    NotOpenError, OutOfRangeError, ReadOnlyError, UnitGoneError)
from xdiskd.export.local import LocalDevice, LocalDevices, Registries
from xdiskd.export.server import Exporter
from xdiskd.export.spec import ExportSpec
from xdiskd.export.store import makeStorePool, openStore
from xdiskd.interfaces import (
    IBlockDevice, IBlockDeviceRegistry, ICallbackBlockDevice)
from tests.daemons import (
    Daemon, nbdURI, parseOptions, requireTools, run, waitNBD)

MiB = 1 << 20


def coldCache(case):
    """From now on every RWF_NOWAIT read finds the page cache cold;
    returns the list of those attempts."""
    real = os.preadv
    asked = []

    def preadv(fd, bufs, offset, flags=0):
        if flags:
            asked.append(offset)
            raise BlockingIOError(11, "would block")
        return real(fd, bufs, offset)
    case.patch(os, "preadv", preadv)
    return asked


class LocalDeviceTests(TestCase):
    """Against a pool-mode store (page-cache reads inline, the rest on
    threads), as the daemon runs it."""

    def setUp(self):
        self.pool = makeStorePool(2)
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.content = bytearray(os.urandom(4 * MiB))
        self.path = self.mktemp()
        with open(self.path, "wb") as f:
            f.write(self.content)
        self.exporter = Exporter()
        self.add("serno/L")
        self.registry = LocalDevices(self.exporter)
        self.dev = self.registry.lookup("serno/L")

    def add(self, serial, readOnly=False, path=None):
        spec = ExportSpec(serial, path or self.path, readOnly)
        store = openStore(spec, reactor, self.pool)
        self.exporter.add(spec, store)
        self.addCleanup(lambda: store.close())
        return store

    def test_interfaces(self):
        verifyObject(IBlockDeviceRegistry, self.registry)
        verifyObject(IBlockDevice, self.dev)
        self.assertEqual((self.dev.name, self.dev.size, self.dev.sectorSize,
                          self.dev.readOnly), ("serno/L", 4 * MiB, 512,
                                               False))
        self.assertIsNone(self.registry.lookup("xa0"))
        self.assertEqual(self.registry.devices(), [self.dev])

    @defer.inlineCallbacks
    def test_readWriteTrimFlush(self):
        dev = self.dev
        yield dev.open()
        data = os.urandom(300000)
        yield dev.write(12345, data)
        self.content[12345:312345] = data
        got = yield dev.read(12345, 300000)
        self.assertEqual(bytes(got), data)
        parts = yield dev.readv(0, 4 * MiB)
        self.assertEqual(b"".join(bytes(p) for p in parts),
                         bytes(self.content))
        yield dev.trim(MiB, 65536)
        got = yield dev.read(MiB, 65536)
        self.assertEqual(bytes(got), bytes(65536))
        yield dev.flush()
        yield dev.close()
        self.failureResultOf(dev.close(), NotOpenError)

    @defer.inlineCallbacks
    def test_cacheMissGoesToPool(self):
        """Where the page cache cannot answer, read and readv go to the
        store's threads, counted in flight, having asked the page cache
        once each."""
        asked = coldCache(self)
        export = self.exporter.exports["serno/L"]
        d = self.dev.read(512, 1000)
        self.assertEqual((export.inflight, len(asked)), (1, 1))
        got = yield d
        self.assertEqual(bytes(got), bytes(self.content[512:1512]))
        parts = yield self.dev.readv(0, 8192)
        self.assertIsInstance(parts, list)
        self.assertEqual(b"".join(bytes(p) for p in parts),
                         bytes(self.content[:8192]))
        self.assertEqual((export.inflight, len(asked)), (0, 2))

    def test_outOfRangeAndReadOnly(self):
        self.failureResultOf(self.dev.read(4 * MiB - 10, 20),
                             OutOfRangeError)
        self.failureResultOf(self.dev.write(-1, b"x"), OutOfRangeError)
        self.add("serno/RO", readOnly=True)
        ro = self.registry.lookup("serno/RO")
        self.assertTrue(ro.readOnly)
        self.failureResultOf(ro.write(0, b"x"), ReadOnlyError)
        self.failureResultOf(ro.trim(0, 512), ReadOnlyError)

    @defer.inlineCallbacks
    def test_withdrawWaitsThenRefuses(self):
        """A withdrawal waits for local I/O in flight; afterwards the
        device refuses everything and the registry forgets it."""
        dev = self.dev
        yield dev.open()
        # Not page-aligned: it goes to the pool, not inline.
        w = dev.write(512, os.urandom(MiB))
        self.assertEqual(self.exporter.exports["serno/L"].inflight, 1)
        gone = self.exporter.withdraw("serno/L")
        yield w
        yield gone
        self.failureResultOf(dev.read(0, 512), UnitGoneError)
        self.failureResultOf(dev.open(), UnitGoneError)
        self.assertIsNone(self.registry.lookup("serno/L"))


    # -- callbacks (ICallbackBlockDevice) ----------------------------------

    def started(self, method, *args):
        """Start a callback I/O; return its handle and a Deferred firing
        with (result, failure) from the callback."""
        fired = defer.Deferred()
        handle = method(*args, lambda r, f: fired.callback((r, f)))
        return handle, fired

    def test_callbackInterface(self):
        verifyObject(ICallbackBlockDevice, self.dev)

    def test_startReadCachedAtOnce(self):
        """A page-cache hit calls back before startRead returns."""
        handle, fired = self.started(self.dev.startRead, 4096, 8192)
        self.assertIsNone(handle)
        parts, failure = self.successResultOf(fired)
        self.assertIsNone(failure)
        self.assertEqual(b"".join(bytes(p) for p in parts),
                         bytes(self.content[4096:12288]))

    @defer.inlineCallbacks
    def test_startReadMissGoesToPool(self):
        """A miss asks the page cache once, then the pool; the handle is
        counted in flight until it calls back."""
        asked = coldCache(self)
        export = self.exporter.exports["serno/L"]
        handle, fired = self.started(self.dev.startRead, 512, 1000)
        self.assertFalse(handle.finished)
        self.assertEqual((export.inflight, len(asked)), (1, 1))
        parts, failure = yield fired
        self.assertTrue(handle.finished)
        self.assertIsNone(failure)
        self.assertEqual(b"".join(bytes(p) for p in parts),
                         bytes(self.content[512:1512]))
        self.assertEqual((export.inflight, len(asked)), (0, 1))

    @defer.inlineCallbacks
    def test_startWrite(self):
        data = os.urandom(MiB + 512)
        handle, fired = self.started(self.dev.startWrite, 512, data)
        result, failure = yield fired
        self.assertEqual((result, failure), (None, None))
        got = yield self.dev.read(512, len(data))
        self.assertEqual(bytes(got), data)

    def test_startRefused(self):
        """Refusals call back at once with the failure."""
        self.add("serno/RO", readOnly=True)
        ro = self.registry.lookup("serno/RO")
        for method, args, error in (
                (self.dev.startRead, (4 * MiB - 10, 20), OutOfRangeError),
                (self.dev.startWrite, (-1, b"x"), OutOfRangeError),
                (ro.startWrite, (0, b"x" * 512), ReadOnlyError)):
            handle, fired = self.started(method, *args)
            self.assertIsNone(handle)
            result, failure = self.successResultOf(fired)
            self.assertIsNone(result)
            failure.trap(error)
        handle, fired = self.started(self.dev.startRead, 0, 0)
        self.assertEqual(self.successResultOf(fired), ([], None))

    def test_startCancel(self):
        """Cancelling a pool read calls back with CancelledError."""
        coldCache(self)
        handle, fired = self.started(self.dev.startRead, 0, 4096)
        handle.cancel()
        result, failure = self.successResultOf(fired)
        failure.trap(defer.CancelledError)


class RegistriesTests(SynchronousTestCase):
    def test_firstWins(self):
        class R:
            def __init__(self, names):
                self.names = names

            def lookup(self, name):
                return (self, name) if name in self.names else None

            def devices(self):
                return list(self.names)
        a, b = R(["x", "y"]), R(["y", "z"])
        both = Registries(a, None, b)
        self.assertEqual(both.lookup("y"), (a, "y"))
        self.assertEqual(both.lookup("z"), (b, "z"))
        self.assertIsNone(both.lookup("w"))
        self.assertEqual(both.devices(), ["x", "y", "y", "z"])


class NBDLocalTests(SynchronousTestCase):
    """C{--no-import --nbd-local}: a plain local NBD server, checked with
    real clients."""

    def test_nbdcopyAndQemuIo(self):
        requireTools("nbdinfo", "nbdcopy", "qemu-io")
        d = Daemon(self, "local", [])
        img = os.path.join(d.dir, "disk.img")
        sock = os.path.join(d.dir, "nbd.sock")
        d.args += ["--no-import", "--image", img + "=64M",
                   "--export", "serno/LOCAL=" + img, "--nbd-local",
                   "--nbd", "unix:" + sock]
        d.start()
        self.assertEqual(waitNBD(sock, "serno/LOCAL"), 64 * MiB)
        uri = nbdURI(sock, "serno/LOCAL")
        src = os.path.join(d.dir, "src")
        back = os.path.join(d.dir, "back")
        with open(src, "wb") as f:
            f.write(os.urandom(32 * MiB))
        run(["nbdcopy", src, uri])
        run(["nbdcopy", uri, back])
        with open(src, "rb") as f:
            want = hashlib.sha256(f.read()).hexdigest()
        with open(back, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read(32 * MiB)).hexdigest(),
                             want)
        with open(img, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read(32 * MiB)).hexdigest(),
                             want)
        out = run(["qemu-io", "-f", "raw",
                   "-c", "write -P 0x5a 3 1000",
                   "-c", "read -P 0x5a 3 1000",
                   "-c", "discard 1M 64k",
                   "-c", "read -P 0 1M 64k", uri]).stdout.decode()
        self.assertNotIn("verification failed", out)
        listing = run(["nbdinfo", "--list",
                       "nbd+unix:///?socket=" + sock]).stdout.decode()
        self.assertIn('export="serno/LOCAL"', listing)


class OptionsTests(SynchronousTestCase):
    def parse(self, *args):
        return parseOptions(*args)

    def test_needsAnExport(self):
        from twisted.python.usage import UsageError
        self.assertRaises(UsageError, self.parse, "--nbd-local")

    def test_nbdByDefaultWithoutImport(self):
        """--no-import alone serves no NBD; with --nbd-local it does."""
        self.assertEqual(self.parse("--no-import", "--export",
                                    "s=/dev/null")["nbd"], [])
        o = self.parse("--no-import", "--nbd-local", "--export",
                       "s=/dev/null")
        self.assertEqual(len(o["nbd"]), 1)
