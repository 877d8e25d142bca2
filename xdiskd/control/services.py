"""
The operations side of a daemon, added last to its service tree (so it
starts after and stops before the rest): the control socket, the
metrics listener and the SIGHUP reload handler.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from xdiskd.control.api import ControlAPI
from xdiskd.control.metrics import metricsService
from xdiskd.control.reload import ReloadService
from xdiskd.control.server import controlService
from xdiskd.endpoints import (
    AnnouncingEndpoint, checkServerEndpoint, unixListenPath)
from xdiskd.startup import Listener

log = Logger()


def _controlDirReady(path: str, explicit: bool) -> bool:
    """
    Create the control socket's directory.  A default path whose
    directory cannot be used only costs the control socket (a daemon run
    as an ordinary user with the default state dir still starts).
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        if os.access(directory, os.W_OK | os.X_OK):
            return True
        why = "not writable"
    except OSError as e:
        why = e.strerror or str(e)
    if explicit:
        raise usage.UsageError("--control %s: cannot create %s: %s" % (
            path, directory, why))
    log.warn("no control socket: {directory} is {why} (give --state-dir, "
             "--control or --no-control)", directory=directory, why=why)
    return False


def addOperationServices(top: Any, options: Any, reactor: Any) -> None:
    """Add control socket, metrics and reload to C{top} per C{options}."""
    reloader = None
    if options["config"]:
        try:
            reloader = ReloadService(
                top, options["config"], reactor,
                getattr(options, "fromCommandLine", ()))
        except usage.UsageError as e:
            raise usage.UsageError("config %s: %s" % (options["config"], e))
        reloader.setServiceParent(top)
    top.reloader = reloader
    path = options["control"]
    default = getattr(options, "controlIsDefault", False)
    if path and _controlDirReady(path, not default):
        api = ControlAPI(top, reload=reloader.reload if reloader else None)
        svc = controlService(reactor, path, api)
        svc.endpoint = AnnouncingEndpoint(
            svc.endpoint, lambda port: log.info("control socket {path}",
                                                path=path))
        # A second daemon with the default state dir finds the default
        # socket taken: it runs without one and says what to set.
        skip = ("starting without a control socket: give --state-dir DIR "
                "or --control PATH for this daemon's own, or --no-control"
                if default else None)
        top.addListener(svc, Listener("--control", path, path, True, skip))
    if options["metrics"]:
        desc = options["metrics"]
        try:
            checkServerEndpoint(desc)
            svc = metricsService(reactor, desc, top)
        except ValueError as e:
            raise usage.UsageError("--metrics %s: %s" % (desc, e))
        top.addListener(svc, Listener("--metrics", desc,
                                      *unixListenPath(desc)))
