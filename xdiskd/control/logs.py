"""
C{--log-format json}: one JSON object per line (twisted.logger's
C{eventAsJSON}, so structured fields such as C{unit}, C{link} and
C{serial} stay fields), to wherever twistd would have written text.

twistd builds its log observer before the service exists, from its own
C{--logger} option (a dotted name).  L{useJSON} fills that option in
from our option parser, pointing at L{jsonObserver}, which then opens
the same file twistd would have opened (C{--logfile}, or stdout with
C{-n}), rotating on SIGUSR1 as twistd does.
"""

from __future__ import annotations

import signal
import sys
from typing import IO, Any, Dict, Optional

from twisted.logger import ILogObserver, formatEvent, jsonFileLogObserver
from twisted.python.logfile import LogFile
from zope.interface import provider

#: The twistd options L{jsonObserver} reads (set by L{useJSON}).
_twistd: Dict[str, Any] = {}

OBSERVER = "xdiskd.control.logs.jsonObserver"


def useJSON(twistdOptions: Any) -> bool:
    """
    Make twistd log JSON lines, unless it was given C{--logger} or
    C{--syslog} itself.  Returns whether it will.

    @param twistdOptions: twistd's L{ServerOptions} (our options'
        C{parent}), or None outside twistd.
    """
    if twistdOptions is None or "logger" not in twistdOptions:
        return False
    if twistdOptions["logger"] or twistdOptions.get("syslog"):
        return False
    _twistd.clear()
    _twistd.update(logfile=twistdOptions.get("logfile") or "",
                   nodaemon=bool(twistdOptions.get("nodaemon")))
    twistdOptions["logger"] = OBSERVER
    return True


def _logFile() -> IO[Any]:
    name: str = _twistd.get("logfile", "")
    if name == "-" or (not name and _twistd.get("nodaemon", True)):
        return sys.stdout
    f = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):
        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor
            reactor.callFromThread(f.rotate)  # type: ignore[attr-defined]
        signal.signal(signal.SIGUSR1, rotate)
    return f  # type: ignore[return-value]


def jsonObserver(outFile: Optional[IO[Any]] = None) -> ILogObserver:
    """
    The observer twistd installs (called with no argument there).  Each
    event also carries C{log_text}, the message as the text log shows it.
    """
    inner = jsonFileLogObserver(outFile or _logFile(), recordSeparator="")

    @provider(ILogObserver)
    def observe(event: Dict[str, Any]) -> None:
        inner(dict(event, log_text=formatEvent(event)))
    return observe
