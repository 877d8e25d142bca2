"""
Tests for C{scripts/trial-summary}, which prints the closing line of
C{scripts/test} (and so of C{.ci/run}) from trial's own summary.
"""

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.daemons import REPO

SCRIPT = os.path.join(REPO, "scripts", "trial-summary")


def summarize(text):
    p = subprocess.run([sys.executable, SCRIPT], input=text.encode(),
                       capture_output=True, timeout=30)
    return p.returncode, p.stdout.decode()


class TrialSummaryTests(SynchronousTestCase):
    def test_passed(self):
        self.assertEqual(summarize(
            "tests.test_x ... [OK]\n-----\nRan 3 tests in 0.1s\n\n"
            "PASSED (skips=1, successes=2)\n"),
            (0, "2 passed, 0 failed, 1 skipped\n"))

    def test_failed(self):
        """Failures, errors and unexpected successes all count as failed."""
        self.assertEqual(summarize(
            "Ran 9 tests\n\nFAILED (skips=1, failures=2, errors=3, "
            "unexpectedSuccesses=1, successes=2)\n"),
            (1, "2 passed, 6 failed, 1 skipped\n"))

    def test_lastSummaryWins(self):
        """A test's own output that looks like a summary comes earlier."""
        self.assertEqual(summarize(
            "PASSED (successes=1)\nmore output\n"
            "FAILED (errors=1, successes=5)\n"),
            (1, "5 passed, 1 failed, 0 skipped\n"))

    def test_severalRuns(self):
        """scripts/test's two trial runs (the suite, the compiled pass):
        counts added; one failed run fails the whole; one without a
        summary gives no count at all."""
        import tempfile
        d = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, d, True)
        paths = []
        for n, text in enumerate(("PASSED (skips=1, successes=4)\n",
                                  "FAILED (failures=1, successes=2)\n",
                                  "killed\n")):
            paths.append(os.path.join(d, "%d.out" % n))
            with open(paths[-1], "w") as f:
                f.write(text)

        def run(*files):
            p = subprocess.run([sys.executable, SCRIPT] + list(files),
                               capture_output=True, timeout=30)
            return p.returncode, p.stdout.decode()
        self.assertEqual(run(paths[0], paths[0]),
                         (0, "8 passed, 0 failed, 2 skipped\n"))
        self.assertEqual(run(paths[0], paths[1]),
                         (1, "6 passed, 1 failed, 1 skipped\n"))
        self.assertEqual(run(paths[0], paths[2]),
                         (2, "no test summary from trial\n"))

    def test_noSummary(self):
        """trial killed or crashed before its summary: no made-up count."""
        self.assertEqual(summarize("Traceback (most recent call last):\n"),
                         (2, "no test summary from trial\n"))
