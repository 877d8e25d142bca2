"""
Socket and transport tuning shared by the DMSG and NBD protocols.

Twisted reads 64 KiB per recv and writes at most 128 KiB per send by
default, and the kernel's default socket buffers hold little more than one
128 KiB DMSG I/O: a 128 KiB payload then costs several reactor turns and
context switches per hop.  Larger reads, sends and socket buffers let a
whole message (and the next ones) move per turn.
"""

import socket
import time
from collections import deque
from typing import Any, Callable, Deque, Optional

from twisted.internet.abstract import FileDescriptor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST

# Bytes per recv / send.  1 MiB was first; 256 KiB measured better at QD1
# (each recv allocates a buffer of this size): 4.1-4.4k vs 3.3-4.1k
# 4 KiB reads/s and 199-216 vs 221-282 us CPU per request, with 1 MiB
# sequential reads and QD32 unchanged.
IO_CHUNK = 256 << 10
READ_BUDGET = 1 << 20       # bytes one reactor turn reads from a socket
SOCKET_BUFFER = 4 << 20     # SO_SNDBUF / SO_RCVBUF asked for


# glibc malloc serves blocks of 128 KiB and more (every DMSG I/O payload)
# with a fresh mmap, and gives them back with munmap: each 128 KiB buffer
# then costs 32 page faults and zeroed pages.  Measured on 1 MiB reads
# through the importer, page faults were a third of its CPU.  Large
# blocks from the heap, and a heap that is not trimmed at every free,
# reuse the same pages instead.
MMAP_THRESHOLD = 8 << 20
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tuneMalloc(mmapThreshold: int = MMAP_THRESHOLD,
               trimThreshold: int = TRIM_THRESHOLD) -> bool:
    """
    Keep large buffers in the heap (glibc only; elsewhere a no-op).

    @return: whether both settings were taken.
    """
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmapThreshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trimThreshold))


class SpinWindow:
    """
    How long a reactor busy-polls before it blocks: adaptive, as KVM's
    halt polling.  A process that sleeps in C{epoll_wait} pays for the
    sleep and the wake-up (tens of microseconds of scheduler work on a
    VM, and caches gone cold) on every event; when events come at short
    intervals, as replies do at queue depth 1, polling for them a little
    longer costs less than sleeping.

    The window starts at 0.  A blocking wait ended by I/O within
    C{maximum} seconds means a longer poll would have caught it: the
    window doubles (from L{START}) up to C{maximum}.  A wait longer than
    that, or one ended by a timer, halves it, down to 0: an idle or
    lightly loaded daemon does not spin.  C{maximum} 0 turns polling off.
    """

    START = 10e-6

    def __init__(self, maximum: float) -> None:
        self.maximum = maximum
        self.window = 0.0

    def blocked(self, seconds: float, woken: bool) -> None:
        """A blocking wait took C{seconds}; C{woken}: I/O ended it."""
        if woken and seconds <= self.maximum:
            self.window = min(max(self.window * 2, self.START), self.maximum)
        elif self.window:
            half = self.window / 2
            self.window = half if half >= self.START else 0.0


def leanPoll(reactor: Any, spinMax: float = 0.0) -> bool:
    """
    Give an epoll reactor a C{doPoll} without Twisted's per-event
    C{callWithLogger} (a logPrefix call and a logging-context push and pop
    around every ready descriptor, for legacy C{log.msg} lines' system
    prefix).  Errors are still caught, logged and disconnect the
    descriptor: that is C{_doReadOrWrite}'s own work.

    With C{spinMax} (seconds), it polls for up to a L{SpinWindow} before
    it blocks.

    @return: whether the reactor was changed.
    """
    import errno
    from twisted.internet.epollreactor import EPollReactor
    if not isinstance(reactor, EPollReactor):
        return False
    poll = reactor._poller.poll
    selectables = reactor._selectables
    drdw = reactor._doReadOrWrite
    spin = SpinWindow(spinMax)
    reactor.spinWindow = spin  # type: ignore[attr-defined]
    clock = time.monotonic

    def doPoll(timeout: Optional[float]) -> None:
        try:
            window = spin.window
            if not spinMax or timeout == 0:
                events = poll(-1 if timeout is None else timeout,
                              len(selectables))
            else:
                start = clock()
                events = None
                if window:
                    deadline = start + (window if timeout is None
                                        else min(window, timeout))
                    while True:
                        events = poll(0, len(selectables))
                        if events or clock() >= deadline:
                            break
                if not events:
                    if timeout is None:
                        events = poll(-1, len(selectables))
                    else:
                        events = poll(max(0.0, timeout - (clock() - start)),
                                      len(selectables))
                    spin.blocked(clock() - start, bool(events))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                drdw(selectable, fd, event)
    reactor.doPoll = reactor.doIteration = doPoll  # type: ignore[method-assign]
    return True


