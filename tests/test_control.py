"""
Tests for L{xdiskd.control.api}, L{xdiskd.control.server} and
L{xdiskd.connectors}: the control commands against in-memory nodes, and
the line protocol over a string transport.
"""

import json
import os

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from xdiskd.control.api import ControlAPI
from xdiskd.control.server import MAX_LINE, ControlFactory, encodeReply
from tests.opsstack import FakeDaemon, Net
from tests.stack import Wire, exporterNode, importerNode, makeImage, run

SIZE = 1 << 20


class APITestsBase(TestCase):
    """
    Exporter node C{a} (serial serno/A), reached from the importer
    through the connector C{mem:a}.
    """

    def setUp(self):
        self.path = makeImage(self, SIZE)
        self.net = Net()
        self.exp = exporterNode(self, [("serno/A", self.path, False)])
        self.net.nodes["a"] = self.exp
        self.imp, self.clock = importerNode()
        self.impDaemon = FakeDaemon(self.imp, self.net, self.clock)
        self.expDaemon = FakeDaemon(self.exp, Net())
        self.now = [100.0]
        self.api = ControlAPI(self.impDaemon, clock=lambda: self.now[0])
        self.expAPI = ControlAPI(self.expDaemon)
        self.impDaemon.connectors.add("mem:a")
        self.net.flush()

    def call(self, api, **request):
        d = api.dispatch(request)
        self.net.flush()
        return self.successResultOf(d)

    def ok(self, api, **request):
        reply = self.call(api, **request)
        self.assertTrue(reply["ok"], reply)
        # Every reply is JSON.
        json.loads(encodeReply(reply))
        return reply

    def error(self, api, **request):
        reply = self.call(api, **request)
        self.assertFalse(reply["ok"], reply)
        return reply["error"]

    def unit(self, serial="serno/A"):
        return self.imp.importer.lookup(serial)


class ListStatTests(APITestsBase):
    def test_listImporter(self):
        """Units with their paths, links and connect targets."""
        reply = self.ok(self.api, cmd="list")
        [u] = reply["units"]
        self.assertEqual((u["name"], u["serial"], u["size"], u["state"],
                          u["opencnt"]), ("xa0", "serno/A", SIZE,
                                          "closed", 0))
        [link] = reply["links"]
        self.assertEqual(u["paths"], [link["name"]])
        # The exporter (xdiskd) states 1 MiB I/Os in its span.
        self.assertEqual(u["maxIO"], 1 << 20)
        self.assertEqual((link["direction"], link["endpoint"],
                          link["ready"]), ("out", "mem:a", True))
        self.assertEqual(reply["connectors"], [dict(
            endpoint="mem:a", up=True, link=link["id"], connections=1,
            reconnects=0, failures=0, attempts=0, lastError="")])
        self.assertEqual(reply["exports"], [])
        self.assertNotIn("stats", u)

    def test_listExporter(self):
        """Exports with their spans; inbound links."""
        reply = self.ok(self.expAPI, cmd="list")
        [e] = reply["exports"]
        self.assertEqual((e["serial"], e["path"], e["size"], e["readOnly"],
                          e["opens"], e["ops"], e["errors"]),
                         ("serno/A", self.path, SIZE, False, 0, 0, 0))
        self.assertEqual(len(e["spans"]), 1)
        [link] = reply["links"]
        self.assertEqual(link["direction"], "in")
        self.assertEqual(reply["units"], [])

    def test_stat(self):
        """Counters with the daemon's clock; they move with I/O."""
        first = self.ok(self.api, cmd="stat")
        self.assertEqual(first["time"], 100.0)
        self.assertEqual(len(first["buckets"]) + 1,
                         len(first["units"][0]["stats"]["buckets"]))
        u = self.unit()
        run(self.net.pumps, u.open())
        run(self.net.pumps, u.write(0, b"x" * 4096))
        run(self.net.pumps, u.read(0, 8192))
        self.now[0] = 101.0
        second = self.ok(self.api, cmd="stat")
        stats = second["units"][0]["stats"]
        self.assertEqual((stats["ops"]["read"], stats["ops"]["write"]),
                         (1, 1))
        self.assertEqual((stats["bytes"]["read"], stats["bytes"]["write"]),
                         (8192, 4096))
        self.assertEqual(stats["latencyCount"], 2)
        self.assertEqual(second["time"], 101.0)
        self.assertEqual(second["units"][0]["state"], "open")


