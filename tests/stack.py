"""
Test helpers: an exporting node and an importing node joined by in-memory
links (iosim), with real stores on temporary files (inline mode, so the
whole exchange runs synchronously under L{pump}).
"""


from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient

from xdiskd.dmsg.link import DMSGLink
from xdiskd.export.server import Exporter
from xdiskd.export.spec import ExportSpec
from xdiskd.export.store import openStore
from xdiskd.node import Node
from xdiskd.xa.importer import Importer


def makeImage(case, size=1 << 20, fill=None):
    path = case.mktemp()
    with open(path, "wb") as f:
        if fill is None:
            f.truncate(size)
        else:
            f.write(fill)
    return path


def exporterNode(case, exports, reactor=None, **kw):
    """exports: list of (serial, path, readOnly)."""
    exporter = Exporter(**kw)
    for serial, path, ro in exports:
        spec = ExportSpec(serial, path, ro, 512, "testhost/" + serial)
        exporter.add(spec, openStore(spec, reactor, None))
    return Node(exporter=exporter, hostname="exporter")


def importerNode(clock=None, **kw):
    clock = clock or Clock()
    importer = Importer(clock, **kw)
    return Node(importer=importer, hostname="importer"), clock


class Wire:
    """One in-memory connection between two nodes."""

    def __init__(self, serverNode, clientNode, clock=None, linkTimeout=0.0):
        """
        @param clock: with C{linkTimeout}, both links run their liveness
            check (L{xdiskd.dmsg.liveness}) on this clock.
        """
        kw = dict(clock=clock, linkTimeout=linkTimeout) if clock else {}
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: DMSGLink(serverNode, "srv", **kw),
            lambda: DMSGLink(clientNode, "cli", **kw))
        self.pump.flush()

    def flush(self):
        self.pump.flush()

    def cut(self):
        """Lose the connection (both sides notice)."""
        self.client.transport.loseConnection()
        self.pump.flush()

    def kill(self):
        """Lose the connection dropping everything not yet delivered."""
        self.client.transport.stream = []
        self.server.transport.stream = []
        self.cut()


def readFile(path):
    with open(path, "rb") as f:
        return f.read()


def outcome(wires, d):
    """Pump every wire until C{d} has fired; return its result or its
    Failure."""
    results = []
    d.addBoth(results.append)
    for _ in range(10000):
        if results:
            break
        for w in wires:
            w.flush()
    assert results, "Deferred never fired"
    return results[0]


def run(wires, d):
    """Pump every wire until C{d} has fired; return its result."""
    r = outcome(wires, d)
    if hasattr(r, "raiseException"):
        r.raiseException()
    return r
