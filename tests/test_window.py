"""
Tests for L{xdiskd.xa.window}: the unit's window of acknowledged,
unflushed writes and their replay after a lost open, against the real
export side over in-memory links (iosim, Clock, no sleeps) with a store
that loses power (L{tests.powerloss.VolatileStore}).
"""

import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from xdiskd.dmsg import constants as C
from xdiskd.errors import UnflushedLostError
from xdiskd.export.server import Exporter
from xdiskd.export.spec import ExportSpec
from xdiskd.node import Node
from xdiskd.xa.window import ENTRY_COST, UnflushedWindow
from tests.powerloss import VolatileStore
from tests.stack import (
    Wire, exporterNode, importerNode, makeImage, outcome, readFile)
from tests.stack import run as pump

SIZE = 4 << 20
SERIAL = "serno/W"


class Host:
    """An exporter host over one file; its power can be cut."""

    def __init__(self, case, path, boot):
        spec = ExportSpec(SERIAL, path, False, 512, "host%d/w" % (boot,))
        self.store = VolatileStore(path, SIZE, boot)
        exporter = Exporter()
        exporter.add(spec, self.store)
        self.node = Node(exporter=exporter, hostname="host%d" % (boot,))
        case.addCleanup(self.store.close)


class Base(TestCase):
    window = 64 << 20
    mode = "replay"

    def setUp(self):
        self.path = makeImage(self, SIZE)
        self.imp, self.clock = importerNode(window=self.window,
                                            unflushed=self.mode)
        self.wires = []
        self.host = self.boot(1)
        self.unit = self.imp.importer.lookup("xa0")
        self.wait(self.unit.open())
        self.A = os.urandom(1 << 20)
        self.B = os.urandom(1 << 20)

    def boot(self, n):
        host = Host(self, self.path, n)
        self.wire = Wire(host.node, self.imp)
        self.wires.append(self.wire)
        return host

    def wait(self, d):
        return pump(self.wires, d)

    def result(self, d):
        """Pump until C{d} fired; its failure, or None on success."""
        r = outcome(self.wires, d)
        return r if hasattr(r, "check") else None

    def powerLoss(self):
        """Cut the exporter host's power: unflushed writes are gone."""
        self.host.store.powerLoss()
        self.wire.kill()
        self.assertEqual(self.unit.state, "stalled")

    def writeAThenB(self):
        self.wait(self.unit.write(0, self.A))
        self.wait(self.unit.flush())
        self.assertEqual(self.unit.window.inUse, 0)
        self.wait(self.unit.write(0, self.B))
        self.assertEqual(bytes(self.wait(self.unit.read(0, 1 << 20))),
                         self.B)
        self.assertEqual(readFile(self.path)[:1 << 20], self.A)


