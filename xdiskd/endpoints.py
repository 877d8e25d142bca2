"""
Endpoint descriptions of the daemon beyond Twisted's own: C{tls:} in
front of any stream endpoint, and what a listener exposes.

C{tls:} wraps the endpoint after it in TLS configured by the C{--tls-*}
options (L{xdiskd.tls.TLSConfig}):

  - C{--listen tls:tcp:9870:interface=10.0.0.1}, C{--listen
    tls:unix:/run/xdisk.sock}: a TLS server (mutual TLS by default);
  - C{--connect tls:tcp:disk1.example.com:9870}: a TLS client that checks
    the server's certificate against the host name (or IP address)
    dialled; C{--connect tls:name=disk1.example.com:unix:/run/x.sock}
    names the host to check where the endpoint has none.

Twisted's own C{ssl:} server endpoints still work, without client
certificates or allow-list.

C{dfly:} runs DragonFly's key negotiation and encrypted stream (libdmsg,
L{xdiskd.dfly}) on every connection of the TCP endpoint after it, with
the keys under C{--dfly-dir}: C{--listen dfly:tcp:987}, C{--connect
dfly:tcp:HOST:987}; C{dfly:format=u:...} or C{format=t} forces the
stream format (default: as the peer sends; U to xdiskd peers).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

from twisted.internet.endpoints import (
    clientFromString, serverFromString, wrapClientTLS)
from twisted.internet.interfaces import (
    IStreamClientEndpoint, IStreamServerEndpoint)
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from xdiskd.tls import TLS_PREFIX, TLSConfig, TLSConfigError, isTLS

DFLY_PREFIX = "dfly:"
DFLY_FORMATS = {"auto": "auto", "u": "U", "t": "T"}


def isDFly(desc: str) -> bool:
    """The endpoint description asks for DragonFly's negotiation."""
    return desc.startswith(DFLY_PREFIX)


def splitDFly(desc: str) -> Tuple[str, str]:
    """
    C{"dfly:format=t:tcp:h:987"} → C{("T", "tcp:h:987")}; without
    C{format=}, C{"auto"}.

    @raise ValueError: a bad format, or not a TCP endpoint inside
        (DragonFly names peers by their IP address).
    """
    rest = desc[len(DFLY_PREFIX):]
    fmt = "auto"
    if rest.startswith("format="):
        head, _, rest = rest.partition(":")
        value = head[len("format="):].lower()
        if value not in DFLY_FORMATS:
            raise ValueError("%s: format must be u, t or auto" % (desc,))
        fmt = DFLY_FORMATS[value]
    kind = _split(rest)[0]
    if kind not in ("tcp", "tcp6"):
        raise ValueError("%s: dfly: needs a tcp: endpoint (DragonFly knows "
                         "its peers by IP address)" % (desc,))
    return fmt, rest


def dflyHost(desc: str) -> Optional[str]:
    """The host a C{dfly:} client endpoint dials, if given."""
    _, inner = splitDFly(desc)
    kind, positional, named = _args(inner)
    return named.get("host") or (positional[0] if positional else None)


#: Connections a listener lets wait for accept() (Twisted's default is
#: 50: 128 NBD clients connecting at once overflowed it and libnbd
#: failed them with "server backlog overflowed").  The kernel caps it at
#: net.core.somaxconn.  A C{backlog=} in the description wins.
LISTEN_BACKLOG = 1024


def withBacklog(desc: str) -> str:
    """C{desc} (a plain C{unix:}/C{tcp:}/C{tcp6:} server endpoint) with
    C{backlog=}L{LISTEN_BACKLOG} unless it states one."""
    kind, _, named = _args(desc)
    if kind in ("unix", "tcp", "tcp6") and "backlog" not in named:
        return "%s:backlog=%d" % (desc, LISTEN_BACKLOG)
    return desc


def _split(desc: str) -> List[str]:
    """Split at unescaped colons, undoing backslash escapes."""
    parts: List[str] = []
    cur: List[str] = []
    chars = iter(desc)
    for ch in chars:
        if ch == "\\":
            cur.append(next(chars, ""))
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _args(desc: str) -> Tuple[str, List[str], dict]:
    """C{"tcp:80:interface=x"} → C{("tcp", ["80"], {"interface": "x"})}."""
    parts = _split(desc)
    positional, named = [], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            named[key] = value
        else:
            positional.append(part)
    return parts[0], positional, named


def splitTLS(desc: str) -> Tuple[Optional[str], str]:
    """
    C{"tls:name=h:unix:/s"} → C{("h", "unix:/s")}; C{"tls:tcp:h:1"} →
    C{(None, "tcp:h:1")}.
    """
    rest = desc[len(TLS_PREFIX):]
    name = None
    if rest.startswith("name="):
        head, sep, rest = rest.partition(":")
        name = head[len("name="):]
    return name, rest


