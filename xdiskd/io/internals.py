"""
Every Twisted internal the I/O layer relies on, in one place.

The lean paths (L{xdiskd.io.poll}, L{xdiskd.io.read}, L{xdiskd.io.send},
L{xdiskd.io.sockets}) work below Twisted's public interfaces: they read a
transport's write buffer to keep the byte order, replace a transport's
C{doRead} and C{doWrite}, and poll the epoll reactor's own C{epoll}
object.  None of that is promised by Twisted's compatibility policy, so
each name is listed here with what uses it, L{missing} checks real
objects for them, and C{tests/test_io_internals.py} fails with the list
when a Twisted release drops or changes one.  C{setup.cfg} bounds
Twisted to the releases that test passed on.

A name used elsewhere in the layer and not listed here is a bug.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Tuple


class Internal(NamedTuple):
    """One Twisted name we use: where it lives and what needs it."""

    owner: str      # "reactor" (an EPollReactor) or "transport"
    name: str
    kind: type      # what the value must be an instance of
    usedBy: str


_callable = type(len)   # a stand-in kind: checked with callable()

REACTOR: Tuple[Internal, ...] = (
    Internal("reactor", "_poller", object,
             "poll: the epoll object, polled directly (its .poll)"),
    Internal("reactor", "_selectables", dict,
             "poll: fd -> selectable, to dispatch events"),
    Internal("reactor", "_doReadOrWrite", _callable,
             "poll: Twisted's own per-event work (doRead/doWrite, errors,"
             " disconnect)"),
    Internal("reactor", "doPoll", _callable,
             "poll: the method LeanEPollReactor overrides (and"
             " doIteration, which Twisted sets to it)"),
)

TRANSPORT: Tuple[Internal, ...] = (
    Internal("transport", "socket", object,
             "read/send: recv, recv_into and sendmsg on it directly"),
    Internal("transport", "doRead", _callable,
             "read: replaced per transport by the lean reader"),
    Internal("transport", "doWrite", _callable,
             "send: wrapped per transport (our queue first)"),
    Internal("transport", "_tempDataBuffer", list,
             "send: Twisted holds unsent writes here (order)"),
    Internal("transport", "dataBuffer", bytes,
             "send: ... and here, from offset on (order)"),
    Internal("transport", "offset", int,
             "send: how much of dataBuffer is sent"),
    Internal("transport", "producerPaused", int,
             "send: pause the producer as Twisted's write would"),
    Internal("transport", "streamingProducer", int,
             "send: only push producers are paused"),
    Internal("transport", "TLS", int,
             "read/send: set by startTLS; then Twisted's own paths"),
    Internal("transport", "_aborting", int,
             "read: abortConnection() was called"),
    Internal("transport", "SEND_LIMIT", int,
             "sockets: bytes per send of Twisted's doWrite"),
    Internal("transport", "bufferSize", int,
             "sockets/read: bytes per recv; send: pause threshold"),
)

ALL: Tuple[Internal, ...] = REACTOR + TRANSPORT


def _lacks(obj: Any, item: Internal) -> Optional[str]:
    try:
        value = getattr(obj, item.name)
    except AttributeError:
        return "%s.%s is gone (%s)" % (
            type(obj).__name__, item.name, item.usedBy)
    ok = (callable(value) if item.kind is _callable
          else isinstance(value, item.kind))
    if not ok:
        return "%s.%s is a %s, not a %s (%s)" % (
            type(obj).__name__, item.name, type(value).__name__,
            "callable" if item.kind is _callable else item.kind.__name__,
            item.usedBy)
    return None


def reactorProblems(reactor: Any) -> List[str]:
    """What C{reactor} (an EPollReactor) lacks of L{REACTOR}."""
    problems = [p for p in (_lacks(reactor, i) for i in REACTOR) if p]
    poller = getattr(reactor, "_poller", None)
    if poller is not None and not callable(getattr(poller, "poll", None)):
        problems.append("EPollReactor._poller has no poll() (poll)")
    return problems


def transportProblems(transport: Any) -> List[str]:
    """
    What C{transport} (a connected TCP or UNIX transport of Twisted's,
    no TLS) lacks of L{TRANSPORT}, and whether Twisted's write buffer
    still behaves as L{xdiskd.io.send} assumes.  It writes to
    C{transport}: pass a throwaway one.
    """
    problems = [p for p in (_lacks(transport, i) for i in TRANSPORT) if p]
    if problems:
        return problems
    # Sender keeps the byte order by sending itself only while Twisted
    # holds nothing: what Twisted queued must show in _tempDataBuffer,
    # or past offset in dataBuffer.
    t = transport
    t.write(b"probe")
    held = b"".join(t._tempDataBuffer) + bytes(t.dataBuffer[t.offset:])
    if held != b"probe":
        problems.append("transport.write() no longer queues in "
                        "_tempDataBuffer/dataBuffer (send: byte order)")
    return problems


def missing() -> List[str]:
    """
    Check L{ALL} on a real EPollReactor and a real UNIX server transport
    of this Twisted (built here on a socketpair, and closed again).

    @return: one line per problem; empty if all is there.
    """
    import socket
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.protocol import Protocol
    from twisted.internet.unix import Server

    reactor = EPollReactor()
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        problems = reactorProblems(reactor)
        t = Server(a, Protocol(), None, None, 1, reactor)
        try:
            problems += transportProblems(t)
        finally:
            t.stopReading()
            t.stopWriting()
    finally:
        a.close()
        b.close()
        waker = getattr(reactor, "waker", None)
        if waker is not None:
            reactor.removeReader(waker)
            waker.connectionLost(None)
        poller = getattr(reactor, "_poller", None)
        if poller is not None:
            poller.close()
    return problems


def plainSocket(transport: Any) -> Any:
    """
    The socket under C{transport} if it is a plain (not TLS) TCP or UNIX
    connection of the reactor's own, else None.  A TLS wrapper forwards
    unknown attributes to the transport below it: writing or reading
    there would bypass TLS, so wrappers never qualify; nor do transports
    that lack what L{xdiskd.io.send} reads of Twisted's write buffer.
    """
    from twisted.internet.abstract import FileDescriptor
    if not isinstance(transport, FileDescriptor):
        return None
    sock = getattr(transport, "socket", None)
    if sock is None or getattr(transport, "TLS", False):
        return None
    if not hasattr(transport, "_tempDataBuffer") or not hasattr(
            transport, "dataBuffer"):
        return None
    return sock
