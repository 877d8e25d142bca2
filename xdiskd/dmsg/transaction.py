"""
DMSG transactions (spec §6): the per-transaction state a link keeps, and
the I/O counters of a link.  The link layer in L{xdiskd.dmsg.link} owns
the tables and the rules; a L{Transaction} is what the layers above hold,
send on and stack children on.
"""

from __future__ import annotations

from typing import (
    Any, Callable, Dict, Generic, List, Optional, Protocol, TypeVar)

from twisted.internet.defer import Deferred, succeed

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.wire import BytesLike, Extension, Message

Handler = Callable[["Transaction[Any]", Message], Any]


class TransactionLink(Protocol):
    """
    What a L{Transaction} needs of its link: the link is given to each
    transaction (L{xdiskd.dmsg.link.DMSGLink} is one), so this module
    does not import the link's, as an h2 stream never imports its
    connection.  The rules of sending are the link's.
    """

    def _sendOn(self, txn: Any, cmd: int, ext: Optional[Extension],
                aux: Optional[BytesLike], error: int, delete: bool, /
                ) -> None:
        ...

    def startTransaction(self, parent: Any, cmd: int,
                         ext: Optional[Extension] = None,
                         aux: Optional[BytesLike] = None,
                         handler: Optional[Handler] = None,
                         delete: bool = False) -> Any:
        ...


LinkT = TypeVar("LinkT", bound=TransactionLink)


class LinkIO:
    """
    I/O counters of one link, kept by the layers above: the import side
    counts the I/O it sent and its outcome, the export side what it
    served.
    """

    __slots__ = ("importOps", "importBytes", "importErrors",
                 "importRetries", "exportOps", "exportBytes",
                 "exportErrors")

    def __init__(self) -> None:
        self.importOps = self.importBytes = self.importErrors = 0
        self.importRetries = 0
        self.exportOps = self.exportBytes = self.exportErrors = 0


class Transaction(Generic[LinkT]):
    """
    One DMSG transaction on one link.

    @ivar msgid: the initiator's msgid (0 for the root).
    @ivar parent: the transaction this one is stacked on (the root for
        top-level ones; None only for the root itself).
    @ivar icmd: the original command, C{cmd & 0x00FFFFFF} of the CREATE.
    @ivar ours: True if this side created it (we are the initiator).
    @ivar dying: failed locally; messages sent on it are dropped.
    @ivar late: failed locally because this side closed an ancestor
        while the peer still had it open: it stays in its table, and
        what the peer still sends on it is dropped silently, until the
        peer closes it or that ancestor (spec §6.4: a transaction lives
        until DELETE went both ways).
    @ivar data: free for the layer that owns the transaction.
    @ivar peerChildren: how many of C{children} the peer created.
    @ivar onOneShot: see L{DMSGLink.answer}.
    """

    __slots__ = ("link", "msgid", "parent", "icmd", "ours", "txCreate",
                 "txDelete", "rxCreate", "rxDelete", "children", "handler",
                 "onChild", "onOneShot", "dying", "late", "data",
                 "peerChildren",
                 "_closedWaiters")

    def __init__(self, link: LinkT, msgid: int,
                 parent: Optional["Transaction[LinkT]"], icmd: int,
                 ours: bool) -> None:
        self.link = link
        self.msgid = msgid
        self.parent = parent
        self.icmd = icmd
        self.ours = ours
        self.txCreate = False
        self.txDelete = False
        self.rxCreate = False
        self.rxDelete = False
        self.children: Dict["Transaction[LinkT]", None] = {}
        self.handler: Optional[Handler] = None
        self.onChild: Optional[Handler] = None
        # (parent, msg) -> bool: may answer a one-message child (CREATE
        # and DELETE in one) at once with DMSGLink.answer, or return
        # False to have it go the usual way (a Transaction, onChild).
        self.onOneShot: Optional[Callable[["Transaction[LinkT]", Message], bool]
                                 ] = None
        self.dying = False
        self.late = False
        self.data: Any = None
        self.peerChildren = 0
        self._closedWaiters: Optional[List[Deferred]] = None

    def __repr__(self) -> str:
        return "<Transaction %s %s msgid=%#x %s%s%s%s%s%s>" % (
            C.cmdName(self.icmd), "ours" if self.ours else "theirs",
            self.msgid, "tC" if self.txCreate else "",
            "tD" if self.txDelete else "", "rC" if self.rxCreate else "",
            "rD" if self.rxDelete else "", " dying" if self.dying else "",
            " late" if self.late else "")

    def __str__(self) -> str:
        return repr(self)[1:-1]

    @property
    def isOpen(self) -> bool:
        """Neither side has closed it (both may still send)."""
        return not (self.txDelete or self.rxDelete or self.dying)

    @property
    def closed(self) -> bool:
        """DELETE went both ways: the transaction is gone."""
        return self.txDelete and self.rxDelete

    @property
    def circuit(self) -> int:
        return self.parent.msgid if self.parent is not None else 0

    def send(self, cmd: int, ext: Optional[Extension] = None,
             aux: Optional[BytesLike] = None, error: int = 0,
             delete: bool = False) -> None:
        """
        Send a message of this transaction; CREATE, REPLY, REVTRANS and
        REVCIRC are computed (§6.5, §6.6).  Nothing is sent once we sent
        DELETE, or on a dying transaction.
        """
        self.link._sendOn(self, cmd, ext, aux, error, delete)

    def result(self, error: int = 0) -> None:
        """A "result": LNK_ERROR that leaves the transaction open (§6.6)."""
        self.link._sendOn(self, C.LNK_ERROR, None, None, error, False)

    def reply(self, error: int = 0) -> None:
        """A "return": LNK_ERROR|DELETE closing our direction (§6.6)."""
        self.link._sendOn(self, C.LNK_ERROR, None, None, error, True)

    def startChild(self, cmd: int, ext: Optional[Extension] = None,
                   aux: Optional[BytesLike] = None,
                   handler: Optional[Handler] = None,
                   delete: bool = False) -> "Transaction[LinkT]":
        """Open a new transaction of ours stacked on this one."""
        return self.link.startTransaction(self, cmd, ext, aux, handler,
                                          delete)

    def whenClosed(self) -> Deferred:
        """A Deferred that fires with this transaction once it is gone."""
        if self.closed:
            return succeed(self)
        if self._closedWaiters is None:
            self._closedWaiters = []
        d: Deferred = Deferred()
        self._closedWaiters.append(d)
        return d
