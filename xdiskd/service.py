"""
Assemble a daemon from L{xdiskd.options.Options}: the export side, the
import side, DMSG listeners and reconnecting outbound links, NBD
listeners, all under one MultiService.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from xdiskd.compiled import describe as describeBuild
from xdiskd.connectors import Connectors
from xdiskd.control.services import addOperationServices
from xdiskd.dmsg.link import DMSGFactory
from xdiskd.holddown import HoldingFactory
from xdiskd.endpoints import (
    AnnouncingEndpoint, checkServerEndpoint, clientEndpoint, listenerNotice,
    serverEndpoint, unixListenPath, withBacklog, withConnectTimeout)
from xdiskd.errors import StartupError
from xdiskd.export.server import Exporter
from xdiskd.export.store import StoreError, StorePoolService, openStore
from xdiskd.node import Node
from xdiskd.relay import Relay
from xdiskd.io.malloc import tuneMalloc
from xdiskd.io.poll import install as installReactor, setSpin
from xdiskd.startup import Listener, startListeners
from xdiskd.options import (
    DEFAULT_NBD, Options, ensureImages, serverEndpointString)
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
        self.nbdBudget: Any = None      # shared by the NBD listeners
        self.enforceModes = True        # an exporter made later, too
        self.listeners: Dict[Service, Listener] = {}
        #: None: a failed start raises L{StartupError}; else called with
        #: its one-line message (twistd -n: print it and exit 1).
        self.onStartupError: Optional[Callable[[str], None]] = None

    def addListener(self, svc: Service, listener: Listener) -> None:
        """Add a listening service, remembering where it came from."""
        self.listeners[svc] = listener
        svc.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Listen, in order; a failure is one line naming the option and
        value, and leaves no socket or lock file behind (startup.py).
        """
        Service.privilegedStartService(self)
        try:
            startListeners((svc, self.listeners.get(svc)) for svc in self)
        except StartupError as e:
            if self.onStartupError is None:
                raise
            self.onStartupError(str(e))


def _notice(what: str, desc: str, tls: Any) -> Callable[[Any], None]:
    """Log a listener's start-up line (a warning if it is exposed)."""
    warn, text = listenerNotice(what, desc, tls)

    def announce(port: Any) -> None:
        (log.warn if warn else log.info)("{text}", text=text)
    return announce


def _serverEndpoint(option: str, given: str,
                    make: Callable[[], Any]) -> Any:
    """C{make()}, with a bad description a UsageError naming both."""
    try:
        checkServerEndpoint(given)
        return make()
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError("%s %s: %s" % (option, given, e))


