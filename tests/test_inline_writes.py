"""
Tests for inline page-cache writes in pool mode: L{xdiskd.export.dirty}
(is there room?) and L{FileStore}'s choice between the calling thread and
the pool.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from xdiskd.export import store as storeModule
from xdiskd.export.dirty import DirtyGauge, backgroundLimit, parseMeminfo
from xdiskd.export.spec import ExportSpec
from xdiskd.export.store import FileStore, makeStorePool, openStore

KiB = 1 << 10
MiB = 1 << 20

MEMINFO = b"""MemTotal:       24000000 kB
MemFree:         4000000 kB
Active(file):    3000000 kB
Inactive(file):  3000000 kB
Dirty:             %d kB
Writeback:         %d kB
HugePages_Total:       0
"""


class GaugeTests(SynchronousTestCase):

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(os.path.join(self.dir, "vm"))
        self.now = 0.0
        self.setSysctl(10, 0)
        self.setMeminfo(0, 0)
        self.gauge = DirtyGauge(
            interval=0.1, fraction=0.5, clock=lambda: self.now,
            meminfo=os.path.join(self.dir, "meminfo"),
            sysctl=os.path.join(self.dir, "vm") + "/")

    def setMeminfo(self, dirtyKiB, writebackKiB):
        with open(os.path.join(self.dir, "meminfo"), "wb") as f:
            f.write(MEMINFO % (dirtyKiB, writebackKiB))

    def setSysctl(self, ratio, limitBytes):
        for name, value in (("dirty_background_ratio", ratio),
                            ("dirty_background_bytes", limitBytes)):
            with open(os.path.join(self.dir, "vm", name), "w") as f:
                f.write("%d\n" % (value,))

    def test_parse(self):
        mem = parseMeminfo(MEMINFO % (5, 6))
        self.assertEqual((mem["Dirty"], mem["Writeback"],
                          mem["HugePages_Total"]), (5 * KiB, 6 * KiB, 0))

    def test_backgroundLimit(self):
        """10% of free + file pages (10 GB here), or the bytes setting."""
        mem = parseMeminfo(MEMINFO % (0, 0))
        self.assertEqual(backgroundLimit(mem, 10, 0), 1000000 * KiB)
        self.assertEqual(backgroundLimit(mem, 10, 12345), 12345)
        self.assertIsNone(backgroundLimit({}, 10, 0))

    def test_roomyUnderHalfTheBackgroundLimit(self):
        # Limit 1000000 kB; half of it is the line.
        self.setMeminfo(300000, 199999)
        self.assertTrue(self.gauge.roomy())
        self.setMeminfo(300000, 200000)
        self.now += 0.1
        self.assertFalse(self.gauge.roomy())

    def test_defaultUpToTheBackgroundLimit(self):
        """By default the whole background limit counts as room: the
        kernel throttles writers only halfway from it to the hard one."""
        gauge = DirtyGauge(clock=lambda: self.now,
                           meminfo=self.gauge._meminfo,
                           sysctl=self.gauge._sysctl)
        self.setMeminfo(999999, 0)
        self.assertTrue(gauge.roomy())
        self.setMeminfo(1000000, 0)
        self.now += 1
        self.assertFalse(gauge.roomy())

    def test_readAtMostEveryInterval(self):
        self.assertTrue(self.gauge.roomy())
        self.setMeminfo(900000, 0)
        self.now += 0.05
        self.assertTrue(self.gauge.roomy())      # the cached verdict
        self.now += 0.05
        self.assertFalse(self.gauge.roomy())

    def test_bytesSetting(self):
        self.setSysctl(10, 100 * MiB)
        self.setMeminfo(60 * KiB, 0)             # 60 MiB of 100
        self.assertFalse(self.gauge.roomy())

    def test_unreadableMeansNo(self):
        os.remove(os.path.join(self.dir, "meminfo"))
        self.assertFalse(self.gauge.roomy())


class Gauge:
    def __init__(self, roomy):
        self.answer = roomy

    def roomy(self):
        return self.answer


class InlineWriteTests(TestCase):
    """Pool mode, RWF_NOWAIT writes refused (as by ext4 and tmpfs)."""

    def setUp(self):
        self.pool = makeStorePool(2)
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.path = self.mktemp()
        with open(self.path, "wb") as f:
            f.write(bytes(4 * MiB))

    def store(self, roomy=True, **kw):
        spec = ExportSpec("s", self.path)
        s = openStore(spec, reactor, self.pool, **kw)
        s._gauge = Gauge(roomy)
        s._nowaitWrite = False
        self.addCleanup(s.close)
        return s

    def content(self, offset, length):
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def test_alignedSmallWriteInline(self):
        s = self.store()
        data = os.urandom(8 * KiB)
        d = s.write(64 * KiB, data)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual((s.inFlight, s.inlineWrites), (0, 1))
        self.assertEqual(self.content(64 * KiB, 8 * KiB), data)

    @defer.inlineCallbacks
    def test_whatGoesToThePool(self):
        """Unaligned, too large, no room, or turned off: the pool."""
        cases = [(self.store(), 512, 4 * KiB),
                 (self.store(), 0, 1000),
                 (self.store(), 0, 2 * MiB),
                 (self.store(roomy=False), 0, 4 * KiB),
                 (self.store(inlineWriteMax=0), 0, 4 * KiB)]
        for s, offset, length in cases:
            data = os.urandom(length)
            d = s.write(offset, data)
            self.assertEqual((s.inFlight, s.inlineWrites), (1, 0),
                             (offset, length))
            yield d
            self.assertEqual(self.content(offset, length), data)

    def slowWrites(self, sleeps):
        """Every inline write takes 0.5 s; it slept (a voluntary context
        switch) if C{sleeps}, else it was only preempted."""
        clock = [100.0]
        switches = [7]
        real = storeModule._writeFull

        def slowWrite(fd, offset, view):
            real(fd, offset, view)
            clock[0] += 0.5
            if sleeps:
                switches[0] += 1
        self.patch(storeModule, "_writeFull", slowWrite)
        self.patch(storeModule.time, "monotonic", lambda: clock[0])
        self.patch(storeModule, "_voluntarySwitches", lambda: switches[0])
        return clock

    def test_voluntarySwitchesCounted(self):
        n = storeModule._voluntarySwitches()
        self.assertIsInstance(n, int)

    def test_preemptedSlowWriteStaysInline(self):
        """Slow only because the thread was preempted: no back-off."""
        s = self.store()
        self.slowWrites(sleeps=False)
        for _ in range(3):
            self.successResultOf(s.write(0, os.urandom(4 * KiB)))
        self.assertEqual((s.inlineWrites, s.slowInlineWrites), (3, 0))

    @defer.inlineCallbacks
    def test_slowInlineWriteBacksOff(self):
        """An inline write that slept and took too long sends the next
        writes to the pool for INLINE_BACKOFF seconds."""
        s = self.store()
        clock = self.slowWrites(sleeps=True)
        self.successResultOf(s.write(0, os.urandom(4 * KiB)))
        self.assertEqual((s.inlineWrites, s.slowInlineWrites), (1, 1))
        d = s.write(0, os.urandom(4 * KiB))
        self.assertEqual(s.inFlight, 1)
        yield d
        clock[0] += storeModule.INLINE_BACKOFF
        self.successResultOf(s.write(0, os.urandom(4 * KiB)))
        self.assertEqual(s.inlineWrites, 2)

    def test_inlineErrorIsMediaError(self):
        from xdiskd.errors import MediaError
        s = self.store()

        def fail(fd, offset, view):
            raise OSError(28, "No space left on device")
        self.patch(storeModule, "_writeFull", fail)
        f = self.failureResultOf(s.write(0, bytes(4 * KiB)), MediaError)
        self.assertIn("No space left", str(f.value))

    def test_inlineModeStoreUnaffected(self):
        """A store without a pool (inline mode) writes inline anyway and
        counts nothing here."""
        spec = ExportSpec("s", self.path)
        s = openStore(spec, reactor, None)
        self.addCleanup(s.close)
        self.successResultOf(s.write(0, bytes(4 * KiB)))
        self.assertEqual(s.inlineWrites, 0)
        self.assertIsInstance(s, FileStore)
