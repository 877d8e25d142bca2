"""Per-unit I/O statistics, like DragonFly's devstat."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Dict

from xdiskd.dmsg import constants as C

# Latency histogram bucket upper bounds, seconds (Prometheus style).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
           0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))

_KIND = {C.BLK_READ: "read", C.BLK_WRITE: "write", C.BLK_FLUSH: "flush",
         C.BLK_FREEBLKS: "trim"}


class UnitStats:
    """
    Counters of one unit: operations and bytes per kind, errors, retries
    (chunks re-queued after a lost path or a non-media error), failovers,
    stalls, latency sum and histogram.
    """

    def __init__(self) -> None:
        self.ops = {k: 0 for k in _KIND.values()}
        self.bytes = {k: 0 for k in _KIND.values()}
        self.errors = 0
        self.retries = 0
        self.failovers = 0
        self.stalls = 0
        self.maxStall = 0.0
        self.failFasts = 0
        self.moves = 0
        self.started = 0
        self.latencySum = 0.0
        self.latencyCount = 0
        self.buckets = [0] * len(BUCKETS)

    def start(self, cmd: int) -> None:
        self.started += 1

    def finish(self, cmd: int, length: int, failed: bool,
               latency: float) -> None:
        kind = _KIND[cmd]
        self.ops[kind] += 1
        if failed:
            self.errors += 1
        elif kind in ("read", "write"):
            self.bytes[kind] += length
        self.latencySum += latency
        self.latencyCount += 1
        # The first bound >= latency.
        self.buckets[bisect_left(BUCKETS, latency)] += 1

    def asDict(self) -> Dict[str, Any]:
        return dict(ops=dict(self.ops), bytes=dict(self.bytes),
                    errors=self.errors, retries=self.retries,
                    failovers=self.failovers, stalls=self.stalls,
                    maxStall=self.maxStall, failFasts=self.failFasts,
                    moves=self.moves,
                    started=self.started,
                    latencySum=self.latencySum,
                    latencyCount=self.latencyCount,
                    buckets=list(self.buckets))
