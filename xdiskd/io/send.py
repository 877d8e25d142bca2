"""
Eager and batched writes with C{sendmsg}, past the transport's buffer.

While a protocol handles one chunk of received data it often produces
many messages (a batch of NBD requests becomes a batch of DMSG I/Os; a
batch of DMSG I/Os becomes a batch of replies).  Inside a batch scope
(L{beginBatch} ... L{endBatch}), writes are collected per transport and
sent with one syscall when the outermost scope ends, instead of one send
each.  Messages are sequences of buffers (header, payload, padding)
handed to C{sendmsg} as they are: a payload is never joined to its
header in user space.

The transports are Twisted's own (endpoints, ClientService and TLS build
them), so a L{Sender} wraps one's C{doWrite} rather than subclassing it,
and reads its write buffer to keep the order; the names it relies on
are in L{xdiskd.io.internals}.
"""

from collections import deque
from typing import Any, Deque

from twisted.internet.main import CONNECTION_LOST

from xdiskd.io.internals import plainSocket

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
        self.sock = plainSocket(transport)
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


def collect(obj: Any) -> bool:
    """
    Inside a batch scope, have C{obj.flush()} called when the outermost
    scope ends (after the L{Sender}s queued before it), and return True;
    outside one return False (the caller does it now).  The export's
    writer thread hands over one read's writes this way.
    """
    if not _depth:
        return False
    _dirty.append(obj)
    return True


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