class RequestErrorTests(APITestsBase):
    def test_notAnObject(self):
        reply = self.successResultOf(self.api.dispatch([1, 2]))
        self.assertFalse(reply["ok"])
        self.assertIn("JSON object", reply["error"])

    def test_missingCmd(self):
        self.assertIn('missing "cmd"', self.error(self.api, foo=1))

    def test_unknownCmd(self):
        e = self.error(self.api, cmd="frobnicate")
        self.assertIn("unknown command 'frobnicate'", e)
        self.assertIn("export-add", e)

    def test_unexpectedArgument(self):
        self.assertIn("unexpected argument 'bogus'",
                      self.error(self.api, cmd="list", bogus="x"))

    def test_missingArgument(self):
        self.assertIn("missing argument 'endpoint'",
                      self.error(self.api, cmd="attach"))

    def test_badArgumentType(self):
        self.assertIn("must be a string",
                      self.error(self.api, cmd="attach", endpoint=["x"]))
        self.assertIn("must be a string",
                      self.error(self.api, cmd="detach", target=True))

    def test_idEchoed(self):
        self.assertEqual(self.call(self.api, cmd="list", id=7)["id"], 7)
        self.assertEqual(self.call(self.api, cmd="nope", id="a")["id"],
                         "a")

    def test_internalErrorIsAReply(self):
        """A bug answers an error reply (and is logged), never raises."""
        def broken():
            raise RuntimeError("boom")
        self.api.commands["list"] = (broken, ())
        self.assertEqual(self.error(self.api, cmd="list"),
                         "internal error: boom")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class AttachDetachTests(APITestsBase):
    def test_attachBadEndpoint(self):
        self.assertIn("bad endpoint",
                      self.error(self.api, cmd="attach", endpoint="mem:zz"))
        self.assertNotIn("mem:zz", self.impDaemon.connectors)

    def test_attachTwice(self):
        self.assertIn("already attached",
                      self.error(self.api, cmd="attach", endpoint="mem:a"))

    def test_attachSecondPath(self):
        """A second exporter of the same serial is a second path."""
        path = makeImage(self, SIZE)
        self.net.nodes["b"] = exporterNode(self, [("serno/A", path, False)])
        self.assertEqual(self.ok(self.api, cmd="attach",
                                 endpoint="mem:b")["endpoint"], "mem:b")
        self.net.flush()
        self.assertEqual(len(self.unit().paths), 2)

    def test_detachEndpoint(self):
        """The link closes, the path goes, nothing redials."""
        linkId = self.ok(self.api, cmd="list")["links"][0]["id"]
        reply = self.ok(self.api, cmd="detach", target="mem:a")
        self.assertEqual((reply["endpoint"], reply["links"]),
                         ("mem:a", [linkId]))
        self.assertEqual(self.unit().paths, [])
        self.assertNotIn("mem:a", self.impDaemon.connectors)
        self.clock.advance(60)
        self.net.flush()
        listing = self.ok(self.api, cmd="list")
        self.assertEqual((listing["links"], listing["connectors"]), ([], []))

    def test_detachLinkIdOfConnector(self):
        """An outbound link by id: its endpoint stops being dialled."""
        linkId = self.ok(self.api, cmd="list")["links"][0]["id"]
        reply = self.ok(self.api, cmd="detach", target="link%d" % linkId)
        self.assertEqual((reply["endpoint"], reply["links"]),
                         ("mem:a", [linkId]))
        self.assertEqual(len(self.impDaemon.connectors), 0)

    def test_detachInboundLinkById(self):
        """An inbound link is closed; the exporter's span on it goes."""
        export = self.exp.exporter.exports["serno/A"]
        [link] = list(self.exp.links)
        for target in (str(link.id), link.name):
            self.assertEqual(len(export.spans), 1)
            reply = self.ok(self.expAPI, cmd="detach", target=target)
            self.assertEqual(reply, dict(ok=True, endpoint=None,
                                         links=[link.id]))
            self.assertEqual(export.spans, {})
            self.assertEqual(self.unit().paths, [])
            # The importer's connector redials (0.2 s + up to 1 s jitter).
            self.clock.advance(5)
            self.net.flush()
            [link] = list(self.exp.links)
        reply = self.ok(self.api, cmd="list")
        self.assertEqual(reply["connectors"][0]["reconnects"], 2)

    def test_detachUnknown(self):
        e = self.error(self.api, cmd="detach", target="link999")
        self.assertIn("no connect endpoint or link 'link999'", e)
        self.assertIn("no connect endpoint",
                      self.error(self.api, cmd="detach", target="tcp:x:1"))

    def test_failoverOnDetach(self):
        """
        Detaching the path a unit is open on fails it over to the other
        path; I/O queued meanwhile completes.
        """
        path = makeImage(self, SIZE)
        self.net.nodes["b"] = exporterNode(self, [("serno/A", path, False)])
        self.ok(self.api, cmd="attach", endpoint="mem:b")
        self.net.flush()
        u = self.unit()
        run(self.net.pumps, u.open())
        openLink = u.openTxn.link
        d = u.write(0, b"y" * 65536)
        self.ok(self.api, cmd="detach", target=openLink.name)
        run(self.net.pumps, d)
        self.assertEqual(u.state, "open")
        self.assertIsNot(u.openTxn.link, openLink)
        self.assertEqual(u.stats.failovers, 1)