def tlsServerName(desc: str) -> str:
    """
    The name a C{tls:} client endpoint checks in the server certificate.

    @raise ValueError: the endpoint has no host and no C{name=}.
    """
    name, inner = splitTLS(desc)
    if name:
        return name
    kind, positional, named = _args(inner)
    if kind in ("tcp", "tcp6"):
        host = named.get("host") or (positional[0] if positional else "")
        if host:
            return host
    raise ValueError("%s: say which server name to verify: "
                     "tls:name=HOST:%s" % (desc, inner))


def withConnectTimeout(desc: str, seconds: float) -> str:
    """
    C{desc} (a client endpoint, C{tls:}, C{dfly:} or plain) with a TCP
    connect timeout
    of C{seconds} where it is a C{tcp:} endpoint that states none:
    Twisted's default of 30 s would leave a redial to a black-holed peer
    hanging that long after the network returns.
    """
    prefix, inner = "", desc
    if isTLS(desc):
        name, inner = splitTLS(desc)
        prefix = desc[:len(desc) - len(inner)]
    elif isDFly(desc):
        try:
            inner = splitDFly(desc)[1]
        except ValueError:
            return desc           # the endpoint itself reports it
        prefix = desc[:len(desc) - len(inner)]
    kind, _, named = _args(inner)
    if kind not in ("tcp", "tcp6") or "timeout" in named or seconds <= 0:
        return desc
    return "%s%s:timeout=%d" % (prefix, inner, max(1, int(seconds + 0.999)))


def checkServerEndpoint(desc: str) -> None:
    """
    Catch the mistakes Twisted reports late or with a bare C{int()}
    error: a TCP port that is not a number from 0 to 65535, a UNIX
    socket path longer than 107 bytes.

    @raise ValueError: naming what is wrong.
    """
    if isTLS(desc):
        desc = splitTLS(desc)[1]
    elif isDFly(desc):
        desc = splitDFly(desc)[1]
    kind, positional, named = _args(desc)
    if kind in ("tcp", "tcp6", "ssl"):
        port = named.get("port", positional[0] if positional else "")
        if not port.isdigit() or int(port) > 65535:
            raise ValueError("%r is not a port number (0 to 65535)" % (
                port,))
    path, _ = unixListenPath(desc)
    if path is not None and len(os.fsencode(path)) > 107:
        raise ValueError("the socket path is longer than 107 bytes")


def unixListenPath(desc: str) -> Tuple[Optional[str], bool]:
    """
    (socket path, whether a lock file guards it) of a C{unix:} server
    endpoint (C{tls:} looked through); (None, False) for others.
    """
    if isTLS(desc):
        desc = splitTLS(desc)[1]
    kind, positional, named = _args(desc)
    if kind != "unix":
        return None, False
    path = named.get("address", positional[0] if positional else None)
    return path, named.get("lockfile", "0") == "1"


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """Listens on C{wrapped} and runs TLS on every connection."""

    def __init__(self, wrapped: Any, contextFactory: Any) -> None:
        self.wrapped = wrapped
        self.contextFactory = contextFactory

    def listen(self, protocolFactory: Any) -> Any:
        return self.wrapped.listen(
            TLSMemoryBIOFactory(self.contextFactory, False, protocolFactory))


def serverEndpoint(reactor: Any, desc: str, tls: Optional[TLSConfig],
                   dfly: Any = None) -> IStreamServerEndpoint:
    """
    A server endpoint for C{desc}, TLS-wrapped for C{tls:}, negotiating
    with the L{xdiskd.dfly.keys.KeyDirectory} C{dfly} for C{dfly:}.

    @raise ValueError: (or TypeError/KeyError, as C{serverFromString})
        for a bad description or a C{tls:} one without TLS configured.
    """
    if isDFly(desc):
        from xdiskd.dfly.protocol import DFlyServerEndpoint
        fmt, inner = splitDFly(desc)
        if dfly is None:
            raise ValueError("%s: DragonFly keys are not loaded" % (desc,))
        return DFlyServerEndpoint(serverFromString(reactor,
                                                   withBacklog(inner)), dfly,
                                  fmt, reactor, desc)
    if not isTLS(desc):
        return serverFromString(reactor, withBacklog(desc))
    if tls is None:
        raise ValueError("%s: TLS is not configured (--tls-cert)" % (desc,))
    _, inner = splitTLS(desc)
    try:
        options = tls.serverOptions()
    except TLSConfigError as e:
        raise ValueError(str(e))
    return TLSServerEndpoint(serverFromString(reactor, withBacklog(inner)),
                             options)


