"""
A lean C{doRead} for plain TCP and UNIX transports: one C{recv} (or
C{recv_into} a buffer the protocol lends) and the protocol's own call.

It replaces the C{doRead} of a transport Twisted built (through an
endpoint or ClientService, with TLS maybe wrapped around it): a
FileDescriptor subclass of ours would mean a Port and a Connector of
ours, and endpoint strings no longer meaning what Twisted documents.
The names it relies on are in L{xdiskd.io.internals}.
"""

from typing import Any, Callable, Optional

from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST

from xdiskd.io.internals import plainSocket

READ_BUDGET = 1 << 20       # bytes one reactor turn reads from a socket


def leanReader(transport: Any, deliver: Optional[Callable] = None,
               into: Optional[Callable] = None,
               filled: Optional[Callable] = None,
               canRead: Optional[Callable] = None) -> bool:
    """
    Give a plain TCP or UNIX C{transport} a lean C{doRead}: one C{recv}
    and the protocol's C{dataReceived}, as Twisted's own does for TCP.

    Twisted's UNIX transports read with C{recvmsg} (to receive passed file
    descriptors, which we never take; the kernel drops them), and
    endpoint and ClientService wrappers add a call layer per read each.
    C{deliver}, if given, is called with the data instead of
    C{transport.protocol.dataReceived} (the caller vouches that nothing
    between them matters for data).  TLS transports are left alone; a
    later STARTTLS is honoured because without C{deliver} the protocol
    is looked up on every read.

    C{into()}, if given, may return a writable view where the protocol
    wants the next bytes (the rest of a large payload): they are then
    received there (C{recv_into}, no copy) and reported with
    C{filled(count)} instead of C{deliver}.  A read that filled what it
    asked for is followed by another in the same turn (up to
    C{READ_BUDGET} bytes) while C{canRead()} says the protocol still
    wants data.

    @return: whether the lean reader was installed.
    """
    sock = plainSocket(transport)
    if sock is None:
        return False
    recv = sock.recv
    recvInto = sock.recv_into
    t = transport

    def doRead() -> Any:
        if getattr(t, "TLS", False):
            return type(t).doRead(t)    # STARTTLS: Twisted's own path
        budget = READ_BUDGET
        while True:
            view = into() if into is not None else None
            if view is not None:
                want = len(view)
                try:
                    n = recvInto(view)
                except (BlockingIOError, InterruptedError):
                    return None
                except OSError:
                    return CONNECTION_LOST
                finally:
                    view.release()
                if not n:
                    return CONNECTION_DONE
                filled(n)  # type: ignore[misc]
            else:
                want = t.bufferSize
                try:
                    data = recv(want)
                except (BlockingIOError, InterruptedError):
                    return None
                except OSError:
                    return CONNECTION_LOST
                n = len(data)
                if not n:
                    return CONNECTION_DONE
                if deliver is not None:
                    deliver(data)
                else:
                    t.protocol.dataReceived(data)
            # A read that got all it asked for likely left more behind:
            # take it now rather than after another epoll turn (a lent
            # buffer ends at a message boundary, so this matters most
            # there), within a budget, while the protocol still reads.
            budget -= n
            if (n < want or budget <= 0 or not t.connected
                    or t.disconnecting or getattr(t, "_aborting", False)
                    or (canRead is not None and not canRead())):
                return None

    transport.doRead = doRead
    return True
