"""
The fault-injection soak (bench/soak.py) in its CI form: 30 seconds
per scenario (exporter killed and restarted, one of two paths cut and
restored, 8 clients x 4 units, the exporter host losing power), every
block verified, no NBD error.
"""

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.daemons import REPO, requireTools


class SoakTests(SynchronousTestCase):
    def test_shortSoak(self):
        requireTools("nbdinfo")
        if not os.path.exists("/usr/lib/python3/dist-packages/nbd.py"):
            from twisted.trial.unittest import SkipTest
            raise SkipTest("python3-libnbd missing (run scripts/setup)")
        p = subprocess.run(
            [sys.executable, os.path.join(REPO, "bench", "soak.py"),
             "--seconds", "30", "--period", "2.5"],
            capture_output=True, timeout=600)
        out = p.stdout.decode()
        summaries = [json.loads(line) for line in out.splitlines()
                     if line.startswith("{")]
        self.assertEqual([s["scenario"] for s in summaries],
                         ["kill", "paths", "multi", "crash"],
                         out + p.stderr.decode())
        for s in summaries:
            self.assertEqual((s["nbdErrors"], s["verifyFailures"],
                              s["tracebacks"]), (0, 0, 0), s)
            self.assertGreater(s["kills"], 0, s)
            self.assertGreater(s["writes"], 100, s)
            self.assertEqual(s["finalVerified"] > 0, True, s)
            self.assertLess(s["importerPeakRSSMiB"], 400, s)
        # Power losses: acknowledged writes were replayed, none lost.
        self.assertGreater(summaries[-1]["replays"], 0, summaries[-1])
        self.assertIn("soak PASSED", out)
        self.assertEqual(p.returncode, 0)
