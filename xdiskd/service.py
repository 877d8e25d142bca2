"""
Assemble a daemon from L{xdiskd.options.Options}: the export side, the
import side, DMSG listeners and reconnecting outbound links, NBD
listeners, all under one MultiService.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from xdiskd.connectors import Connectors
from xdiskd.control.services import addOperationServices
from xdiskd.dmsg.link import DMSGFactory
from xdiskd.endpoints import (
    AnnouncingEndpoint, clientEndpoint, listenerNotice, serverEndpoint)
from xdiskd.export.server import Exporter
from xdiskd.export.store import StoreError, StorePoolService, openStore
from xdiskd.node import Node
from xdiskd.relay import Relay
from xdiskd.tuning import leanPoll, tuneMalloc
from xdiskd.options import Options, ensureImages, serverEndpointString
from xdiskd.xa.importer import Importer

__all__ = ["Options", "makeService"]

log = Logger()


class NodeService(Service):
    """Owns the node: withdraws exports and stops timers on shutdown."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def stopService(self) -> Deferred:
        Service.stopService(self)
        if self.node.importer is not None:
            self.node.importer.stop()
        if self.node.exporter is not None:
            return self.node.exporter.stop()
        return maybeDeferred(lambda: None)


class XDiskService(MultiService):
    """The daemon: C{node} plus its listeners and links."""

    def __init__(self, node: Node) -> None:
        MultiService.__init__(self)
        self.node = node
        # What run-time changes (xdiskd.control) need: outbound links by
        # endpoint, and how to open stores as makeService did.
        self.connectors: Any = {}
        self.reactor: Any = None
        self.pool: Any = None
        self.inlineIO = False
        self.reloader: Any = None


def _notice(what: str, desc: str, tls: Any) -> Callable[[Any], None]:
    """Log a listener's start-up line (a warning if it is exposed)."""
    warn, text = listenerNotice(what, desc, tls)

    def announce(port: Any) -> None:
        (log.warn if warn else log.info)("{text}", text=text)
    return announce


def makeService(options: Options, reactor: Any = None) -> XDiskService:
    if reactor is None:
        from twisted.internet import reactor as _reactor
        reactor = _reactor
    stateDir = options["state-dir"]
    if options["listen"] or options["images"]:
        try:
            os.makedirs(stateDir, exist_ok=True)
        except OSError as e:
            raise usage.UsageError("cannot create state dir %s: %s" % (
                stateDir, e))
    try:
        ensureImages(options["images"])
    except OSError as e:
        raise usage.UsageError("cannot create image: %s" % (e,))

    tuneMalloc()
    leanPoll(reactor, options["poll-us"] / 1e6)
    pool = StorePoolService(options["store-threads"])
    exporter = None
    if options["exports"]:
        exporter = Exporter()
        for spec in options["exports"]:
            try:
                store = openStore(spec, reactor, pool.pool,
                                  inline=options["inline-io"],
                                  inlineWriteMax=options["inline-write-max"])
            except StoreError as e:
                raise usage.UsageError(str(e))
            exporter.add(spec, store)
    importer = None
    if not options["no-import"]:
        importer = Importer(reactor, linger=options["linger"],
                            maxIO=options["max-io"],
                            readOnly=options["readonly-unit"])
    relay = Relay() if options["relay"] else None
    node = Node(exporter, importer, options["hostname"], relay)
    top = XDiskService(node)
    # Start order: pool, node, listeners; stop order is the reverse, so
    # links close before exports are withdrawn and the pool stops last.
    pool.setServiceParent(top)
    NodeService(node).setServiceParent(top)
    top.reactor = reactor
    top.pool = pool
    top.inlineIO = options["inline-io"]

    tls = options["tls"]
    limits = options["link-limits"]
    for desc in options["listen"]:
        desc = serverEndpointString(desc, options["socket-mode"])
        try:
            ep = serverEndpoint(reactor, desc, tls, options["dfly"])
        except (ValueError, TypeError, KeyError) as e:
            raise usage.UsageError("bad --listen %r: %s" % (desc, e))
        svc = StreamServerEndpointService(
            AnnouncingEndpoint(ep, _notice("DMSG", desc, tls)), DMSGFactory(
                node, "in", limits=limits, clock=reactor,
                peerCheck=tls.peerPolicy() if desc.startswith("tls:")
                else None))
        svc._raiseSynchronously = True
        svc.setServiceParent(top)
    def connectEndpoint(desc: str) -> Any:
        """A --connect (or xdisk attach) endpoint."""
        return clientEndpoint(reactor, desc, tls, dflyKeys(desc))

    def dflyKeys(desc: str) -> Any:
        # Keys are loaded at start-up when a dfly: endpoint is configured;
        # a first one attached later loads (and checks) them now.
        if options["dfly"] is None and desc.startswith("dfly:"):
            from xdiskd.dfly.keys import DFlyKeyError, KeyDirectory
            try:
                options["dfly"] = KeyDirectory(options["dfly-dir"]).load()
            except DFlyKeyError as e:
                raise ValueError(str(e))
        return options["dfly"]

    top.connectors = Connectors(top, connectEndpoint,
                                lambda desc: DMSGFactory(
                                    node, desc, limits=limits, clock=reactor),
                                clock=reactor)
    for desc in options["connect"]:
        try:
            top.connectors.add(desc)
        except ValueError as e:
            raise usage.UsageError("--connect: %s" % (e,))
    registry: Any = importer
    if options["nbd-local"] and exporter is not None:
        from xdiskd.export.local import LocalDevices, Registries
        registry = Registries(importer, LocalDevices(exporter))
    if registry is not None and options["nbd"]:
        from xdiskd.nbd.server import NBDServerFactory
        for desc in options["nbd"]:
            desc = serverEndpointString(desc, options["socket-mode"])
            try:
                ep = serverFromString(reactor, desc)
            except (ValueError, TypeError, KeyError) as e:
                raise usage.UsageError("bad --nbd %r: %s" % (desc, e))
            svc = StreamServerEndpointService(
                AnnouncingEndpoint(ep, _notice("NBD", desc, tls)),
                NBDServerFactory(
                    registry, tlsRequired=tls.nbdMode == "require",
                    tlsContextFactory=tls.nbdContextFactory(),
                    peerCheck=tls.nbdPeerPolicy(), clock=reactor,
                    handshakeTimeout=options["nbd-handshake-timeout"]))
            svc._raiseSynchronously = True
            svc.setServiceParent(top)
    addOperationServices(top, options, reactor)
    return top
