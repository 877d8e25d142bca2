"""
Hold-down for inbound DMSG links.

A link that comes back after its predecessor was lost is not trusted at
once: until C{heldUntil} (its build time plus C{holdDown}) units use it
only when no other path is live (L{xdiskd.xa.paths}), so a flapping path
does not take I/O from a steady one.  L{xdiskd.connectors} marks the
links it redials; this marks the links a listener accepts.

A listener knows a peer only by its address, so an inbound link is held
when an earlier link from the same IP address, accepted within
C{memory} seconds, has been lost.  UNIX-socket peers have no address to
tell them apart and are never held.

Bounds: at most C{perHost} recent links per address and C{maxHosts}
addresses are remembered (the oldest are forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Deque, List, Optional, Tuple

from twisted.internet.protocol import Factory

#: Seconds an accepted link is remembered for.
MEMORY = 300.0
#: Recent links remembered per address, and addresses remembered.
PER_HOST = 8
MAX_HOSTS = 4096


def hostOf(addr: Any) -> Optional[str]:
    """The IP address of a TCP peer; None for UNIX sockets and others."""
    host = getattr(addr, "host", None)
    return host if isinstance(host, str) and host else None


class HoldingFactory(Factory):
    """Wraps a listener's link factory to mark links that came back."""

    noisy = False

    def __init__(self, inner: Any, holdDown: float, clock: Any,
                 memory: float = MEMORY, perHost: int = PER_HOST,
                 maxHosts: int = MAX_HOSTS) -> None:
        self.inner = inner
        self.holdDown = holdDown
        self.clock = clock
        self.memory = memory
        self.perHost = perHost
        self.maxHosts = maxHosts
        self._recent: "OrderedDict[str, Deque[Tuple[float, Any]]]" = (
            OrderedDict())
        self.held = 0

    def doStart(self) -> None:
        self.inner.doStart()

    def doStop(self) -> None:
        self.inner.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        proto = self.inner.buildProtocol(addr)
        host = hostOf(addr)
        if proto is None or host is None or self.holdDown <= 0:
            return proto
        now = self.clock.seconds()
        recent = self._recent.pop(host, None)
        if recent is None:
            recent = deque(maxlen=self.perHost)
        while recent and now - recent[0][0] >= self.memory:
            recent.popleft()
        if any(_lost(link) for _, link in recent):
            proto.heldUntil = now + self.holdDown
            self.held += 1
        recent.append((now, proto))
        self._recent[host] = recent
        while len(self._recent) > self.maxHosts:
            self._recent.popitem(last=False)
        return proto

    def remembered(self) -> List[str]:
        """The addresses remembered, oldest first (for tests)."""
        return list(self._recent)


def _lost(link: Any) -> bool:
    """The link was connected once and is gone now."""
    return getattr(link, "lostReason", None) is not None
