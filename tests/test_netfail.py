"""
Silent network failures, end to end: a real exporter and a real importer
daemon on two hosts (network namespaces, L{tests.netbed}), joined by one
or two TCP paths, with a real NBD client (libnbd) on the importer's UNIX
socket writing and verifying throughout.  Faults are iptables DROP rules,
interfaces set down, random loss and an MTU black hole: nothing closes,
nothing is refused, packets just stop (or some of them do).

Bounds checked (README: what the NBD client sees):
  - failover off a silent path within the link timeout plus 2 s, with
    zero client errors;
  - every path gone past --stall-timeout: EIO within the stall timeout
    plus the link timeout, and I/O works again on the same connection
    once a path returns;
  - a short outage of the only path: the client only pauses.
"""

import hashlib
import json
import os
import random
import re
import subprocess
import time

from twisted.trial.unittest import TestCase

from tests.daemons import Client, Daemon, nbdURI, requireTools, waitNBD
from tests.netbed import NetBed

HERE = os.path.dirname(os.path.abspath(__file__))
SOAK = os.path.join(os.path.dirname(HERE), "bench", "soak_client.py")
MiB = 1 << 20
T = 5.0                      # the default --link-timeout


class Bed(TestCase):
    paths = 2
    importerArgs = ()

    def setUp(self):
        requireTools("nbdinfo")
        if not os.path.exists("/usr/lib/python3/dist-packages/nbd.py"):
            self.skipTest("python3-libnbd missing (run scripts/setup)")
        self.net = NetBed(self, self.paths)
        self.exp = Daemon(self, "exporter", self.net.listenArgs() + [
            "--no-import", "--no-control", "--export", "serno/N=disk.img",
            "--image", "disk.img=64M"], self.net.prefix(self.net.exporterNS))
        self.exp.start()
        self.exp.waitLog("DMSG listening on")
        self.imp = Daemon(self, "importer", self.net.connectArgs() + [
            "--no-control"] + list(self.importerArgs),
            self.net.prefix(self.net.importerNS))
        self.sock = os.path.join(self.imp.dir, "nbd.sock")
        self.imp.args += ["--nbd", "unix:" + self.sock]
        self.imp.start()
        waitNBD(self.sock)
        self.uri = nbdURI(self.sock)
        if self.paths > 1:
            self.imp.waitLog("(%d paths)" % (self.paths,))

    def activePath(self):
        """The path the unit's open is on now (from the importer's log)."""
        opens = re.findall(r"xa0: open via (\S+)", self.imp.logText())
        return self.net.pathOf(opens[-1])

    def soak(self, seconds, qd=8):
        return subprocess.Popen(
            ["/usr/bin/python3", SOAK, self.uri, "--seconds", str(seconds),
             "--size", str(32 * MiB), "--qd", str(qd)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(self, proc, timeout=120):
        out, err = proc.communicate(timeout=timeout)
        self.assertEqual(proc.returncode, 0, err.decode(errors="replace"))
        return json.loads(out.decode().strip().splitlines()[-1])

    def assertClean(self, r):
        """No NBD error, no verify failure, and data was really moved."""
        self.assertEqual(r["errors"], [])
        self.assertEqual(r["verifyFailures"], 0)
        self.assertGreater(r["writes"], 0)
        self.assertGreater(r["finalVerified"], 0)
        self.assertNotIn("Traceback", self.imp.logText())


class FailoverTests(Bed):
    def test_blackholedActivePathFailsOver(self):
        """
        The path in use is black-holed during a write-verify loop: the
        link is declared dead and I/O moves to the other path within the
        link timeout plus 2 s, with zero client errors.
        """
        client = self.soak(22)
        time.sleep(4)
        dead = self.activePath()
        self.net.blackhole(dead)
        self.imp.waitLog("dead: nothing received for", timeout=T + 3)
        time.sleep(10)
        self.net.restore()
        r = self.result(client)
        self.assertClean(r)
        self.assertLessEqual(r["maxLatency"], T + 2.0)
        self.assertNotEqual(self.activePath(), dead)
        log = self.imp.logText()
        self.assertRegex(log, r"link\d+\(tcp:10\.201\.%d\.1:9870\): dead: "
                              r"nothing received for \d+\.\d s with \d+ "
                              r"transactions waiting on the peer" % (dead,))
        self.assertIn("xa0: open via", log)

    def test_carrierLossFailsOver(self):
        """The importer's interface on the active path goes down."""
        client = self.soak(16)
        time.sleep(4)
        dead = self.activePath()
        self.net.carrierDown(dead)
        time.sleep(T + 3)
        self.net.carrierUp(dead)
        r = self.result(client)
        self.assertClean(r)
        self.assertLessEqual(r["maxLatency"], T + 2.0)
        self.assertNotEqual(self.activePath(), dead)

    def test_largePacketsDroppedFailsOver(self):
        """
        An MTU black hole on the active path: small packets (keepalive
        probes, PINGs) pass, data does not.  Nothing arrives, so the link
        is dead all the same, and I/O fails over.
        """
        client = self.soak(16)
        time.sleep(4)
        dead = self.activePath()
        self.net.dropLarge(dead, 1000)
        time.sleep(T + 3)
        self.net.restore()
        r = self.result(client)
        self.assertClean(r)
        self.assertLessEqual(r["maxLatency"], T + 2.0)
        self.assertNotEqual(self.activePath(), dead)


class LossTests(Bed):
    paths = 1

    def test_randomLossNoErrorNoFalseDeath(self):
        """
        10 % of packets lost both ways on the only path: slower, but no
        client error and no link declared dead.
        """
        self.net.loss(1, 0.10)
        r = self.result(self.soak(12, qd=4))
        self.net.restore()
        self.assertClean(r)
        self.assertNotIn("dead: nothing received", self.imp.logText())


class ShortOutageTests(Bed):
    paths = 1
    importerArgs = ("--stall-timeout", "60")

    def test_shortBlackholeOnlyPauses(self):
        """
        The only path is black-holed for less than the stall timeout: the
        link dies, the unit stalls, and after the restore it re-opens and
        the client's I/O completes; the client only paused.
        """
        client = self.soak(25)
        time.sleep(3)
        self.net.blackhole(1)
        time.sleep(8)
        self.net.restore()
        r = self.result(client)
        self.assertClean(r)
        self.assertGreater(r["maxLatency"], 5.0)       # it did pause
        log = self.imp.logText()
        self.assertIn("dead: nothing received", log)
        self.assertNotIn("--stall-timeout", log)


class StallTimeoutTests(Bed):
    stall = 4.0
    importerArgs = ("--stall-timeout", "4")

    def test_everyPathGoneFailsThenRecovers(self):
        """
        Both paths black-holed beyond --stall-timeout: a write fails with
        EIO within the stall timeout plus the link timeout (plus 2 s of
        slack for a loaded machine); later I/O fails at once; once the
        network returns, I/O succeeds again on the same NBD connection.
        """
        c = Client(self, self.uri)
        c.ok("write A 0 65536")
        self.net.blackhole(1)
        self.net.blackhole(2)
        t0 = time.monotonic()
        r = c.do("write B 65536 65536")
        took = time.monotonic() - t0
        self.assertFalse(r["ok"])
        self.assertEqual(r["errno"], "EIO", r)
        self.assertLessEqual(took, self.stall + T + 2.0)
        t0 = time.monotonic()
        self.assertFalse(c.do("sha 0 4096")["ok"])
        self.assertLess(time.monotonic() - t0, 1.0)   # fails fast now
        self.assertIn("(--stall-timeout); failing", self.imp.logText())
        self.net.restore()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = c.do("write C 65536 65536")
            if r["ok"]:
                break
            time.sleep(0.5)
        self.assertTrue(r["ok"], r)
        c.ok("flush")
        self.assertEqual(c.ok("sha 0 65536")["sha"], hashlib.sha256(
            random.Random("A").randbytes(65536)).hexdigest())
        self.assertIn("I/O no longer fails", self.imp.logText())