def clientEndpoint(reactor: Any, desc: str, tls: Optional[TLSConfig],
                   dfly: Any = None) -> IStreamClientEndpoint:
    """
    A client endpoint for C{desc}, TLS-wrapped (server name verified)
    for C{tls:}, negotiating with the keys C{dfly} for C{dfly:}.

    @raise ValueError: (or TypeError/KeyError, as C{clientFromString})
        for a bad description or a C{tls:} one without TLS configured.
    """
    if isDFly(desc):
        from xdiskd.dfly.protocol import DFlyClientEndpoint
        fmt, inner = splitDFly(desc)
        if dfly is None:
            raise ValueError("%s: DragonFly keys are not loaded" % (desc,))
        return DFlyClientEndpoint(clientFromString(reactor, inner), dfly,
                                  fmt, reactor, desc)
    if not isTLS(desc):
        return clientFromString(reactor, desc)
    if tls is None:
        raise ValueError("%s: TLS is not configured (--tls-ca)" % (desc,))
    hostname = tlsServerName(desc)
    _, inner = splitTLS(desc)
    try:
        options = tls.clientOptions(hostname)
    except TLSConfigError as e:
        raise ValueError(str(e))
    return wrapClientTLS(options, clientFromString(reactor, inner))


class Exposure(NamedTuple):
    """
    Who can reach a listener.

    @ivar scope: C{"local"} (UNIX socket), C{"loopback"}, C{"network"}
        (any interface or a non-loopback address) or C{"unknown"}.
    @ivar where: the address, for log lines.
    """

    scope: str
    where: str


_ANY = {"tcp": "0.0.0.0", "ssl": "0.0.0.0", "tcp6": "::"}


def exposure(desc: str) -> Exposure:
    """Where the server endpoint C{desc} listens (C{tls:}, C{dfly:} looked
    through)."""
    if isTLS(desc):
        desc = splitTLS(desc)[1]
    elif isDFly(desc):
        desc = splitDFly(desc)[1]
    kind, positional, named = _args(desc)
    if kind == "unix":
        return Exposure("local", "UNIX socket %s" % (
            positional[0] if positional else named.get("address", "?"),))
    if kind not in _ANY:
        return Exposure("unknown", desc)
    interface = named.get("interface")
    if interface is None and kind == "tcp" and len(positional) > 1:
        interface = positional[1]
    if not interface or interface in ("0.0.0.0", "::"):
        return Exposure("network", "all interfaces (%s)" % (
            interface or _ANY[kind],))
    if interface == "localhost":
        return Exposure("loopback", interface)
    try:
        loopback = ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return Exposure("network", interface)
    return Exposure("loopback" if loopback else "network", interface)


_RISK = {"DMSG": "open and write the exports and offer spans",
         "NBD": "read and write every unit"}


def _protection(what: str, desc: str, tls: TLSConfig) -> str:
    if what == "NBD":
        if tls.nbdMode == "off":
            return "without TLS"
        if tls.nbdMode == "on":
            return "with TLS optional (--nbd-tls on)"
        return ("" if tls.nbdVerifiesClients
                else "with TLS but no client certificates")
    if isTLS(desc):
        return "" if tls.clientAuth else "with TLS but no client certificates"
    if isDFly(desc):
        return ""   # only peers with a key (or .none) file get a link
    if desc.startswith("ssl:"):
        return "with TLS but no client certificates"
    return "without TLS"


def listenerNotice(what: str, desc: str, tls: TLSConfig) -> Tuple[bool, str]:
    """
    The start-up log line for a listener: (warn?, text).  A listener
    reachable from the network that lets in clients without a verified
    certificate is a warning.
    """
    exp = exposure(desc)
    head = "%s listening on %s" % (what, desc)
    if exp.scope == "local":
        return False, "%s (%s: local only)" % (head, exp.where)
    if exp.scope == "loopback":
        return False, "%s (loopback only: %s)" % (head, exp.where)
    if exp.scope == "unknown":
        return False, "%s (reach unknown)" % (head,)
    weak = _protection(what, desc, tls)
    if not weak:
        how = ("DragonFly RSA keys by peer address" if isDFly(desc)
               else "TLS with client certificates")
        return False, "%s (NOT loopback-only: %s; %s)" % (
            head, exp.where, how)
    return True, "%s: NOT loopback-only (%s) and %s: any host that can " \
                 "reach it can %s" % (head, exp.where, weak, _RISK[what])


@implementer(IStreamServerEndpoint)
class AnnouncingEndpoint:
    """
    A server endpoint that calls C{announce(port)} once C{inner} is
    listening, so that a "listening" log line never comes before the
    socket exists (a client that waits for the line may connect at once).
    """

    def __init__(self, inner: Any, announce: Callable[[Any], None]) -> None:
        self.inner = inner
        self.announce = announce

    def listen(self, factory: Any) -> Any:
        return self.inner.listen(factory).addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        self.announce(port)
        return port