class WindowTests(Base):
    """What the window keeps and releases."""

    def test_flushReleases(self):
        """An acknowledged write is kept, with its data, until a flush
        completes; the flush releases it."""
        self.wait(self.unit.write(4096, self.A))
        w = self.unit.window
        self.assertEqual(w.inUse, ENTRY_COST + len(self.A))
        [(seq, cmd, off, n, data)] = list(w.entries)
        self.assertEqual((cmd, off, n, bytes(data)),
                         (C.BLK_WRITE, 4096, len(self.A), self.A))
        self.wait(self.unit.flush())
        self.assertEqual((w.inUse, len(w.entries)), (0, 0))

    def test_trimKeptAsRange(self):
        """FREEBLKS (NBD TRIM and WRITE_ZEROES) is kept as a range with
        no data."""
        self.wait(self.unit.trim(0, 1 << 20))
        self.assertEqual(list(self.unit.window.entries)[0][1:],
                         (C.BLK_FREEBLKS, 0, 1 << 20, None))
        self.assertEqual(self.unit.window.inUse, ENTRY_COST)

    def test_fullWindowFlushesBeforeAcknowledging(self):
        """A write completing into a full window is held until the
        unit's own flush made room: the window never holds more than
        its limit, and every write completes."""
        self.unit.window.limit = 256 << 10
        data = os.urandom(2 << 20)
        ds = [self.unit.write(off, data[off:off + (64 << 10)])
              for off in range(0, 2 << 20, 64 << 10)]
        for d in ds:
            self.assertIsNone(self.wait(d))
        w = self.unit.window
        self.assertGreater(w.autoFlushes, 0)
        self.assertLessEqual(w.peak, (256 << 10) + (64 << 10) + ENTRY_COST)
        self.assertEqual(w.held, [])
        self.assertEqual(self.host.store.flushes, w.autoFlushes)
        self.assertEqual(bytes(self.wait(self.unit.read(0, 2 << 20))), data)

    def test_flushReleasesOnlyWhatCameBefore(self):
        """A write acknowledged while a flush is on the wire stays: the
        flush may have been done on the store before it arrived."""
        store = self.host.store
        flushes = []
        realFlush = store.flush

        def slowFlush():
            d = Deferred()
            flushes.append(d)
            return d.addCallback(lambda _: realFlush())
        store.flush = slowFlush
        self.wait(self.unit.write(0, self.A))
        f = self.unit.flush()
        self.wire.flush()
        self.assertEqual(len(flushes), 1)
        self.wait(self.unit.write(1 << 20, self.B))
        w = self.unit.window
        self.assertEqual(len(w.entries), 2)
        flushes[0].callback(None)
        self.assertIsNone(self.wait(f))
        [(seq, cmd, off, n, data)] = list(w.entries)
        self.assertEqual((off, bytes(data)), (1 << 20, self.B))
        self.assertEqual(w.inUse, ENTRY_COST + len(self.B))

    def slowStore(self, writeAt=None):
        """Make the store's flushes (and its write at C{writeAt}) wait
        for the test: returns the lists of their pending Deferreds."""
        store = self.host.store
        flushes, writes = [], []
        realFlush, realWrite = store.flush, store.write

        def slowFlush():
            d = Deferred()
            flushes.append(d)
            return d.addCallback(lambda _: realFlush())

        def slowWrite(offset, data):
            if offset != writeAt:
                return realWrite(offset, data)
            d = Deferred()
            writes.append(d)
            data = bytes(data)
            return d.addCallback(lambda _: realWrite(offset, data))
        store.flush = slowFlush
        store.write = slowWrite
        return flushes, writes

    def test_earlyFlushWritesFlowMeanwhile(self):
        """At half the window the unit sends its own FLUSH; writes that
        complete while it runs are reported at once (not held) as long
        as the window has room."""
        w = self.unit.window
        w.limit = 1 << 20
        flushes, _ = self.slowStore()
        piece = 64 << 10
        for i in range(8):                  # half the window
            self.wait(self.unit.write(i * piece, self.A[:piece]))
        self.wire.flush()
        self.assertEqual((len(flushes), w.autoFlushes), (1, 1))
        for i in range(8, 16):              # the other half
            self.assertIsNone(self.wait(self.unit.write(
                i * piece, self.B[:piece])))
        self.assertEqual(w.held, [])
        self.assertEqual(len(flushes), 1)   # one at a time
        flushes.pop().callback(None)
        self.wire.flush()
        # The first flush released the 8 writes it covered; the 8 that
        # came meanwhile fill half the window again, so the next flush
        # went out.
        self.assertEqual(len(w.entries), 8)
        self.assertEqual(w.inUse, 8 * (piece + ENTRY_COST))
        self.assertEqual((len(flushes), w.autoFlushes), (1, 2))
        flushes.pop().callback(None)
        self.wire.flush()
        self.assertEqual((w.inUse, len(w.entries)), (0, 0))

    def test_ownFlushDoesNotDrain(self):
        """The window's own FLUSH goes out with a write still in
        flight, and releases only what was acknowledged before it was
        sent: the write acknowledged after it stays in the window (and
        is replayed after a power loss)."""
        w = self.unit.window
        w.limit = 256 << 10
        piece = 128 << 10
        flushes, writes = self.slowStore(writeAt=3 << 20)
        slow = self.unit.write(3 << 20, self.B[:piece])
        self.wire.flush()
        self.assertEqual(len(writes), 1)
        self.assertIsNone(self.wait(self.unit.write(0, self.A[:piece])))
        self.wire.flush()
        self.assertEqual(len(flushes), 1)   # with the slow write pending
        self.assertNoResult(slow)
        writes.pop().callback(None)
        self.assertIsNone(self.wait(slow))
        flushes.pop().callback(None)
        self.wire.flush()
        self.assertEqual([(e[2], e[3]) for e in w.entries],
                         [(3 << 20, piece)])
        self.host.store.flush = self.host.store.__class__.flush.__get__(
            self.host.store)
        self.powerLoss()
        self.boot(2)
        self.assertIsNone(self.wait(self.unit.flush()))
        got = readFile(self.path)
        self.assertEqual(got[:piece], self.A[:piece])
        self.assertEqual(got[3 << 20:(3 << 20) + piece], self.B[:piece])
        self.assertEqual(w.replayedWrites, 1)

    def test_clientFlushStillWaits(self):
        """A caller's FLUSH is still a barrier: it reaches the store only
        once every write sent before it has finished."""
        flushes, writes = self.slowStore(writeAt=1 << 20)
        slow = self.unit.write(1 << 20, self.B)
        f = self.unit.flush()
        self.wire.flush()
        self.assertEqual((len(writes), len(flushes)), (1, 0))
        writes.pop().callback(None)
        self.wire.flush()
        self.assertEqual(len(flushes), 1)
        flushes.pop().callback(None)
        self.assertIsNone(self.wait(slow))
        self.assertIsNone(self.wait(f))
        self.assertEqual(self.unit.window.inUse, 0)
        self.assertEqual(readFile(self.path)[1 << 20:2 << 20], self.B)

    def test_failingFlushNeitherHangsNorGrows(self):
        """When the store cannot flush, writes into a full window still
        complete (each after one more flush attempt), the window stays
        bounded, and the client's own flush fails."""
        from twisted.internet.defer import fail
        from xdiskd.errors import MediaError
        self.unit.window.limit = 128 << 10
        self.host.store.flush = lambda: fail(MediaError("no sync"))
        for off in range(0, 1 << 20, 64 << 10):
            self.assertIsNone(self.wait(self.unit.write(
                off, self.A[off:off + (64 << 10)])))
        w = self.unit.window
        self.assertLessEqual(w.inUse, (128 << 10) + 2 * ENTRY_COST)
        self.assertGreater(w.autoFlushes, 1)
        self.assertIsNotNone(self.result(self.unit.flush()))

    def test_closeDropsWindow(self):
        self.wait(self.unit.write(0, self.A))
        self.wait(self.unit.close())
        self.assertEqual(self.unit.window.inUse, 0)

    def test_badMode(self):
        self.assertRaises(ValueError, UnflushedWindow, None, 1, "maybe")


