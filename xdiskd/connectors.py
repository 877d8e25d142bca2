"""
Outbound DMSG links: one reconnecting L{ClientService} per C{--connect}
endpoint, addable and removable while the daemon runs (C{xdisk attach},
C{xdisk detach}, SIGHUP reload), with the counts operators ask for:
connections made, reconnects, failed attempts and why, whether the link
is up now.

Every failed attempt is logged by us, naming the endpoint as configured
and the reason (the 1st, 10th, 100th... of a run, so a peer down for a day
does not fill the log); ClientService's own retry lines, which name the
endpoint by its Python repr, are dropped.

Hold-down: a link made after an earlier one to the same endpoint was lost
is marked C{heldUntil} (now + C{holdDown}): until then units prefer any
other live path (L{xdiskd.xa.unit.pathRank}), so a flapping path does not
take I/O from a steady one.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer, provider

#: Reconnect back-off: 0.2 s growing by 1.5x up to 5 s (README, --connect).
RETRY_POLICY = backoffPolicy(0.2, 5.0, 1.5)


def _logged(attempt: int) -> bool:
    """The 1st, 10th, 100th... attempt of a run is logged."""
    while attempt >= 10 and attempt % 10 == 0:
        attempt //= 10
    return attempt == 1


@provider(ILogObserver)
def _quietRetries(event: Dict[str, Any]) -> None:
    """
    Drop ClientService's "Scheduling retry" lines (we log each failure
    ourselves, with the endpoint's name and the reason); pass all else.
    """
    if "attempt" in event and "endpoint" in event:
        return
    globalLogPublisher(event)


def _reason(failure: Failure) -> str:
    """A failure as an admin reads it: no Python repr."""
    text = failure.getErrorMessage().strip() or failure.type.__name__
    return " ".join(text.split())


class _ClientService(ClientService):
    _log = Logger(namespace="xdiskd.connectors", observer=_quietRetries)


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
        #: Connection attempts that failed, in all.
        self.failures = 0
        #: Failed attempts since the last connection was made.
        self.attempts = 0
        #: Why the last attempt failed or the last link ended ("" if none).
        self.lastError = ""

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
                    reconnects=self.reconnects, failures=self.failures,
                    attempts=self.attempts, lastError=self.lastError)


@implementer(IStreamClientEndpoint)
class _CountingEndpoint:
    """Wraps a connector's endpoint to count and log failed attempts."""

    def __init__(self, owner: "Connectors", connector: Connector,
                 inner: IStreamClientEndpoint) -> None:
        self.owner = owner
        self.connector = connector
        self.inner = inner

    def connect(self, factory: Any) -> Deferred:
        d = self.inner.connect(factory)
        d.addErrback(self._failed)
        return d

    def __str__(self) -> str:
        # Any line that names the endpoint names it as configured.
        return self.connector.endpoint

    __repr__ = __str__

    def _failed(self, failure: Failure) -> Failure:
        c = self.connector
        c.failures += 1
        c.attempts += 1
        c.lastError = "connect failed: %s" % (_reason(failure),)
        return failure


class _LoggingPolicy:
    """
    A connector's retry policy: the daemon's back-off, and the log line
    for the failure that asked for it (ClientService asks the policy for
    the delay after every failed attempt and every lost link).
    """

    def __init__(self, owner: "Connectors", connector: Connector) -> None:
        self.owner = owner
        self.connector = connector

    def __call__(self, attempt: int) -> float:
        delay = self.owner.retryPolicy(attempt)
        c = self.connector
        if c.attempts == 0 and c.link is not None:
            # No attempt failed since the last connection: it was lost.
            why = (getattr(c.link, "deadReason", None)
                   or getattr(c.link, "lostReason", None))
            c.lastError = "link lost: %s" % (why or "connection closed",)
        if _logged(attempt):
            self.owner.log.warn(
                "{endpoint}: {reason}; attempt {n}, retrying in {delay} s",
                endpoint=c.endpoint, reason=c.lastError or "not connected",
                n=attempt, delay="%.1f" % (delay,))
        return delay


class _CountingFactory(Factory):
    """Wraps the link factory to see every connection a connector makes."""

    noisy = False

    def __init__(self, connector: Connector, inner: Any,
                 holdDown: float = 0.0, clock: Any = None) -> None:
        self.connector = connector
        self.inner = inner
        self.holdDown = holdDown
        self.clock = clock

    def buildProtocol(self, addr: Any) -> Any:
        proto = self.inner.buildProtocol(addr)
        if proto is not None:
            c = self.connector
            if c.connections and self.holdDown > 0 and self.clock:
                # Redialled after a loss: not preferred until proven.
                proto.heldUntil = self.clock.seconds() + self.holdDown
            c.link = proto
            c.connections += 1
            c.attempts = 0
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
                 clock: Any = None, holdDown: float = 0.0) -> None:
        self.parent = parent
        self.holdDown = holdDown
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
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor as clock
        factory = _CountingFactory(connector, self.makeFactory(endpoint),
                                   self.holdDown, clock)
        kw: Dict[str, Any] = {"retryPolicy": _LoggingPolicy(self,
                                                            connector)}
        if self.clock is not None:
            kw["clock"] = self.clock
        cs = _ClientService(_CountingEndpoint(self, connector, ep), factory,
                            **kw)
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
