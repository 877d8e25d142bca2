"""
Tests for L{xdiskd.io.poll}: the daemon's epoll reactor, its lean poll
loop and its busy-poll window.
"""

import os
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from xdiskd.io.poll import LeanEPollReactor, SpinWindow, setSpin
from tests.daemons import REPO, parseOptions


def closeReactor(r):
    """Close what an EPollReactor built (its epoll fd and waker)."""
    r.removeReader(r.waker)
    r.waker.connectionLost(None)
    r._poller.close()


def leanReactor(case, spinMax=0.0):
    r = LeanEPollReactor(spinMax)
    case.addCleanup(closeReactor, r)
    return r


class LeanPollTests(SynchronousTestCase):
    """L{LeanEPollReactor}: epoll events go straight to _doReadOrWrite."""

    def setUp(self):
        self.reactor = leanReactor(self)
        self.assertTrue(self.reactor.lean)

    def reader(self, doRead):
        from twisted.internet.abstract import FileDescriptor
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        lost = []

        class Reader(FileDescriptor):
            def fileno(self):
                return a.fileno()

            def connectionLost(self, reason):
                lost.append(reason)
                FileDescriptor.connectionLost(self, reason)
        r = Reader(self.reactor)
        r.doRead = doRead
        self.reactor.addReader(r)
        b.send(b"x")
        return r, lost

    def test_readEventDelivered(self):
        """Straight to doRead: no callWithLogger (logPrefix, context)."""
        from twisted.python import log

        def notCalled(*a, **kw):
            raise AssertionError("callWithLogger used")
        self.patch(log, "callWithLogger", notCalled)
        seen = []
        r, lost = self.reader(lambda: seen.append(1))
        self.reactor.doIteration(1)
        self.assertEqual((seen, lost), ([1], []))

    def test_errorLoggedAndDisconnects(self):
        def boom():
            raise ValueError("bad")
        r, lost = self.reader(boom)
        self.reactor.doIteration(1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(lost), 1)
        self.assertNotIn(r, self.reactor.getReaders())

    def test_otherReactorsLeftAlone(self):
        """setSpin changes only a LeanEPollReactor."""
        from twisted.internet.testing import MemoryReactor
        self.assertFalse(setSpin(MemoryReactor(), 1e-4))
        self.assertTrue(setSpin(self.reactor, 1e-4))
        self.assertEqual(self.reactor.spinWindow.maximum, 1e-4)

    def test_missingInternalFallsBack(self):
        """A Twisted without an internal the loop needs: the reactor says
        which, and polls as Twisted's own does."""
        class Broken(LeanEPollReactor):
            _doReadOrWrite = None
        r = Broken()
        self.addCleanup(closeReactor, r)
        self.assertFalse(r.lean)
        self.assertIn("_doReadOrWrite", r.problems[0])
        from twisted.internet.epollreactor import EPollReactor
        calls = []
        self.patch(EPollReactor, "doPoll",
                   lambda self, timeout: calls.append((self, timeout)))
        r.doIteration(0.5)
        self.assertEqual(calls, [(r, 0.5)])


class SpinWindowTests(SynchronousTestCase):
    def test_adapts(self):
        """Grows (from START, doubling) while I/O ends waits within the
        maximum; halves on a longer wait or a timer; 0 below START."""
        w = SpinWindow(100e-6)
        start = SpinWindow.START
        self.assertEqual(w.window, 0.0)
        w.blocked(50e-6, True)
        self.assertEqual(w.window, start)
        for _ in range(2):
            w.blocked(50e-6, True)
        self.assertEqual(w.window, 4 * start)
        for _ in range(5):
            w.blocked(90e-6, True)
        self.assertEqual(w.window, 100e-6)
        w.blocked(5e-3, True)           # an idle gap: too long to poll
        self.assertEqual(w.window, 50e-6)
        w.blocked(1e-3, False)          # a timer, no I/O
        self.assertEqual(w.window, 25e-6)
        w.blocked(1.0, False)
        w.blocked(1.0, False)
        self.assertEqual(w.window, 0.0)
        w.blocked(1.0, False)
        self.assertEqual(w.window, 0.0)

    def test_off(self):
        w = SpinWindow(0.0)
        w.blocked(1e-6, True)
        self.assertEqual(w.window, 0.0)