def makeService(options: Options, reactor: Any = None) -> XDiskService:
    spinMax = options["poll-us"] / 1e6
    if reactor is None:
        # Under twistd without --reactor none is installed yet: ours.
        reactor = installReactor(spinMax)
    stateDir = options["state-dir"]
    if options["listen"] or options["images"]:
        try:
            os.makedirs(stateDir, exist_ok=True)
        except OSError as e:
            raise usage.UsageError("--state-dir %s: cannot create it: %s" % (
                stateDir, e.strerror or e))
    try:
        ensureImages(options["images"])
    except OSError as e:
        raise usage.UsageError("--image: cannot create %s: %s" % (
            e.filename, e.strerror or e))

    tuneMalloc()
    log.info("hot modules: {build}", build=describeBuild())
    if setSpin(reactor, spinMax):
        log.info("reactor: {name}, busy-poll up to {us} us", us=int(
            options["poll-us"]), name=type(reactor).__name__)
    else:
        log.info("reactor: {name} (no lean poll loop)",
                 name=type(reactor).__name__)
    pool = StorePoolService(options["store-threads"])
    exporter = None
    if options["exports"]:
        exporter = Exporter(enforceModes=not options["seed-open-modes"])
        for given, spec in zip(options["export"], options["exports"]):
            try:
                store = openStore(spec, reactor, pool.pool,
                                  inline=options["inline-io"],
                                  inlineWriteMax=options["inline-write-max"],
                                  writeThread=options["write-thread"])
            except StoreError as e:
                raise usage.UsageError("--export %s: %s" % (given, e))
            exporter.add(spec, store)
    importer = None
    if not options["no-import"]:
        importer = Importer(reactor, linger=options["linger"],
                            maxIO=options["max-io"],
                            readOnly=options["readonly-unit"],
                            stallTimeout=options["stall-timeout"],
                            pathCheck=2.0 if options["link-timeout"] else 0,
                            window=options["unflushed-window"],
                            unflushed=options["unflushed"],
                            maxUnits=options["max-units"],
                            windowMemory=options["unflushed-memory"])
    relay = Relay() if options["relay"] else None
    node = Node(exporter, importer, options["hostname"], relay)
    top = XDiskService(node)
    # Start order: pool, node, listeners; stop order is the reverse, so
    # links close before exports are withdrawn and the pool stops last.
    pool.setServiceParent(top)
    NodeService(node).setServiceParent(top)
    top.reactor = reactor
    top.pool = pool
    top.enforceModes = not options["seed-open-modes"]
    top.inlineIO = options["inline-io"]

    tls = options["tls"]
    limits = options["link-limits"]
    linkTimeout = options["link-timeout"]
    for given in options["listen"]:
        desc = serverEndpointString(given, options["socket-mode"])
        ep = _serverEndpoint("--listen", given, lambda: serverEndpoint(
            reactor, desc, tls, options["dfly"]))
        svc = StreamServerEndpointService(
            AnnouncingEndpoint(ep, _notice("DMSG", desc, tls)),
            HoldingFactory(DMSGFactory(
                node, "in", limits=limits, clock=reactor,
                linkTimeout=linkTimeout,
                peerCheck=tls.peerPolicy() if desc.startswith("tls:")
                else None), 2 * linkTimeout, reactor))
        svc._raiseSynchronously = True
        top.addListener(svc, Listener("--listen", given,
                                      *unixListenPath(desc)))
    def connectEndpoint(desc: str) -> Any:
        """A --connect (or xdisk attach) endpoint."""
        return clientEndpoint(
            reactor, withConnectTimeout(desc, 2 * linkTimeout), tls,
            dflyKeys(desc))

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
                                    node, desc, limits=limits, clock=reactor,
                                    linkTimeout=linkTimeout),
                                clock=reactor, holdDown=2 * linkTimeout)
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
        from xdiskd.nbd.budget import MemoryBudget
        from xdiskd.nbd.server import NBDServerFactory
        # One budget for every NBD listener (issue 18 item 4).
        top.nbdBudget = MemoryBudget(options["nbd-memory"])
        for given in options["nbd"]:
            desc = serverEndpointString(given, options["socket-mode"])
            ep = _serverEndpoint("--nbd", given, lambda: serverFromString(
                reactor, withBacklog(desc)))
            svc = StreamServerEndpointService(
                AnnouncingEndpoint(ep, _notice("NBD", desc, tls)),
                NBDServerFactory(
                    registry, tlsRequired=tls.nbdMode == "require",
                    tlsContextFactory=tls.nbdContextFactory(),
                    peerCheck=tls.nbdPeerPolicy(), clock=reactor,
                    handshakeTimeout=options["nbd-handshake-timeout"],
                    budget=top.nbdBudget))
            svc._raiseSynchronously = True
            skip = None
            if given == DEFAULT_NBD and getattr(options, "nbdIsDefault",
                                                False):
                skip = ("serving no NBD: give --nbd ENDPOINT for this "
                        "daemon's own, or --no-nbd (a daemon that only "
                        "exports runs best with --no-import)")
            top.addListener(svc, Listener("--nbd", given,
                                          *unixListenPath(desc), skip=skip))
    addOperationServices(top, options, reactor)
    return top
