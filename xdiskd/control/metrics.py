"""
Prometheus metrics (text exposition format 0.0.4) over twisted.web:
C{--metrics tcp:9100:interface=127.0.0.1} serves C{/metrics}.

Everything is read from the live objects at scrape time; nothing is
counted twice and nothing here runs per request.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from xdiskd.control.api import linkInflight
from xdiskd.endpoints import AnnouncingEndpoint
from xdiskd.xa.stats import BUCKETS

log = Logger()

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

Labels = Tuple[Tuple[str, str], ...]


def escapeLabel(value: str) -> str:
    """Label values escape backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace(
        "\n", "\\n")


def formatValue(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class Family:
    """One metric family: C{# HELP}, C{# TYPE}, then its samples."""

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.samples: List[Tuple[str, Labels, float]] = []

    def add(self, labels: Dict[str, str], value: float,
            suffix: str = "") -> None:
        self.samples.append((self.name + suffix, tuple(labels.items()),
                             value))

    def render(self) -> Iterable[str]:
        yield "# HELP %s %s" % (self.name, self.help)
        yield "# TYPE %s %s" % (self.name, self.kind)
        for name, labels, value in self.samples:
            if labels:
                text = ",".join('%s="%s"' % (k, escapeLabel(v))
                                for k, v in labels)
                yield "%s{%s} %s" % (name, text, formatValue(value))
            else:
                yield "%s %s" % (name, formatValue(value))


class Registry:
    """The families of one scrape, in order of first use."""

    def __init__(self) -> None:
        self.families: Dict[str, Family] = {}

    def family(self, name: str, kind: str, help: str) -> Family:
        f = self.families.get(name)
        if f is None:
            f = self.families[name] = Family(name, kind, help)
        return f

    def counter(self, name: str, help: str, labels: Dict[str, str],
                value: float) -> None:
        self.family(name, "counter", help).add(labels, value)

    def gauge(self, name: str, help: str, labels: Dict[str, str],
              value: float) -> None:
        self.family(name, "gauge", help).add(labels, value)

    def render(self) -> str:
        lines: List[str] = []
        for f in self.families.values():
            lines.extend(f.render())
        return "\n".join(lines) + "\n"


def _units(r: Registry, importer: Any) -> None:
    if importer is None:
        return
    for reason, n in sorted(importer.refused.items()):
        r.counter("xdiskd_import_spans_refused_total",
                  "Spans not taken as paths: a sector size NBD cannot "
                  "serve (geometry), size or sector size unlike the "
                  "unit's (mismatch), the link's units limit (units) or the "
                  "importer's (max-units).",
                  {"reason": reason}, n)
    budget = importer.windowBudget
    r.gauge("xdiskd_unflushed_bytes", "What all units' unflushed windows "
            "hold together (--unflushed-memory).", {}, budget.used)
    r.gauge("xdiskd_unflushed_limit_bytes", "--unflushed-memory (0: no "
            "bound).", {}, budget.limit)
    for unit in importer.devices():
        snap = unit.snapshot()
        stats = snap["stats"]
        base = {"unit": snap["name"], "serial": snap["serial"]}
        r.gauge("xdiskd_unit_size_bytes", "Size of the unit.", base,
                snap["size"])
        r.gauge("xdiskd_unit_open", "Opens of the unit (NBD clients).",
                base, snap["opencnt"])
        r.gauge("xdiskd_unit_paths", "Live paths (spans) to the unit.",
                base, len(snap["paths"]))
        r.gauge("xdiskd_unit_stalled",
                "1 while the unit is open without a usable path.", base,
                1 if snap["state"] == "stalled" else 0)
        for op, n in stats["ops"].items():
            r.counter("xdiskd_unit_ops_total", "Requests completed.",
                      dict(base, op=op), n)
        for op in ("read", "write"):
            r.counter("xdiskd_unit_bytes_total",
                      "Bytes read or written successfully.",
                      dict(base, op=op), stats["bytes"][op])
        r.counter("xdiskd_unit_errors_total", "Requests that failed.",
                  base, stats["errors"])
        r.counter("xdiskd_unit_retries_total",
                  "I/O chunks re-queued after a lost path or a "
                  "non-media error.", base, stats["retries"])
        r.counter("xdiskd_unit_failovers_total",
                  "Opens lost while in use and re-opened.", base,
                  stats["failovers"])
        r.counter("xdiskd_unit_stalls_total",
                  "Times the unit stalled without a usable path.", base,
                  stats["stalls"])
        r.gauge("xdiskd_unit_max_stall_seconds",
                "Longest stall so far.", base, stats["maxStall"])
        r.gauge("xdiskd_unit_without_path_seconds",
                "Seconds the unit has been open without a usable path "
                "(0 while it has one).", base, snap["stalledFor"])
        r.gauge("xdiskd_unit_failing_fast",
                "1 while the unit's I/O fails with EIO (no path for "
                "--stall-timeout).", base, 1 if snap["failingFast"] else 0)
        r.counter("xdiskd_unit_fail_fast_total",
                  "Times the stall timeout expired.", base,
                  stats["failFasts"])
        window = snap.get("window")
        if window is not None:
            r.counter("xdiskd_unit_replays_total",
                      "Unflushed windows replayed after a lost open.", base,
                      window["replays"])
            r.counter("xdiskd_unit_replayed_bytes_total",
                      "Bytes of unflushed writes replayed.", base,
                      window["replayedBytes"])
            r.counter("xdiskd_unit_replayed_writes_total",
                      "Unflushed writes and trims replayed.", base,
                      window["replayedWrites"])
            r.gauge("xdiskd_unit_replay_max_seconds",
                    "Longest replay (re-issue and flush) so far.", base,
                    window["maxReplaySeconds"])
            r.gauge("xdiskd_unit_unflushed_bytes",
                    "Unflushed window in use: data plus per-entry cost.",
                    base, window["inUse"])
            r.gauge("xdiskd_unit_unflushed_limit_bytes",
                    "Size of the unflushed window (--unflushed-window).",
                    base, window["limit"])
            r.counter("xdiskd_unit_window_flushes_total",
                      "Flushes the importer sent to make room in a full "
                      "window.", base, window["autoFlushes"])
            r.counter("xdiskd_unit_unflushed_lost_total",
                      "Unflushed windows lost and failed with EIO "
                      "(--unflushed fail, or a failed replay).", base,
                      window["lostWindows"])
        r.gauge("xdiskd_unit_inflight",
                "I/O transactions on the wire.", base, snap["inflight"])
        r.gauge("xdiskd_unit_queued",
                "I/O chunks waiting for a tag or a path.", base,
                snap["queued"])
        hist = r.family("xdiskd_unit_latency_seconds", "histogram",
                        "Request latency, submit to completion.")
        cumulative = 0
        for bound, n in zip(BUCKETS, stats["buckets"]):
            cumulative += n
            hist.add(dict(base, le=formatValue(bound)), cumulative,
                     "_bucket")
        hist.add(base, stats["latencySum"], "_sum")
        hist.add(base, stats["latencyCount"], "_count")


def _links(r: Registry, node: Any, connectors: Any) -> None:
    inflight = linkInflight(node.importer)
    for link in sorted(getattr(node, "links", ()), key=lambda l: l.id):
        connector = connectors.forLink(link) if connectors else None
        base = {"link": link.name, "id": str(link.id),
                "origin": "connect" if connector is not None else "listen"}
        r.gauge("xdiskd_link_up",
                "1 once the link finished its LNK_CONN exchange.", base,
                1 if link.connected and link.ready else 0)
        r.counter("xdiskd_link_received_messages_total",
                  "DMSG messages received.", base, link.messagesIn)
        r.counter("xdiskd_link_sent_messages_total",
                  "DMSG messages sent.", base, link.messagesOut)
        r.counter("xdiskd_link_received_bytes_total",
                  "Bytes received on the link.", base, link.bytesIn)
        r.counter("xdiskd_link_violations_total",
                  "Protocol-rule violations dropped.", base,
                  getattr(link, "violations", 0))
        r.gauge("xdiskd_link_inflight",
                "Import-side I/O transactions in flight on the link.",
                base, inflight.get(link, 0))
        live = getattr(link, "liveness", None)
        if live is not None:
            r.gauge("xdiskd_link_silence_seconds",
                    "Seconds since bytes last arrived (liveness sample).",
                    base, live.silence())
            rtt = live.rtt
            if rtt is not None:
                r.gauge("xdiskd_link_ping_rtt_seconds",
                        "Least recent LNK_PING round trip.", base, rtt)
        io = link.io
        for side, ops, nbytes, errors in (
                ("import", io.importOps, io.importBytes, io.importErrors),
                ("export", io.exportOps, io.exportBytes, io.exportErrors)):
            labels = dict(base, side=side)
            r.counter("xdiskd_link_io_ops_total",
                      "BLK I/O transactions completed on the link (import: "
                      "sent by us; export: served by us).", labels, ops)
            r.counter("xdiskd_link_io_bytes_total",
                      "READ/WRITE bytes moved over the link.", labels,
                      nbytes)
            r.counter("xdiskd_link_io_errors_total",
                      "I/O answered with an error (0x22, or a probe lost).",
                      labels, errors)
        r.counter("xdiskd_link_io_retries_total",
                  "Import-side I/O re-queued after a LOSTLINK or non-media "
                  "error on the link.", base, io.importRetries)
    if connectors is None:
        return
    for c in connectors.connectors():
        base = {"endpoint": c.endpoint}
        r.gauge("xdiskd_connect_up",
                "1 while the outbound link to the endpoint is up.", base,
                1 if c.up else 0)
        r.counter("xdiskd_connect_connections_total",
                  "Connections made to the endpoint.", base, c.connections)
        r.counter("xdiskd_connect_reconnects_total",
                  "Connections made after the first one.", base,
                  c.reconnects)
        r.counter("xdiskd_connect_failures_total",
                  "Connection attempts to the endpoint that failed.", base,
                  c.failures)


def _exports(r: Registry, exporter: Any) -> None:
    if exporter is None:
        return
    for export in list(exporter.exports.values()):
        base = {"serial": export.serial}
        r.gauge("xdiskd_export_size_bytes", "Size of the export.", base,
                export.store.size)
        r.gauge("xdiskd_export_spans",
                "Links the export is advertised on.", base,
                len(export.spans))
        r.gauge("xdiskd_export_opens", "BLK_OPENs on the export.", base,
                len(export.opens))
        r.gauge("xdiskd_export_inflight", "I/O running on the store.",
                base, export.inflight)
        r.counter("xdiskd_export_ops_total", "I/O requests received.",
                  base, export.ops)
        r.counter("xdiskd_export_errors_total",
                  "I/O requests answered with an error.", base,
                  export.errors)


def render(daemon: Any) -> str:
    """The metrics text of a daemon (an L{xdiskd.service.XDiskService})."""
    r = Registry()
    node = daemon.node
    _units(r, node.importer)
    _links(r, node, getattr(daemon, "connectors", None))
    _exports(r, node.exporter)
    _nbd(r, getattr(daemon, "nbdBudget", None))
    return r.render()


def _nbd(r: Registry, budget: Any) -> None:
    if budget is None:
        return
    r.gauge("xdiskd_nbd_memory_held_bytes", "Request and reply bytes held "
            "for NBD clients (all connections).", {}, budget.held)
    r.gauge("xdiskd_nbd_memory_budget_bytes", "The --nbd-memory budget.",
            {}, budget.limit)
    r.gauge("xdiskd_nbd_memory_paused_connections", "NBD connections not "
            "read from because of the budget.", {}, budget.paused)
    r.counter("xdiskd_nbd_memory_pauses_total", "Times an NBD connection "
              "was paused for the budget.", {}, budget.pauses)


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, daemon: Any) -> None:
        Resource.__init__(self)
        self.daemon = daemon

    def render_GET(self, request: Any) -> bytes:
        if request.postpath not in ([b"metrics"], [b"metrics", b""]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain")
            return b"metrics are at /metrics\n"
        request.setHeader(b"content-type", CONTENT_TYPE)
        return render(self.daemon).encode("utf-8")


class QuietSite(Site):
    """A Site that writes no access log: scrapes come every few seconds."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def _announce(port: Any) -> None:
    """Log the address actually bound (a port of 0 picks one)."""
    host = port.getHost()
    log.info("metrics at http://{host}:{port}/metrics",
             host=getattr(host, "host", host),
             port=getattr(host, "port", ""))


def metricsService(reactor: Any, desc: str, daemon: Any,
                   name: Optional[str] = "metrics") -> \
        StreamServerEndpointService:
    """
    The HTTP listener on C{desc}.

    @raise ValueError: a bad endpoint description.
    """
    try:
        ep = serverFromString(reactor, desc)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(str(e))
    svc = StreamServerEndpointService(AnnouncingEndpoint(ep, _announce),
                                      QuietSite(MetricsResource(daemon)))
    svc._raiseSynchronously = True
    if name:
        svc.setName(name)
    return svc