class PollOptionTests(SynchronousTestCase):
    def test_range(self):
        from twisted.python.usage import UsageError
        self.assertEqual(parseOptions()["poll-us"], 100)
        self.assertEqual(parseOptions("--poll-us", "0")["poll-us"], 0)
        for bad in ("-1", "10001"):
            self.assertRaises(UsageError, parseOptions, "--poll-us", bad)

    def test_daemonPolls(self):
        """The daemon's reactor gets the --poll-us window."""
        from xdiskd.service import makeService
        for value, seconds in (("250", 250e-6), ("0", 0.0)):
            r = leanReactor(self, 1.0)
            makeService(parseOptions("--no-nbd", "--poll-us", value), r)
            self.assertEqual(r.spinWindow.maximum, seconds)

    def test_installedWhenNoneIs(self):
        """With no reactor installed yet (twistd without --reactor),
        makeService installs a LeanEPollReactor with the window; with
        one installed, it runs on that one."""
        script = (
            "import sys\n"
            "from tests.daemons import parseOptions\n"
            "from xdiskd.service import makeService\n"
            "if sys.argv[1] == 'other':\n"
            "    from twisted.internet import selectreactor\n"
            "    selectreactor.install()\n"
            "makeService(parseOptions('--no-nbd', '--poll-us', '300'))\n"
            "from twisted.internet import reactor\n"
            "print(type(reactor).__name__,"
            " getattr(reactor, 'spinWindow', None) and"
            " reactor.spinWindow.maximum)\n")
        env = dict(os.environ, PYTHONPATH=REPO)
        for which, want in (("none", "LeanEPollReactor 0.0003"),
                            ("other", "SelectReactor None")):
            out = subprocess.run(
                [sys.executable, "-c", script, which], env=env, cwd=REPO,
                capture_output=True, text=True, timeout=60)
            self.assertEqual((out.stdout.strip(), out.returncode),
                             (want, 0), out.stderr)


class SpinPollTests(SynchronousTestCase):
    """With a spin window: poll(0) until an event or the window ends,
    then block for the rest of the timeout."""

    def setUp(self):
        self.reactor = leanReactor(self)
        real = self.reactor._poller
        self.addCleanup(setattr, self.reactor, "_poller", real)
        self.calls = []
        calls = self.calls

        class Poller:
            def __getattr__(self, name):
                return getattr(real, name)

            def poll(self, timeout, maxevents):
                calls.append(timeout)
                return real.poll(timeout, maxevents)
        self.reactor._poller = Poller()

    def spinning(self, spinMax, window):
        self.assertTrue(setSpin(self.reactor, spinMax))
        self.reactor.spinWindow.window = window
        return self.reactor.spinWindow

    def reader(self, seen):
        from twisted.internet.abstract import FileDescriptor
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)

        class Reader(FileDescriptor):
            def fileno(self):
                return a.fileno()

            def doRead(self):
                seen.append(a.recv(10))
        self.reactor.addReader(Reader(self.reactor))
        return b

    def test_offBlocksAtOnce(self):
        self.reactor.doIteration(0.01)
        self.assertEqual(self.calls, [0.01])

    def test_spinsThenBlocks(self):
        """No event: poll(0) for the window, then block for the rest of
        the timeout; the window (a timer woke it) halves."""
        spin = self.spinning(0.004, 0.004)
        self.reactor.doIteration(0.05)
        self.assertGreater(len(self.calls), 2)
        self.assertEqual(set(self.calls[:-1]), {0})
        self.assertTrue(0 < self.calls[-1] <= 0.05 - 0.004,
                        self.calls[-1])
        self.assertEqual(spin.window, 0.002)

    def test_eventWhileSpinning(self):
        """An event found by a poll(0) is handled; no blocking poll, and
        the window is kept."""
        seen = []
        self.reader(seen).send(b"x")
        spin = self.spinning(0.004, 0.004)
        self.reactor.doIteration(1)
        self.assertEqual((seen, self.calls), ([b"x"], [0]))
        self.assertEqual(spin.window, 0.004)

    def test_noSpinWithoutWait(self):
        """Timeout 0 (work is due at once): one poll(0), nothing learnt."""
        spin = self.spinning(0.004, 0.004)
        self.reactor.doIteration(0)
        self.assertEqual(self.calls, [0])
        self.assertEqual(spin.window, 0.004)

    def test_spinBoundedByTimeout(self):
        """A timer due before the window ends bounds the spin."""
        self.spinning(1.0, 1.0)
        before = time.monotonic()
        self.reactor.doIteration(0.01)
        self.assertLess(time.monotonic() - before, 0.5)
