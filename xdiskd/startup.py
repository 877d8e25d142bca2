"""
Starting the daemon's listeners the way an admin expects.

Each listener remembers the option and value it came from
(L{Listener}), so a failure says C{--listen unix:/x/d.sock: cannot
listen: no directory /x}.  A listener the admin did not ask for (the
default control socket and NBD address) that cannot be had is skipped
with one warning saying what to set.  Any other failure stops the start,
and first removes the sockets and lock files this process created, so a
failed start leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Iterable, List, NamedTuple, Optional, Tuple

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from xdiskd.errors import StartupError

log = Logger()


class Listener(NamedTuple):
    """
    Where a listening service came from.

    @ivar option: C{"--listen"}, C{"--nbd"}, C{"--control"}...
    @ivar desc: the value as the admin wrote it (or the default).
    @ivar path: the UNIX socket path, or None.
    @ivar locked: a lock file C{path + ".lock"} guards the socket.
    @ivar skip: None for a listener that must start; else the advice
        logged when it cannot (a default the admin did not ask for).
    """

    option: str
    desc: str
    path: Optional[str] = None
    locked: bool = False
    skip: Optional[str] = None


def _lockOwner(path: str) -> Optional[str]:
    """The pid in C{path}'s Twisted lock file (a symlink), if any."""
    try:
        return os.readlink(path + ".lock")
    except OSError:
        return None


def reason(error: BaseException, listener: Listener) -> str:
    """Why C{listener} could not listen, in words (no reprs)."""
    if isinstance(error, CannotListenError):
        inner = error.socketError
        if isinstance(inner, str) and "lock" in inner:
            owner = _lockOwner(listener.path or "")
            return "in use by another process%s (lock file %s.lock)" % (
                " (pid %s)" % (owner,) if owner else "", listener.path)
        if isinstance(inner, OSError):
            error = inner
    if isinstance(error, OSError):
        code = error.errno
        if code == errno.ENOENT and listener.path:
            return "no directory %s" % (
                os.path.dirname(os.path.abspath(listener.path)),)
        if code == errno.EADDRINUSE:
            path = listener.path
            if path and os.path.lexists(path) and not stat.S_ISSOCK(
                    os.lstat(path).st_mode):
                return "%s exists and is not a socket" % (path,)
            return "address already in use (another daemon?)"
        if code in (errno.EACCES, errno.EPERM):
            return "permission denied"
        if code == errno.EADDRNOTAVAIL:
            return "no such local address"
        return error.strerror or str(error)
    return str(error) or type(error).__name__


def removeOwnFiles(started: Iterable[Listener],
                   failed: Optional[Listener] = None) -> List[str]:
    """
    Remove the sockets of C{started} listeners (this process bound them)
    and every lock file this process holds among them and C{failed}.
    Returns the paths removed.
    """
    removed = []
    me = str(os.getpid())
    for listener in list(started) + ([failed] if failed else []):
        path = listener.path
        if not path:
            continue
        if listener is not failed:
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
                    removed.append(path)
            except OSError:
                pass
        if listener.locked and _lockOwner(path) == me:
            try:
                os.unlink(path + ".lock")
                removed.append(path + ".lock")
            except OSError:
                pass
    return removed


def startListeners(services: Iterable[Tuple[Any, Optional[Listener]]]
                   ) -> None:
    """
    C{privilegedStartService} each service in order; a L{Listener}'s
    failure is skipped with a warning or becomes a L{StartupError}
    (after L{removeOwnFiles}).

    @param services: (service, its Listener or None).
    """
    started: List[Listener] = []
    for svc, listener in services:
        try:
            svc.privilegedStartService()
        except Exception as e:
            if listener is None:
                removeOwnFiles(started)
                raise
            why = reason(e, listener)
            if listener.skip is not None:
                removeOwnFiles([], listener)
                log.warn("not listening on {desc} ({option} default): "
                         "{why}; {advice}", desc=listener.desc,
                         option=listener.option, why=why,
                         advice=listener.skip)
                continue
            removeOwnFiles(started, listener)
            raise StartupError("%s %s: cannot listen: %s" % (
                listener.option, listener.desc, why))
        if listener is not None:
            started.append(listener)