class ReplayTests(Base):
    """Issue 16's scenarios, on one open held throughout."""

    def test_powerLossReplayed(self):
        """write A, flush, write B, power loss, new boot, flush: the flush
        succeeds and the store holds B."""
        self.writeAThenB()
        self.powerLoss()
        self.boot(2)
        self.assertIsNone(self.wait(self.unit.flush()))
        self.assertEqual(readFile(self.path)[:1 << 20], self.B)
        w = self.unit.window
        self.assertEqual((w.replays, w.replayedWrites, w.replayedBytes,
                          w.inUse), (1, 1, 1 << 20, 0))

    def test_readAfterCrashSeesB(self):
        """A read issued while the exporter is down is answered after the
        replay: it sees B."""
        self.writeAThenB()
        self.powerLoss()
        d = self.unit.read(0, 1 << 20)
        self.boot(2)
        self.assertEqual(bytes(self.wait(d)), self.B)

    def test_flushInFlightReissuedAfterReplay(self):
        """A flush on the wire when the power went is re-issued after the
        replay and succeeds once B is on the store."""
        self.writeAThenB()
        d = self.unit.flush()
        self.assertEqual([c.cmd for c in self.unit.inflight.values()],
                         [C.BLK_FLUSH])
        self.powerLoss()
        self.assertEqual([c.cmd for c in self.unit.queue], [C.BLK_FLUSH])
        self.boot(2)
        self.assertIsNone(self.wait(d))
        self.assertEqual(readFile(self.path)[:1 << 20], self.B)

    def test_replayInOrder(self):
        """Overlapping writes are replayed in their original order, and
        trims as trims."""
        self.wait(self.unit.write(0, self.A))
        self.wait(self.unit.trim(0, 4096))
        self.wait(self.unit.write(1 << 20, self.A))
        self.wait(self.unit.write(1 << 20, self.B))
        self.powerLoss()
        self.boot(2)
        self.wait(self.unit.flush())
        got = readFile(self.path)
        self.assertEqual(got[:1 << 20], bytes(4096) + self.A[4096:])
        self.assertEqual(got[1 << 20:2 << 20], self.B)

    def test_sameIncarnationNothingReplayed(self):
        """The exporter process alone restarted (same page cache, same
        incarnation): nothing is replayed and the window is kept."""
        path = makeImage(self, SIZE)
        node = exporterNode(self, [("serno/P", path, False)])
        wire = Wire(node, self.imp)
        self.wires.append(wire)
        unit = self.imp.importer.lookup("serno/P")
        self.wait(unit.open())
        self.wait(unit.write(0, self.B))
        wire.kill()
        self.assertEqual(unit.state, "stalled")
        # The same file on the same boot: a restarted exporter.
        self.wires.append(Wire(exporterNode(
            self, [("serno/P", path, False)]), self.imp))
        self.wait(unit.flush())
        self.assertEqual(unit.window.replays, 0)
        self.assertEqual(readFile(path)[:1 << 20], self.B)

    def test_noIncarnationAlwaysReplayed(self):
        """A path stating no incarnation (DragonFly) is always replayed:
        here the exporter lost nothing (its link alone broke), and the
        window is replayed all the same."""
        self.wire.kill()
        host = Host(self, self.path, 5)
        for export in host.node.exporter.exports.values():
            export.incarnation = 0
        self.wires.append(Wire(host.node, self.imp))
        self.wait(self.unit.write(0, self.B))
        self.wires[-1].kill()
        self.wires.append(Wire(host.node, self.imp))
        self.wait(self.unit.flush())
        self.assertEqual(self.unit.window.replays, 1)
        self.assertEqual(readFile(self.path)[:1 << 20], self.B)

    def test_failoverToSecondHead(self):
        """Two heads of one shared disk: the open's head loses power, the
        other takes over, the replay puts B on the disk."""
        self.writeAThenB()
        second = Host(self, self.path, 7)
        self.wires.append(Wire(second.node, self.imp))
        self.assertEqual(len(self.unit.paths), 2)
        self.host.store.powerLoss()
        self.wire.kill()
        self.assertIsNone(self.wait(self.unit.flush()))
        self.assertEqual(readFile(self.path)[:1 << 20], self.B)
        self.assertEqual(self.unit.window.replays, 1)

    def test_lostDuringReplay(self):
        """The open carrying a replay is lost too: the next open replays
        the whole window again."""
        self.writeAThenB()
        self.powerLoss()
        host = self.boot(2)
        # The replay's writes are on the wire; cut before they land.
        host.store.powerLoss()
        self.wire.kill()
        self.assertEqual(self.unit.window.snapshot()["replaying"], False)
        self.assertEqual(self.unit.queue, type(self.unit.queue)())
        self.boot(3)
        self.assertIsNone(self.wait(self.unit.flush()))
        self.assertEqual(readFile(self.path)[:1 << 20], self.B)
        self.assertEqual(self.unit.window.replays, 1)
        self.assertEqual(self.unit.requests, {})