def tuneTransport(transport: Any, chunk: int = IO_CHUNK,
                  sockbuf: int = SOCKET_BUFFER) -> None:
    """Apply the sizes above to a connected transport, where possible."""
    target = getattr(transport, "transport", None)
    # TLS wraps the socket transport; tune the one underneath too.
    for t in (transport, target):
        if t is None:
            continue
        if hasattr(t, "bufferSize"):
            t.bufferSize = chunk
        if hasattr(t, "SEND_LIMIT"):
            t.SEND_LIMIT = chunk
        setNoDelay = getattr(t, "setTcpNoDelay", None)
        if setNoDelay is not None:
            # Small DMSG/NBD messages must not wait for Nagle.
            try:
                setNoDelay(True)
            except OSError:
                pass
        getHandle = getattr(t, "getHandle", None)
        if getHandle is None:
            continue
        try:
            sock = getHandle()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sockbuf)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sockbuf)
        except (AttributeError, OSError, TypeError):
            pass


def _socketOf(transport: Any) -> Any:
    """
    The socket under C{transport} if it is a plain (not TLS) TCP or UNIX
    connection of the reactor's own, else None.  A TLS wrapper forwards
    unknown attributes to the transport below it: writing or reading
    there would bypass TLS, so wrappers never qualify.
    """
    if not isinstance(transport, FileDescriptor):
        return None
    sock = getattr(transport, "socket", None)
    if sock is None or getattr(transport, "TLS", False):
        return None
    if not hasattr(transport, "_tempDataBuffer") or not hasattr(
            transport, "dataBuffer"):
        return None
    return sock


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
    sock = _socketOf(transport)
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


# ----------------------------------------------------------------------
# Writing.  While a protocol handles one chunk of received data it often
# produces many messages (a batch of NBD requests becomes a batch of DMSG
# I/Os; a batch of DMSG I/Os becomes a batch of replies).  Inside a batch
# scope, writes are collected per transport and sent with one syscall when
# the outermost scope ends, instead of one send each.  Messages are
# sequences of buffers (header, payload, padding) handed to C{sendmsg} as
# they are: a payload is never joined to its header in user space.

_depth = 0
_dirty: list = []
BATCH_MESSAGE = 64 << 10     # messages this large are never held back
BATCH_BYTES = 256 << 10      # a batch this large is sent at once
MAX_IOV = 512                # buffers per sendmsg (Linux IOV_MAX is 1024)


