"""
Tests for L{xdiskd.control.metrics}: the Prometheus text of in-memory
nodes, parsed back; counters move with I/O; histograms are cumulative.
"""

import re

from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from xdiskd.control.metrics import (
    CONTENT_TYPE, MetricsResource, escapeLabel, render)
from xdiskd.dmsg import constants as C
from xdiskd.xa.stats import BUCKETS, UnitStats
from tests.opsstack import FakeDaemon, oneExportStack
from tests.stack import exporterNode, makeImage, run

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """
    Prometheus text → ({(name, frozenset(labels)): value}, {name: type}).
    Strict enough to catch malformed lines.
    """
    samples = {}
    types = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, name
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = _SAMPLE.match(line)
        assert m, "bad sample line %r" % (line,)
        labels = {}
        if m.group(3):
            body = m.group(3)
            pairs = _LABEL.findall(body)
            rebuilt = ",".join('%s="%s"' % p for p in pairs)
            assert rebuilt == body, "bad labels %r" % (body,)
            labels = {k: v.replace('\\"', '"').replace("\\n", "\n")
                      .replace("\\\\", "\\") for k, v in pairs}
        value = m.group(4)
        key = (m.group(1), frozenset(labels.items()))
        assert key not in samples, "duplicate %r" % (key,)
        samples[key] = float(value.replace("+Inf", "inf"))
    return samples, types


