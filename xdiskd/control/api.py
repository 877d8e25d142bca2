"""
The control API: one function per command, each taking the request's
arguments and answering a JSON-able dict (or a Deferred of one).

Requests and replies are JSON objects (see L{xdiskd.control.server} for
the framing)::

    {"cmd": "list"}
    {"cmd": "stat"}
    {"cmd": "attach", "endpoint": "tcp:diskhost:9870"}
    {"cmd": "detach", "target": "tcp:diskhost:9870"}     (or a link id)
    {"cmd": "export-add", "spec": "serno/d0=/dev/sdb,ro"}
    {"cmd": "export-remove", "serial": "serno/d0"}
    {"cmd": "reload"}

Every reply has C{"ok"}: C{true} with the command's fields, or C{false}
with C{"error"}, a message for a human.  A request's C{"id"}, if any, is
echoed.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from xdiskd.control import exports as X
from xdiskd.export.spec import ExportSpecError, parseExportSpec
from xdiskd.export.store import StoreError
from xdiskd.labels import show
from xdiskd.xa.stats import BUCKETS


class ControlError(Exception):
    """A request that cannot be done; the message goes to the client."""


def _unitInfo(unit: Any, withStats: bool = False) -> Dict[str, Any]:
    info = unit.snapshot()
    if not withStats:
        info.pop("stats", None)
    # The link the unit's BLK_OPEN lives on: what a detach would fail over.
    txn = getattr(unit, "openTxn", None)
    info["openVia"] = txn.link.name if txn is not None else None
    return info


def _linkInfo(link: Any, connectors: Any) -> Dict[str, Any]:
    connector = connectors.forLink(link) if connectors is not None else None
    peer = getattr(link, "peerConn", None)
    return dict(id=link.id, name=link.name,
                connected=bool(link.connected), ready=bool(link.ready),
                direction="out" if connector is not None else "in",
                endpoint=connector.endpoint if connector else None,
                peer=show(peer.peer_label) if peer is not None else None,
                messagesIn=link.messagesIn, messagesOut=link.messagesOut,
                bytesIn=link.bytesIn,
                liveness=(link.liveness.snapshot()
                          if getattr(link, "liveness", None) else None),
                heldUntil=getattr(link, "heldUntil", 0.0))


def linkInflight(importer: Any) -> Dict[Any, int]:
    """Link → import-side I/O transactions in flight on it."""
    counts: Dict[Any, int] = {}
    if importer is None:
        return counts
    for unit in importer.devices():
        for txn in unit.inflight:
            counts[txn.link] = counts.get(txn.link, 0) + 1
    return counts


def _parseLinkId(target: str) -> Optional[int]:
    text = target[4:] if target.startswith("link") else target
    text = text.split("(", 1)[0]
    return int(text) if text.isdigit() else None


class ControlAPI:
    """
    The commands, over a running daemon (an
    L{xdiskd.service.XDiskService}: C{node}, C{connectors}, and what
    L{xdiskd.control.exports} needs).

    @param clock: monotonic seconds, the C{time} of C{stat} replies.
    @param reload: a callable returning a Deferred of the reload result,
        or None when the daemon has no config file.
    """

    log = Logger()

    def __init__(self, daemon: Any,
                 clock: Callable[[], float] = time.monotonic,
                 reload: Optional[Callable[[], Deferred]] = None) -> None:
        self.daemon = daemon
        self.clock = clock
        self.reload = reload
        # Command → (function, its argument names).
        self.commands: Dict[str, Any] = {
            "list": (self.list, ()),
            "stat": (self.stat, ()),
            "attach": (self.attach, ("endpoint",)),
            "detach": (self.detach, ("target",)),
            "export-add": (self.exportAdd, ("spec",)),
            "export-remove": (self.exportRemove, ("serial",)),
            "reload": (self.reloadConfig, ()),
        }

    # ---------------------------------------------------------------
    # Dispatch

    def dispatch(self, request: Any) -> Deferred:
        """
        Run one request (a decoded JSON value).  The Deferred always
        fires with a reply dict; it never fails.
        """
        rid = request.get("id") if isinstance(request, dict) else None
        d = maybeDeferred(self._call, request)

        def ok(result: Dict[str, Any]) -> Dict[str, Any]:
            reply = {"ok": True}
            reply.update(result)
            return reply

        def failed(f: Any) -> Dict[str, Any]:
            if f.check(ControlError):
                return {"ok": False, "error": str(f.value)}
            self.log.failure("control request {request} failed", f,
                             request=json.dumps(request, default=str))
            return {"ok": False, "error": "internal error: %s" % (
                f.getErrorMessage(),)}

        def withId(reply: Dict[str, Any]) -> Dict[str, Any]:
            if rid is not None:
                reply["id"] = rid
            return reply
        return d.addCallbacks(ok, failed).addCallback(withId)

    def _call(self, request: Any) -> Any:
        if not isinstance(request, dict):
            raise ControlError("a request is a JSON object, e.g. "
                               '{"cmd": "list"}')
        cmd = request.get("cmd")
        if not isinstance(cmd, str):
            raise ControlError('missing "cmd" (one of %s)' % (
                ", ".join(sorted(self.commands)),))
        if cmd not in self.commands:
            raise ControlError("unknown command %r (one of %s)" % (
                cmd, ", ".join(sorted(self.commands))))
        func, wanted = self.commands[cmd]
        args = {k: v for k, v in request.items() if k not in ("cmd", "id")}
        for key, value in args.items():
            if key not in wanted:
                raise ControlError("%s: unexpected argument %r" % (cmd, key))
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise ControlError("%s: %s must be a string" % (cmd, key))
        for key in wanted:
            if key not in args:
                raise ControlError("%s: missing argument %r" % (cmd, key))
        return func(**{k: str(v) for k, v in args.items()})

    # ---------------------------------------------------------------
    # Commands

    def list(self) -> Dict[str, Any]:
        """Units, exports, links and connect targets."""
        node = self.daemon.node
        connectors = getattr(self.daemon, "connectors", None)
        importer = node.importer
        exporter = node.exporter
        units = [_unitInfo(u) for u in importer.devices()] \
            if importer is not None else []
        exps = [X.describe(e) for e in exporter.exports.values()] \
            if exporter is not None else []
        links = sorted((_linkInfo(link, connectors)
                        for link in list(getattr(node, "links", ()))),
                       key=lambda info: info["id"])
        targets = [c.snapshot() for c in connectors.connectors()] \
            if connectors is not None else []
        relay = getattr(node, "relay", None)
        # Spans a relay holds (received sources plus relayed copies):
        # what bench/scale.py's mesh reads per node.
        spans = (dict(sources=len(relay.sources), copies=len(relay.copies))
                 if relay is not None else None)
        return dict(units=units, exports=exps, links=links,
                    connectors=targets, relay=spans)

    def stat(self) -> Dict[str, Any]:
        """Counters of every unit and export, with the daemon's time."""
        node = self.daemon.node
        importer = node.importer
        exporter = node.exporter
        units = [_unitInfo(u, True) for u in importer.devices()] \
            if importer is not None else []
        exps = [X.describe(e) for e in exporter.exports.values()] \
            if exporter is not None else []
        # Spans the importer would not take as paths, by reason.
        refused = dict(importer.refused) if importer is not None else {}
        # The last bucket is +Inf, which JSON cannot spell.
        return dict(time=self.clock(), wallclock=time.time(),
                    buckets=list(BUCKETS[:-1]), units=units, exports=exps,
                    spansRefused=refused)

    def attach(self, endpoint: str) -> Dict[str, Any]:
        """Dial a new DMSG peer, reconnecting like C{--connect}."""
        connectors = self.daemon.connectors
        if endpoint in connectors:
            raise ControlError("already attached to %s" % (endpoint,))
        try:
            connectors.add(endpoint)
        except ValueError as e:
            raise ControlError(str(e))
        return dict(endpoint=endpoint)

    def detach(self, target: str) -> Deferred:
        """
        Drop a link: C{target} is a connect endpoint (stop dialling it
        and close its link) or a link id (C{3}, C{link3} or the full
        name; an outbound link's endpoint stops being dialled too).
        Fires once the link is gone.
        """
        connectors = self.daemon.connectors
        node = self.daemon.node
        endpoint = None
        link = None
        if target in connectors:
            endpoint = target
        else:
            number = _parseLinkId(target)
            for candidate in list(getattr(node, "links", ())):
                if candidate.id == number or candidate.name == target:
                    link = candidate
                    break
            if link is None:
                raise ControlError(
                    "no connect endpoint or link %r (see xdisk list)" % (
                        target,))
            connector = connectors.forLink(link)
            if connector is not None:
                endpoint = connector.endpoint
        closed: List[int] = []
        if endpoint is not None:
            current = connectors[endpoint].link
            if current is not None and current.connected:
                closed.append(current.id)
            d = connectors.remove(endpoint)
        else:
            assert link is not None
            closed.append(link.id)
            lost = link.whenLost()
            node.detach(link)
            d = lost
        return d.addCallback(lambda _: dict(endpoint=endpoint,
                                            links=closed))

    def exportAdd(self, spec: str) -> Dict[str, Any]:
        """Export a file or device; peers see a new span."""
        try:
            parsed = parseExportSpec(spec)
            X.checkNew(self.daemon, [parsed])
        except ExportSpecError as e:
            raise ControlError(str(e))
        try:
            store = X.openFor(self.daemon, parsed)
        except StoreError as e:
            raise ControlError(str(e))
        export = X.add(self.daemon, parsed, store)
        return dict(export=X.describe(export))

    def exportRemove(self, serial: str) -> Deferred:
        """Withdraw an export; fires once its spans are gone."""
        try:
            d = X.remove(self.daemon, serial)
        except KeyError:
            raise ControlError("no export %r (see xdisk list)" % (serial,))
        return d.addCallback(lambda _: dict(serial=serial))

    def reloadConfig(self) -> Deferred:
        """Re-read the config file, as SIGHUP does."""
        if self.reload is None:
            raise ControlError("the daemon was started without --config")
        return self.reload()
