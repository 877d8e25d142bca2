"""
The slow-path move end to end (issue 15): a unit open on a path whose
PING round trip is far longer than another's moves its open to the fast
one while a client writes and verifies, with no error at the client.
The slow path is a real socket pair through L{tests.delayproxy}.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.daemons import Daemon, nbdURI, requireTools, waitNBD
from tests.delayproxy import DelayProxy
from tests.test_ops_e2e import (
    Ctl, exporterHeads, startIOLoop, stopIOLoop, waitFor)

DELAY = 0.1     # each way: a 200 ms round trip against well under 1 ms


class SlowPathMoveTests(SynchronousTestCase):
    def setUp(self):
        requireTools()
        self.exps, _ = exporterHeads(self, ("fast", "slow"))
        for d in self.exps.values():
            d.waitLog("DMSG listening")
        slow = self.exps["slow"]
        self.proxySock = os.path.join(slow.dir, "slow.sock")
        self.proxy = DelayProxy(self.proxySock, slow.sock, DELAY)
        self.addCleanup(self.proxy.close)
        self.imp = Daemon(self, "importer", [])
        self.sock = os.path.join(self.imp.dir, "nbd.sock")
        self.imp.args += ["--connect", "unix:" + self.proxySock,
                          "--nbd", "unix:" + self.sock]
        self.imp.start()
        waitNBD(self.sock)
        self.uri = nbdURI(self.sock)
        self.ctl = Ctl(self.imp)

    def test_openMovesToFastPath(self):
        """
        Open via the slow path, I/O running; the fast path is attached;
        within a few PING rounds the open moves to it.  The client sees
        no error, every round reads back what it wrote, and the unit
        counts one move and no failover.
        """
        io, stop = startIOLoop(self, self.uri, self.imp.dir)
        slow = "unix:" + self.proxySock
        fast = "unix:" + self.exps["fast"].sock

        def via():
            return self.ctl.unit("serno/TWO")["openVia"]

        self.assertTrue(via().endswith("(%s)" % (slow,)), via())
        self.ctl("attach", fast)
        waitFor("open moved to the fast path",
                lambda: via().endswith("(%s)" % (fast,)), timeout=30)
        self.imp.waitLog("is far slower")

        def writes():
            return self.ctl.stats("serno/TWO")["stats"]["ops"]["write"]

        n = writes()
        waitFor("writes after the move", lambda: writes() > n + 16)
        stopIOLoop(self, io, stop)
        stats = self.ctl.stats("serno/TWO")["stats"]
        self.assertEqual(stats["errors"], 0)
        self.assertEqual(stats["moves"], 1)
        self.assertEqual(stats["failovers"], 0)
        log = self.imp.logText()
        self.assertNotIn("Traceback", log)
