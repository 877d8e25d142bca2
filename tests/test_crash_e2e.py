"""
End-to-end: acknowledged writes survive an exporter crash (issue 16).

Real processes: the exporter host is tests/powerloss.py (the real daemon
over a store whose writes since the last flush live in that process, so
SIGKILL is the power loss), or a plain twistd exporter (its writes are in
the kernel's page cache: SIGKILL loses nothing); the importer is a plain
twistd daemon; the client is python3-libnbd on ONE NBD connection held
open throughout (tests/nbdstep.py).
"""

import hashlib
import json
import os
import random
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.daemons import (
    REPO, Client, Daemon, nbdURI, requireTools, waitNBD)
from tests.test_cli import xdisk

MiB = 1 << 20
SIZE = 64 * MiB
SERIAL = "serno/CRASH"
POWERLOSS = os.path.join(REPO, "tests", "powerloss.py")


def pattern(seed, length):
    """What nbdstep.py writes for C{seed} (the same generator)."""
    return random.Random(seed).randbytes(length)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def readImage(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


class PowerLossHost(Daemon):
    """An exporter host whose power can be cut (tests/powerloss.py)."""

    def __init__(self, case, name, args):
        Daemon.__init__(self, case, name, args)
        self.bootFile = os.path.join(self.dir, "boot_id")
        self.reboot()

    def reboot(self):
        """The next start is a fresh boot: a new incarnation."""
        with open(self.bootFile, "w") as f:
            f.write(os.urandom(16).hex())

    def start(self):
        env = dict(os.environ, PYTHONPATH=REPO)
        self.proc = subprocess.Popen(
            [sys.executable, POWERLOSS, "--boot", self.bootFile,
             "--log", self.log, "--", "--state-dir", self.dir,
             "--no-control"] + self.args,
            cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(self.log + ".err", "ab"))
        return self

    def powerLoss(self):
        """SIGKILL: the writes not flushed die with the process."""
        self.kill()
        self.reboot()


class Base(SynchronousTestCase):
    importerArgs = ()

    def setUp(self):
        requireTools("nbdinfo")
        self.imp = Daemon(self, "imp", [])
        self.img = os.path.join(self.imp.dir, "disk.img")
        with open(self.img, "wb") as f:
            f.truncate(SIZE)
        self.nbd = os.path.join(self.imp.dir, "nbd.sock")

    def exporter(self, name, powerLoss=True):
        sock = os.path.join(self.imp.dir, name + ".sock")
        args = ["--no-import", "--no-nbd", "--listen", "unix:" + sock,
                "--export", SERIAL + "=" + self.img]
        if powerLoss:
            d = PowerLossHost(self, name, args)
        else:
            d = Daemon(self, name, args + ["--no-control"])
        d.sock = sock
        d.start()
        d.waitLog("DMSG listening on")
        return d

    def importer(self, *exporters):
        for e in exporters:
            self.imp.args += ["--connect", "unix:" + e.sock]
        self.imp.args += ["--nbd", "unix:" + self.nbd] + list(
            self.importerArgs)
        self.imp.start()
        waitNBD(self.nbd)
        return Client(self, nbdURI(self.nbd))

    def window(self):
        try:
            code, out, err = xdisk("--state-dir", self.imp.dir, "--json",
                                   "list")
        except subprocess.TimeoutExpired:
            raise AssertionError("xdisk stat hung; importer log:\n" +
                                 self.imp.logText()[-3000:])
        self.assertEqual(code, 0, err)
        [unit] = json.loads(out)["units"]
        return unit["window"]

    def writeAThenB(self, c, volatile=True):
        """Issue 16 steps 1-2, with FUA, TRIM and WRITE_ZEROES between."""
        self.A, self.B = pattern("A", 8 * MiB), pattern("B", 8 * MiB)
        c.ok("write A 0 %d" % (8 * MiB,))
        c.ok("write A %d %d" % (16 * MiB, 4 * MiB))
        c.ok("flush")
        # FUA: durable once acknowledged (write then flush), so released.
        c.ok("write C %d %d fua" % (8 * MiB, MiB))
        # Ranges with no data, over flushed data: kept, replayed.
        c.ok("trim %d %d" % (16 * MiB, MiB))
        c.ok("zero %d %d" % (17 * MiB, MiB))
        # NO_HOLE: zeros written as data (views of one constant buffer).
        c.ok("zero %d %d nohole" % (18 * MiB, MiB))
        c.ok("write B 0 %d" % (8 * MiB,))
        self.assertEqual(c.ok("sha 0 %d" % (8 * MiB,))["sha"], sha(self.B))
        if volatile:
            # Acknowledged, not flushed: only in the host's memory.
            self.assertEqual(readImage(self.img, 0, 8 * MiB), self.A)
            self.assertEqual(readImage(self.img, 16 * MiB, MiB),
                             pattern("A", 4 * MiB)[:MiB])

    def assertHoldsB(self, c):
        """Through NBD and on the file: B, C, and the zeroed ranges."""
        self.assertEqual(c.ok("sha 0 %d" % (8 * MiB,))["sha"], sha(self.B))
        self.assertEqual(readImage(self.img, 0, 8 * MiB), self.B)
        self.assertEqual(readImage(self.img, 8 * MiB, MiB),
                         pattern("C", MiB))
        self.assertEqual(readImage(self.img, 16 * MiB, 3 * MiB),
                         bytes(3 * MiB))
        self.assertEqual(readImage(self.img, 19 * MiB, MiB),
                         pattern("A", 4 * MiB)[3 * MiB:])


class PowerLossTests(Base):

    def test_powerLossReplayed(self):
        """write A, flush, write B, power loss, restart, flush on the same
        connection: the flush succeeds and the store holds B; a read
        issued while the exporter was down sees B."""
        exp = self.exporter("exp")
        c = self.importer(exp)
        self.writeAThenB(c)
        exp.powerLoss()
        c.ok("send-sha 0 %d" % (8 * MiB,))
        time.sleep(0.3)          # the read waits in the stalled unit
        exp.start()
        self.assertEqual(c.ok("wait")["sha"], sha(self.B))
        c.ok("flush")
        self.assertHoldsB(c)
        w = self.window()
        self.assertEqual(w["replays"], 1)
        # B (8 MiB), the trim and zero ranges and the written zeros
        # (1 MiB), not the FUA write.
        self.assertEqual(w["replayedBytes"], 9 * MiB)
        self.assertEqual(w["replayedWrites"], 8 + 3)
        self.assertIn("replayed 11 unflushed writes", self.imp.logText())

    def test_failoverToSecondHead(self):
        """The same with failover to a second exporter of the same serial
        on the same store (two heads of one shared disk)."""
        first = self.exporter("first")
        second = self.exporter("second")
        c = self.importer(first)
        # The open is on the first head; then the second comes up.
        code, out, err = xdisk("--state-dir", self.imp.dir, "attach",
                               "unix:" + second.sock)
        self.assertEqual(code, 0, out + err)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            code, out, err = xdisk("--state-dir", self.imp.dir, "--json",
                                   "list")
            if len(json.loads(out)["units"][0]["paths"]) == 2:
                break
            time.sleep(0.1)
        self.writeAThenB(c)
        first.powerLoss()
        c.ok("flush")
        self.assertHoldsB(c)
        self.assertEqual(self.window()["replays"], 1)


class FailModeTests(Base):
    importerArgs = ("--unflushed", "fail")

    def test_flushFailsWithEIO(self):
        """--unflushed fail: after the power loss the flush fails with
        EIO; the store holds A, as the client is now told."""
        exp = self.exporter("exp")
        c = self.importer(exp)
        self.writeAThenB(c)
        exp.powerLoss()
        exp.start()
        out = c.do("flush")
        self.assertFalse(out["ok"], out)
        self.assertEqual(out["errno"], "EIO")
        self.assertEqual(readImage(self.img, 0, 8 * MiB), self.A)
        self.assertEqual(self.window()["lostWindows"], 1)
        c.ok("flush")


class ProcessKillTests(Base):

    def test_processKillNothingReplayed(self):
        """The exporter process only killed (page cache kept, same
        incarnation): nothing is replayed and the store holds B."""
        exp = self.exporter("exp", powerLoss=False)
        c = self.importer(exp)
        self.writeAThenB(c, volatile=False)
        exp.kill()
        exp.start()
        c.ok("flush")
        self.assertHoldsB(c)
        w = self.window()
        self.assertEqual((w["replays"], w["inUse"]), (0, 0))
        self.assertIn("same exporter incarnation", self.imp.logText())


def peakKiB(pid):
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


class MemoryTests(SynchronousTestCase):
    """A client that never flushes: the importer's memory stays within
    the window plus what it needs without one."""

    def copy(self, window):
        requireTools("nbdcopy")
        imp = Daemon(self, "imp", [])
        img = os.path.join(imp.dir, "disk.img")
        with open(img, "wb") as f:
            f.truncate(1 << 30)
        sock = os.path.join(imp.dir, "exp.sock")
        exp = Daemon(self, "exp", [
            "--no-import", "--no-nbd", "--no-control", "--listen",
            "unix:" + sock, "--export", SERIAL + "=" + img]).start()
        exp.waitLog("DMSG listening on")
        nbd = os.path.join(imp.dir, "nbd.sock")
        imp.args += ["--connect", "unix:" + sock, "--nbd", "unix:" + nbd,
                     "--unflushed-window", window]
        imp.start()
        waitNBD(nbd)
        # 1 GiB of non-zero data (nbdcopy would turn zeros into
        # WRITE_ZEROES) through a pipe: no flush until the end.
        gen = subprocess.Popen(
            [sys.executable, "-c",
             "import os,sys\nb=os.urandom(4<<20)\n"
             "for _ in range(256): sys.stdout.buffer.write(b)"],
            stdout=subprocess.PIPE)
        try:
            subprocess.run(["nbdcopy", "-", nbdURI(nbd)],
                           stdin=gen.stdout, check=True, timeout=300)
        finally:
            gen.stdout.close()
            gen.wait(30)
        code, out, err = xdisk("--state-dir", imp.dir, "--json", "list")
        [unit] = json.loads(out)["units"]
        return peakKiB(imp.proc.pid), unit["window"]

    def test_peakRSSBounded(self):
        """nbdcopy of 1 GiB with no flush: the importer's peak RSS with
        the default 64 MiB window stays within 64 MiB plus 32 MiB (the
        unit's congestion limit: completions held while the window's
        flush runs keep their buffers) of its peak with a 1 MiB window
        (seen: +63 MiB)."""
        small, ws = self.copy("1M")
        big, wb = self.copy("64M")
        self.assertGreater(ws["autoFlushes"], 100)
        self.assertGreater(wb["autoFlushes"], 4)
        self.assertLessEqual(wb["peak"], (64 + 2) << 20)
        self.assertLessEqual(big, small + (64 + 32) * 1024,
                             "peak RSS %d KiB vs %d KiB" % (big, small))
