"""
Tests for L{xdiskd.nbd.budget}: the daemon-wide NBD memory budget, its
rules on their own, through NBD connections on string transports, and on
a real importer daemon with 16 clients that never read (issue 18 item 4).
"""

import os
import socket
import struct
import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.nbd import wire
from xdiskd.nbd.budget import MemoryBudget
from xdiskd.nbd.server import NBDServerFactory
from tests.daemons import (
    Daemon, nbdURI, parseOptions, requireTools, run, waitNBD)
from tests.test_nbd_server import MemoryDevice, Registry

MiB = 1 << 20


class Conn:
    """What the budget sees of a connection."""

    def __init__(self, budget=None):
        self.paused = False
        self.budgetHeld = 0
        if budget is not None:
            budget.add(self)

    def budgetPaused(self):
        self.paused = True

    def budgetResumed(self):
        self.paused = False


class BudgetTests(SynchronousTestCase):
    def test_pausesLargestHolders(self):
        """
        Past three quarters of the budget, the connections holding most
        are paused, largest first, until those still reading hold no
        more than the room left under the budget.
        """
        b = MemoryBudget(80 * MiB)
        big, mid, small = Conn(b), Conn(b), Conn(b)
        b.change(big, 40 * MiB)
        b.change(mid, 15 * MiB)
        b.change(small, 5 * MiB)
        self.assertEqual((big.paused, mid.paused, small.paused),
                         (False, False, False))
        b.change(small, 1 * MiB)
        self.assertEqual((big.paused, mid.paused, small.paused),
                         (True, True, False))
        self.assertEqual((b.held, b.paused, b.pauses), (61 * MiB, 2, 2))
        # The reading one goes on while it holds less than the room left
        # (80 - 67 = 13 MiB > its 12), then it pauses too.
        b.change(small, 6 * MiB)
        self.assertFalse(small.paused)
        b.change(small, 1 * MiB)
        self.assertTrue(small.paused)
        self.assertEqual(b.peak, 68 * MiB)

    def test_drainedConnectionResumes(self):
        """
        A paused connection that took all its replies reads again even
        while others keep the sum over the budget; a non-reader stays.
        """
        b = MemoryBudget(16 * MiB)
        stuck, heavy = Conn(b), Conn(b)
        b.change(stuck, 10 * MiB)
        b.change(heavy, 3 * MiB)
        self.assertTrue(stuck.paused)
        b.change(heavy, 1 * MiB)
        self.assertTrue(heavy.paused)
        b.change(heavy, -4 * MiB)
        self.assertFalse(heavy.paused)
        self.assertTrue(stuck.paused)
        b.remove(stuck)
        self.assertEqual((b.held, b.paused), (0, 0))

    def test_resumeUnderHalf(self):
        """Back under half the budget, everyone reads again."""
        b = MemoryBudget(8 * MiB)
        a, c = Conn(b), Conn(b)
        b.change(a, 5 * MiB)
        b.change(c, 2 * MiB)
        self.assertTrue(a.paused)
        b.change(a, -2 * MiB)
        self.assertTrue(a.paused)          # 5 MiB: still over 4
        b.change(c, -1 * MiB)
        self.assertFalse(a.paused)
        self.assertEqual(b.peak, 7 * MiB)


class OptionTests(SynchronousTestCase):
    def test_nbdMemory(self):
        """--nbd-memory takes a size (default 256M), at least 1M."""
        from twisted.python.usage import UsageError
        self.assertEqual(parseOptions()["nbd-memory"], 256 * MiB)
        self.assertEqual(parseOptions("--nbd-memory", "64M")["nbd-memory"],
                         64 * MiB)
        e = self.assertRaises(UsageError, parseOptions, "--nbd-memory", "x")
        self.assertIn("--nbd-memory: 'x' is not a size", str(e))
        e = self.assertRaises(UsageError, parseOptions, "--nbd-memory",
                              "512K")
        self.assertIn("below", str(e))

    def test_linkLimitUnits(self):
        """--link-limit units=N is a link limit beside children."""
        o = parseOptions("--link-limit", "units=8")
        self.assertEqual(o["link-limits"].units, 8)
        self.assertEqual(parseOptions()["link-limits"].units, 256)


