"""
Tests for what a unit does when its paths fail silently or not at all:
path choice (hold-down, slow paths), failover on a link its liveness
check declared dead, and the bounded stall (C{--stall-timeout}), over
in-memory links driven by a Clock.
"""

import os

from twisted.trial.unittest import TestCase

from xdiskd.dmsg.liveness import Liveness
from xdiskd.errors import NoPathError
from xdiskd.xa.paths import pathRank
from tests.stack import Wire, exporterNode, importerNode, makeImage, run

SIZE = 1 << 20
T = 5.0


class Base(TestCase):
    stallTimeout = 0.0

    def setUp(self):
        self.content = os.urandom(SIZE)
        self.path = makeImage(self, fill=self.content)
        self.exp = exporterNode(self, [("serno/A", self.path, False)])
        self.imp, self.clock = importerNode(stallTimeout=self.stallTimeout)
        self.wires = [self.wire()]

    def wire(self):
        w = Wire(self.exp, self.imp, self.clock, T)
        return w

    def unit(self):
        return self.imp.importer.lookup("xa0")

    def wait(self, d, wires=None):
        return run(self.wires if wires is None else wires, d)

    def openUnit(self):
        u = self.unit()
        self.wait(u.open())
        self.assertEqual(u.state, "open")
        return u

    def tick(self, seconds, wires=None, step=0.25):
        """Advance the clock, pumping C{wires} (default: all) as we go."""
        wires = self.wires if wires is None else wires
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            for w in wires:
                w.flush()


class SilentFailureTests(Base):
    def test_blackholedPathFailsOver(self):
        """
        The path in use stops delivering anything (nothing is pumped on
        it): within T + T/5 its link is declared dead and the reads that
        waited on it complete on the second path, with no error.
        """
        self.wires.append(self.wire())
        u = self.openUnit()
        first = u.openTxn.link
        dead = [w for w in self.wires if w.client is first][0]
        alive = [w for w in self.wires if w is not dead]
        ds = [u.read(i * 4096, 4096) for i in range(8)]
        done = []
        for d in ds:
            d.addBoth(done.append)
        self.tick(T, alive)
        self.assertEqual(done, [])
        self.assertTrue(first.connected)
        self.tick(T / 5 + 0.5, alive)
        self.assertIsNotNone(first.deadReason)
        # The abort reaches the socket; what was in the black hole is lost.
        dead.kill()
        for w in alive:
            w.flush()
        self.assertEqual(len(done), 8)
        for i, r in enumerate(done):
            self.assertEqual(bytes(r), self.content[i * 4096:(i + 1) * 4096])
        self.assertEqual(u.stats.errors, 0)
        self.assertEqual(u.stats.failovers, 1)
        self.assertIsNot(u.openTxn.link, first)

    def test_busyHealthyPathNotDeclaredDead(self):
        """Replies that keep coming keep a busy link alive, for minutes."""
        u = self.openUnit()
        for _ in range(120):
            d = u.read(0, 4096)
            self.tick(1.0)
            self.assertEqual(bytes(self.wait(d)), self.content[:4096])
        self.assertIsNone(self.wires[0].client.deadReason)
        self.assertEqual(u.stats.failovers, 0)

    def test_idleStandbyPathKnownDead(self):
        """
        A standby path that stops answering PINGs is closed, so the unit
        never fails over onto it.
        """
        self.wires.append(self.wire())
        u = self.openUnit()
        standby = [w for w in self.wires if w.client is not u.openTxn.link]
        inUse = [w for w in self.wires if w not in standby]
        self.tick(3.0)                       # PINGs answered on both
        self.assertTrue(standby[0].client.liveness.answersPings)
        self.tick(2 * T, inUse)              # standby black-holed
        self.assertIsNotNone(standby[0].client.deadReason)
        standby[0].kill()
        self.assertEqual(len(u.paths), 1)
        self.assertIsNone(u.openTxn.link.deadReason)


class PathChoiceTests(Base):
    def setUp(self):
        Base.setUp(self)
        self.wires.append(self.wire())
        self.a, self.b = (w.client for w in self.wires)

    def test_heldDownPathComesLast(self):
        """A redialled link in hold-down is used only if nothing else is."""
        self.a.heldUntil = self.clock.seconds() + 10
        u = self.openUnit()
        self.assertIs(u.openTxn.link, self.b)
        spans = list(u.spans)
        self.assertEqual([s.link for s in pathRank(spans,
                                                   self.clock.seconds())],
                         [self.b, self.a])
        self.assertEqual([s.link for s in pathRank(
            spans, self.clock.seconds() + 11)], [self.a, self.b])

    def test_heldDownPathUsedWhenAlone(self):
        self.a.heldUntil = self.clock.seconds() + 10
        self.wires[1].cut()
        u = self.openUnit()
        self.assertIs(u.openTxn.link, self.a)

    def test_farSlowerPathComesLast(self):
        """A path far slower than another (PING round trips) comes last."""
        self.a.liveness._rtts.append(0.080)
        self.b.liveness._rtts.append(0.0004)
        u = self.openUnit()
        self.assertIs(u.openTxn.link, self.b)

    def test_somewhatSlowerIsNotDemoted(self):
        """Within the factor or the margin, arrival order decides."""
        self.a.liveness._rtts.append(0.004)
        self.b.liveness._rtts.append(0.0004)
        u = self.openUnit()
        self.assertIs(u.openTxn.link, self.a)

    def test_unmeasuredPathNotDemoted(self):
        self.b.liveness._rtts.append(0.0004)
        self.assertIsInstance(self.a.liveness, Liveness)
        u = self.openUnit()
        self.assertIs(u.openTxn.link, self.a)


