"""
What C{twistd xdiskd} runs: L{xdiskd.service} with the manners of a
command-line daemon.  A mistake in the options or the configuration, or
a listener that cannot listen, is one line on standard error
(C{xdiskd: --linger: 'abc' is not a number of seconds}) and exit status
1: no usage text, no traceback, no socket, lock or pid file left.

(Without C{-n}, twistd forks before the listeners start: a listener
that fails then is logged in the log file, and the waiting parent prints
twistd's "An error has occurred: b'...'" with the first 98 bytes of the
line, and exits 1.)
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn, Optional

from twisted.logger import Logger
from twisted.python import usage

from xdiskd import options as _options
from xdiskd import service as _service
from xdiskd.errors import StartupError

log = Logger()


def _fail(message: str, stream: Any = None) -> NoReturn:
    """One line to standard error, exit status 1."""
    line = " ".join(str(message).splitlines())
    stream = stream or sys.stderr
    stream.write("xdiskd: %s\n" % (line,))
    stream.flush()
    raise SystemExit(1)


class Options(_options.Options):
    """The daemon's options, failing with one line instead of usage text."""

    def parseOptions(self, options: Optional[Any] = None) -> None:
        try:
            _options.Options.parseOptions(self, options)
        except usage.UsageError as e:
            text = str(e)
            if text.endswith("not recognized"):
                text += " (twistd -n xdiskd --help lists the options)"
            _fail(text)

    def postOptions(self) -> None:
        _options.Options.postOptions(self)
        twistd = self.parent
        if twistd is not None and twistd.get("nodaemon") and not (
                _pidfileGiven(sys.argv[1:])):
            # In the foreground no pid file unless asked for, as nbdkit
            # and qemu-nbd: twistd's default twistd.pid in the current
            # directory would stop a second daemon started there.
            twistd["pidfile"] = ""


def _pidfileGiven(argv: Any) -> bool:
    """twistd's own arguments (before the plugin name) set --pidfile."""
    for arg in argv:
        if arg == "xdiskd":
            break
        if arg.startswith("--pid"):     # getopt takes any unique prefix
            return True
    return False


def makeService(options: Any) -> _service.XDiskService:
    """L{xdiskd.service.makeService}, failing with one line."""
    try:
        top = _service.makeService(options)
    except (usage.UsageError, StartupError) as e:
        _fail(str(e))
    twistd = getattr(options, "parent", None)
    top.onStartupError = lambda message: _startFailed(message, twistd)
    return top


def _startFailed(message: str, twistd: Any) -> NoReturn:
    """
    A listener failed after twistd began logging: log it where the log
    goes if that is a file, tell a waiting twistd parent (no C{-n}),
    remove our pid file (twistd does not when we exit), and print the
    line on the real standard error.
    """
    twistd = twistd if twistd is not None else {}
    logfile = twistd.get("logfile")
    daemon = not twistd.get("nodaemon", True)
    if daemon or (logfile and logfile != "-"):
        log.critical("cannot start: {message}", message=message)
    pipe = twistd.get("statusPipe")
    if pipe is not None:
        # What twistd's parent reads: "1 " and at most 98 more bytes.
        try:
            os.write(pipe, b"1 " + message.encode("ascii",
                                                  "backslashreplace")[:98])
            os.close(pipe)
        except OSError:
            pass
        twistd["statusPipe"] = None
    pidfile = twistd.get("pidfile")
    if pidfile:
        try:
            with open(pidfile) as f:
                mine = f.read().strip() == str(os.getpid())
            if mine:
                os.unlink(pidfile)
        except OSError:
            pass
    _fail(message, sys.__stderr__)
