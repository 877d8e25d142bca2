"""
Is there room in the page cache for a write that will not wait?

A buffered write of a few pages normally costs a copy into the page
cache (microseconds); handing it to a thread costs more (two wake-ups
and the GIL: measured 57 against 35 us of exporter CPU per 4 KiB write).
Linux cannot tell us beforehand whether a buffered write would block
(C{RWF_NOWAIT} writes are refused by ext4 and tmpfs here), and the main
way it blocks is dirty-page throttling: once dirty and writeback pages
pass the midpoint between the background and the hard dirty limits,
C{balance_dirty_pages} makes writers sleep (up to 200 ms a call).

L{DirtyGauge} reads C{/proc/meminfo} at most every C{interval} seconds
and says the page cache is I{roomy} while dirty plus writeback pages stay
under C{fraction} (default all) of the background limit.  Throttling
starts only halfway between that and the hard limit (5% of dirtyable
memory further with the default ratios of 10 and 20), which is the
margin for what is written between two readings.  (At half the
background limit, as first tried, a 1 GiB benchmark file filled it, 1.05
GB dirty of 2.3 GB, and inline writes switched on and off from run to
run.)  It is a system-wide estimate: a memory cgroup with its own smaller
limits can still throttle, which the store's own check (a slow inline
write sends writes to the pool for a while) covers.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional

MEMINFO = "/proc/meminfo"
SYSCTL = "/proc/sys/vm/"


def _readInt(path: str) -> Optional[int]:
    try:
        with open(path, "rb") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def parseMeminfo(text: bytes) -> Dict[str, int]:
    """C{/proc/meminfo} as name -> bytes."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(b":")
        fields = rest.split()
        if fields:
            try:
                value = int(fields[0])
            except ValueError:
                continue
            if len(fields) > 1 and fields[1] == b"kB":
                value <<= 10
            out[name.decode("ascii", "replace")] = value
    return out


def backgroundLimit(mem: Dict[str, int], ratio: Optional[int],
                    limitBytes: Optional[int]) -> Optional[int]:
    """
    The dirty background threshold in bytes: C{vm.dirty_background_bytes}
    if set, else C{vm.dirty_background_ratio} percent of the memory that
    may hold dirty pages (free plus file pages, as the kernel counts it).
    """
    if limitBytes:
        return limitBytes
    if ratio is None:
        return None
    try:
        dirtyable = (mem["MemFree"] + mem["Active(file)"]
                     + mem["Inactive(file)"])
    except KeyError:
        return None
    return dirtyable * ratio // 100


class DirtyGauge:
    """
    See the module docstring.

    @ivar roomyNow: the last verdict.
    """

    def __init__(self, interval: float = 0.1, fraction: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 meminfo: str = MEMINFO, sysctl: str = SYSCTL) -> None:
        self.interval = interval
        self.fraction = fraction
        self._clock = clock
        self._meminfo = meminfo
        self._sysctl = sysctl
        self._next = 0.0
        self.roomyNow = False

    def roomy(self) -> bool:
        now = self._clock()
        if now >= self._next:
            self._next = now + self.interval
            self.roomyNow = self._measure()
        return self.roomyNow

    def _measure(self) -> bool:
        try:
            with open(self._meminfo, "rb") as f:
                mem = parseMeminfo(f.read())
        except OSError:
            return False
        limit = backgroundLimit(
            mem, _readInt(self._sysctl + "dirty_background_ratio"),
            _readInt(self._sysctl + "dirty_background_bytes"))
        if not limit:
            return False
        dirty = mem.get("Dirty", 0) + mem.get("Writeback", 0)
        return dirty < limit * self.fraction


#: The one gauge for the whole process (it measures the whole system).
gauge = DirtyGauge()
