#!/usr/bin/env python3
"""
What a batched writer thread could save the exporter's reactor (issue
19 item 1), without building it into the exporter: 4 KiB random writes
into a page-cached file, made (a) inline, as the exporter does now, and
(b) handed to one writer thread in batches (one lock and notify per
batch of up to QD writes, completions back as one batch).  Prints the
CPU per write of the submitting ("reactor") thread and of the writer
thread, and writes per second, in alternating rounds.

    .venv/bin/python bench/write_handoff_bench.py [--qd 32] [--n 20000]
        [--mib 1024]

The file is made as bench/run.py makes its image (random data, then
cp), in a scratch directory under /tmp.
"""

import argparse
import collections
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from bench.common import cleanup, randomFile, scratch  # noqa: E402
from bench.machine import describe  # noqa: E402


def inline(fd, data, offs):
    t0 = time.thread_time()
    w0 = time.perf_counter()
    for o in offs:
        os.pwritev(fd, [data], o)
    n = len(offs)
    return (time.thread_time() - t0) / n * 1e6, n / (time.perf_counter() - w0)


def batched(fd, data, offs, qd):
    cond = threading.Condition()
    jobs = collections.deque()
    done = collections.deque()
    ready = threading.Event()
    state = {"stop": False, "cpu": 0.0}

    def writer():
        t0 = time.thread_time()
        while True:
            with cond:
                while not jobs and not state["stop"]:
                    cond.wait()
                if state["stop"] and not jobs:
                    break
                batch = list(jobs)
                jobs.clear()
            for o in batch:
                os.pwritev(fd, [data], o)
            done.append(len(batch))
            ready.set()
        state["cpu"] = time.thread_time() - t0

    th = threading.Thread(target=writer)
    th.start()
    n = len(offs)
    t0 = time.thread_time()
    w0 = time.perf_counter()
    i = completed = inflight = 0
    while completed < n:
        if inflight < qd and i < n:
            k = min(qd - inflight, n - i)
            with cond:
                jobs.extend(offs[i:i + k])
                cond.notify()
            i += k
            inflight += k
        ready.wait()
        ready.clear()
        while done:
            c = done.popleft()
            completed += c
            inflight -= c
    main = (time.thread_time() - t0) / n * 1e6
    rate = n / (time.perf_counter() - w0)
    with cond:
        state["stop"] = True
        cond.notify()
    th.join()
    return main, state["cpu"] / n * 1e6, rate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qd", type=int, default=32)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    print("\n".join(describe()))
    d = scratch()
    try:
        src = randomFile(os.path.join(d, "src"), a.mib)
        img = os.path.join(d, "disk.img")
        subprocess.run(["cp", src, img], check=True)
        fd = os.open(img, os.O_RDWR)
        data = os.urandom(4096)
        pages = (a.mib << 20) // 4096
        offs = [random.randrange(pages) * 4096 for _ in range(a.n)]
        for r in range(a.rounds):
            i = inline(fd, data, offs)
            b = batched(fd, data, offs, a.qd)
            print("round %d QD%d: inline %.1f us/write on the reactor, "
                  "%.0f/s | batched: reactor %.1f + writer %.1f us/write, "
                  "%.0f/s" % (r, a.qd, i[0], i[1], b[0], b[1], b[2]))
        os.close(fd)
    finally:
        cleanup(d)


if __name__ == "__main__":
    main()