class Sender:
    """
    Per-transport writer: eager outside a batch, collecting inside.

    Eager means: when nothing is queued, send at once with C{sendmsg},
    instead of Twisted's C{write}, which only queues and asks epoll for
    writability, so every message would cost an extra reactor turn
    (epoll_ctl + epoll_wait) per hop: latency on every request.

    What the socket does not take waits in the sender's own queue, as
    the views it was given (never joined), and goes out from the
    transport's C{doWrite} before anything Twisted holds.  Twisted's
    C{write} joined every rest into one bytes and then re-joined what it
    still held on each partial send: with many large writes outstanding
    (nbdcopy: 64 MiB) that copying doubled the importer's CPU.  The
    producer registered on the transport is paused while more than
    C{transport.bufferSize} bytes wait here, and resumed by Twisted's
    own C{doWrite} once all is sent, as with Twisted's buffer.

    Transports without a plain socket (TLS, test transports) get
    C{write} as usual.  A caller must not change a buffer it handed over.
    """

    __slots__ = ("transport", "sock", "bufs", "size", "queue", "queued",
                 "_twistedDoWrite")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.sock = _socketOf(transport)
        self.bufs: list = []
        self.size = 0
        self.queue: Deque[Any] = deque()
        self.queued = 0
        self._twistedDoWrite: Any = None
        if self.sock is not None:
            self._twistedDoWrite = transport.doWrite
            transport.doWrite = self._doWrite

    def write(self, data: Any) -> None:
        """Send one buffer."""
        self.writeSeq([data], len(data))

    def writeSeq(self, bufs: list, size: int) -> None:
        """Send C{bufs} (C{size} bytes in all) in order."""
        if _depth and size < BATCH_MESSAGE:
            mine = self.bufs
            if not mine:
                _dirty.append(self)
            mine += bufs
            self.size += size
            if self.size >= BATCH_BYTES or len(mine) >= MAX_IOV:
                self.flush()
            return
        # Large payloads go at once: holding them back for a batch would
        # stall the pipeline behind one big send (measured: 1 MiB reads
        # at QD8 fell from ~1 GB/s to ~0.5 GB/s).
        if self.bufs:
            self.flush()
        self._send(bufs, size)

    def flush(self) -> None:
        """Send what is collected now (before a close, say)."""
        bufs = self.bufs
        if bufs:
            size = self.size
            self.bufs = []
            self.size = 0
            self._send(bufs, size)

    def _send(self, bufs: list, size: int) -> None:
        t = self.transport
        sock = self.sock
        # TLS may start later (NBD STARTTLS): then Twisted's write
        # encrypts, and the socket would bypass it.  Whatever goes to
        # Twisted's buffer is sent after our queue (see _doWrite), so the
        # order holds; once Twisted holds something, so does everything
        # after it.
        if (sock is None or not t.connected or t.disconnecting
                or getattr(t, "TLS", False) or t._tempDataBuffer
                or len(t.dataBuffer) > t.offset):
            t.write(bufs[0] if len(bufs) == 1 and type(bufs[0]) is bytes
                    else b"".join(bufs))
            return
        if self.queue:
            self._enqueue(bufs, 0, size)
            return
        try:
            sent = sock.sendmsg(bufs) if len(bufs) <= MAX_IOV else (
                sock.sendmsg(bufs[:MAX_IOV]))
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Queue it: Twisted's own write path finds the connection
            # lost and reports it the usual way.
            t.write(b"".join(bufs))
            return
        if sent == size:
            return
        self._enqueue(bufs, sent, size - sent)
        t.startWriting()

    def _enqueue(self, bufs: list, skip: int, size: int) -> None:
        """Queue C{bufs} after their first C{skip} bytes (views, no copy)."""
        queue = self.queue
        for b in bufs:
            n = len(b)
            if skip >= n:
                skip -= n
                continue
            queue.append(memoryview(b)[skip:] if skip else b)
            skip = 0
        self.queued += size
        t = self.transport
        producer = t.producer
        if (self.queued > t.bufferSize and producer is not None
                and t.streamingProducer and not t.producerPaused):
            t.producerPaused = True
            producer.pauseProducing()

    def _doWrite(self) -> Any:
        """The transport's doWrite: our queue first, then Twisted's."""
        queue = self.queue
        if queue:
            sock = self.sock
            while queue:
                bufs = list(queue) if len(queue) <= MAX_IOV else [
                    queue[i] for i in range(MAX_IOV)]
                try:
                    sent = sock.sendmsg(bufs)
                except (BlockingIOError, InterruptedError):
                    return None
                except OSError:
                    return CONNECTION_LOST
                self.queued -= sent
                while sent:
                    n = len(queue[0])
                    if sent < n:
                        queue[0] = memoryview(queue[0])[sent:]
                        break
                    queue.popleft()
                    sent -= n
                if queue and len(bufs) < MAX_IOV:
                    return None     # the socket is full: wait for epoll
        return self._twistedDoWrite()


def beginBatch() -> None:
    global _depth
    _depth += 1


def endBatch() -> None:
    global _depth
    _depth -= 1
    if _depth == 0 and _dirty:
        writers = _dirty[:]
        del _dirty[:]
        for w in writers:
            w.flush()
