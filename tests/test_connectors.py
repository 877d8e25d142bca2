"""
Tests for L{xdiskd.connectors}: outbound links added and removed at run
time, connection and reconnect counts, quiet retry logging.
"""

from twisted.application.service import MultiService
from twisted.internet.defer import fail
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from xdiskd.connectors import Connectors, _quietRetries
from xdiskd.dmsg.link import DMSGFactory
from tests.opsstack import oneExportStack


class ConnectorsTests(TestCase):
    def setUp(self):
        oneExportStack(self)
        self.connectors = self.daemon.connectors

    def test_addCountsAndRemove(self):
        c = self.connectors.add("mem:a")
        self.net.flush()
        self.assertEqual((c.connections, c.reconnects, c.up), (1, 0, True))
        self.assertIs(self.connectors.forLink(c.link), c)
        self.assertEqual(list(self.connectors), ["mem:a"])
        # The exporter drops the link: down, then redialled.
        [link] = list(self.exp.links)
        link.close("test")
        self.net.flush()
        self.assertFalse(c.up)
        self.assertIsNone(c.snapshot()["link"])
        self.clock.advance(5)
        self.net.flush()
        self.assertEqual((c.connections, c.reconnects, c.up), (2, 1, True))
        d = self.connectors.remove("mem:a")
        self.net.flush()
        self.assertIs(self.successResultOf(d), c)
        self.assertFalse(c.service.running)
        self.assertIsNone(c.service.parent)
        self.assertEqual(self.imp.links, {})
        self.clock.advance(60)
        self.net.flush()
        self.assertEqual((c.connections, self.imp.links), (2, {}))

    def test_retryLineNamesTheEndpoint(self):
        """ClientService's retry log line shows the endpoint as it was
        configured, not an endpoint object's repr."""
        from twisted.logger import formatEvent
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        self.connectors.add("mem:a")
        self.net.flush()
        [link] = list(self.exp.links)
        link.close("test")
        self.net.flush()
        texts = [formatEvent(e) for e in seen]
        # ClientService's own line is replaced by ours (FailedAttemptTests).
        retries = [t for t in texts if t.startswith("mem:a: link lost")]
        self.assertEqual(len(retries), 1, texts)
        self.assertRegex(retries[0], r"^mem:a: link lost: .*; attempt 1, "
                                     r"retrying in [\d.]+ s$")
        self.assertEqual([t for t in texts if " at 0x" in t
                          or "Scheduling retry" in t], [])

    def test_addErrors(self):
        self.assertRaises(ValueError, self.connectors.add, "mem:nope")
        self.connectors.add("mem:a")
        self.assertRaises(ValueError, self.connectors.add, "mem:a")
        self.assertRaises(KeyError, self.connectors.remove, "mem:b")

    def test_notRunning(self):
        """Added to a stopped parent: not dialled; removal just forgets."""
        connectors = Connectors(MultiService(), self.net.endpoint,
                                lambda d: None, clock=self.clock)
        c = connectors.add("mem:a")
        self.assertFalse(c.service.running)
        self.assertEqual(self.net.pumps, [])
        self.successResultOf(connectors.remove("mem:a"))
        self.assertEqual(len(connectors), 0)


class _Refusing:
    """An endpoint whose every connection attempt is refused."""

    def __init__(self):
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        return fail(ConnectionRefusedError(
            "Connection was refused by other side: 111: Connection "
            "refused."))


class FailedAttemptTests(TestCase):
    def setUp(self):
        self.seen = []
        globalLogPublisher.addObserver(self.seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.seen.append)
        self.clock = Clock()
        self.parent = MultiService()
        self.parent.startService()
        self.addCleanup(self.parent.stopService)
        self.endpoint = _Refusing()
        self.connectors = Connectors(self.parent, lambda d: self.endpoint,
                                     lambda d: Factory.forProtocol(Protocol),
                                     clock=self.clock)

    def test_loggedWithEndpointAndReason(self):
        """
        Each failure is counted; the 1st, 10th, 100th are logged naming
        the endpoint as configured and the reason, with no Python repr;
        ClientService's own retry lines are dropped.
        """
        c = self.connectors.add("tcp:disk1:987")
        for _ in range(150):
            self.clock.advance(6)   # the back-off's most, 5 s, plus jitter
        self.assertEqual(c.failures, self.endpoint.attempts)
        self.assertGreaterEqual(c.failures, 100)
        self.assertEqual(c.attempts, c.failures)
        self.assertIn("Connection refused", c.lastError)
        snap = c.snapshot()
        self.assertEqual((snap["failures"], snap["attempts"]),
                         (c.failures, c.attempts))
        texts = [formatEvent(e) for e in self.seen]
        failed = [t for t in texts if t.startswith("tcp:disk1:987: ")]
        self.assertEqual(len(failed), 3)
        self.assertRegex(failed[0],
                         r"^tcp:disk1:987: connect failed: Connection was "
                         r"refused by other side: 111: Connection refused\."
                         r"; attempt 1, retrying in [0-9]\.[0-9] s$")
        self.assertIn("; attempt 10, retrying in", failed[1])
        self.assertIn("; attempt 100, retrying in", failed[2])
        self.assertEqual([t for t in texts if "Scheduling retry" in t
                          or " object at 0x" in t], [])

    def test_filterDropsClientServiceRetryLines(self):
        log = Logger(observer=_quietRetries)
        log.info("Scheduling retry {attempt} to connect {endpoint} in "
                 "{delay} seconds.", attempt=1, endpoint=object(), delay=1)
        log.info("other")
        self.assertEqual([formatEvent(e) for e in self.seen], ["other"])


class HoldDownTests(TestCase):
    def setUp(self):
        oneExportStack(self)

    def test_redialledLinkHeldDown(self):
        """
        The first link is not held; one made after a loss is, for the
        hold-down time; the connector records why the link ended.
        """
        connectors = Connectors(
            self.daemon.parent, self.net.endpoint,
            lambda desc: DMSGFactory(self.imp, desc), clock=self.clock,
            holdDown=10.0)
        c = connectors.add("mem:a")
        self.net.flush()
        self.assertEqual(getattr(c.link, "heldUntil", 0.0), 0.0)
        [link] = [l for l in self.exp.links]
        link.close("test")
        self.net.flush()
        self.assertTrue(c.lastError.startswith("link lost: "), c.lastError)
        self.clock.advance(5)
        self.net.flush()
        self.assertTrue(c.up)
        self.assertEqual(c.link.heldUntil, self.clock.seconds() + 10.0)
