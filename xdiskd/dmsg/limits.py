"""
Per-link limits of the DMSG link layer: what one peer may make us hold.

A link that exceeds one is closed with a log line naming the limit
(C{limit transactions=8192 exceeded ...}); other links are not affected.
The same names are used by C{--link-limit NAME=VALUE}.

  - C{buffered}: bytes held for a link that are not yet handled: the
    decoder's incomplete message plus messages decoded while reading is
    paused.  A message is at most 2 KiB + 1 MiB (§1.3) and one read is at
    most 1 MiB, so a sane peer stays below 4 MiB.
  - C{transactions}: open transactions the peer created on the link
    (the rx table, §6.3).
  - C{children}: transactions the peer stacked on one parent (I/O under
    one BLK_OPEN, spans at top level); the seed keeps 64 tags per open.
  - C{units}: xa units the peer's spans may create on an importer (the
    importer refuses further new serials from that link, counted, and
    keeps the link: spans to existing units still become paths).
  - C{inflight}: export I/O bytes accepted on the link and not finished
    (payloads held plus reads promised).  Reading pauses at half of it;
    messages are not dispatched while paused, so only a peer that gets
    around the pause (or a configuration below one message) reaches it.
  - C{handshake}: seconds from connection to a completed LNK_CONN
    exchange both ways (§7.2); covers a TLS handshake that never ends.
  - C{stall}: seconds an incomplete message may sit without progress
    while we read, and seconds the peer may leave our replies unread
    (transport send buffer full without a break).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Iterable, NamedTuple, Optional

from xdiskd.dmsg import constants as C

_SIZE = re.compile(r"^(\d+)([KMG]?)(i?B)?$", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class LinkLimits(NamedTuple):
    """The limits of one link (see the module docstring)."""

    buffered: int = 8 << 20
    transactions: int = 8192
    children: int = 1024
    units: int = 256
    inflight: int = 64 << 20
    handshake: float = 30.0
    stall: float = 120.0


DEFAULT_LIMITS = LinkLimits()


def _size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError("bad size %r (e.g. 8M)" % (text,))
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _count(text: str) -> int:
    return int(text)


def _seconds(text: str) -> float:
    return float(text)


_PARSERS: Dict[str, Callable[[str], Any]] = {
    "buffered": _size,
    "transactions": _count,
    "children": _count,
    "units": _count,
    "inflight": _size,
    "handshake": _seconds,
    "stall": _seconds,
}

#: Smallest values that still let a well-behaved peer work.
_MINIMA: Dict[str, float] = {
    "buffered": C.HDR_MAX + C.AUX_MAX,
    "transactions": 2,
    "children": 1,
    "units": 1,
    "inflight": C.AUX_MAX,
    "handshake": 0.1,
    "stall": 0.1,
}


def parseLinkLimits(specs: Iterable[str],
                    base: LinkLimits = DEFAULT_LIMITS) -> LinkLimits:
    """
    Apply C{NAME=VALUE} strings to C{base}.

    @raise ValueError: unknown name, bad value, or below the minimum.
    """
    changes: Dict[str, Any] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or name not in _PARSERS:
            raise ValueError("bad link limit %r: want NAME=VALUE, NAME one "
                             "of %s" % (spec, ", ".join(_PARSERS)))
        try:
            parsed = _PARSERS[name](value)
        except ValueError:
            raise ValueError("bad value for link limit %s: %r" % (
                name, value))
        if parsed < _MINIMA[name]:
            raise ValueError("link limit %s=%s is below the minimum %s" % (
                name, value, _MINIMA[name]))
        changes[name] = parsed
    return base._replace(**changes)


class Watchdog:
    """
    The timers of one link: the C{handshake} deadline and the C{stall}
    check.  The check samples every C{stall/10} seconds, and closes the
    link once, for C{stall} seconds, an incomplete message made no
    progress while we were reading, or the peer left our replies unread
    throughout.  A condition is timed from the first sample that saw it,
    so the link is closed between C{stall} and C{stall + stall/10}
    seconds after it began.

    @param link: a L{xdiskd.dmsg.link.DMSGLink}.
    @param clock: an C{IReactorTime}.
    """

    def __init__(self, link: Any, clock: Any, limits: LinkLimits) -> None:
        self.link = link
        self.clock = clock
        self.limits = limits
        self._tick = limits.stall / 10.0
        self._handshakeCall: Any = None
        self._stallCall: Any = None
        # (progress token, first seen at) for each condition.
        self._partial: Optional[int] = None
        self._partialSince = 0.0
        self._blocked: Optional[int] = None
        self._blockedSince = 0.0

    def start(self) -> None:
        self._handshakeCall = self.clock.callLater(
            self.limits.handshake, self._handshakeDue)
        self._stallCall = self.clock.callLater(self._tick, self._stallDue)

    def stop(self) -> None:
        for call in (self._handshakeCall, self._stallCall):
            if call is not None and call.active():
                call.cancel()
        self._handshakeCall = self._stallCall = None

    def _handshakeDue(self) -> None:
        self._handshakeCall = None
        link = self.link
        if not (link.ready and link.peerConn is not None):
            link.limitExceeded(
                "handshake", self.limits.handshake,
                "LNK_CONN not exchanged (ours answered: %s, theirs "
                "received: %s)" % (link.ready, link.peerConn is not None))

    def _stallDue(self) -> None:
        self._stallCall = None
        link = self.link
        decoder = link.decoder
        now = self.clock.seconds()
        stall = self.limits.stall
        # Reading paused by us (I/O in flight) is not the peer's fault.
        # Progress is a message completed: bytes that trickle in and never
        # finish one are no progress.
        partial = (decoder.sequence if decoder.buffered
                   and not link.readingPaused else None)
        if partial is None or partial != self._partial:
            self._partialSince = now
        elif now - self._partialSince >= stall:
            link.limitExceeded("stall", stall,
                               "%d bytes of an incomplete message, no "
                               "progress" % (decoder.buffered,))
            return
        blocked = link.writeResumes if link.writeBlocked else None
        if blocked is None or blocked != self._blocked:
            self._blockedSince = now
        elif now - self._blockedSince >= stall:
            link.limitExceeded("stall", stall,
                               "the peer reads none of our messages")
            return
        self._partial = partial
        self._blocked = blocked
        self._stallCall = self.clock.callLater(self._tick, self._stallDue)
