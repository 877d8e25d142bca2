#!/usr/bin/env python3
"""
CPU cost of one reactor turn with one ready descriptor, in one process:
two descriptors on a socketpair bounce a byte, each read answered by a
write, so every turn handles one read event.  Compares Twisted's epoll
reactor with xdiskd's (L{xdiskd.io.poll.LeanEPollReactor}, no busy-poll),
alternating, and prints microseconds of CPU per event.

    .venv/bin/python bench/poll_bench.py [--n 100000] [--rounds 5]
"""

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from twisted.internet.abstract import FileDescriptor  # noqa: E402
from twisted.internet.epollreactor import EPollReactor  # noqa: E402

from bench.machine import describe  # noqa: E402
from xdiskd.io.poll import LeanEPollReactor  # noqa: E402


class Bouncer(FileDescriptor):
    def __init__(self, reactor, sock, peer):
        FileDescriptor.__init__(self, reactor)
        self.sock = sock
        self.peer = peer
        self.count = 0

    def fileno(self):
        return self.sock.fileno()

    def doRead(self):
        self.sock.recv(16)
        self.count += 1
        self.sock.send(b"x")


def perEvent(reactor, n):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    ra, rb = Bouncer(reactor, a, b), Bouncer(reactor, b, a)
    reactor.addReader(ra)
    reactor.addReader(rb)
    a.send(b"x")
    t0 = time.process_time()
    while ra.count + rb.count < n:
        reactor.doIteration(1)
    cpu = time.process_time() - t0
    events = ra.count + rb.count
    reactor.removeReader(ra)
    reactor.removeReader(rb)
    a.close()
    b.close()
    return cpu / events * 1e6


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    print("\n".join(describe()))
    kinds = (("twisted", EPollReactor), ("xdiskd", LeanEPollReactor))
    results = {k: [] for k, _ in kinds}
    for _ in range(a.rounds):
        for name, cls in kinds:
            results[name].append(perEvent(cls(), a.n))
    for name, rs in results.items():
        rs.sort()
        print("%-8s us CPU/event: min %.2f median %.2f max %.2f" % (
            name, rs[0], rs[len(rs) // 2], rs[-1]))


if __name__ == "__main__":
    main()