class ExportTests(APITestsBase):
    def test_exportAddRemove(self):
        """A span appears at the importer, then goes."""
        path = makeImage(self, 2 * SIZE)
        reply = self.ok(self.expAPI, cmd="export-add",
                        spec="serno/NEW=%s,ro" % (path,))
        self.assertEqual((reply["export"]["serial"],
                          reply["export"]["readOnly"]), ("serno/NEW", True))
        self.net.flush()
        u = self.unit("serno/NEW")
        self.assertEqual((u.size, len(u.paths)), (2 * SIZE, 1))
        reply = self.ok(self.expAPI, cmd="export-remove", serial="serno/NEW")
        self.assertEqual(reply["serial"], "serno/NEW")
        self.net.flush()
        self.assertEqual(u.paths, [])
        self.assertNotIn("serno/NEW", self.exp.exporter.exports)

    def test_exportAddErrors(self):
        self.assertIn("missing '='",
                      self.error(self.expAPI, cmd="export-add", spec="x"))
        self.assertIn("duplicate serial 'serno/A'",
                      self.error(self.expAPI, cmd="export-add",
                                 spec="serno/A=" + self.path))
        self.assertIn("/nonexistent",
                      self.error(self.expAPI, cmd="export-add",
                                 spec="x=/nonexistent/disk"))

    def test_exportRemoveUnknown(self):
        self.assertIn("no export 'nope'",
                      self.error(self.expAPI, cmd="export-remove",
                                 serial="nope"))
        self.assertIn("no export",
                      self.error(self.api, cmd="export-remove",
                                 serial="serno/A"))

    def test_exportFromPureImporter(self):
        """
        A daemon started without exports gains an exporter; the span goes
        out at once on links already up (to a peer that wants spans).
        """
        other, _ = importerNode()
        self.net.nodes["c"] = other
        self.ok(self.api, cmd="attach", endpoint="mem:c")
        self.net.flush()
        path = makeImage(self, SIZE)
        self.assertIsNone(self.imp.exporter)
        self.ok(self.api, cmd="export-add", spec="serno/B=" + path)
        self.net.flush()
        self.assertIsNotNone(self.imp.exporter)
        u = other.importer.lookup("serno/B")
        self.assertEqual(len(u.paths), 1)

    def test_reloadWithoutConfig(self):
        self.assertIn("without --config", self.error(self.api, cmd="reload"))


class ProtocolTests(TestCase):
    """The line protocol, over a string transport."""

    def setUp(self):
        exp = exporterNode(self, [("serno/A", makeImage(self), False)])
        imp, clock = importerNode()
        Wire(exp, imp)
        self.api = ControlAPI(FakeDaemon(imp, clock=clock))
        self.proto = ControlFactory(self.api).buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def replies(self):
        lines = self.transport.value().split(b"\n")
        self.assertEqual(lines[-1], b"")
        self.transport.clear()
        return [json.loads(line) for line in lines[:-1]]

    def test_requestsInOrder(self):
        self.proto.dataReceived(b'{"cmd": "list", "id": 1}\n{"cmd": "st')
        self.proto.dataReceived(b'at", "id": 2}\r\n\n{"cmd": "x", "id": 3}\n')
        replies = self.replies()
        self.assertEqual([(r["ok"], r["id"]) for r in replies],
                         [(True, 1), (True, 2), (False, 3)])
        self.assertEqual(replies[0]["units"][0]["name"], "xa0")

    def test_badJSON(self):
        """An error reply; the connection stays usable."""
        self.proto.dataReceived(b'{"cmd": \n[[[[[[\n' + b"[" * 60000)
        self.proto.dataReceived(b'\n{"cmd": "list"}\n')
        replies = self.replies()
        self.assertEqual([r["ok"] for r in replies],
                         [False, False, False, True])
        for r in replies[:3]:
            self.assertIn("bad JSON", r["error"])
        self.assertFalse(self.transport.disconnecting)

    def test_lineTooLong(self):
        """Bounded: an error reply, then the connection is closed."""
        self.proto.dataReceived(b"x" * (MAX_LINE + 10))
        [reply] = self.replies()
        self.assertIn("longer than", reply["error"])
        self.assertTrue(self.transport.disconnecting)

    def test_nonFinite(self):
        """NaN/Infinity are not JSON: they are sent as null."""
        self.assertEqual(json.loads(encodeReply({"a": [float("inf"), 1.5],
                                                 "b": float("nan")})),
                         {"a": [None, 1.5], "b": None})


class ControlSocketTests(TestCase):
    """The real listener: a private socket."""

    def test_mode0600(self):
        from twisted.internet import reactor
        from xdiskd.control.server import controlService
        import shutil
        import tempfile
        d = tempfile.mkdtemp(dir="/tmp")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "c.sock")
        svc = controlService(reactor, path, ControlAPI(None))
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
