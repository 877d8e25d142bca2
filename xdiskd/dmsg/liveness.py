"""
Link liveness: tell a dead DMSG link from a quiet one in seconds, when the
network fails silently (a cable, switch or host that stops answering, a
firewall that drops packets, an MTU black hole).

DMSG has no keepalive in practice (spec §7.5): the DragonFly kernel sends
no PING and does not answer one (its disk server answers a one-way PING
with a one-way LNK_ERROR|REPLY, its xdisk ignores it); libdmsg and xdiskd
answer with a one-way LNK_PING|REPLY.  So any message received counts as
life, and a PING is only a way to make a peer that answers say something.

The rules, with C{T} the link timeout (C{--link-timeout}):

  - Every C{T/5} seconds (L{TICKS}) the link's received byte count is
    sampled; the
    link has been I{silent} since the last sample that saw it grow.  While
    we ourselves do not read (reading paused by back-pressure), the peer
    is not silent: what it sent waits in our socket buffer.
  - One PING at a time is outstanding: once the link is up (LNK_CONN
    answered), a PING is sent whenever none is outstanding and C{T/3}
    seconds passed since the last one, busy or idle, so a standby path is
    known dead before it is needed.  While our reading is paused
    (back-pressure) a PING goes out every C{T/3} regardless: we cannot
    see answers then, but the peer, whose I/O may wait on our slow disk,
    keeps hearing from us.  Its answer (either kind above) gives
    a round-trip sample (L{rtt}: the least of the last few, so a reply
    queued behind a large transfer does not make a busy path look slow).
  - The link is I{dead} once it has been silent for C{T} while something
    is owed to us: a transaction of ours waits for the peer (an open, an
    I/O, a forwarded transaction; our LNK_CONN and spans wait for
    nothing), or a PING is outstanding and this peer has answered one
    before.  A dead link is closed with one log line; to everything above
    it that is the same as a closed connection (units fail over or stall,
    connectors redial).
  - TCP sockets get SO_KEEPALIVE and TCP_USER_TIMEOUT that match C{T}
    (L{tuneKeepalive}), on both sides, so the kernel gives up on data that
    is never acknowledged, and an exporter drops connections to an
    importer that vanished, even one that answers no PING.  They are the
    backstop, set a little longer than C{T} (user timeout C{1.5 T}; idle
    probes after C{T}, every C{T/3}, 3 of them), so the check above, which
    logs why, normally fires first.

So a dead link is closed between C{T} and C{T + T/5} seconds after the
last byte arrived.  A DragonFly peer with I/O that takes longer than C{T}
and nothing else to say would be declared dead wrongly; its I/O is then
re-issued (nothing fails at the client), and C{--link-timeout 0} turns
the whole mechanism off.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any, Deque, Optional

from xdiskd.dmsg import constants as C

#: The default link timeout, in seconds (README: failure table).
DEFAULT_LINK_TIMEOUT = 5.0

#: Samples per link timeout: silence is counted in these.
TICKS = 5

#: Round-trip samples kept for L{Liveness.rtt}.
_RTT_SAMPLES = 8

# Linux socket options (socket module names where Python has them).
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)


class Liveness:
    """
    The liveness timer of one link (see the module docstring).

    @param link: a L{xdiskd.dmsg.link.DMSGLink}: this reads its
        C{bytesIn}, C{ready}, C{connected}, C{readingPaused} and
        C{awaitingReplies()}, and calls its C{sendPing()} and
        C{declareDead(why)}.
    @param clock: an C{IReactorTime}.
    @param timeout: C{T}, in seconds (> 0).

    @ivar pingsSent: PINGs sent.
    @ivar pingsAnswered: answers received to them.
    @ivar lastHeard: when the last sample saw bytes arrive.
    """

    def __init__(self, link: Any, clock: Any, timeout: float) -> None:
        self.link = link
        self.clock = clock
        self.timeout = timeout
        self.tick = timeout / TICKS
        self.pingInterval = timeout / 3.0
        self.pingsSent = 0
        self.pingsAnswered = 0
        self.pingOutstanding: Optional[float] = None
        self.lastPing = -1e18
        self._rtts: Deque[float] = deque(maxlen=_RTT_SAMPLES)
        self.lastHeard = 0.0
        self._bytesIn = 0
        self._silentTicks = 0
        self._next = 0.0
        self._call: Any = None

    def start(self) -> None:
        self.lastHeard = now = self.clock.seconds()
        self._bytesIn = self.link.bytesIn
        self._next = now + self.tick
        self._call = self.clock.callLater(self.tick, self._due)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    @property
    def rtt(self) -> Optional[float]:
        """The least recent PING round trip, in seconds (None: none yet)."""
        return min(self._rtts) if self._rtts else None

    @property
    def answersPings(self) -> bool:
        return self.pingsAnswered > 0

    def silence(self) -> float:
        """Seconds since bytes were last seen to arrive."""
        return self.clock.seconds() - self.lastHeard

    def pingAnswered(self) -> None:
        """The peer answered our outstanding PING (or a quirk of it)."""
        sent = self.pingOutstanding
        if sent is None:
            return
        self.pingOutstanding = None
        self.pingsAnswered += 1
        self._rtts.append(max(0.0, self.clock.seconds() - sent))

    def _due(self) -> None:
        self._call = None
        link = self.link
        if not link.connected:
            return
        now = self.clock.seconds()
        seen = link.bytesIn
        if seen != self._bytesIn or link.readingPaused:
            self._bytesIn = seen
            self.lastHeard = now
            self._silentTicks = 0
        else:
            self._silentTicks += 1
        silent = now - self.lastHeard
        # Counted in samples, not by subtracting times: exact on any clock.
        if self._silentTicks >= TICKS:
            owed = None
            if link.awaitingReplies():
                owed = "transactions waiting on the peer"
            elif self.pingOutstanding is not None and self.answersPings:
                owed = "a PING unanswered"
            if owed is not None:
                link.declareDead(silent, owed)
                return
        # While we do not read (back-pressure: e.g. an exporter with its
        # in-flight limit reached behind a slow disk), answers cannot be
        # seen, but the peer must still hear from us: PING regardless.
        if (link.ready and (self.pingOutstanding is None
                            or link.readingPaused)
                and now - self.lastPing >= self.pingInterval):
            self.lastPing = now
            if self.pingOutstanding is None:
                self.pingOutstanding = now
            self.pingsSent += 1
            link.sendPing()
        # Keep the cadence: each sample one tick after the last was due.
        self._next += self.tick
        if self._next <= now:
            self._next = now + self.tick
        self._call = self.clock.callLater(self._next - now, self._due)

    def snapshot(self) -> dict:
        rtt = self.rtt
        return dict(timeout=self.timeout, silence=round(self.silence(), 3),
                    rttMs=None if rtt is None else round(rtt * 1000, 3),
                    pingsSent=self.pingsSent,
                    pingsAnswered=self.pingsAnswered)


def isPingAnswer(cmd: int) -> bool:
    """
    A one-way message that answers a PING: libdmsg's and xdiskd's
    LNK_PING|REPLY, or the DragonFly disk server's LNK_ERROR|REPLY
    (spec §6.9 quirk).
    """
    base = cmd & C.CMDSWMASK
    return base == (C.LNK_PING | C.REPLY) or base == (C.LNK_ERROR | C.REPLY)


def tuneKeepalive(transport: Any, timeout: float) -> bool:
    """
    Give a TCP transport's socket kernel keepalive and a user timeout that
    match the link timeout C{timeout}: probes after C{T} idle, every
    C{T/3}, 3 of them; unacknowledged data dropped after C{1.5 T}.  Not
    TCP (UNIX sockets, wrapped transports without a socket): nothing.

    @return: whether the options were set.
    """
    sock = None
    # A TLS transport has its TCP one as .transport, dfly:'s encrypting
    # transport as .lowerTransport.
    for t in (transport, getattr(transport, "transport", None),
              getattr(transport, "lowerTransport", None)):
        getHandle = getattr(t, "getHandle", None)
        if getHandle is None:
            continue
        try:
            candidate = getHandle()
        except Exception:
            continue
        if getattr(candidate, "family", None) in (socket.AF_INET,
                                                  socket.AF_INET6):
            sock = candidate
            break
    if sock is None or timeout <= 0:
        return False
    idle = max(1, int(round(timeout)))
    interval = max(1, int(round(timeout / 3.0)))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT,
                        int(timeout * 1500))
    except (OSError, AttributeError):
        return False
    return True
