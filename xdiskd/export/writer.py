"""
One writer thread per store, fed in batches (issue 19 item 1).

The reactor collects the store's operations while it handles one read of
a socket (the batch scope of L{xdiskd.io.send}) and hands them to the
thread as one batch when that read is done: one lock and at most one
wake-up per batch.  The thread makes them in arrival order with
C{os.pwrite}/C{os.preadv} (the GIL released meanwhile) and hands all
their results back with one C{callFromThread}, where the reactor fires
their Deferreds in order.

A write alone in its read, with nothing outstanding (4 KiB at QD1, or
each 1 MiB write, which gets a read of its own), would cost a wake-up of
the thread and one of the reactor for one write and gain no overlap:
with C{--write-thread auto} it is made in the reactor thread as without
a writer thread (L{FileStore}'s non-blocking or page-cache write), and
goes to the thread only if that would wait.

Order: while the thread has anything outstanding, every write and
discard of the store goes through it, and so does every read of a range
an outstanding write or discard touches (L{FileStore} asks
L{BatchWriter.outstanding} and L{BatchWriter.overlaps}), so each sees
exactly the writes that arrived before it, as with the inline writes of
the reactor; other reads are answered as without the thread.  A flush
waits (L{BatchWriter.afterOutstanding}) until everything that arrived
before it was done, then runs on the store pool as before; writes that
arrive after it go on meanwhile.

Bounds: the batch being collected and the thread's queue hold only
operations the exporter accepted, and it accepts request bytes up to the
per-link in-flight limit (L{xdiskd.export.server.DEFAULT_LINK_INFLIGHT},
then it stops reading from that link); waiting flushes are at most one
per FLUSH accepted, which the same limits bound.  The thread waits for
work without a timeout on purpose: it has nothing to do until work
comes, and L{BatchWriter.stop} wakes it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from xdiskd.errors import MediaError
from xdiskd.export.sysio import _describe, _readFull, _writeFull
from xdiskd.io.send import beginBatch, collect, endBatch

WRITE = 0
READ = 1
CALL = 2
_WHAT = {WRITE: "write", READ: "read", CALL: "discard"}

# (kind, offset, argument, deferred): argument is the data (WRITE), the
# length (READ) or (callable, length) (CALL).
Job = Tuple[int, int, Any, Deferred]


class BatchWriter:
    """
    The writer thread of one store's file descriptor.

    @ivar outstanding: operations handed over (collected or queued) and
        not yet reported back to the reactor.
    @ivar batches: batches handed to the thread so far.
    @ivar jobs: operations made by the thread so far.
    @ivar lone: lone small writes made in the reactor thread instead.
    """

    def __init__(self, fd: Callable[[], int], path: str, reactor: Any,
                 loneMax: int = 0,
                 now: Optional[Callable[[int, Any], bool]] = None,
                 name: str = "xdiskd-writer") -> None:
        """
        @param fd: the store's descriptor, asked for per batch.
        @param loneMax: a write smaller than this, alone in its batch
            with nothing outstanding, is offered to C{now} first (0:
            never; more than the largest write: always).
        @param now: C{now(offset, view)} makes a write in the reactor
            thread if it can without waiting: True if it did (raises
            L{MediaError} on an error), False to leave it to the thread.
        """
        self._fd = fd
        self._loneMax = loneMax
        self._now = now
        self._path = path
        self._reactor = reactor
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: List[Job] = []        # the thread's, under _lock
        self._idle = False
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._collected: List[Job] = []    # this read's, reactor only
        # (start, end) of each outstanding operation, in arrival order
        # (reads: empty); the thread reports in that order.
        self._ranges: Deque[Tuple[int, int]] = deque()
        self.outstanding = 0
        self._arrived = 0
        self._finished = 0
        self._waiters: List[Tuple[int, Callable[[], Any]]] = []
        self.batches = 0
        self.jobs = 0
        self.lone = 0

    # -- reactor side

    def submit(self, kind: int, offset: int, arg: Any) -> Deferred:
        """Queue one operation (after everything queued before it)."""
        d: Deferred = Deferred()
        collected = self._collected
        collected.append((kind, offset, arg, d))
        self._ranges.append((offset, offset + len(arg)) if kind == WRITE
                            else (offset, offset + arg[1]) if kind == CALL
                            else (offset, offset))
        self.outstanding += 1
        self._arrived += 1
        if len(collected) == 1 and not collect(self):
            self.flush()
        return d

    def flush(self) -> None:
        """
        Hand what this read collected to the thread (called by
        L{xdiskd.io.send.endBatch}, or at once outside a batch).
        """
        batch = self._collected
        if not batch:
            return
        self._collected = []
        if (len(batch) == 1 and self.outstanding == 1
                and self._now is not None):
            job = batch[0]
            if job[0] == WRITE and len(job[2]) < self._loneMax:
                try:
                    done = self._now(job[1], job[2])
                except BaseException as e:
                    self._done([(job, e, None)])
                    return
                if done:
                    self.lone += 1
                    self._done([(job, None, None)])
                    return
        self.batches += 1
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._queue += batch
            if self._idle:
                self._wake.notify()

    def afterOutstanding(self, f: Callable[[], Any]) -> None:
        """Call C{f} (in the reactor) once every operation that arrived
        before now was made; at once if none is outstanding."""
        if not self.outstanding:
            f()
            return
        self._waiters.append((self._arrived, f))

    def overlaps(self, offset: int, length: int) -> bool:
        """Whether an outstanding write or discard touches the range."""
        end = offset + length
        for start, stop in self._ranges:
            if start < end and offset < stop:
                return True
        return False

    def stop(self) -> None:
        """Let the thread end once its queue is empty."""
        with self._lock:
            self._stopping = True
            self._wake.notify()

    def _done(self, results: List[Tuple[Job, Optional[BaseException],
                                         Any]]) -> None:
        self.outstanding -= len(results)
        self._finished += len(results)
        ranges = self._ranges
        for _ in results:
            ranges.popleft()
        # The replies of one batch go out together (one sendmsg a link).
        beginBatch()
        try:
            self._report(results)
        finally:
            endBatch()

    def _report(self, results: List[Tuple[Job, Optional[BaseException],
                                           Any]]) -> None:
        for (kind, offset, arg, d), error, value in results:
            if error is None:
                d.callback(value)
                continue
            n = arg if kind == READ else (
                len(arg) if kind == WRITE else arg[1])
            what = "%s %d bytes at %d" % (_WHAT[kind], n, offset)
            if isinstance(error, OSError):
                e = MediaError("%s: %s: %s" % (self._path, what,
                                               _describe(error)))
                e.__cause__ = error
                d.errback(Failure(e))
            else:
                d.errback(Failure(error))
        if self._waiters:
            finished = self._finished
            ready = [f for n, f in self._waiters if n <= finished]
            if ready:
                self._waiters = [(n, f) for n, f in self._waiters
                                 if n > finished]
                for f in ready:
                    f()

    # -- the thread

    def _run(self) -> None:
        lock = self._lock
        wake = self._wake
        while True:
            with lock:
                while not self._queue:
                    if self._stopping:
                        return
                    self._idle = True
                    wake.wait()
                    self._idle = False
                batch, self._queue = self._queue, []
            fd = self._fd()
            results: List[Tuple[Job, Optional[BaseException], Any]] = []
            for job in batch:
                kind, offset, arg, _ = job
                try:
                    if kind == WRITE:
                        _writeFull(fd, offset, arg)   # GIL released
                        value = None
                    elif kind == READ:
                        value = _readFull(fd, offset, arg)
                    else:
                        value = arg[0]()
                except BaseException as e:   # reported, never lost
                    results.append((job, e, None))
                    continue
                results.append((job, None, value))
            self.jobs += len(batch)
            self._reactor.callFromThread(self._done, results)
