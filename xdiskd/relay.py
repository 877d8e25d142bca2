"""
The mesh relay: what DragonFly's C{hammer2 service} does between its
links (spec §7.3, §8.6).

Every span received on one link (a I{source}) is re-advertised as a new
top-level LNK_SPAN of ours on every other link whose peer asked for its
peer type (LNK_CONN peer_mask), never back to the link it came from,
never a CLIENT span to a CLIENT link, with dist + 1 (spans with dist over
16 are not relayed) and rnss plus a per-node random value.

Per outgoing link at most one copy of each disk identity (peer type,
pfs_label, peer_label) is kept, fed by the closest source: that is what
keeps rings finite.  When a copy's source goes away the copy is withdrawn
and, if another source of the same disk remains, a new copy is made from
it.

Transactions the peer stacks on a relayed span are forwarded, stacked on
the source span, with our own msgids on each hop; messages in either
direction are forwarded with their command, extension, error and payload
unchanged.  A transaction that dies on one side (link lost, span gone) is
closed on the other with DMSG_ERR_LOSTLINK, so xdisk-style clients
re-queue and fail over.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Tuple

from twisted.logger import Logger

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.link import DMSGLink, LinkError, Transaction
from xdiskd.dmsg.wire import LnkSpan, Message

MAX_DIST = 16

Identity = Tuple[int, bytes, bytes]


def identity(ext: LnkSpan) -> Identity:
    return (ext.peer_type, ext.pfs_label, ext.peer_label)


class _Source:
    __slots__ = ("txn", "ext", "ident", "copies")

    def __init__(self, txn: Transaction, ext: LnkSpan) -> None:
        self.txn = txn
        self.ext = ext
        self.ident = identity(ext)
        self.copies: Dict[DMSGLink, Transaction] = {}


class Relay:
    """
    Relays spans and the transactions stacked on them between links.

    @ivar sources: source span transaction → L{_Source}.
    @ivar byIdent: identity → its sources (span transaction → L{_Source}):
        choosing a copy looks only at the sources of one disk, so a
        span or link event costs O(links x sources of that disk), not
        O(all sources) per disk (issue 19: quadratic in disks).
    @ivar copies: (link, identity) → our relayed span on that link.
    """

    log = Logger()

    def __init__(self, rnss: Optional[int] = None) -> None:
        self.rnss = rnss if rnss is not None else random.getrandbits(16)
        # Identities this node exports itself (set by the node): those
        # go out on every link already, at dist 0, and are never relayed.
        self.local: Any = frozenset
        self.sources: Dict[Transaction, _Source] = {}
        self.byIdent: Dict[Identity, Dict[Transaction, _Source]] = {}
        self.copies: Dict[Tuple[DMSGLink, Identity], Transaction] = {}
        self.links: Dict[DMSGLink, None] = {}
        self.forwarded = 0

    # ---------------------------------------------------------------
    # Links and spans (the node calls these)

    def linkMade(self, link: DMSGLink) -> None:
        self.links[link] = None

    def linkReady(self, link: DMSGLink) -> None:
        for ident in list(self.byIdent):
            self._refresh(ident, [link])

    def linkLost(self, link: DMSGLink) -> None:
        self.links.pop(link, None)
        # Its spans were failed through spanDeleted; its copies through
        # _copyMessage.  Drop any bookkeeping left.
        for key in [k for k in self.copies if k[0] is link]:
            del self.copies[key]

    def spanAdded(self, txn: Transaction, ext: LnkSpan) -> None:
        source = self.sources[txn] = _Source(txn, ext)
        self.byIdent.setdefault(source.ident, {})[txn] = source
        self._refresh(source.ident, list(self.links))

    def spanDeleted(self, txn: Transaction) -> None:
        source = self.sources.pop(txn, None)
        if source is None:
            return
        same = self.byIdent.get(source.ident)
        if same is not None:
            same.pop(txn, None)
            if not same:
                del self.byIdent[source.ident]
        for link, copy in list(source.copies.items()):
            self._withdraw(link, source.ident, copy)
        self._refresh(source.ident, list(self.links))

    def spanCount(self) -> int:
        """Spans this node holds: received sources plus relayed copies."""
        return len(self.sources) + len(self.copies)

    # ---------------------------------------------------------------
    # Choosing copies

    def _eligible(self, source: _Source, link: DMSGLink) -> bool:
        ext = source.ext
        if source.txn.link is link or not source.txn.isOpen:
            return False
        if not link.ready or not link.connected or link.peerConn is None:
            return False
        if ext.dist + 1 > MAX_DIST:
            return False
        peer = link.peerConn
        if not (peer.peer_mask >> ext.peer_type) & 1:
            return False
        if ext.peer_type == C.PEER_CLIENT and peer.peer_type == C.PEER_CLIENT:
            return False
        return True

    def _refresh(self, ident: Identity, links: List[DMSGLink]) -> None:
        """Make sure each link has a copy of C{ident} if any source fits."""
        if ident in self.local():
            return
        same = self.byIdent.get(ident)
        if not same:
            return
        for link in links:
            if (link, ident) in self.copies:
                continue
            best: Optional[_Source] = None
            for source in same.values():
                if not self._eligible(source, link):
                    continue
                if best is None or source.ext.dist < best.ext.dist:
                    best = source
            if best is not None:
                self._advertise(best, link, ident)

    def _advertise(self, source: _Source, link: DMSGLink,
                   ident: Identity) -> None:
        ext = source.ext._replace(dist=source.ext.dist + 1,
                                  rnss=(source.ext.rnss + self.rnss)
                                  & 0xFFFFFFFF)
        try:
            copy = link.startTransaction(None, C.LNK_SPAN, ext, None,
                                         self._copyMessage)
        except LinkError:
            return
        copy.data = source
        copy.onChild = self._forwardChild
        source.copies[link] = copy
        self.copies[(link, ident)] = copy

    def _withdraw(self, link: DMSGLink, ident: Identity,
                  copy: Transaction) -> None:
        if self.copies.get((link, ident)) is copy:
            del self.copies[(link, ident)]
        source: _Source = copy.data
        if source.copies.get(link) is copy:
            del source.copies[link]
        copy.reply(0)       # §7.3: withdrawal, 0x400FFF01

    def _copyMessage(self, copy: Transaction, msg: Message) -> None:
        """Messages on a relayed span of ours (its peer's replies)."""
        if msg.cmd & C.DELETE:
            source: _Source = copy.data
            copy.reply(0)
            ident = source.ident
            link = copy.link
            if self.copies.get((link, ident)) is copy:
                del self.copies[(link, ident)]
            if source.copies.get(link) is copy:
                del source.copies[link]

    # ---------------------------------------------------------------
    # Forwarding transactions

    def _forwardChild(self, child: Transaction, msg: Message) -> Any:
        """
        The peer stacked C{child} on a relayed span or on a forwarded
        transaction: open the same transaction one hop further.
        """
        parent = child.parent
        assert parent is not None
        if isinstance(parent.data, _Source):
            target = parent.data.txn          # relayed span → source span
        else:
            target = parent.data              # forwarded txn → its pair
        if target is None or not target.isOpen:
            # The far side is gone: LOSTLINK makes xdisk re-queue.
            child.reply(C.ERR_LOSTLINK)
            return True
        try:
            pair = target.startChild(msg.cmd, msg.ext, msg.aux,
                                     self._fromFar,
                                     bool(msg.cmd & C.DELETE))
        except LinkError:
            child.reply(C.ERR_LOSTLINK)
            return True
        self.forwarded += 1
        child.data = pair
        pair.data = child
        child.handler = self._fromNear
        child.onChild = self._forwardChild
        pair.onChild = self._forwardChild
        return True

    def _fromNear(self, child: Transaction, msg: Message) -> None:
        """A message from the peer that opened C{child}: pass it on."""
        _forward(child.data, msg)

    def _fromFar(self, pair: Transaction, msg: Message) -> None:
        """A message from the far side of a forwarded transaction."""
        _forward(pair.data, msg)


def _forward(to: Optional[Transaction], msg: Message) -> None:
    if to is None:
        return
    to.send(msg.cmd, msg.ext, msg.aux, msg.error,
            bool(msg.cmd & C.DELETE))