class FailModeTests(Base):
    mode = "fail"

    def test_flushFailsWithEIO(self):
        """--unflushed fail: the next flush fails (EIO), the store holds
        A; the flush after that succeeds."""
        self.writeAThenB()
        self.powerLoss()
        self.boot(2)
        f = self.result(self.unit.flush())
        self.assertIsNotNone(f)
        f.trap(UnflushedLostError)
        self.assertEqual(readFile(self.path)[:1 << 20], self.A)
        self.assertIsNone(self.result(self.unit.flush()))
        self.assertEqual(self.unit.window.lostWindows, 1)

    def test_queuedFlushFails(self):
        """A flush in flight at the loss is the one that fails."""
        self.writeAThenB()
        d = self.unit.flush()
        self.powerLoss()
        self.boot(2)
        f = self.result(d)
        self.assertIsNotNone(f)
        f.trap(UnflushedLostError)
        self.assertIsNone(self.result(self.unit.flush()))


class HeldWritesTests(Base):
    window = 0

    def test_heldWritesReplayedOrFailed(self):
        """With no room at all, each write is held until a flush; held
        writes lost with the exporter are replayed too."""
        self.host.store.flush = Deferred    # the power goes first
        d = self.unit.write(0, self.B)
        self.wire.flush()
        self.assertEqual(len(self.unit.window.held), 1)
        self.assertNoResult(d)
        self.host.store.powerLoss()
        self.wire.kill()
        self.boot(2)
        self.assertIsNone(self.wait(d))
        self.assertIsNone(self.wait(self.unit.flush()))
        self.assertEqual(readFile(self.path)[:1 << 20], self.B)


class OptionTests(TestCase):
    def test_options(self):
        """--unflushed-window takes a size, --unflushed replay or fail;
        the importer's units get them."""
        from twisted.python.usage import UsageError
        from tests.daemons import parseOptions
        o = parseOptions()
        self.assertEqual((o["unflushed-window"], o["unflushed"]),
                         (64 << 20, "replay"))
        o = parseOptions("--unflushed-window", "8M", "--unflushed", "fail")
        self.assertEqual((o["unflushed-window"], o["unflushed"]),
                         (8 << 20, "fail"))
        for bad in (("--unflushed", "maybe"),
                    ("--unflushed-window", "lots")):
            self.assertRaises(UsageError, parseOptions, *bad)
        imp, clock = importerNode(window=8 << 20, unflushed="fail")
        path = makeImage(self, SIZE)
        self.wires = [Wire(exporterNode(self, [("serno/O", path, False)]),
                           imp)]
        w = imp.importer.lookup("xa0").window
        self.assertEqual((w.limit, w.mode), (8 << 20, "fail"))


