"""
Tests for L{xdiskd.holddown}: inbound links that come back after a loss
are held down, as redialled outbound ones are.
"""

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.dmsg.link import DMSGFactory
from xdiskd.holddown import HoldingFactory
from xdiskd.node import Node


def tcp(host, port=40000):
    return IPv4Address("TCP", host, port)


class HoldingFactoryTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.node = Node(None, None, "me")
        self.factory = HoldingFactory(
            DMSGFactory(self.node, "in", clock=self.clock), 10.0, self.clock)

    def accept(self, addr):
        link = self.factory.buildProtocol(addr)
        link.makeConnection(StringTransport())
        self.addCleanup(lambda: link.connected and link.transport
                        .loseConnection())
        return link

    def lose(self, link):
        link.connectionLost()

    def test_firstLinkNotHeld(self):
        """A host's first link, and a second one while the first is up,
        are not held."""
        a = self.accept(tcp("10.0.0.1"))
        b = self.accept(tcp("10.0.0.1", 40001))
        self.assertEqual(getattr(a, "heldUntil", 0.0), 0.0)
        self.assertEqual(getattr(b, "heldUntil", 0.0), 0.0)

    def test_backAfterLossHeld(self):
        """The link that comes back after a loss from that address is
        held for holdDown; other addresses are not."""
        a = self.accept(tcp("10.0.0.1"))
        self.lose(a)
        self.clock.advance(3)
        again = self.accept(tcp("10.0.0.1", 40002))
        self.assertEqual(again.heldUntil, self.clock.seconds() + 10.0)
        other = self.accept(tcp("10.0.0.2"))
        self.assertEqual(getattr(other, "heldUntil", 0.0), 0.0)
        self.assertEqual(self.factory.held, 1)

    def test_oldLossForgotten(self):
        """A loss longer ago than the memory no longer holds a link."""
        a = self.accept(tcp("10.0.0.1"))
        self.lose(a)
        self.clock.advance(self.factory.memory)
        again = self.accept(tcp("10.0.0.1"))
        self.assertEqual(getattr(again, "heldUntil", 0.0), 0.0)

    def test_unixNeverHeld(self):
        """UNIX-socket peers cannot be told apart: never held."""
        a = self.accept(UNIXAddress(None))
        self.lose(a)
        again = self.accept(UNIXAddress(None))
        self.assertEqual(getattr(again, "heldUntil", 0.0), 0.0)
        self.assertEqual(self.factory.remembered(), [])

    def test_memoryBounded(self):
        """At most maxHosts addresses and perHost links are remembered."""
        self.factory.maxHosts = 3
        for i in range(5):
            for j in range(12):
                self.accept(tcp("10.0.1.%d" % (i,), 40000 + j))
        self.assertEqual(self.factory.remembered(),
                         ["10.0.1.2", "10.0.1.3", "10.0.1.4"])
        self.assertEqual(
            max(len(d) for d in self.factory._recent.values()),
            self.factory.perHost)

    def test_zeroHoldDownOff(self):
        """--link-timeout 0 (holdDown 0): nothing is held."""
        self.factory.holdDown = 0
        a = self.accept(tcp("10.0.0.1"))
        self.lose(a)
        again = self.accept(tcp("10.0.0.1"))
        self.assertEqual(getattr(again, "heldUntil", 0.0), 0.0)


class ListenerE2ETests(SynchronousTestCase):
    """Real daemons: an exporter dials the importer's TCP listener."""

    def test_exporterBackAfterKillHeld(self):
        """
        The importer holds down the link of an exporter that was killed
        and came back (xdisk list: heldUntil), not its first link.
        """
        import os
        import socket
        import time
        from tests.daemons import Daemon, requireTools
        from tests.test_ops_e2e import Ctl, waitFor
        requireTools()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        imp = Daemon(self, "importer", [])
        imp.args += ["--listen", "tcp:%d:interface=127.0.0.1" % (port,),
                     "--no-nbd"]
        imp.start()
        imp.waitLog("DMSG listening")
        exp = Daemon(self, "exporter", [])
        img = os.path.join(exp.dir, "disk.img")
        with open(img, "wb") as f:
            f.truncate(1 << 20)
        exp.args += ["--no-import", "--connect", "tcp:127.0.0.1:%d" % (port,),
                     "--export", "serno/H=" + img]
        exp.start()
        ctl = Ctl(imp)

        def inbound():
            return [link for link in ctl.json("list")["links"]
                    if link["direction"] == "in" and link["ready"]]

        [first] = waitFor("first link", inbound)
        self.assertEqual(first["heldUntil"], 0.0)
        exp.kill()
        waitFor("link gone", lambda: not inbound())
        exp.start()
        [again] = waitFor("link back", inbound)
        self.assertNotEqual(again["id"], first["id"])
        self.assertGreater(again["heldUntil"], time.time())
