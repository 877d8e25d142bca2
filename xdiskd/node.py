"""
The node: the one L{ILinkReceiver} behind every DMSG link of a daemon,
fanning link events out to the export side and the import side.
"""

from __future__ import annotations

import socket
from typing import Any, Dict, Optional

from twisted.logger import Logger
from zope.interface import implementer

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.link import DMSGLink, Transaction
from xdiskd.dmsg.wire import LnkConn, LnkSpan, Message
from xdiskd.interfaces import ILinkReceiver


@implementer(ILinkReceiver)
class Node:
    """
    @ivar exporter: an L{xdiskd.export.server.Exporter} or None.
    @ivar importer: an L{xdiskd.xa.importer.Importer} or None.
    @ivar links: the connected links.
    """

    log = Logger()

    def __init__(self, exporter: Any = None, importer: Any = None,
                 hostname: Optional[str] = None, relay: Any = None) -> None:
        self.exporter = exporter
        self.importer = importer
        self.relay = relay
        if relay is not None and exporter is not None:
            relay.local = exporter.identities
        self.hostname = hostname or socket.gethostname()
        self.links: Dict[DMSGLink, None] = {}

    def localConn(self) -> LnkConn:
        # Importer: CLIENT with mask 1<<BLOCK (§9.1); exporter: BLOCK
        # (§10); both: BLOCK, still asking for BLOCK spans; a pure
        # exporter asks for none.  Relay: ROUTER, every type (§4.2).
        if self.relay is not None:
            return LnkConn(peer_mask=(1 << 64) - 1, peer_type=C.PEER_ROUTER,
                           proto_version=C.SPAN_PROTO_1,
                           peer_label=("%s/xdiskd-relay" % (
                               self.hostname,)).encode("utf-8"))
        if self.exporter is not None:
            peerType = C.PEER_BLOCK
            label = "%s/xdiskd" % (self.hostname,)
        else:
            peerType = C.PEER_CLIENT
            label = "%s/xdisk" % (self.hostname,)
        mask = 1 << C.PEER_BLOCK if self.importer is not None else 0
        return LnkConn(peer_mask=mask, peer_type=peerType,
                       proto_version=C.SPAN_PROTO_1,
                       peer_label=label.encode("utf-8"))

    def linkMade(self, link: DMSGLink) -> None:
        self.links[link] = None
        if self.exporter is not None:
            self.exporter.linkMade(link)
        if self.relay is not None:
            self.relay.linkMade(link)

    def linkReady(self, link: DMSGLink) -> None:
        if self.exporter is not None:
            self.exporter.linkReady(link)
        if self.relay is not None:
            self.relay.linkReady(link)

    def transactionReceived(self, txn: Transaction, msg: Message) -> Any:
        if txn.icmd != C.LNK_SPAN or (self.importer is None
                                      and self.relay is None):
            return False
        if msg.cmd & C.DELETE:
            # §7.3: a degenerate CREATE|DELETE span is of no use: ignore.
            txn.reply(0)
            return True
        if not isinstance(msg.ext, LnkSpan):
            return False
        txn.handler = self._spanMessage
        txn.result(0)       # keep it open both ways (0xA80FFF01)
        if self.importer is not None:
            self.importer.spanAdded(txn, msg.ext)
        if self.relay is not None:
            self.relay.spanAdded(txn, msg.ext)
        return True

    def _spanMessage(self, txn: Transaction, msg: Message) -> None:
        if msg.cmd & C.DELETE:
            txn.reply(0)    # 0x680FFF01
            if self.importer is not None:
                self.importer.spanDeleted(txn)
            if self.relay is not None:
                self.relay.spanDeleted(txn)

    def linkLost(self, link: DMSGLink, reason: Any) -> None:
        self.links.pop(link, None)
        if self.exporter is not None:
            self.exporter.linkLost(link)
        if self.importer is not None:
            self.importer.linkLost(link)
        if self.relay is not None:
            self.relay.linkLost(link)

    def detach(self, link: DMSGLink) -> None:
        """Drop a link (the seed's unimplemented XDISKIOCDETACH)."""
        link.close("detached")
