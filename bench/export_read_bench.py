#!/usr/bin/env python3
"""
128 KiB sequential reads served by an exporter daemon to one DMSG link.

Starts `twistd xdiskd --listen tcp:PORT:interface=127.0.0.1 --export ...`
on a file in page cache, then reads the whole file in 128 KiB BLK_READs
with QD requests in flight from an in-process link-layer client.  The
peer, in the same run: `nbdkit file` on the same file read by nbdcopy
with the same request size and queue depth over one connection.

    .venv/bin/python bench/export_read_bench.py [--size-mib 1024] [--qd 8]
"""

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402

from bench.common import (  # noqa: E402
    Proc, cleanup, freePort, randomFile, scratch, timed, waitFor, xdiskd)
from xdiskd.dmsg import constants as C  # noqa: E402
from xdiskd.dmsg.link import DMSGLink  # noqa: E402
from xdiskd.dmsg.wire import BlkIO, BlkOpen, LnkConn  # noqa: E402


class Reader:
    def __init__(self):
        self.span = defer.Deferred()

    def localConn(self):
        return LnkConn(peer_mask=1 << C.PEER_BLOCK, peer_type=C.PEER_CLIENT,
                       peer_label=b"bench/xdisk")

    def linkMade(self, link):
        pass

    def linkReady(self, link):
        pass

    def linkLost(self, link, reason):
        pass

    def transactionReceived(self, txn, msg):
        txn.handler = lambda t, m: t.reply(0) if m.cmd & C.DELETE else None
        txn.result(0)
        if not self.span.called:
            self.span.callback((txn, msg.ext))
        return True


@defer.inlineCallbacks
def readAll(port, qd, chunk):
    r = Reader()
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    yield ep.connect(Factory.forProtocol(lambda: DMSGLink(r)))
    span, ext = yield r.span
    opened = defer.Deferred()
    o = span.startChild(C.BLK_OPEN, BlkOpen(1),
                        handler=lambda t, m: opened.called or
                        opened.callback(m))
    yield opened
    size = ext.media_bytes
    done = defer.Deferred()
    state = {"next": 0, "inflight": 0, "bytes": 0}

    def issue():
        while state["inflight"] < qd and state["next"] < size:
            off = state["next"]
            state["next"] += chunk
            state["inflight"] += 1
            o.startChild(C.BLK_READ, BlkIO(off, chunk), handler=reply,
                         delete=True)

    def reply(t, m):
        assert m.error == 0, m
        state["inflight"] -= 1
        state["bytes"] += len(m.aux)
        if state["next"] >= size and state["inflight"] == 0:
            done.callback(state["bytes"])
        else:
            issue()
    t0 = time.perf_counter()
    issue()
    n = yield done
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--qd", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    d = scratch()
    img = randomFile(os.path.join(d, "disk.img"), a.size_mib)
    port = freePort()
    exp = xdiskd("exporter", ["--no-import", "--listen",
                              "tcp:%d:interface=127.0.0.1" % port,
                              "--export", "serno/demo0=" + img], d)
    ksock = os.path.join(d, "k.sock")
    kit = Proc("nbdkit", ["nbdkit", "-f", "-U", ksock, "file", img], cwd=d)
    results = {"xdiskd": [], "nbdkit": []}
    size = a.size_mib << 20

    @defer.inlineCallbacks
    def run():
        try:
            for _ in range(a.rounds):
                results["xdiskd"].append((yield readAll(port, a.qd,
                                                        131072)))
                t = timed(["nbdcopy", "--connections=1",
                           "--requests=%d" % a.qd,
                           "--request-size=131072",
                           "nbd+unix:///?socket=" + ksock, "null:"])
                results["nbdkit"].append(size / t)
        finally:
            reactor.stop()
    try:
        time.sleep(0.5)
        waitFor(["nbdinfo", "--size", "nbd+unix:///?socket=" + ksock])
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.1)
        reactor.callWhenRunning(run)
        reactor.run()
    finally:
        exp.stop()
        kit.stop()
        cleanup(d)
    import statistics
    x = statistics.median(results["xdiskd"])
    k = statistics.median(results["nbdkit"])
    print("128 KiB sequential reads, QD %d, %d MiB in page cache, median "
          "of %d" % (a.qd, a.size_mib, a.rounds))
    print("xdiskd exporter -> 1 DMSG link (TCP)  %8.0f MB/s  ratio %.2f" % (
        x / 1e6, x / k))
    print("nbdkit file -> nbdcopy (UNIX)         %8.0f MB/s  ratio 1.00" % (
        k / 1e6,))


if __name__ == "__main__":
    main()
