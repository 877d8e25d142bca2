"""
Micro-benchmark: sequential reads through L{xdiskd.export.store.FileStore}
in thread-pool mode and in inline mode, from a file in the page cache.

    PYTHONPATH=. .venv/bin/python bench/store_bench.py [--size-mib 256]
        [--block-kib 128] [--depth 8] [--threads 4] [--passes 5]

Writes a scratch file (removed afterwards), reads it once to be sure it is
cached, then for each mode reads it end to end C{--passes} times with
C{--depth} reads in flight, and prints MB/s (10**6 bytes/s) per pass, the
best and median, and the inline/pool ratio.  A bare C{os.preadv} loop
without Twisted is printed as the ceiling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from xdiskd.export.spec import ExportSpec
from xdiskd.export.store import FileStore, makeStorePool, openStore

MiB = 1 << 20


def makeFile(directory: str, size: int) -> str:
    """
    Write a C{size}-byte file of non-zero data and read it back once, so
    that it sits in the page cache.
    """
    fd, path = tempfile.mkstemp(prefix="store-bench-", suffix=".img", dir=directory)
    chunk = os.urandom(MiB)
    try:
        for offset in range(0, size, MiB):
            os.pwrite(fd, chunk, offset)
        buf = bytearray(MiB)
        for offset in range(0, size, MiB):
            os.preadv(fd, [buf], offset)
    finally:
        os.close(fd)
    return path


def sequentialRead(store: FileStore, block: int, depth: int) -> Deferred[float]:
    """
    Read the whole store in C{block}-sized requests, keeping C{depth} in
    flight, and fire with the seconds it took.

    Inline reads complete inside L{pump}; the C{pumping} guard turns that
    re-entry into iteration, so the stack does not grow per request.
    """
    done: Deferred[float] = Deferred()
    size = store.size
    state = {"next": 0, "inflight": 0, "pumping": False, "bytes": 0}
    start = time.perf_counter()

    def completed(data: bytearray) -> None:
        state["inflight"] -= 1
        state["bytes"] += len(data)
        if state["next"] >= size and state["inflight"] == 0:
            if state["bytes"] != size:
                done.errback(RuntimeError(f"read {state['bytes']} of {size} bytes"))
            else:
                done.callback(time.perf_counter() - start)
        else:
            pump()

    def pump() -> None:
        if state["pumping"]:
            return
        state["pumping"] = True
        try:
            while state["inflight"] < depth and state["next"] < size:
                offset = state["next"]
                state["next"] += block
                state["inflight"] += 1
                store.read(offset, min(block, size - offset)).addCallbacks(
                    completed, done.errback
                )
        finally:
            state["pumping"] = False

    pump()
    return done


def barePreadv(path: str, block: int) -> float:
    """
    The same reads with a plain C{os.preadv} loop; return the seconds.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        start = time.perf_counter()
        for offset in range(0, size, block):
            buf = bytearray(block)
            os.preadv(fd, [buf], offset)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def report(name: str, size: int, seconds: list[float]) -> float:
    """
    Print per-pass and summary MB/s for one mode; return the median.
    """
    rates = [size / s / 1e6 for s in seconds]
    median = statistics.median(rates)
    passes = " ".join(f"{r:8.0f}" for r in rates)
    print(f"{name:<22} passes MB/s: {passes}   best {max(rates):8.0f}   median {median:8.0f}")
    return median


async def run(reactor: Any, options: argparse.Namespace) -> None:
    size = options.size_mib * MiB
    block = options.block_kib * 1024
    path = makeFile(options.dir, size)
    try:
        spec = ExportSpec("bench", path, readOnly=True, blksize=512)
        pool = makeStorePool(options.threads)
        pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
        print(
            f"file {size // MiB} MiB in page cache, {block // 1024} KiB reads, "
            f"{options.depth} in flight, {options.threads} pool threads, "
            f"{options.passes} passes, Python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs"
        )

        medians = {}
        for name, storePool in [("thread pool", pool), ("inline", None)]:
            store = openStore(spec, reactor, storePool)
            # One untimed warm-up pass (thread start-up, allocator).
            await sequentialRead(store, block, options.depth)
            seconds = []
            for _ in range(options.passes):
                seconds.append(await sequentialRead(store, block, options.depth))
            medians[name] = report(name, size, seconds)
            await store.close()

        bare: Callable[[], float] = lambda: barePreadv(path, block)
        bare()
        report("bare os.preadv loop", size, [bare() for _ in range(options.passes)])
        print(
            f"inline / thread pool (medians): "
            f"{medians['inline'] / medians['thread pool']:.2f}x"
        )
    finally:
        os.unlink(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--block-kib", type=int, default=128)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to put the scratch file")
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, options)))


if __name__ == "__main__":
    main()