def value(samples, name, **labels):
    """The one sample of C{name} whose labels include C{labels}."""
    found = [v for (n, ls), v in samples.items()
             if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


class UnitStatsTests(TestCase):
    def test_latencyBuckets(self):
        """Each latency counts in the first bucket whose bound is >= it
        (a bound is inclusive, as Prometheus' le)."""
        stats = UnitStats()
        for latency in (0.0, 0.0001, 0.00010001, 0.001, 0.0011, 10.0,
                        10.5):
            stats.finish(C.BLK_READ, 512, False, latency)
        expected = [0] * len(BUCKETS)
        for i in (0, 0, 1, 3, 4, len(BUCKETS) - 2, len(BUCKETS) - 1):
            expected[i] += 1
        self.assertEqual(stats.buckets, expected)
        self.assertEqual((stats.latencyCount, stats.bytes["read"]),
                         (7, 7 * 512))


class MetricsTests(TestCase):
    def setUp(self):
        oneExportStack(self)
        self.daemon.connectors.add("mem:a")
        self.net.flush()
        self.unit = self.imp.importer.lookup("xa0")

    def scrape(self, daemon=None):
        return parse(render(daemon or self.daemon))

    def test_unitCountersMove(self):
        samples, types = self.scrape()
        self.assertEqual(value(samples, "xdiskd_unit_ops_total", unit="xa0",
                               serial="serno/A", op="write"), 0)
        run(self.net.pumps, self.unit.open())
        run(self.net.pumps, self.unit.write(0, b"z" * 8192))
        run(self.net.pumps, self.unit.read(0, 4096))
        run(self.net.pumps, self.unit.flush())
        samples, types = self.scrape()
        for op, n in (("read", 1), ("write", 1), ("flush", 1), ("trim", 0)):
            self.assertEqual(value(samples, "xdiskd_unit_ops_total",
                                   unit="xa0", op=op), n)
        self.assertEqual(value(samples, "xdiskd_unit_bytes_total",
                               unit="xa0", op="write"), 8192)
        self.assertEqual(value(samples, "xdiskd_unit_bytes_total",
                               unit="xa0", op="read"), 4096)
        self.assertEqual(value(samples, "xdiskd_unit_open", unit="xa0"), 1)
        self.assertEqual(value(samples, "xdiskd_unit_paths", unit="xa0"), 1)
        for name in ("errors", "retries", "failovers", "stalls"):
            self.assertEqual(value(samples, "xdiskd_unit_%s_total" % name,
                                   unit="xa0"), 0)
        self.assertEqual(types["xdiskd_unit_ops_total"], "counter")
        self.assertEqual(types["xdiskd_unit_inflight"], "gauge")
        self.assertEqual(types["xdiskd_unit_latency_seconds"], "histogram")

    def test_nbdBudget(self):
        """The daemon-wide NBD memory budget's gauges and counter."""
        from xdiskd.nbd.budget import MemoryBudget
        self.daemon.nbdBudget = MemoryBudget(64 << 20)
        conn = type("Conn", (), {})()
        self.daemon.nbdBudget.add(conn)
        self.daemon.nbdBudget.change(conn, 5 << 20)
        samples, types = self.scrape()
        self.assertEqual(value(samples, "xdiskd_nbd_memory_held_bytes"),
                         5 << 20)
        self.assertEqual(value(samples, "xdiskd_nbd_memory_budget_bytes"),
                         64 << 20)
        self.assertEqual(value(samples,
                               "xdiskd_nbd_memory_paused_connections"), 0)
        self.assertEqual(types["xdiskd_nbd_memory_pauses_total"], "counter")

    def test_unflushedWindow(self):
        """The window in use moves with an unflushed write and back to 0
        with the flush; the replay counters start at 0."""
        run(self.net.pumps, self.unit.open())
        run(self.net.pumps, self.unit.write(0, b"z" * 8192))
        samples, types = self.scrape()
        self.assertEqual(value(samples, "xdiskd_unit_unflushed_bytes",
                               unit="xa0"), 8192 + 128)
        self.assertEqual(value(samples, "xdiskd_unit_unflushed_limit_bytes",
                               unit="xa0"), 64 << 20)
        for name in ("replays", "replayed_bytes", "replayed_writes",
                     "window_flushes", "unflushed_lost"):
            self.assertEqual(value(samples, "xdiskd_unit_%s_total" % name,
                                   unit="xa0"), 0)
            self.assertEqual(types["xdiskd_unit_%s_total" % name],
                             "counter")
        run(self.net.pumps, self.unit.flush())
        samples, types = self.scrape()
        self.assertEqual(value(samples, "xdiskd_unit_unflushed_bytes",
                               unit="xa0"), 0)

    def test_histogram(self):
        """Cumulative buckets ending in +Inf == _count; _sum > 0."""
        run(self.net.pumps, self.unit.open())
        for i in range(5):
            run(self.net.pumps, self.unit.write(i * 512, b"q" * 512))
        samples, _ = self.scrape()
        buckets = [value(samples, "xdiskd_unit_latency_seconds_bucket",
                         unit="xa0", le=le)
                   for le in [repr(float(b)) for b in BUCKETS[:-1]] +
                   ["+Inf"]]
        self.assertEqual(buckets, sorted(buckets))
        count = value(samples, "xdiskd_unit_latency_seconds_count",
                      unit="xa0")
        self.assertEqual((buckets[-1], count), (5, 5))
        self.assertGreater(value(samples, "xdiskd_unit_latency_seconds_sum",
                                 unit="xa0"), 0)

    def test_linksAndConnectors(self):
        samples, types = self.scrape()
        self.assertEqual(value(samples, "xdiskd_connect_up",
                               endpoint="mem:a"), 1)
        self.assertEqual(value(samples, "xdiskd_connect_reconnects_total",
                               endpoint="mem:a"), 0)
        self.assertEqual(value(samples, "xdiskd_link_up", origin="connect"),
                         1)
        self.assertGreater(value(samples,
                                 "xdiskd_link_received_messages_total"), 0)
        self.assertGreater(value(samples, "xdiskd_link_received_bytes_total"),
                           0)
        # Drop the link from the exporter's side: the connector redials.
        [link] = list(self.exp.links)
        link.close("test")
        self.net.flush()
        samples, _ = self.scrape()
        self.assertEqual(value(samples, "xdiskd_connect_up",
                               endpoint="mem:a"), 0)
        self.assertNotIn("xdiskd_link_up", {n for n, _ in samples})
        self.clock.advance(5)
        self.net.flush()
        samples, _ = self.scrape()
        self.assertEqual(value(samples, "xdiskd_connect_up",
                               endpoint="mem:a"), 1)
        self.assertEqual(value(samples, "xdiskd_connect_reconnects_total",
                               endpoint="mem:a"), 1)
        self.assertEqual(value(samples, "xdiskd_connect_connections_total",
                               endpoint="mem:a"), 2)

    def test_linkInflight(self):
        """In-flight I/O is counted per link until answered."""
        run(self.net.pumps, self.unit.open())
        d = self.unit.read(0, 4096)
        samples, _ = self.scrape()
        self.assertEqual(value(samples, "xdiskd_link_inflight"), 1)
        self.assertEqual(value(samples, "xdiskd_unit_inflight", unit="xa0"),
                         1)
        run(self.net.pumps, d)
        samples, _ = self.scrape()
        self.assertEqual(value(samples, "xdiskd_link_inflight"), 0)

    def test_linkIOCounters(self):
        """Per-link I/O ops and bytes move with I/O on that link."""
        run(self.net.pumps, self.unit.open())
        run(self.net.pumps, self.unit.write(0, b"x" * 8192))
        run(self.net.pumps, self.unit.read(0, 4096))
        samples, types = self.scrape()
        self.assertEqual(types["xdiskd_link_io_ops_total"], "counter")
        self.assertEqual(value(samples, "xdiskd_link_io_ops_total",
                               side="import"), 2)
        self.assertEqual(value(samples, "xdiskd_link_io_bytes_total",
                               side="import"), 8192 + 4096)
        self.assertEqual(value(samples, "xdiskd_link_io_errors_total",
                               side="import"), 0)
        self.assertEqual(value(samples, "xdiskd_link_io_retries_total"), 0)
        # The exporter's side of the same link served them.
        [link] = list(self.exp.links)
        self.assertEqual((link.io.exportOps, link.io.exportBytes),
                         (2, 8192 + 4096))

    def test_exports(self):
        samples, _ = self.scrape(FakeDaemon(self.exp))
        self.assertEqual(value(samples, "xdiskd_export_spans",
                               serial="serno/A"), 1)
        run(self.net.pumps, self.unit.read(0, 512))   # probe I/O
        samples, _ = self.scrape(FakeDaemon(self.exp))
        self.assertEqual(value(samples, "xdiskd_export_ops_total",
                               serial="serno/A"), 1)
        self.assertEqual(value(samples, "xdiskd_export_errors_total",
                               serial="serno/A"), 0)
        self.assertEqual(value(samples, "xdiskd_link_up", origin="listen"),
                         1)

    def test_escaping(self):
        self.assertEqual(escapeLabel('a"b\\c\nd'), 'a\\"b\\\\c\\nd')
        path = makeImage(self)
        exp = exporterNode(self, [('we"ird\\x', path, False)])
        samples, _ = self.scrape(FakeDaemon(exp))
        self.assertEqual(value(samples, "xdiskd_export_ops_total",
                               serial='we"ird\\x'), 0)

    def test_resource(self):
        resource = MetricsResource(self.daemon)
        request = DummyRequest([b"metrics"])
        body = resource.render_GET(request)
        self.assertEqual(request.responseHeaders.getRawHeaders(
            b"content-type"), [CONTENT_TYPE])
        samples, _ = parse(body.decode())
        self.assertEqual(value(samples, "xdiskd_unit_paths", unit="xa0"), 1)
        request = DummyRequest([b"other"])
        resource.render_GET(request)
        self.assertEqual(request.responseCode, 404)
