"""
Changing a running daemon's exports: used by the control API
(C{export-add}, C{export-remove}) and by SIGHUP reload.

The daemon object is an L{xdiskd.service.XDiskService}: these functions
use its C{node}, C{reactor}, C{pool} (a L{StorePoolService}) and
C{inlineIO}.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable

from twisted.internet.defer import Deferred

from xdiskd.export.server import Export, Exporter
from xdiskd.export.spec import ExportSpec, validateExports
from xdiskd.export.store import openStore


def exporterOf(daemon: Any) -> Exporter:
    """
    The node's exporter, created on first use: a daemon started without
    exports can still gain one.  Links already up are told about it as if
    they had just been made, so the new export is advertised on them.
    """
    node = daemon.node
    if node.exporter is None:
        created = Exporter(enforceModes=getattr(daemon, "enforceModes",
                                                True))
        node.exporter = created
        if getattr(node, "relay", None) is not None:
            node.relay.local = created.identities
        for link in list(getattr(node, "links", ())):
            created.linkMade(link)
            if link.ready:
                created.linkReady(link)
    exporter: Exporter = node.exporter
    return exporter


def currentSpecs(daemon: Any) -> Dict[str, ExportSpec]:
    """Serial → spec of every export now served."""
    exporter = daemon.node.exporter
    if exporter is None:
        return {}
    return {serial: e.spec for serial, e in exporter.exports.items()}


def openFor(daemon: Any, spec: ExportSpec) -> Any:
    """
    Open the store of C{spec} the way the daemon opens its stores.

    @raise xdiskd.export.store.StoreError: it cannot be exported.
    """
    return openStore(spec, daemon.reactor, daemon.pool.pool,
                     inline=daemon.inlineIO)


def checkNew(daemon: Any, specs: Iterable[ExportSpec]) -> None:
    """
    @raise xdiskd.export.spec.ExportSpecError: C{specs} clash with each
        other or with an export still served.
    """
    validateExports(list(currentSpecs(daemon).values()) + list(specs))


def add(daemon: Any, spec: ExportSpec, store: Any) -> Export:
    """Serve C{store} as C{spec}; peers see a new span at once."""
    return exporterOf(daemon).add(spec, store)


def remove(daemon: Any, serial: str) -> Deferred:
    """
    Withdraw C{serial}: fires once in-flight I/O finished, the span is
    gone on every link and the store is closed.

    @raise KeyError: no such export.
    """
    exporter = daemon.node.exporter
    if exporter is None or serial not in exporter.exports:
        raise KeyError(serial)
    return exporter.withdraw(serial)


def describe(export: Export) -> Dict[str, Any]:
    """An export as the control API shows it."""
    spec = export.spec
    return dict(serial=export.serial, path=spec.path, size=export.store.size,
                blksize=spec.blksize, readOnly=spec.readOnly,
                label=spec.label, spec=spec.unparse(),
                spans=sorted(link.name for link in export.spans),
                opens=len(export.opens), inflight=export.inflight,
                ops=export.ops, errors=export.errors,
                incarnation="%016x" % (export.incarnation,))