class FixedRTT:
    """A link's liveness as far as path choice looks: a round trip."""

    def __init__(self, rtt):
        self.rtt = rtt

    def pingAnswered(self):
        pass


class MoveTests(Base):
    def setUp(self):
        self.content = os.urandom(SIZE)
        self.path = makeImage(self, fill=self.content)
        self.exp = exporterNode(self, [("serno/A", self.path, False)])
        self.imp, self.clock = importerNode(pathCheck=2.0)
        # Links without liveness timers, with round trips set by the test.
        self.wires = [Wire(self.exp, self.imp), Wire(self.exp, self.imp)]
        self.a, self.b = (w.client for w in self.wires)
        self.a.liveness = FixedRTT(None)
        self.b.liveness = FixedRTT(None)

    def test_openMovesOffAPathThatBecameSlow(self):
        """
        The path in use becomes far slower than the other: the open
        moves, after the I/O on the wire finished and a FLUSH on the old
        open; requests that came meanwhile complete on the new path.
        """
        u = self.openUnit()
        self.assertIs(u.openTxn.link, self.a)
        self.wait(u.write(65536, b"\x11" * 4096))    # acknowledged, unflushed
        inflight = [u.read(i * 4096, 4096) for i in range(4)]
        self.a.liveness.rtt = 0.200
        self.b.liveness.rtt = 0.0005
        flushes = u.stats.ops["flush"]
        self.clock.advance(2.0)
        self.assertTrue(u._moving)
        later = u.write(0, b"\x5a" * 4096)
        for w in self.wires:
            w.flush()
        for i, d in enumerate(inflight):
            self.assertEqual(bytes(self.successResultOf(d)),
                             self.content[i * 4096:(i + 1) * 4096])
        self.successResultOf(later)
        self.assertIs(u.openTxn.link, self.b)
        self.assertEqual(u.state, "open")
        self.assertEqual(u.stats.moves, 1)
        self.assertEqual(u.stats.ops["flush"], flushes + 1)
        # The move's FLUSH covered the write made before it; only the one
        # made during the move (done on the new path) is unflushed.
        self.assertEqual(u.window.snapshot()["entries"], 1)
        self.assertEqual(u.stats.errors, 0)
        self.assertEqual(u.stats.failovers, 0)
        # The old open was closed: the exporter holds one open.
        [export] = self.exp.exporter.exports.values()
        self.assertEqual(len(export.opens), 1)

    def test_noMoveWithoutAMuchBetterPath(self):
        u = self.openUnit()
        self.a.liveness.rtt = 0.002
        self.b.liveness.rtt = 0.001
        self.clock.advance(10.0)
        self.assertIs(u.openTxn.link, self.a)
        self.assertEqual(u.stats.moves, 0)


class StallTimeoutTests(Base):
    stallTimeout = 10.0

    def test_failsFastThenRecovers(self):
        """
        No path for the stall timeout: queued I/O fails with EIO
        (NoPathError), then new I/O fails at once; a path returns and the
        same unit works again with no re-open by the client.
        """
        u = self.openUnit()
        self.wires[0].cut()
        self.assertEqual(u.state, "stalled")
        d = u.read(0, 4096)
        self.clock.advance(9.75)
        self.assertNoResult(d)
        self.assertFalse(u.failingFast)
        self.clock.advance(0.5)
        self.failureResultOf(d, NoPathError)
        self.assertTrue(u.failingFast)
        self.failureResultOf(u.write(0, b"x" * 512), NoPathError)
        self.failureResultOf(u.flush(), NoPathError)
        snap = u.snapshot()
        self.assertTrue(snap["failingFast"])
        self.assertGreaterEqual(snap["stalledFor"], 10.0)
        self.assertEqual(snap["stats"]["failFasts"], 1)
        # The path returns: the unit re-opens by itself.
        self.wires.append(self.wire())
        self.assertEqual(u.state, "open")
        self.assertFalse(u.failingFast)
        self.assertEqual(u.snapshot()["stalledFor"], 0)
        self.assertEqual(bytes(self.wait(u.read(0, 4096))),
                         self.content[:4096])

    def test_shortOutageOnlyPauses(self):
        u = self.openUnit()
        self.wires[0].cut()
        d = u.read(0, 4096)
        self.clock.advance(5)
        self.wires.append(self.wire())
        self.assertEqual(bytes(self.wait(d)), self.content[:4096])
        self.clock.advance(60)
        self.assertFalse(u.failingFast)
        self.assertEqual(u.stats.failFasts, 0)


class QueueForeverTests(Base):
    def test_defaultQueuesForever(self):
        """Without --stall-timeout a stalled unit waits, however long."""
        u = self.openUnit()
        self.wires[0].cut()
        d = u.read(0, 4096)
        self.clock.advance(7 * 86400)
        self.assertNoResult(d)
        self.wires.append(self.wire())
        self.assertEqual(bytes(self.wait(d)), self.content[:4096])
