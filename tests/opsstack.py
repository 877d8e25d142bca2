"""
Test helpers for the operations side: daemon-like objects over the
in-memory nodes of L{tests.stack}, whose outbound links are made by
L{xdiskd.connectors.Connectors} through an in-memory endpoint.
"""

from types import SimpleNamespace

from twisted.application.service import MultiService
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.test import iosim

from xdiskd.connectors import Connectors
from xdiskd.dmsg.link import DMSGFactory, DMSGLink


class MemoryEndpoint:
    """A client endpoint that connects in memory to C{serverNode}."""

    def __init__(self, net, serverNode):
        self.net = net
        self.serverNode = serverNode

    def connect(self, factory):
        client = factory.buildProtocol(None)
        server = DMSGLink(self.serverNode, "in")
        self.net.pumps.append(iosim.connect(
            server, iosim.FakeTransport(server, True),
            client, iosim.FakeTransport(client, False)))
        return succeed(client)


class Net:
    """In-memory endpoints by name (C{mem:NAME}) and their pumps."""

    def __init__(self):
        self.nodes = {}
        self.pumps = []

    def endpoint(self, desc):
        if not desc.startswith("mem:") or desc[4:] not in self.nodes:
            raise ValueError("unknown in-memory endpoint")
        return MemoryEndpoint(self, self.nodes[desc[4:]])

    def flush(self, rounds=5):
        for _ in range(rounds):
            for pump in list(self.pumps):
                pump.flush()


class FakeDaemon:
    """
    What L{xdiskd.control} needs of an L{xdiskd.service.XDiskService}:
    node, connectors, reactor, pool, inlineIO (stores open inline).
    """

    def __init__(self, node, net=None, clock=None):
        self.node = node
        self.clock = clock or Clock()
        self.reactor = self.clock
        self.pool = SimpleNamespace(pool=None)
        self.inlineIO = True
        self.parent = MultiService()
        self.parent.startService()
        self.net = net or Net()
        self.connectors = Connectors(
            self.parent, self.net.endpoint,
            lambda desc: DMSGFactory(node, desc), clock=self.clock)


def oneExportStack(case):
    """
    An exporter node "a" with one export (serno/A) on a L{Net}, and an
    importer node in a L{FakeDaemon} that can dial it: set as C{net},
    C{exp}, C{imp}, C{clock} and C{daemon} on the test C{case}.
    """
    from tests.stack import exporterNode, importerNode, makeImage
    case.net = Net()
    case.exp = exporterNode(case, [("serno/A", makeImage(case), False)])
    case.net.nodes["a"] = case.exp
    case.imp, case.clock = importerNode()
    case.daemon = FakeDaemon(case.imp, case.net, case.clock)
