"""
The client side of the control socket, for the C{xdisk} command.

Standard library only (the command must start fast and work without
Twisted on the path): one request line out, one reply line back.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from typing import Any, Dict, Optional

#: Same default as C{xdiskd --state-dir} (L{xdiskd.options}).
DEFAULT_STATE_DIR = "/var/lib/xdiskd"
CONTROL_NAME = "control.sock"
#: Longest reply line accepted (a list of many units stays far below).
MAX_REPLY = 16 * 1024 * 1024


class ControlUnavailable(Exception):
    """The daemon cannot be reached; the message says why and what to do."""


class ControlFailed(Exception):
    """The daemon answered C{"ok": false}; the message is its error."""


def controlPath(control: Optional[str] = None,
                stateDir: Optional[str] = None) -> str:
    """C{--control}, else C{<--state-dir>/control.sock}, else the default."""
    if control:
        return control
    if os.environ.get("XDISKD_CONTROL") and not stateDir:
        return os.environ["XDISKD_CONTROL"]
    return os.path.join(stateDir or DEFAULT_STATE_DIR, CONTROL_NAME)


def _explain(path: str, e: OSError) -> str:
    code = e.errno
    if code == errno.ENOENT:
        return ("no control socket at %s: is xdiskd running? (give "
                "--control PATH or --state-dir DIR to match the daemon)"
                % (path,))
    if code in (errno.EACCES, errno.EPERM):
        return ("permission denied on %s: the control socket is private "
                "(mode 0600); run as the daemon's user or root" % (path,))
    if code == errno.ECONNREFUSED:
        return ("xdiskd is not running: nothing listens on %s (stale "
                "socket)" % (path,))
    if code == errno.ENOTSOCK:
        return "%s is not a socket" % (path,)
    return "cannot connect to %s: %s" % (path, e.strerror or e)


class ControlClient:
    """One connection to a daemon's control socket."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: Optional[socket.socket] = None
        self._buffer = b""

    def connect(self) -> "ControlClient":
        if len(os.fsencode(self.path)) > 107:
            raise ControlUnavailable("control socket path too long (over "
                                     "107 bytes): %s" % (self.path,))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise ControlUnavailable(_explain(self.path, e))
        self._sock = s
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "ControlClient":
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def call(self, cmd: str, **args: Any) -> Dict[str, Any]:
        """
        Send one request; return the reply.

        @raise ControlFailed: the daemon refused it.
        @raise ControlUnavailable: the connection failed.
        """
        reply = self.request(dict(args, cmd=cmd))
        if not reply.get("ok"):
            raise ControlFailed(reply.get("error") or "request failed")
        return reply

    def request(self, obj: Dict[str, Any]) -> Dict[str, Any]:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(json.dumps(obj).encode() + b"\n")
            line = self._readLine()
        except socket.timeout:
            raise ControlUnavailable("no answer from xdiskd on %s within "
                                     "%gs" % (self.path, self.timeout))
        except OSError as e:
            raise ControlUnavailable("control connection to %s failed: %s"
                                     % (self.path, e.strerror or e))
        try:
            reply = json.loads(line)
        except ValueError:
            raise ControlUnavailable("xdiskd sent a reply that is not JSON")
        if not isinstance(reply, dict):
            raise ControlUnavailable("xdiskd sent a reply that is not an "
                                     "object")
        return reply

    def _readLine(self) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_REPLY:
                raise ControlUnavailable("reply too long")
            data = self._sock.recv(65536)
            if not data:
                raise ControlUnavailable("xdiskd closed the control "
                                         "connection")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line
