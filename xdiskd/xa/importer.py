"""
The import side: track LNK_SPANs from every link and keep one xa unit per
distinct label (spec §9.2).

Units are keyed by the first 63 bytes of the span's pfs_label (the seed's
64-byte buffers), named C{xa<N>} with N the lowest free number.  Several
spans with one label, on any links, are several paths to one unit.  A
unit with no spans, no opens and no I/O is torn down after C{linger}
seconds and its number freed (the seed compiled this out).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.logger import Logger
from zope.interface import implementer

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.link import DMSGLink, Transaction
from xdiskd.dmsg.wire import LnkSpan
from xdiskd.interfaces import IBlockDeviceRegistry
from xdiskd.xa.unit import DEFAULT_MAX_IO, MAXTAGS, XAUnit
from xdiskd.xa.window import DEFAULT_WINDOW, MODES, REPLAY

LABEL_KEEP = 63
DEFAULT_LINGER = 60.0


def unitKey(label: str) -> str:
    """The seed's label truncation: the first 63 bytes (§4.1)."""
    raw = label.encode("utf-8", "surrogateescape")[:LABEL_KEEP]
    return raw.decode("utf-8", "surrogateescape")


@implementer(IBlockDeviceRegistry)
class Importer:
    """
    Builds and tears down xa units from the spans the links carry.

    @ivar units: label key → unit.
    """

    log = Logger()

    def __init__(self, reactor: Any, linger: float = DEFAULT_LINGER,
                 maxIO: int = DEFAULT_MAX_IO, maxTags: int = MAXTAGS,
                 readOnly: Any = (), window: int = DEFAULT_WINDOW,
                 unflushed: str = REPLAY) -> None:
        if not 512 <= maxIO <= C.AUX_MAX:
            raise ValueError("max I/O size %d not in 512..%d" % (
                maxIO, C.AUX_MAX))
        if unflushed not in MODES or window < 0:
            raise ValueError("bad unflushed window %r %r" % (
                window, unflushed))
        self.window = window
        self.unflushed = unflushed
        self.reactor = reactor
        self.linger = linger
        self.maxIO = maxIO
        self.maxTags = maxTags
        self.readOnly = set(readOnly)
        self.units: Dict[str, XAUnit] = {}
        self._lingers: Dict[XAUnit, Any] = {}
        self._spanUnits: Dict[Transaction, XAUnit] = {}
        self._watchers: List[Any] = []

    # ---------------------------------------------------------------
    # IBlockDeviceRegistry

    def lookup(self, name: str) -> Optional[XAUnit]:
        for unit in self.units.values():
            if unit.name == name or unit.serial == name:
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
        unit = self.units.get(key)
        if unit is None:
            unit = self._create(key, ext)
        elif ext.media_bytes != unit.size:
            self.log.warn("{unit}: span via {link} says {size} bytes, unit "
                          "has {have}; using it as a path anyway",
                          unit=unit.name, link=txn.link.name,
                          size=ext.media_bytes, have=unit.size)
        self._spanUnits[txn] = unit
        self._touch(unit)
        # §8.3: DragonFly takes READ/WRITEs of up to 128 KiB and states
        # no limit; an xdiskd exporter states its own (see LnkSpan).
        unit.spanAdded(txn, ext.media_maxio or C.DRAGONFLY_MAX_IO,
                       ext.media_incarnation)

    def spanDeleted(self, txn: Transaction) -> None:
        """The span was withdrawn or its link lost."""
        unit = self._spanUnits.pop(txn, None)
        if unit is not None:
            unit.spanRemoved(txn)
            self._check(unit)

    def linkLost(self, link: DMSGLink) -> None:
        """Nothing to do: every span on it was failed through its handler."""

    # ---------------------------------------------------------------
    # Units

    def _create(self, key: str, ext: LnkSpan) -> XAUnit:
        used = {u.number for u in self.units.values()}
        number = 0
        while number in used:
            number += 1
        blksize = ext.media_blksize or 1
        unit = XAUnit(self, number, key, unitKey(ext.peer_label),
                      ext.media_bytes, blksize, self.maxIO, self.maxTags,
                      readOnly=key in self.readOnly, window=self.window,
                      unflushed=self.unflushed)
        if unit.name in self.readOnly:
            unit.readOnly = True
        self.units[key] = unit
        self.log.info("{unit}: new unit serial={serial!r} size={size} "
                      "sector={sector}", unit=unit.name, serial=key,
                      size=unit.size, sector=unit.sectorSize)
        for w in self._watchers:
            w("add", unit)
        return unit

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

    def _expire(self, unit: XAUnit) -> None:
        self._lingers.pop(unit, None)
        if not unit.idle or unit.gone:
            return
        self.units.pop(unit.serial, None)
        unit.destroy()
        self.log.info("{unit}: torn down (no paths, no opens for {s}s)",
                      unit=unit.name, s=self.linger)
        for w in self._watchers:
            w("remove", unit)

    def stop(self) -> None:
        for call in self._lingers.values():
            if call.active():
                call.cancel()
        self._lingers.clear()
