"""
Tests for L{xdiskd.connectors}: outbound links added and removed at run
time, connection and reconnect counts, quiet retry logging.
"""

from twisted.application.service import MultiService
from twisted.logger import Logger, globalLogPublisher
from twisted.trial.unittest import TestCase

from xdiskd.connectors import Connectors, _quietRetries
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
        retries = [t for t in texts if t.startswith("Scheduling retry")]
        self.assertEqual(len(retries), 1, texts)
        self.assertRegex(retries[0], r"^Scheduling retry 1 to connect mem:a "
                                     r"in [\d.]+ seconds\.$")
        self.assertEqual([t for t in texts if " at 0x" in t], [])

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


class QuietRetriesTests(TestCase):
    def test_powersOfTen(self):
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        log = Logger(observer=_quietRetries)
        for attempt in range(1, 1001):
            log.info("retry {attempt}", attempt=attempt)
        log.info("other")
        self.assertEqual([e.get("attempt") for e in seen],
                         [1, 10, 100, 1000, None])
