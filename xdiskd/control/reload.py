"""
SIGHUP: re-read C{--config} and apply what changed in it.

Reloadable are the exports (added, withdrawn, or withdrawn and re-added
when their spec changed), the connect targets (dialled or dropped) and
images (created when new and absent).  Links and exports the change does
not touch are left alone, so healthy links stay up.  Other keys take
effect at the next start; a reload that changes them says so in the log.

A reload is all or nothing up to the point where it starts changing the
daemon: the file must parse and validate as at start-up, new connect
endpoints must parse, and every new export's store must open.  Otherwise
the reload is rejected with a log message and nothing changes.

The reload applies the difference between the file as last loaded and
the file now, so exports and links added or dropped at run time with
C{xdisk} are kept unless the file changes them too.  Lists given on the
command line override the file's (as at start) and never reload.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Dict, Iterable, List, Optional, Set

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred, fail, gatherResults, maybeDeferred, succeed)
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.python import usage

from xdiskd.control import exports as X
from xdiskd.control.api import ControlError
from xdiskd.export.spec import ExportSpec, ExportSpecError, \
    validateExports
from xdiskd.export.store import StoreError
from xdiskd.options import Options, ensureImages

# Keys a reload applies; any other key that changed needs a restart.
_RELOADED = frozenset(("export", "exports", "connect", "image", "images"))


def readConfig(path: str) -> Options:
    """
    Parse C{path} alone, exactly as at start-up.

    @raise usage.UsageError: it does not parse or validate.
    """
    options = Options()
    options.parseOptions(["--config", path])
    return options


def _optionNames() -> Set[str]:
    names = {str(o[0]) for o in Options.optParameters + Options.optFlags}
    names.update(name[4:].replace("_", "-") for name in dir(Options)
                 if name.startswith("opt_"))
    names.discard("config")
    return names


class Plan:
    """What a reload changes (see L{plan})."""

    def __init__(self) -> None:
        self.removeExports: List[str] = []
        self.addExports: List[ExportSpec] = []
        self.replaceExports: List[ExportSpec] = []
        self.removeConnects: List[str] = []
        self.addConnects: List[str] = []
        self.images: List[Any] = []
        self.restartKeys: List[str] = []

    def summary(self) -> Dict[str, Any]:
        return dict(
            exportsAdded=[s.serial for s in self.addExports],
            exportsRemoved=list(self.removeExports),
            exportsChanged=[s.serial for s in self.replaceExports],
            connectsAdded=list(self.addConnects),
            connectsRemoved=list(self.removeConnects),
            needRestart=list(self.restartKeys))


def plan(old: Any, new: Any, fixed: Iterable[str] = ()) -> Plan:
    """
    Compare two parsed files.  C{fixed} names the lists the command line
    gave (they override the file and are not reloaded).
    """
    p = Plan()
    fixed = set(fixed)
    if "export" not in fixed:
        before = {s.serial: s for s in old["exports"]}
        after = {s.serial: s for s in new["exports"]}
        p.removeExports = [s for s in before if s not in after]
        for serial, spec in after.items():
            if serial not in before:
                p.addExports.append(spec)
            elif before[serial] != spec:
                p.replaceExports.append(spec)
    if "connect" not in fixed:
        p.removeConnects = [c for c in old["connect"]
                            if c not in new["connect"]]
        p.addConnects = [c for c in new["connect"]
                         if c not in old["connect"]]
    if "image" not in fixed:
        p.images = [i for i in new["images"] if i not in old["images"]]
    # Only the options themselves: derived values (parsed TLS contexts,
    # limits) need not compare equal.
    keys = _optionNames() - _RELOADED
    p.restartKeys = sorted(k for k in keys if old.get(k) != new.get(k))
    return p


class ReloadService(Service):
    """
    Owns the SIGHUP handler while running and the file as last loaded.

    @param daemon: the L{xdiskd.service.XDiskService}.
    @param path: the config file.
    @param fixed: lists given on the command line.
    """

    log = Logger()

    def __init__(self, daemon: Any, path: str, reactor: Any,
                 fixed: Iterable[str] = ()) -> None:
        self.daemon = daemon
        self.path = path
        self.reactor = reactor
        self.fixed: Set[str] = set(fixed)
        self.loaded = readConfig(path)
        self._previous: Any = None
        self._last: Deferred = succeed(None)

    def startService(self) -> None:
        Service.startService(self)
        self._previous = signal.signal(signal.SIGHUP, self._sighup)

    def stopService(self) -> Optional[Deferred]:
        Service.stopService(self)
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return None

    def _sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._reloadLogged)

    def _reloadLogged(self) -> None:
        self.log.info("SIGHUP: reloading {path}", path=self.path)
        self.reload().addErrback(lambda f: f.trap(ControlError))

    def reload(self) -> Deferred:
        """
        Reload now (after any reload in progress).  Fires with a summary
        of the changes, or fails with L{ControlError} when rejected.
        """
        out: Deferred = Deferred()

        def run(_: Any) -> Deferred:
            return maybeDeferred(self._reload).addBoth(_fire, out)
        self._last.addCallback(run)
        return out

    def _reload(self) -> Deferred:
        try:
            new = readConfig(self.path)
            p = plan(self.loaded, new, self.fixed)
            opened = self._prepare(p)
        except (usage.UsageError, ControlError) as e:
            why = str(e)
            self.log.error("config reload of {path} rejected, keeping the "
                           "running configuration: {why}", path=self.path,
                           why=why)
            return fail(ControlError("config rejected: %s" % (why,)))
        return self._apply(p, opened).addCallback(self._done, new, p)

    def _prepare(self, p: Plan) -> Dict[str, Any]:
        """Check everything and open new stores; change nothing."""
        connectors = self.daemon.connectors
        for desc in p.addConnects:
            if desc in connectors:
                continue
            try:
                connectors.makeEndpoint(desc)
            except (ValueError, TypeError, KeyError) as e:
                raise ControlError("bad connect %r: %s" % (desc, e))
        current = X.currentSpecs(self.daemon)
        for serial in p.removeExports:
            current.pop(serial, None)
        wanted = [s for s in p.addExports + p.replaceExports
                  if current.get(s.serial) != s]
        for spec in wanted:
            current.pop(spec.serial, None)
        try:
            validateExports(list(current.values()) + wanted)
        except ExportSpecError as e:
            raise ControlError(str(e))
        try:
            ensureImages([i for i in p.images if not os.path.exists(i[0])])
        except OSError as e:
            raise ControlError("cannot create image: %s" % (e,))
        opened: Dict[str, Any] = {}
        try:
            for spec in wanted:
                opened[spec.serial] = X.openFor(self.daemon, spec)
        except StoreError as e:
            for store in opened.values():
                store.close()
            raise ControlError(str(e))
        return opened

    def _apply(self, p: Plan, opened: Dict[str, Any]) -> Deferred:
        waits: List[Deferred] = []
        current = X.currentSpecs(self.daemon)
        for serial in p.removeExports:
            if serial in current:
                waits.append(X.remove(self.daemon, serial))
        for spec in p.addExports + p.replaceExports:
            store = opened.get(spec.serial)
            if store is None:
                continue        # already served with this spec
            if spec.serial in current:
                d = X.remove(self.daemon, spec.serial)
                d.addCallback(self._readd, spec, store)
                waits.append(d)
            else:
                X.add(self.daemon, spec, store)
        connectors = self.daemon.connectors
        for desc in p.removeConnects:
            if desc in connectors:
                waits.append(connectors.remove(desc))
        for desc in p.addConnects:
            if desc not in connectors:
                connectors.add(desc)
        return gatherResults(waits, consumeErrors=True)

    def _readd(self, _: Any, spec: ExportSpec, store: Any) -> None:
        X.add(self.daemon, spec, store)

    def _done(self, _: Any, new: Any, p: Plan) -> Dict[str, Any]:
        self.loaded = new
        summary = p.summary()
        self.log.info(
            "config reloaded from {path}: exports +{added} -{removed} "
            "~{changed}; connect +{connAdded} -{connRemoved}", path=self.path,
            added=summary["exportsAdded"], removed=summary["exportsRemoved"],
            changed=summary["exportsChanged"],
            connAdded=summary["connectsAdded"],
            connRemoved=summary["connectsRemoved"])
        if p.restartKeys:
            self.log.warn("config {path}: {keys} changed; restart to apply",
                          path=self.path, keys=", ".join(p.restartKeys))
        return summary


def _fire(result: Any, out: Deferred) -> None:
    if isinstance(result, Failure):
        out.errback(result)
    else:
        out.callback(result)