class BudgetTests(TestCase):
    """--unflushed-memory: what all units' windows hold together."""

    budget = 4 << 20
    chunk = 64 << 10

    def setUp(self):
        self.imp, self.clock = importerNode(window=64 << 20,
                                            windowMemory=self.budget)
        self.wires = {}
        self.units = {}
        for serial in ("serno/BA", "serno/BB"):
            path = makeImage(self, 16 << 20)
            node = exporterNode(self, [(serial, path, False)])
            self.wires[serial] = Wire(node, self.imp)
            unit = self.units[serial] = self.imp.importer.lookup(serial)
            pump(list(self.wires.values()), unit.open())

    def wait(self, d):
        return pump(list(self.wires.values()), d)

    def writeMany(self, unit, total, base=0):
        data = os.urandom(self.chunk)
        return [unit.write(base + off, data)
                for off in range(0, total, self.chunk)]

    def test_budgetBoundsAllWindows(self):
        """
        Two units written 8 MiB each without a flush, windows of 64 MiB
        and 4 MiB for both together: every write completes, the windows
        flushed on their own long before half of their 64 MiB, and
        together they never held much over the budget (each may run one
        write past it before it holds).
        """
        budget = self.imp.importer.windowBudget
        a, b = self.units.values()
        ds = self.writeMany(a, 8 << 20) + self.writeMany(b, 8 << 20)
        for d in ds:
            self.assertIsNone(self.wait(d))
        slack = 2 * (self.chunk + ENTRY_COST)
        self.assertLessEqual(budget.peak, self.budget + slack)
        self.assertGreater(budget.peak, self.budget // 2)
        self.assertGreater(a.window.autoFlushes, 0)
        self.assertGreater(b.window.autoFlushes, 0)
        self.assertLess(max(a.window.peak, b.window.peak), 8 << 20)

    def test_stalledUnitDoesNotStopOthers(self):
        """
        A unit whose path is gone keeps 5 MiB it cannot flush, more than
        the 4 MiB for all units; another
        unit keeps writing: its window is never held below FLOOR for
        the other's sake, so it flushes on its own and finishes.
        """
        from xdiskd.xa.window import FLOOR
        budget = self.imp.importer.windowBudget
        a, b = self.units["serno/BA"], self.units["serno/BB"]
        budget.limit = 0            # B keeps all 5 MiB (no flush yet)
        for d in self.writeMany(b, 5 << 20):
            self.assertIsNone(self.wait(d))
        self.wires["serno/BB"].kill()
        budget.limit = self.budget
        self.assertEqual(b.state, "stalled")
        kept = b.window.inUse
        self.assertGreaterEqual(kept, 5 << 20)
        # Below FLOOR nothing of A's is held back for B's sake.
        for d in self.writeMany(a, 512 << 10):
            self.assertIsNone(self.wait(d))
        self.assertEqual(a.window._heldCount, 0)
        ds = self.writeMany(a, 8 << 20, base=512 << 10)
        for d in ds:
            self.assertIsNone(self.wait(d))
        self.assertEqual(b.window.inUse, kept)
        self.assertLessEqual(a.window.peak,
                             FLOOR + self.chunk + ENTRY_COST)
        self.assertGreater(a.window.autoFlushes, 0)
        self.assertLessEqual(budget.peak, kept + FLOOR + self.chunk
                             + ENTRY_COST)

    def test_closeReturnsItsShare(self):
        """
        The last close of a unit gives its window's bytes back to the
        budget (nothing is kept for a later open), so closed units never
        use up the daemon's share.
        """
        budget = self.imp.importer.windowBudget
        a, b = self.units["serno/BA"], self.units["serno/BB"]
        for d in self.writeMany(a, 1 << 20) + self.writeMany(b, 1 << 20):
            self.assertIsNone(self.wait(d))
        self.assertEqual(budget.used, a.window.inUse + b.window.inUse)
        self.assertGreater(a.window.inUse, 0)
        self.wait(a.close())
        self.assertEqual(budget.used, b.window.inUse)
        self.wait(b.close())
        self.assertEqual(budget.used, 0)

    def test_noBudget(self):
        """0: no daemon-wide bound; each window only by its own limit."""
        self.imp.importer.windowBudget.limit = 0
        a = self.units["serno/BA"]
        for d in self.writeMany(a, 8 << 20):
            self.assertIsNone(self.wait(d))
        self.assertEqual(a.window.autoFlushes, 0)
        self.assertGreaterEqual(a.window.inUse, 8 << 20)
