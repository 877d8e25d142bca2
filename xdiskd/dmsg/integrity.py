"""
Skipping the payload CRC between xdiskd peers on links that already
guarantee integrity.

Every DMSG message carries C{aux_crc}, a CRC32C of its padded payload
(§1.5), which libdmsg checks.  Over a UNIX socket (kernel memory to
kernel memory) or TLS (authenticated records) a payload cannot change
on the way, and computing and checking the CRC costs the two ends about
37 us of CPU per MiB each.  So two xdiskd peers may agree to skip it:

  - Each side offers it in its LNK_CONN with L{NO_AUX_CRC}, a bit of
    C{reserved03} (L{xdiskd.dmsg.wire.LnkConn.xflags}), which DragonFly
    zeroes and does not read (sys/sys/dmsg.h: C{uint8_t reserved03[8]}),
    and only where its own transport is a UNIX socket or TLS.
  - A side that sent the bit stops checking C{aux_crc} from the message
    after a peer's LNK_CONN with the bit, in stream order (in the
    decoder, which may parse more messages from one read than the link
    has handled yet), and sends C{aux_crc} 0 once its link has handled
    that LNK_CONN.  LNK_CONN is each side's first message, so every
    message without a CRC comes after the LNK_CONN that allowed it;
    anything before is checked.

A DragonFly peer never sets the bit, so nothing changes for it; plain
TCP never offers it.  A peer that skips the CRC without that agreement
fails the check as any corrupt payload does (the link closes).
C{hdr_crc}, salt and every other check stay on in all cases.
"""

from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import ISSLTransport

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.wire import LnkConn

NO_AUX_CRC = C.CONN_NO_AUX_CRC


def guaranteesIntegrity(transport: Any) -> bool:
    """Whether C{transport} is TLS or a UNIX socket connection."""
    if transport is None:
        return False
    if ISSLTransport.providedBy(transport):
        return True
    getHost = getattr(transport, "getHost", None)
    try:
        return isinstance(getHost(), UNIXAddress) if getHost else False
    except Exception:
        return False


def offer(link: Any, conn: LnkConn) -> LnkConn:
    """
    Our LNK_CONN C{conn} for C{link}, about to be sent: with
    L{NO_AUX_CRC} where the link's transport allows it (and then the
    link's decoder stops checking C{aux_crc} after a peer's LNK_CONN
    with the bit), without it elsewhere.
    """
    if guaranteesIntegrity(link.transport):
        link.decoder.offeredNoAuxCRC = True
        return conn._replace(xflags=conn.xflags | NO_AUX_CRC)
    link.decoder.offeredNoAuxCRC = False
    return conn._replace(xflags=conn.xflags & ~NO_AUX_CRC)


def agreed(ours: Any, theirs: Any) -> bool:
    """Both LNK_CONNs (ours as sent, the peer's as received) carry
    L{NO_AUX_CRC}."""
    return bool(getattr(ours, "xflags", 0) & NO_AUX_CRC
                and getattr(theirs, "xflags", 0) & NO_AUX_CRC)


def agree(link: Any, ours: Any, theirs: Any) -> bool:
    """
    On the peer's LNK_CONN C{theirs} (C{ours} as we sent it): if both
    offered it, stop computing C{aux_crc} on what C{link} sends.  (Its
    decoder stopped checking the peer's already, at that LNK_CONN.)

    @return: whether the CRC is now skipped.
    """
    if not agreed(ours, theirs):
        return False
    link.encoder.auxCRC = False
    return True
