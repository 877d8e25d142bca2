"""
The import side: track LNK_SPANs from every link and keep one xa unit per
distinct label (spec §9.2).

Units are keyed by the first 63 bytes of the span's pfs_label (the seed's
64-byte buffers; labels are bytes, L{xdiskd.labels}), named C{xa<N>} with
N the lowest free number (a heap of freed numbers: O(log n) a unit).
Several spans with one label, on any links, are several paths to one
unit.  A unit with no spans, no opens and no I/O is torn down after
C{linger} seconds and its number freed (the seed compiled this out).

A span is refused (not a path; counted in C{refused}, logged) when its
sector size is not a power of two in 512..65536 (0 means 512; NBD's
minimum block must be a power of two up to 64 KiB, DragonFly's I/O at
least DEV_BSIZE), when its size or sector size disagrees with the
unit's, or when it would create a unit beyond its link's C{units} limit
(C{--link-limit units=N}).  A
stated maximum I/O below max(sector size, 64 KiB) is raised to that
floor: a hostile path must not shrink the unit's chunks.
"""

from __future__ import annotations

import heapq
from typing import Any, Dict, List, Optional

from twisted.logger import Logger
from zope.interface import implementer

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.link import DMSGLink, Transaction
from xdiskd.dmsg.spanflags import READ_ONLY, flagsOf
from xdiskd.dmsg.wire import LnkSpan
from xdiskd.interfaces import IBlockDeviceRegistry
from xdiskd.labels import parse, show, unitKey
from xdiskd.xa.unit import DEFAULT_MAX_IO, MAXTAGS, XAUnit
from xdiskd.xa.window import (
    DEFAULT_BUDGET, DEFAULT_WINDOW, MODES, REPLAY, WindowBudget)

DEFAULT_LINGER = 60.0
#: Units one importer holds at most, whatever link made them (the
#: C{units} link limit caps each link; a peer that reconnects, or many
#: peers, would otherwise add up without bound).
DEFAULT_MAX_UNITS = 1024
#: Smallest maximum I/O a path may state (with the sector size, if larger).
MIN_PATH_IO = 64 * 1024
#: Sector sizes a span may state (0: not stated, DEV_BSIZE).
MIN_SECTOR, MAX_SECTOR, DEFAULT_SECTOR = 512, 65536, 512
#: Spans refused for a reason are logged the first few times, then every
#: thousandth (a peer may make and withdraw spans in a loop).
_LOG_FIRST = 10
_LOG_EVERY = 1000