class ProtocolTests(SynchronousTestCase):
    """Connections on string transports share one factory's budget."""

    def connect(self, factory, name="xa0"):
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        t = StringTransport()
        proto.makeConnection(t)
        proto.dataReceived(wire.encodeClientFlags(3) + wire.encodeOption(
            wire.OPT_GO, wire.encodeExportRequest(name)))
        return proto, t

    def test_nonReaderPausedOthersServed(self):
        """
        Clients whose send buffers stay full are paused once the
        replies they hold pass the budget; a client that reads is still
        served, and the daemon-wide sum stays within one request of the
        budget.
        """
        devices = [MemoryDevice("xa%d" % i, "S%d" % i, 16 * MiB)
                   for i in range(3)]
        budget = MemoryBudget(8 * MiB)
        factory = NBDServerFactory(Registry(devices), clock=Clock(),
                                   budget=budget)
        stuck = []
        for i in range(2):
            proto, t = self.connect(factory, "xa%d" % i)
            proto.pauseProducing()        # the client reads nothing
            for n in range(8):
                proto.dataReceived(wire.encodeRequest(
                    0, wire.CMD_READ, n, n * MiB, MiB))
            stuck.append((proto, t))
        self.assertEqual(budget.paused, 2)
        self.assertEqual([t.producerState for _, t in stuck],
                         ["paused", "paused"])
        self.assertLessEqual(budget.peak, 8 * MiB)
        good, t = self.connect(factory, "xa2")
        t.clear()
        good.dataReceived(wire.encodeRequest(0, wire.CMD_READ, 99, 0, 4096))
        self.assertEqual(len(t.value()), 16 + 4096)
        held = budget.held
        for proto, _ in stuck:
            proto.connectionLost(None)
        self.assertLess(budget.held, held)
        good.connectionLost(None)
        self.assertEqual((budget.held, budget.paused), (0, 0))


def _rss(pid):
    """(VmRSS, VmHWM) of C{pid}, in bytes."""
    values = {}
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def _nonReader(path, name="xa0", reads=64):
    """An NBD client on a real socket that asks 1 MiB READs, reads none."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    greeting = b""
    while len(greeting) < 18:
        greeting += s.recv(18 - len(greeting))
    s.sendall(wire.encodeClientFlags(3) + wire.encodeOption(
        wire.OPT_GO, wire.encodeExportRequest(name)))
    while True:
        head = b""
        while len(head) < 20:
            head += s.recv(20 - len(head))
        _, _, kind, n = struct.unpack(">QIII", head)
        while n:
            n -= len(s.recv(n))
        if kind == wire.REP_ACK:
            break
    s.setblocking(False)
    for i in range(reads):
        try:
            s.send(wire.encodeRequest(0, wire.CMD_READ, i, i * MiB, MiB))
        except BlockingIOError:
            break
    return s


class NonReadingClientsTests(SynchronousTestCase):
    """Issue 18 item 4, on real daemons and real sockets."""

    BUDGET = 64 * MiB
    CLIENTS = 16

    def test_peakRSSUnderBudget(self):
        """
        16 clients send 1 MiB READs and never read the replies; the
        importer's peak RSS stays under its idle RSS plus the budget,
        and a healthy client is still served meanwhile.
        """
        requireTools("nbdinfo", "qemu-io")
        exp = Daemon(self, "exporter", [])
        img = os.path.join(exp.dir, "disk.img")
        dmsg = os.path.join(exp.dir, "dmsg.sock")
        with open(img, "wb") as f:
            f.write(os.urandom(MiB) * 64)
        exp.args += ["--no-import", "--listen", "unix:" + dmsg,
                     "--export", "serno/MEM=" + img]
        exp.start()
        exp.waitLog("DMSG listening")
        imp = Daemon(self, "importer", [
            "--connect", "unix:" + dmsg, "--nbd-memory", "64M",
            "--nbd", "unix:" + os.path.join(exp.dir, "nbd.sock")])
        sock = os.path.join(exp.dir, "nbd.sock")
        imp.start()
        waitNBD(sock)
        # Warm up: read the whole disk once, as the attack will.
        run(["qemu-io", "-f", "raw", "-c", "read 0 64M", nbdURI(sock)])
        idle, _ = _rss(imp.proc.pid)
        clients = [_nonReader(sock) for _ in range(self.CLIENTS)]
        self.addCleanup(lambda: [c.close() for c in clients])
        # Let the replies pile up until the RSS stops growing (bounded).
        last, still, deadline = 0, 0, time.monotonic() + 30
        while time.monotonic() < deadline and still < 10:
            rss, _ = _rss(imp.proc.pid)
            still = still + 1 if rss <= last else 0
            last = max(last, rss)
            time.sleep(0.1)
        p = run(["qemu-io", "-f", "raw", "-c", "read 0 4k",
                 nbdURI(sock)], 60, check=False)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"read 4096/4096 bytes", p.stdout)
        _, peak = _rss(imp.proc.pid)
        print("\nNBD budget: idle RSS %.1f MiB, peak %.1f MiB with %d "
              "non-reading clients, budget %d MiB" % (
                  idle / MiB, peak / MiB, self.CLIENTS, self.BUDGET // MiB))
        self.assertLess(peak, idle + self.BUDGET)
