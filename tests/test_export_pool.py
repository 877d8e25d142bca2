"""Tests for L{xdiskd.export.pool.LeanPool}."""

import threading

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from xdiskd.export.pool import LeanPool, submit


class LeanPoolTests(TestCase):
    def setUp(self):
        self.pool = LeanPool(2, reactor=reactor)
        self.pool.start()
        self.addCleanup(self.pool.stop)

    @defer.inlineCallbacks
    def test_runsOnWorkerDeliversInReactor(self):
        main = threading.get_ident()
        seen = []

        def job(x):
            seen.append(threading.get_ident())
            return x * 2
        d = self.pool.submit(job, 21)
        d.addCallback(lambda r: (r, threading.get_ident()))
        result, where = yield d
        self.assertEqual(result, 42)
        self.assertEqual(where, main)
        self.assertNotEqual(seen, [main])

    @defer.inlineCallbacks
    def test_exceptionIsFailure(self):
        def boom():
            raise OSError(5, "EIO")
        with self.assertRaises(OSError):
            yield self.pool.submit(boom)

    @defer.inlineCallbacks
    def test_manyInOrderOfCompletion(self):
        """A burst of tasks all complete, woken in batches."""
        ds = [self.pool.submit(lambda i=i: i) for i in range(500)]
        results = yield defer.gatherResults(ds)
        self.assertEqual(sorted(results), list(range(500)))

    def test_queuedBeforeStartRuns(self):
        pool = LeanPool(1, reactor=reactor)
        d = submit(reactor, pool, lambda: "late")
        self.assertNoResult(d)
        pool.start()
        self.addCleanup(pool.stop)
        return d.addCallback(self.assertEqual, "late")

    def test_stopDrainsThenJoins(self):
        pool = LeanPool(1, reactor=reactor)
        pool.start()
        ran = []
        pool.submit(ran.append, 1)
        pool.stop()
        self.assertEqual(ran, [1])
        self.assertTrue(pool.joined)
        self.assertFalse(pool.started)
