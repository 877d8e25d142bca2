"""
Errors shared by the layers of xdiskd.

The import side (xa units) fails requests with these; the NBD front end
maps them to NBD error numbers.  The export side maps backing-store errors
to DMSG error codes.
"""


class XDiskError(Exception):
    """Base class for every xdiskd error a caller may see."""


class MediaError(XDiskError):
    """
    The server reported a real I/O error on the medium (DMSG_ERR_IO, 0x22),
    or the request was refused by the server (out of range, read-only).
    NBD: EIO.
    """


class NoPathError(XDiskError):
    """
    The unit has no live path (no span) and the request may not wait for
    one: a probe I/O, or an open with no span.  NBD: EIO / ENXIO.
    """


class NotOpenError(XDiskError):
    """An I/O was issued on a unit that is not open."""


class OutOfRangeError(XDiskError):
    """The request reaches outside the device.  NBD: EINVAL / ENOSPC."""


class ReadOnlyError(XDiskError):
    """A write was issued on a read-only device.  NBD: EPERM."""


class UnitGoneError(XDiskError):
    """The unit was torn down while the request waited.  NBD: ESHUTDOWN."""


class StartupError(XDiskError):
    """
    The daemon cannot start as configured (a busy or bad listener, a
    missing export file...).  The message is one line for the admin,
    naming the option and its value; twistd exits with status 1.
    """


class UnflushedLostError(MediaError):
    """
    Writes acknowledged but not yet flushed were lost with the exporter
    (a host crash, a failover to a node whose cache never saw them) and
    the importer was told not to replay them (C{--unflushed fail}), or
    replaying them failed.  NBD: EIO.
    """
