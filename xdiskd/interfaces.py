"""
The zope interfaces that join xdiskd's layers.

  - L{IBlockDevice}: what an xa unit (import side) offers to a front end
    such as the NBD server.
  - L{IBlockDeviceRegistry}: how a front end finds block devices by name.
  - L{IBackingStore}: what an export (export side) reads and writes.
"""

from typing import Any, Callable, Optional

from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

#: The completion callback of L{ICallbackBlockDevice}: C{done(result,
#: failure)}.
Done = Callable[[Any, Optional[Failure]], None]


class IBlockDevice(Interface):
    """
    A remote (or local) disk, addressed in bytes.

    Every asynchronous method returns a L{twisted.internet.defer.Deferred}.
    I/O methods fail with an L{xdiskd.errors.XDiskError} subclass.
    """

    name = Attribute("Unit name, e.g. 'xa0' (str).")
    serial = Attribute("Disk serial number = the span's pfs_label (str).")
    size = Attribute("Size in bytes (int).")
    sectorSize = Attribute("Sector size in bytes (int, >= 1).")
    readOnly = Attribute("True if writes must be refused locally (bool).")

    def open():
        """
        Count one open of the device.  The first open issues BLK_OPEN and
        fires when the server answered; it fails with
        L{xdiskd.errors.NoPathError} when no path exists or the server
        refused.
        """

    def close():
        """Drop one open; the last close closes the BLK_OPEN transaction."""

    def read(offset, length):
        """
        Read C{length} bytes at C{offset}.  Fires with a bytes-like object
        of exactly C{length} bytes.
        """

    def readv(offset, length):
        """
        Like L{read}, but fire with a list of bytes-like objects that
        together are the C{length} bytes, in order: a front end that
        sends them on needs no join.
        """

    def write(offset, data):
        """
        Write the bytes-like C{data} at C{offset}.  Fires with None.

        The caller never changes C{data} afterwards: an xa unit keeps a
        reference to it, uncopied, until a flush made it durable
        (L{xdiskd.xa.window}).
        """

    def flush():
        """
        Fire when every write completed before this call is durable.
        """

    def trim(offset, length):
        """Discard a range; it then reads as zeros.  Fires with None."""


class ICallbackBlockDevice(IBlockDevice):
    """
    A block device that also takes READ and WRITE with a completion
    callback instead of a Deferred: the hot path of a front end, where a
    Deferred and its callback chain are a good part of the cost.

    C{done(result, failure)} is called once, with C{(parts, None)} for a
    read (as L{IBlockDevice.readv} fires), C{(None, None)} for a write, or
    C{(None, failure)}.  The methods return a handle with C{finished} and
    C{cancel()}, which calls C{done} at once with a C{CancelledError}
    failure (as cancelling a Deferred fires it); or None when the request
    ended at once and C{done} has already been called.
    """

    def startRead(offset, length, done):
        """Read C{length} bytes at C{offset}, as L{IBlockDevice.readv}."""

    def startWrite(offset, data, done):
        """Write C{data} at C{offset}, as L{IBlockDevice.write}."""


class IBlockDeviceRegistry(Interface):
    """The set of block devices a front end may serve."""

    def lookup(name):
        """
        Return the L{IBlockDevice} whose name or serial is C{name}, or None.
        """

    def devices():
        """Return a list of the L{IBlockDevice}s, ordered by name."""


class IBackingStore(Interface):
    """
    The local file or block device behind an export.  Offsets and lengths
    are checked by the caller against C{size}; the store does positional
    I/O and never blocks the reactor for device latency.
    """

    path = Attribute("Path of the file or device (str).")
    size = Attribute("Size in bytes (int).")
    readOnly = Attribute("True if the store was opened read-only (bool).")

    def read(offset, length):
        """Fire with a bytes-like object of C{length} bytes."""

    # Optional: readNow(offset, length) returns the bytes at once when
    # they can be had without blocking (the page cache), else None; a
    # store that has it also takes read(offset, length, nowait=False),
    # which skips that attempt (the caller has just made it).

    def write(offset, data):
        """Write C{data} at C{offset}; fire with None."""

    def flush():
        """fdatasync; fire with None."""

    def discard(offset, length):
        """Punch a hole / discard; the range then reads as zeros."""

    def close():
        """Release the file descriptor and any threads."""


class ILinkReceiver(Interface):
    """
    What sits above a DMSG link (L{xdiskd.dmsg.link.DMSGLink}): the node
    that exports, imports or relays.  The link calls these.
    """

    def localConn():
        """
        Return the L{xdiskd.dmsg.wire.LnkConn} to send as our LNK_CONN
        (§7.2): peer type, peer_mask and label of this node.
        """

    def linkMade(link):
        """A connection exists; our LNK_CONN has been sent."""

    def linkReady(link):
        """
        The peer answered our LNK_CONN with error 0: spans may now be
        advertised on C{link} (§7.2 step 3).
        """

    def transactionReceived(txn, msg):
        """
        The peer opened a top-level transaction other than LNK_CONN (e.g.
        LNK_SPAN).  Set C{txn.handler} (and C{txn.onChild}) to keep it, or
        answer it; return False to have the link answer NOSUPP.
        """

    def linkLost(link, reason):
        """
        The connection is gone; every transaction on it has already been
        failed locally with LOSTLINK (§7.4).
        """
