"""
Socket and transport tuning shared by the DMSG and NBD protocols.

Twisted reads 64 KiB per recv and writes at most 128 KiB per send by
default, and the kernel's default socket buffers hold little more than one
128 KiB DMSG I/O: a 128 KiB payload then costs several reactor turns and
context switches per hop.  Larger reads, sends and socket buffers let a
whole message (and the next ones) move per turn.
"""

import socket
from typing import Any

# Bytes per recv / send.  1 MiB was first; 256 KiB measured better at QD1
# (each recv allocates a buffer of this size): 4.1-4.4k vs 3.3-4.1k
# 4 KiB reads/s and 199-216 vs 221-282 us CPU per request, with 1 MiB
# sequential reads and QD32 unchanged.
IO_CHUNK = 256 << 10
SOCKET_BUFFER = 4 << 20     # SO_SNDBUF / SO_RCVBUF asked for


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


def eagerWriter(transport: Any) -> Any:
    """
    Return C{write(data)} for C{transport} that sends at once when
    nothing is queued, instead of waiting for the next reactor turn.

    Twisted's C{write} only queues and asks epoll for writability, so
    every message costs an extra turn (epoll_ctl + epoll_wait) per hop:
    that is latency on every request.  When the transport's buffers are
    empty we call its own C{writeSomeData} (the same send Twisted would
    do), and hand any rest or error to C{write} as usual.  Transports
    without those internals (TLS, test transports) get plain C{write}.
    """
    write = transport.write
    some = getattr(transport, "writeSomeData", None)
    if some is None or not hasattr(transport, "_tempDataBuffer") or (
            not hasattr(transport, "dataBuffer")):
        return write
    if getattr(type(transport), "writeSomeData", None) is None:
        # A wrapper (TLSMemoryBIOProtocol for tls: links) forwards these
        # attributes to the socket below it: sending there bypasses TLS.
        return write

    def eagerWrite(data: bytes) -> None:
        t = transport
        # TLS may start later (NBD STARTTLS): then Twisted's write
        # encrypts, and writeSomeData would bypass it.  Never eager then.
        if (t._tempDataBuffer or len(t.dataBuffer) > t.offset
                or not t.connected or t.disconnecting
                or getattr(t, "TLS", False)):
            write(data)
            return
        n = some(data)
        if type(n) is int:
            if n == len(data):
                return
            write(data[n:] if n else data)
        else:
            # An error: queue it, and Twisted's own write path will find
            # the connection lost and report it the usual way.
            write(data)
    return eagerWrite


# ----------------------------------------------------------------------
# Write batching.  While a protocol handles one chunk of received data it
# often produces many messages (a batch of NBD requests becomes a batch of
# DMSG I/Os; a batch of DMSG I/Os becomes a batch of replies).  Inside a
# batch scope, writes are collected per transport and sent with one
# syscall when the outermost scope ends, instead of one send each.

_depth = 0
_dirty: list = []
BATCH_MESSAGE = 64 << 10     # messages this large are never held back
BATCH_BYTES = 256 << 10      # a batch this large is sent at once


class BatchWriter:
    """Per-transport writer: eager outside a batch, collecting inside."""

    __slots__ = ("send", "buf", "size")

    def __init__(self, transport: Any) -> None:
        self.send = eagerWriter(transport)
        self.buf: list = []
        self.size = 0

    def write(self, data: bytes) -> None:
        n = len(data)
        if _depth and n < BATCH_MESSAGE:
            if not self.buf:
                _dirty.append(self)
            self.buf.append(data)
            self.size += n
            if self.size >= BATCH_BYTES:
                self.flush()
        else:
            # Large payloads go at once: holding them back for a batch
            # would stall the pipeline behind one big send (measured:
            # 1 MiB reads at QD8 fell from ~1 GB/s to ~0.5 GB/s).
            if self.buf:
                self.flush()
            self.send(data)

    def flush(self) -> None:
        """Send what is collected now (before a close, say)."""
        buf = self.buf
        if buf:
            self.buf = []
            self.size = 0
            self.send(buf[0] if len(buf) == 1 else b"".join(buf))


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
