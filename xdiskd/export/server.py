"""
The export side: serve local stores as DMSG disks on every link.

This plays the role of DragonFly's kernel disk server (subr_diskiocom.c)
as described in spec §10: once our LNK_CONN is answered on a link, each
export is advertised as a top-level LNK_SPAN (§4.3, §7.3); BLK_OPEN is
accepted on the span (§8.1) and BLK_READ/WRITE/FLUSH/FREEBLKS on the open
or directly on the span (probe I/O, §8.3), each answered with exactly one
CREATE|DELETE|REPLY message (§8.4).

Unlike the C server we check every request against the medium: anything
reaching outside it, a READ/WRITE of zero bytes or over DMSG_AUX_MAX, or
a write to a read-only export is answered DMSG_ERR_IO (0x22), because
the seed's client retries forever on any other error (§9.3).

BLK_OPEN modes (§4.4) are enforced, which DragonFly's server does not do
past its dev_dopen() (subr_diskiocom.c disk_blk_open): a BLK_OPEN asking
for write access to a read-only export is refused with DMSG_ERR_IO, the
code DragonFly answers when dev_dopen() fails (EROFS included), and I/O
under an open that the open's modes do not allow (a write or FREEBLKS
without BLKOPEN_WR, a read without BLKOPEN_RD) is answered DMSG_ERR_IO,
unless C{enforceModes} is off (C{--seed-open-modes}): DragonFly's own
client (xdisk.c xa_open) opens with BLKOPEN_RD only and then writes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.link import DMSGLink, LinkError, Transaction
from xdiskd.dmsg.spanflags import READ_ONLY, withFlags
from xdiskd.dmsg.wire import BlkIO, BlkOpen, LnkSpan, Message
from xdiskd.errors import MediaError
from xdiskd.export.incarnation import incarnationOf
from xdiskd.labels import show

_IO_CMDS = frozenset((C.BLK_READ, C.BLK_WRITE, C.BLK_FLUSH,
                      C.BLK_FREEBLKS))

# The BLK_OPEN modes of which each I/O needs one (FLUSH: either).
_NEEDS = {C.BLK_READ: C.BLKOPEN_RD, C.BLK_WRITE: C.BLKOPEN_WR,
          C.BLK_FREEBLKS: C.BLKOPEN_WR,
          C.BLK_FLUSH: C.BLKOPEN_RD | C.BLKOPEN_WR}
_OP_NAMES = {C.BLK_READ: "READ", C.BLK_WRITE: "WRITE",
             C.BLK_FLUSH: "FLUSH", C.BLK_FREEBLKS: "FREEBLKS"}

# Per-link bound on request bytes in flight (payloads held + read buffers
# promised); beyond it we stop reading from that link.
DEFAULT_LINK_INFLIGHT = 32 * 1024 * 1024


class Export:
    """
    One exported disk: its spec, its open store and its spans.

    @ivar spans: link → our LNK_SPAN transaction on that link.
    @ivar opens: the live BLK_OPEN transactions on our spans.
    @ivar inflight: I/O operations started on the store, not finished.
    @ivar incarnation: which page cache acknowledged writes live in until
        flushed (L{xdiskd.export.incarnation}), stated in the span.
    """

    def __init__(self, spec: Any, store: Any) -> None:
        self.spec = spec
        self.store = store
        self.incarnation = incarnationOf(store)
        self.serial: str = spec.serial
        self.spans: Dict[DMSGLink, Transaction] = {}
        self.opens: Dict[Transaction, None] = {}
        self.inflight = 0
        self.withdrawn = False
        self.ops = 0
        self.errors = 0
        self._idleWaiters: List[Deferred] = []

    def spanExt(self) -> LnkSpan:
        return LnkSpan(peer_type=C.PEER_BLOCK,
                       proto_version=C.SPAN_PROTO_1,
                       media_bytes=self.store.size,
                       media_blksize=self.spec.blksize,
                       peer_label=self.spec.label.encode("utf-8"),
                       pfs_label=self.spec.serial.encode("utf-8"),
                       media_maxio=C.AUX_MAX,
                       media_incarnation=self.incarnation,
                       media_rest=withFlags(
                           READ_ONLY if self.spec.readOnly else 0))

    def whenIdle(self) -> Deferred:
        if self.inflight == 0:
            return succeed(None)
        d: Deferred = Deferred()
        self._idleWaiters.append(d)
        return d

    def _ioDone(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idleWaiters:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)


class _OpenState:
    """Per BLK_OPEN: its export, its modes, whether a refusal was logged."""

    __slots__ = ("export", "modes", "refusedLogged")

    def __init__(self, export: Export, modes: int) -> None:
        self.export = export
        self.modes = modes
        self.refusedLogged = False


class _LinkState:
    __slots__ = ("inflightBytes", "paused")

    def __init__(self) -> None:
        self.inflightBytes = 0
        self.paused = False


class Exporter:
    """
    Serves a set of L{Export}s on every DMSG link of the node.

    The node (an L{xdiskd.interfaces.ILinkReceiver}) forwards
    C{linkReady} and C{linkLost} here.
    """

    log = Logger()

    def __init__(self, linkInflight: int = DEFAULT_LINK_INFLIGHT,
                 enforceModes: bool = True) -> None:
        self.exports: Dict[str, Export] = {}
        self.links: Dict[DMSGLink, _LinkState] = {}
        self.linkInflight = linkInflight
        # False (--seed-open-modes): I/O under an open ignores its modes
        # (DragonFly's xdisk opens RD only and writes under that open).
        self.enforceModes = enforceModes

    # ---------------------------------------------------------------
    # Exports

    def add(self, spec: Any, store: Any) -> Export:
        """Start exporting C{store} under C{spec}; advertise it at once."""
        if spec.serial in self.exports:
            raise ValueError("duplicate export serial %r" % (spec.serial,))
        export = Export(spec, store)
        self.exports[spec.serial] = export
        self.log.info("export {serial}: {path} ({size} bytes, blksize "
                      "{blksize}{ro})", serial=spec.serial, path=spec.path,
                      size=store.size, blksize=spec.blksize,
                      ro=", read-only" if spec.readOnly else "")
        for link in list(self.links):
            if link.ready:
                self._advertise(export, link)
        return export

    def withdraw(self, serial: str) -> Deferred:
        """
        Stop exporting C{serial}: new I/O fails, in-flight I/O finishes,
        then DELETE goes out on its span on every link and the store is
        closed.  Fires when done.
        """
        export = self.exports.pop(serial)
        export.withdrawn = True
        self.log.info("export {serial}: withdrawing", serial=serial)

        def spansGone(_: Any) -> Deferred:
            for span in list(export.spans.values()):
                span.reply(0)   # §7.3: 0x400FFF01
            export.spans.clear()
            return export.store.close()
        return export.whenIdle().addCallback(spansGone)

    def stop(self) -> Deferred:
        """Withdraw every export (shutdown)."""
        return DeferredList([self.withdraw(s) for s in list(self.exports)])

    def identities(self) -> frozenset:
        """(peer type, pfs_label, peer_label) of every export's span."""
        return frozenset((C.PEER_BLOCK, e.serial.encode("utf-8"),
                          e.spec.label.encode("utf-8"))
                         for e in self.exports.values())

    # ---------------------------------------------------------------
    # Links (called by the node)

    def linkMade(self, link: DMSGLink) -> None:
        self.links[link] = _LinkState()

    def linkReady(self, link: DMSGLink) -> None:
        # §7.2 step 3: advertise once our LNK_CONN has been answered.
        for export in list(self.exports.values()):
            self._advertise(export, link)

    def linkLost(self, link: DMSGLink) -> None:
        self.links.pop(link, None)
        for export in self.exports.values():
            export.spans.pop(link, None)

    def _advertise(self, export: Export, link: DMSGLink) -> None:
        if link in export.spans or export.withdrawn:
            return
        try:
            span = link.startTransaction(None, C.LNK_SPAN, export.spanExt(),
                                         None, self._spanMessage)
        except LinkError:
            return
        span.data = export
        span.onChild = self._spanChild
        export.spans[link] = span

    def _spanMessage(self, span: Transaction, msg: Message) -> None:
        export: Export = span.data
        if msg.cmd & C.CREATE and msg.error:
            self.log.warn("{link}: peer refused span {serial}: {e:#x}",
                          link=span.link.name, serial=export.serial,
                          e=msg.error)
        if msg.cmd & C.DELETE:
            # The peer closed its side (or the link died): we are done.
            if export.spans.get(span.link) is span:
                del export.spans[span.link]
            span.reply(0)

    def _spanChild(self, txn: Transaction, msg: Message) -> Any:
        export: Export = txn.parent.data  # type: ignore[union-attr]
        icmd = txn.icmd
        if icmd == C.BLK_OPEN:
            return self._open(export, txn, msg)
        if icmd in _IO_CMDS:
            return self._io(export, txn, msg, None)
        return False

    # ---------------------------------------------------------------
    # BLK_OPEN (§8.1, §8.5)

    def _open(self, export: Export, txn: Transaction, msg: Message) -> Any:
        if export.withdrawn or export.store is None:
            # §8.1: a result (not a return) carrying DMSG_ERR_IO.
            txn.result(C.ERR_IO)
            return True
        ext = msg.ext
        modes = ext.modes if isinstance(ext, BlkOpen) else 0
        if modes & C.BLKOPEN_WR and export.spec.readOnly:
            # DragonFly: dev_dopen(FWRITE) fails, answered DMSG_ERR_IO.
            # The importer then opens read-only.
            export.errors += 1
            self.log.info("{link}: export {serial} is read-only: refusing "
                          "a write open", link=txn.link.name,
                          serial=show(export.serial))
            if txn.rxDelete:
                txn.reply(C.ERR_IO)
            else:
                txn.result(C.ERR_IO)
            return True
        state = _OpenState(export, modes)
        txn.data = state
        txn.handler = self._openMessage
        txn.onChild = self._openChild
        txn.onOneShot = self._openOneShot
        export.opens[txn] = None
        if txn.rxDelete:
            self._openClosed(txn)
        else:
            txn.result(0)
        return True

    def _openMessage(self, txn: Transaction, msg: Message) -> None:
        if msg.cmd & C.DELETE:
            self._openClosed(txn)
        elif not msg.cmd & C.REPLY:
            # §8.5: BLK_CLOSE and other in-open messages: NOSUPP result.
            txn.result(C.ERR_NOSUPP)

    def _openClosed(self, txn: Transaction) -> None:
        state: _OpenState = txn.data
        state.export.opens.pop(txn, None)
        txn.reply(0)   # §8.5: return, error 0

    def _openOneShot(self, parent: Transaction, msg: Message) -> bool:
        """
        A read the page cache can answer now is answered now, without a
        transaction; anything else (writes, refusals, cache misses) goes
        the usual way through L{_openChild}.
        """
        if msg.cmd & C.BASECMDMASK != C.BLK_READ:
            return False
        ext = msg.ext
        state: _OpenState = parent.data
        export = state.export
        if (type(ext) is not BlkIO or export.withdrawn
                or not state.modes & C.BLKOPEN_RD):
            return False
        offset = ext.offset
        length = ext.length
        store = export.store
        if length == 0 or length > C.AUX_MAX or (
                offset + length > store.size):
            return False
        readNow = getattr(store, "readNow", None)
        buf = readNow(offset, length) if readNow is not None else None
        if buf is None:
            return False
        link = parent.link
        export.ops += 1
        io = link.io
        io.exportOps += 1
        io.exportBytes += length
        link.answer(parent, msg, 0, buf)
        return True

    def _openChild(self, txn: Transaction, msg: Message) -> Any:
        if txn.icmd not in _IO_CMDS:
            return False
        state: _OpenState = txn.parent.data  # type: ignore[union-attr]
        return self._io(state.export, txn, msg, state)

    # ---------------------------------------------------------------
    # I/O (§8.3, §8.4)

    def _io(self, export: Export, txn: Transaction, msg: Message,
            state: Optional[_OpenState]) -> bool:
        icmd = txn.icmd
        ext = msg.ext
        export.ops += 1
        io = txn.link.io
        io.exportOps += 1
        if not isinstance(ext, BlkIO) or export.withdrawn:
            return self._refuse(export, txn)
        offset = ext.offset
        length = ext.length
        size = export.store.size
        if icmd == C.BLK_READ or icmd == C.BLK_WRITE:
            if length == 0 or length > C.AUX_MAX or offset + length > size:
                return self._refuse(export, txn)
        elif icmd == C.BLK_FREEBLKS:
            if offset + length > size:
                return self._refuse(export, txn)
        if icmd in (C.BLK_WRITE, C.BLK_FREEBLKS) and export.spec.readOnly:
            # Probe writes on the span (an open asking WR was refused).
            return self._refuse(export, txn)
        if (state is not None and not state.modes & _NEEDS.get(icmd, 0)
                and self.enforceModes):
            # I/O the open's modes do not allow (§4.4).
            if not state.refusedLogged:
                state.refusedLogged = True
                self.log.warn("{link}: export {serial}: refusing {op} on "
                              "an open with modes {modes:#x}{hint}",
                              link=txn.link.name, serial=show(export.serial),
                              op=_OP_NAMES[icmd], modes=state.modes,
                              hint=" (DragonFly's xdisk client opens read-"
                              "only, then writes: --seed-open-modes lets it)"
                              if icmd == C.BLK_WRITE and not
                              export.spec.readOnly else "")
            return self._refuse(export, txn)
        if icmd == C.BLK_READ or icmd == C.BLK_WRITE:
            # Hard cap (limits.py): reading pauses long before this.
            cap = txn.link.limits.inflight
            held0 = self.links[txn.link].inflightBytes if (
                txn.link in self.links) else 0
            if held0 + length > cap:
                txn.link.limitExceeded(
                    "inflight", cap, "%d bytes of export I/O in flight, "
                    "%d more asked" % (held0, length))
                return True
        store = export.store
        if icmd == C.BLK_READ or icmd == C.BLK_WRITE:
            io.exportBytes += length
        if icmd == C.BLK_READ:
            readNow = getattr(store, "readNow", None)
            if readNow is None:
                d = store.read(offset, length)
            else:
                parent = txn.parent
                if parent is None or parent.onOneShot is None:
                    # From the page cache, at once: no Deferred, nothing
                    # in flight (a withdrawal never sees it).  Under an
                    # open, _openOneShot has just tried that already.
                    buf = readNow(offset, length)
                    if buf is not None:
                        self._ioOK(buf, txn, icmd)
                        return True
                d = store.read(offset, length, nowait=False)
            held = length
        elif icmd == C.BLK_WRITE:
            data = msg.aux if msg.aux is not None else b""
            if len(data) != length:
                # §8.3: a short payload is zero-extended; a long one cut.
                data = bytes(data[:length]).ljust(length, b"\0")
            d = store.write(offset, data)
            held = length
        elif icmd == C.BLK_FLUSH:
            d = store.flush()
            held = 0
        else:
            d = store.discard(offset, length) if length else succeed(None)
            held = 0
        export.inflight += 1
        link = txn.link
        ls = self.links.get(link)
        if ls is not None and held:
            ls.inflightBytes += held
            if ls.inflightBytes > self._soft(link) and not ls.paused:
                ls.paused = True
                link.pauseReading("export-io")
        # One callback for both outcomes: a page-cache read has fired
        # already, and every callback on the hot path costs.
        d.addBoth(self._ioDone, txn, icmd, export, ls, link, held)
        return True

    def _ioDone(self, result: Any, txn: Transaction, icmd: int,
                export: Export, ls: Optional[_LinkState], link: DMSGLink,
                held: int) -> None:
        try:
            if isinstance(result, Failure):
                self._ioFailed(result, txn, export)
            else:
                self._ioOK(result, txn, icmd)
        finally:
            self._ioFinished(None, export, ls, link, held)

    def _soft(self, link: DMSGLink) -> int:
        """In-flight bytes at which reading from C{link} pauses."""
        return min(self.linkInflight, link.limits.inflight // 2)

    def _refuse(self, export: Export, txn: Transaction) -> bool:
        export.errors += 1
        txn.link.io.exportErrors += 1
        txn.reply(C.ERR_IO)
        return True

    def _ioOK(self, result: Any, txn: Transaction, icmd: int) -> None:
        if icmd == C.BLK_READ:
            txn.send(C.LNK_ERROR, aux=result, delete=True)
        else:
            txn.reply(0)

    def _ioFailed(self, f: Failure, txn: Transaction,
                  export: Export) -> None:
        export.errors += 1
        txn.link.io.exportErrors += 1
        if not f.check(MediaError):
            self.log.failure("export {serial}: unexpected I/O failure",
                             f, serial=export.serial)
        txn.reply(C.ERR_IO)

    def _ioFinished(self, _: Any, export: Export,
                    ls: Optional[_LinkState], link: DMSGLink,
                    held: int) -> None:
        export._ioDone()
        if ls is not None and held:
            ls.inflightBytes -= held
            if ls.paused and ls.inflightBytes <= self._soft(link) // 2:
                ls.paused = False
                link.resumeReading("export-io")
