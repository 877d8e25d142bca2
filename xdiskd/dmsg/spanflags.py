"""
xdiskd's flags in a disk span (C{dmsg_lnk_span}, §4.3).

They are the little-endian u32 at 0x90, the first four bytes of
L{LnkSpan.media_rest} (the media union past C{media.block} and the
incarnation at 0x88).  DragonFly leaves the whole rest of the union 0
(spec §4.3: "rest 0"), so a DragonFly span has no flags; relays copy the
union through unchanged.

C{READ_ONLY}: the exporter refuses write opens of this disk (an export
given C{,ro}), so an importer can say so before it opens the unit (NBD
NBD_OPT_INFO, C{nbdinfo --list}); the BLK_OPEN answer stays the rule.
"""

from __future__ import annotations

import struct

from xdiskd.dmsg.wire import LnkSpan

READ_ONLY = 0x1

_FLAGS = struct.Struct("<I")
_REST = 32


def withFlags(flags: int) -> bytes:
    """The C{media_rest} that states C{flags}."""
    return _FLAGS.pack(flags) + bytes(_REST - _FLAGS.size)


def flagsOf(ext: LnkSpan) -> int:
    """The flags C{ext} states (0 for a span from DragonFly)."""
    rest = ext.media_rest
    if len(rest) < _FLAGS.size:
        return 0
    return int(_FLAGS.unpack_from(rest)[0])
