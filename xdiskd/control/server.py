"""
The control socket: a private UNIX socket speaking line-delimited JSON,
one request object per line, one reply object per line, in order.

Lines are bounded (L{MAX_LINE}); a longer one gets an error reply and
the connection is closed.  A line that is not JSON gets an error reply
and the connection stays usable.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from xdiskd.control.api import ControlAPI

#: Longest request line, bytes.  Requests are tiny; this bounds memory.
MAX_LINE = 64 * 1024


def encodeReply(reply: Any) -> bytes:
    """One reply line.  NaN/Infinity are not JSON: they become null."""
    try:
        return json.dumps(reply, allow_nan=False,
                          separators=(",", ":")).encode()
    except ValueError:
        return json.dumps(_finite(reply), separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or
                                     value in (float("inf"), -float("inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class ControlProtocol(LineOnlyReceiver):
    """One control client.  Requests run one at a time, in order."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    log = Logger()

    def connectionMade(self) -> None:
        self._last: Deferred = succeed(None)

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        self._last.addCallback(lambda _: self._handle(line))

    def _handle(self, line: bytes) -> Deferred:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as e:
            self._reply({"ok": False, "error": "bad JSON: %s" % (e,)})
            return succeed(None)
        api: ControlAPI = self.factory.api  # type: ignore[attr-defined]
        return api.dispatch(request).addCallback(self._reply)

    def _reply(self, reply: Any) -> None:
        if self.transport is not None:
            self.transport.write(encodeReply(reply) + b"\n")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._reply({"ok": False,
                     "error": "request longer than %d bytes" % (MAX_LINE,)})
        self.transport.loseConnection()  # type: ignore[union-attr]


class ControlFactory(Factory):
    protocol = ControlProtocol
    noisy = False

    def __init__(self, api: ControlAPI) -> None:
        self.api = api


class _PrivateUNIXEndpoint:
    """
    A UNIX listener created under umask 077, so the socket is private
    from the first moment (the C{mode} chmod alone comes after bind).
    """

    def __init__(self, reactor: Any, path: str) -> None:
        self.inner = UNIXServerEndpoint(reactor, path, mode=0o600,
                                        wantPID=True)

    def listen(self, factory: Any) -> Deferred:
        old = os.umask(0o077)
        try:
            return self.inner.listen(factory)
        finally:
            os.umask(old)


def controlService(reactor: Any, path: str, api: ControlAPI,
                   name: Optional[str] = "control") -> \
        StreamServerEndpointService:
    """The listener of the control socket at C{path} (mode 0600)."""
    svc = StreamServerEndpointService(_PrivateUNIXEndpoint(reactor, path),
                                      ControlFactory(api))
    svc._raiseSynchronously = True
    if name:
        svc.setName(name)
    return svc
