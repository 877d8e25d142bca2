"""
Outbound DMSG links: one reconnecting L{ClientService} per C{--connect}
endpoint, addable and removable while the daemon runs (C{xdisk attach},
C{xdisk detach}, SIGHUP reload), with the counts operators ask for:
connections made, reconnects, whether the link is up now.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from zope.interface import implementer, provider

#: Reconnect back-off: 0.2 s growing by 1.5x up to 5 s (README, --connect).
RETRY_POLICY = backoffPolicy(0.2, 5.0, 1.5)


@provider(ILogObserver)
def _quietRetries(event: Dict[str, Any]) -> None:
    """
    ClientService logs every retry; a peer down for a day would fill the
    log.  Pass the 1st, 10th, 100th... retry of a run, and all else.
    """
    attempt = event.get("attempt")
    if isinstance(attempt, int) and attempt > 1:
        while attempt % 10 == 0:
            attempt //= 10
        if attempt != 1:
            return
    globalLogPublisher(event)


class _ClientService(ClientService):
    _log = Logger(namespace="xdiskd.connectors", observer=_quietRetries)


@implementer(IStreamClientEndpoint)
class _NamedEndpoint:
    """
    An endpoint that logs as its description: ClientService's retry
    lines name C{unix:/run/xdisk.sock}, not an object's repr.
    """

    def __init__(self, inner: IStreamClientEndpoint, desc: str) -> None:
        self.inner = inner
        self.desc = desc

    def connect(self, protocolFactory: Any) -> Deferred:
        return self.inner.connect(protocolFactory)

    def __str__(self) -> str:
        return self.desc

    __repr__ = __str__


class Connector:
    """
    One C{--connect} target.

    @ivar endpoint: the endpoint description as configured.
    @ivar service: its L{ClientService}.
    @ivar link: the protocol of the most recent connection, or None.
    @ivar connections: connections made so far (the first one included).
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.service: Optional[ClientService] = None
        self.link: Any = None
        self.connections = 0

    @property
    def reconnects(self) -> int:
        """Connections made after the first one."""
        return max(0, self.connections - 1)

    @property
    def up(self) -> bool:
        """The current connection exists and finished its LNK_CONN."""
        link = self.link
        return link is not None and bool(getattr(link, "connected", False)) \
            and bool(getattr(link, "ready", False))

    def snapshot(self) -> Dict[str, Any]:
        link = self.link
        alive = link is not None and bool(getattr(link, "connected", False))
        return dict(endpoint=self.endpoint, up=self.up,
                    link=getattr(link, "id", None) if alive else None,
                    connections=self.connections,
                    reconnects=self.reconnects)


class _CountingFactory(Factory):
    """Wraps the link factory to see every connection a connector makes."""

    noisy = False

    def __init__(self, connector: Connector, inner: Any) -> None:
        self.connector = connector
        self.inner = inner

    def buildProtocol(self, addr: Any) -> Any:
        proto = self.inner.buildProtocol(addr)
        if proto is not None:
            self.connector.link = proto
            self.connector.connections += 1
        return proto


class Connectors:
    """
    The outbound links of a daemon, by endpoint description.

    @param parent: the service the L{ClientService}s run under.
    @param makeEndpoint: C{desc → IStreamClientEndpoint}; raises
        ValueError (or TypeError/KeyError, as C{clientFromString} does)
        for a bad description.
    @param makeFactory: C{desc → protocol factory} for the links.
    """

    log = Logger()

    def __init__(self, parent: MultiService,
                 makeEndpoint: Callable[[str], IStreamClientEndpoint],
                 makeFactory: Callable[[str], Any],
                 retryPolicy: Callable[[int], float] = RETRY_POLICY,
                 clock: Any = None) -> None:
        self.parent = parent
        self.makeEndpoint = makeEndpoint
        self.makeFactory = makeFactory
        self.retryPolicy = retryPolicy
        self.clock = clock
        self._byEndpoint: Dict[str, Connector] = {}

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self._byEndpoint

    def __getitem__(self, endpoint: str) -> Connector:
        return self._byEndpoint[endpoint]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._byEndpoint))

    def __len__(self) -> int:
        return len(self._byEndpoint)

    def connectors(self) -> List[Connector]:
        return list(self._byEndpoint.values())

    def forLink(self, link: Any) -> Optional[Connector]:
        """The connector whose current connection is C{link}, if any."""
        for c in self._byEndpoint.values():
            if c.link is link:
                return c
        return None

    def add(self, endpoint: str) -> Connector:
        """
        Start dialling C{endpoint} (at once if the daemon runs).

        @raise ValueError: a bad description, or already connected there.
        """
        if endpoint in self._byEndpoint:
            raise ValueError("already connecting to %s" % (endpoint,))
        try:
            ep = self.makeEndpoint(endpoint)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError("bad endpoint %r: %s" % (endpoint, e))
        connector = Connector(endpoint)
        factory = _CountingFactory(connector, self.makeFactory(endpoint))
        kw: Dict[str, Any] = {"retryPolicy": self.retryPolicy}
        if self.clock is not None:
            kw["clock"] = self.clock
        cs = _ClientService(_NamedEndpoint(ep, endpoint), factory, **kw)
        connector.service = cs
        self._byEndpoint[endpoint] = connector
        cs.setServiceParent(self.parent)
        if self.parent.running:
            self.log.info("connecting to {endpoint}", endpoint=endpoint)
        return connector

    def remove(self, endpoint: str) -> Deferred:
        """
        Stop dialling C{endpoint} and drop its link now.  Fires with the
        connector once the connection is gone.

        @raise KeyError: not a configured endpoint.
        """
        connector = self._byEndpoint.pop(endpoint)
        cs = connector.service
        assert cs is not None
        # Stop first, so the drop below does not schedule a reconnect;
        # a running parent stops what it disowns.
        wasRunning = cs.running
        d = cs.disownServiceParent() if cs.parent is not None else None
        if d is None and wasRunning and cs.running:
            d = cs.stopService()
        link = connector.link
        if link is not None and getattr(link, "connected", False):
            link.close("detached")
        self.log.info("stopped connecting to {endpoint}", endpoint=endpoint)
        if d is None:
            d = succeed(None)
        return d.addCallback(lambda _: connector)