@implementer(IBlockDeviceRegistry)
class Importer:
    """
    Builds and tears down xa units from the spans the links carry.

    @ivar units: label key (bytes) → unit.
    @ivar refused: reason (C{"geometry"}, C{"mismatch"}, C{"units"}) →
        spans refused.
    """

    log = Logger()

    def __init__(self, reactor: Any, linger: float = DEFAULT_LINGER,
                 maxIO: int = DEFAULT_MAX_IO, maxTags: int = MAXTAGS,
                 readOnly: Any = (), stallTimeout: float = 0.0,
                 pathCheck: float = 0.0, window: int = DEFAULT_WINDOW,
                 unflushed: str = REPLAY,
                 maxUnits: int = DEFAULT_MAX_UNITS,
                 windowMemory: int = DEFAULT_BUDGET) -> None:
        if not 512 <= maxIO <= C.AUX_MAX:
            raise ValueError("max I/O size %d not in 512..%d" % (
                maxIO, C.AUX_MAX))
        if unflushed not in MODES or window < 0:
            raise ValueError("bad unflushed window %r %r" % (
                window, unflushed))
        if maxUnits < 1:
            raise ValueError("max units %d < 1" % (maxUnits,))
        self.window = window
        self.unflushed = unflushed
        self.maxUnits = maxUnits
        #: What all units' unflushed windows hold together.
        self.windowBudget = WindowBudget(windowMemory)
        self.reactor = reactor
        self.linger = linger
        self.maxIO = maxIO
        self.maxTags = maxTags
        # Unit names (xa1) or serials in their shown form (labels.show).
        self.readOnly = set(readOnly)
        self.stallTimeout = stallTimeout
        #: Seconds between asking open units whether a better path exists
        #: (L{XAUnit.reconsiderPath}); 0: never.
        self.pathCheck = pathCheck
        self._pathCall: Any = None
        self._readOnlyKeys = {unitKey(parse(s)) for s in self.readOnly}
        self.units: Dict[bytes, XAUnit] = {}
        self._byName: Dict[str, XAUnit] = {}
        self.refused: Dict[str, int] = {"geometry": 0, "mismatch": 0,
                                        "units": 0, "max-units": 0}
        self._lingers: Dict[XAUnit, Any] = {}
        self._spanUnits: Dict[Transaction, XAUnit] = {}
        self._watchers: List[Any] = []
        # Unit numbers: next never used, and a heap of freed ones.
        self._nextNumber = 0
        self._freeNumbers: List[int] = []
        # Link → units created by its spans and not yet torn down.
        self._created: Dict[DMSGLink, int] = {}
        # Spans refused as another disk than their serial's unit, still
        # open: one may become the unit once the old one is torn down.
        # (Bounded by the peers' transactions link limits.)
        self._mismatched: Dict[Transaction, LnkSpan] = {}

    # ---------------------------------------------------------------
    # IBlockDeviceRegistry

    def lookup(self, name: str) -> Optional[XAUnit]:
        """
        A unit by name (C{xa1}) or serial (its shown form, or UTF-8).
        Names come first: a peer's span with serial C{xa0} does not
        take over the name of another peer's unit xa0.
        """
        unit = self._byName.get(name)
        if unit is not None:
            return unit
        serial = parse(name)
        unit = self.units.get(unitKey(serial))
        if unit is not None and serial == unit.serial:
            return unit
        return None

    def devices(self) -> List[XAUnit]:
        return sorted(self.units.values(), key=lambda u: u.number)

    def watch(self, callback: Any) -> None:
        """Call C{callback(event, unit)} on "add" and "remove"."""
        self._watchers.append(callback)

    # ---------------------------------------------------------------
    # Spans (the node forwards LNK_SPAN transactions here)

    def spanAdded(self, txn: Transaction, ext: LnkSpan) -> None:
        """
        A peer opened a LNK_SPAN (already answered by the node): it is a
        path to the unit of its label, created on first sight.
        """
        key = unitKey(ext.pfs_label)
        sector = ext.media_blksize or DEFAULT_SECTOR
        if sector & (sector - 1) or not MIN_SECTOR <= sector <= MAX_SECTOR:
            self._refuse("geometry", "{link}: span {serial} refused: sector "
                         "size {sector} is not a power of two in 512..65536",
                         link=txn.link.name, serial=show(key), sector=sector)
            return
        unit = self.units.get(key)
        if unit is None:
            link = txn.link
            made = self._created.get(link, 0)
            cap = link.limits.units
            if made >= cap:
                self._refuse("units", "{link}: span {serial} refused: the "
                             "link made {n} units already (limit units="
                             "{cap})", link=link.name, serial=show(key),
                             n=made, cap=cap)
                return
            if len(self.units) >= self.maxUnits and not self._reclaim():
                self._refuse("max-units", "{link}: span {serial} refused: "
                             "the importer holds {n} units, all in use "
                             "(--max-units {cap})", link=link.name,
                             serial=show(key), n=len(self.units),
                             cap=self.maxUnits)
                return
            unit = self._create(key, ext, link)
        elif ext.media_bytes != unit.size or sector != unit.sectorSize:
            if unit.idle:
                # Nothing uses the old disk and it has no path left: this
                # is the disk now (an export resized and re-added, say).
                self._teardown(unit, "its serial now comes with {size} "
                               "bytes, sector {sector}".format(
                                   size=ext.media_bytes, sector=sector))
                self.spanAdded(txn, ext)
                return
            # Not the same disk, whatever its serial says.  It is looked
            # at again when the unit is torn down.
            self._mismatched[txn] = ext
            self._refuse("mismatch", "{unit}: span via {link} refused: it "
                         "says {size} bytes, sector {sector}; the unit has "
                         "{have}, sector {haveSector}", unit=unit.name,
                         link=txn.link.name, size=ext.media_bytes,
                         sector=ext.media_blksize, have=unit.size,
                         haveSector=unit.sectorSize)
            return
        self._spanUnits[txn] = unit
        self._touch(unit)
        if self.pathCheck > 0 and self._pathCall is None:
            self._pathCall = self.reactor.callLater(self.pathCheck,
                                                    self._checkPaths)
        # §8.3: DragonFly takes READ/WRITEs of up to 128 KiB and states
        # no limit; an xdiskd exporter states its own (see LnkSpan).  A
        # smaller statement is raised to the floor: a path stating 1 byte
        # once cut the unit's I/O to 512 bytes (45x slower writes).
        maxIO = max(ext.media_maxio or C.DRAGONFLY_MAX_IO,
                    max(unit.sectorSize, MIN_PATH_IO))
        if not unit.opencnt:
            # Before the first open, the newest path's exporter says
            # whether writes will be refused (NBD_OPT_INFO reports it);
            # the open's answer decides from then on.
            unit.readOnly = unit.configuredReadOnly or bool(
                flagsOf(ext) & READ_ONLY)
        unit.spanAdded(txn, maxIO, ext.media_incarnation)

    def _refuse(self, reason: str, fmt: str, **kw: Any) -> None:
        """Count a refused span; log the first few and every 1000th."""
        n = self.refused[reason] = self.refused[reason] + 1
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            self.log.warn(fmt + " ({refused} refused so far)", refused=n,
                          **kw)

    def spanDeleted(self, txn: Transaction) -> None:
        """The span was withdrawn or its link lost."""
        self._mismatched.pop(txn, None)
        unit = self._spanUnits.pop(txn, None)
        if unit is not None:
            unit.spanRemoved(txn)
            self._check(unit)

    def linkLost(self, link: DMSGLink) -> None:
        """Every span on it was failed through its handler already."""
        self._created.pop(link, None)

    # ---------------------------------------------------------------
    # Units

    def _create(self, key: bytes, ext: LnkSpan, link: DMSGLink) -> XAUnit:
        if self._freeNumbers:
            number = heapq.heappop(self._freeNumbers)
        else:
            number = self._nextNumber
            self._nextNumber += 1
        blksize = ext.media_blksize or DEFAULT_SECTOR
        readOnly = (key in self._readOnlyKeys
                    or "xa%d" % (number,) in self.readOnly)
        unit = XAUnit(self, number, key, unitKey(ext.peer_label),
                      ext.media_bytes, blksize, self.maxIO, self.maxTags,
                      readOnly=readOnly, stallTimeout=self.stallTimeout,
                      window=self.window, unflushed=self.unflushed)
        unit.window.join(self.windowBudget)
        unit.createdBy = link
        self._created[link] = self._created.get(link, 0) + 1
        self.units[key] = unit
        self._byName[unit.name] = unit
        self.log.info("{unit}: new unit serial={serial} size={size} "
                      "sector={sector}", unit=unit.name, serial=unit.label,
                      size=unit.size, sector=unit.sectorSize)
        for w in self._watchers:
            w("add", unit)
        return unit

    def _checkPaths(self) -> None:
        """Every C{pathCheck} seconds while units exist: better paths?"""
        self._pathCall = None
        for unit in list(self.units.values()):
            if len(unit.spans) > 1:
                unit.reconsiderPath()
        if self.units:
            self._pathCall = self.reactor.callLater(self.pathCheck,
                                                    self._checkPaths)

    def _touch(self, unit: XAUnit) -> None:
        call = self._lingers.pop(unit, None)
        if call is not None and call.active():
            call.cancel()

    def _check(self, unit: XAUnit) -> None:
        """Start the linger timer of a unit that has become idle."""
        if unit.gone or not unit.idle or unit in self._lingers:
            return
        self._lingers[unit] = self.reactor.callLater(
            self.linger, self._expire, unit)

    def _reclaim(self) -> bool:
        """
        At the unit limit: tear down the unit that has lingered longest
        (no paths, no opens: its teardown was only waiting for its
        timer).  Units with a path or an open are never taken.
        """
        for unit, call in list(self._lingers.items()):
            if call.active():
                call.cancel()
            self._expire(unit)
            if unit.gone:
                return True
        return False

    def _expire(self, unit: XAUnit) -> None:
        self._lingers.pop(unit, None)
        if not unit.idle or unit.gone:
            return
        self._teardown(unit, "no paths, no opens for {s}s".format(
            s=self.linger))

    def _teardown(self, unit: XAUnit, why: str) -> None:
        """Forget an idle unit; spans refused as unlike it get a look."""
        call = self._lingers.pop(unit, None)
        if call is not None and call.active():
            call.cancel()
        self.units.pop(unit.serial, None)
        self._byName.pop(unit.name, None)
        heapq.heappush(self._freeNumbers, unit.number)
        link = unit.createdBy
        if link in self._created:
            self._created[link] -= 1
        unit.destroy()
        self.log.info("{unit}: torn down ({why})", unit=unit.name, why=why)
        for w in self._watchers:
            w("remove", unit)
        waiting = [(txn, ext) for txn, ext in self._mismatched.items()
                   if unitKey(ext.pfs_label) == unit.serial]
        for txn, ext in waiting:
            del self._mismatched[txn]
            if not txn.closed and txn.link.connected:
                self.spanAdded(txn, ext)

    def stop(self) -> None:
        if self._pathCall is not None and self._pathCall.active():
            self._pathCall.cancel()
        self._pathCall = None
        for call in self._lingers.values():
            if call.active():
                call.cancel()
        self._lingers.clear()
