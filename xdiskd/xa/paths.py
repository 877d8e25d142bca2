"""
Path choice of an xa unit: which of its spans an open should use.

A span is live while it is open both ways on a connected link.  Live
spans rank by arrival order, except that two kinds come last: spans on a
link in hold-down (C{link.heldUntil} in the future: redialled after a
loss, not yet proven; set by L{xdiskd.connectors}) and spans whose link's
PING round trip (L{xdiskd.dmsg.liveness}) is far longer than the fastest
live path's.  Nothing here changes state: the unit asks.
"""

from __future__ import annotations

from typing import Any, List, Optional

from xdiskd.dmsg.link import Transaction

#: A path is "far slower" when its PING round trip exceeds both this
#: many times the best path's and the best path's plus L{SLOW_MARGIN}.
SLOW_FACTOR = 8.0
SLOW_MARGIN = 0.025


def isLive(span: Transaction) -> bool:
    """A span we may stack on: open both ways, link up."""
    return span.isOpen and bool(span.link.connected)


def pathRTT(span: Transaction) -> Optional[float]:
    live = getattr(span.link, "liveness", None)
    return None if live is None else live.rtt


def msText(rtt: Optional[float]) -> str:
    return "?" if rtt is None else "%.1f" % (rtt * 1000,)


def farSlower(span: Transaction, best: Any) -> bool:
    """C{span}'s PING round trip is far longer than C{best}'s (or than
    the round trip C{best}, a number)."""
    r = pathRTT(span)
    b = best if isinstance(best, float) else pathRTT(best)
    return (r is not None and b is not None and r > b * SLOW_FACTOR
            and r > b + SLOW_MARGIN)


def pathRank(spans: List[Transaction], now: float) -> List[Transaction]:
    """
    The live spans of C{spans}, best first: those on a link neither in
    hold-down (C{link.heldUntil} in the future) nor far slower than the
    fastest live path (PING round trips, L{SLOW_FACTOR}), then the
    others; arrival order within each.
    """
    live = [s for s in spans if isLive(s)]
    if len(live) < 2:
        return live
    rtts = [r for r in (pathRTT(s) for s in live) if r is not None]
    best = min(rtts) if rtts else None

    def demoted(span: Transaction) -> bool:
        if getattr(span.link, "heldUntil", 0.0) > now:
            return True
        return best is not None and farSlower(span, best)
    good = [s for s in live if not demoted(s)]
    return good + [s for s in live if demoted(s)]
