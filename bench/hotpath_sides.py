#!/usr/bin/env python3
"""
CPU cost per 4 KiB request of each daemon's Python, without sockets, and
the calls each makes: an NBD front (the importer's NBD server on a
StringTransport, fed request bytes as a client sends them), the xa unit,
the importer's DMSG link, and the exporter's link and store (inline
store on a cached file), joined by an in-memory transport in one process.

Time is attributed per side by wrapping the entry points each daemon
runs for a request: the importer's NBD C{dataReceived} and its link's,
the exporter's link's (the in-memory pump between them is neither's).
Numbers move with code changes, not with load, but exclude the kernel
(sendmsg/recv/epoll) and the reactor, which the real daemons also pay.

    .venv/bin/python bench/hotpath_sides.py [--n 20000] [--calls]
        [--only 'read QD32']

--calls prints, per side, every function called at least once per
32 requests, with calls per request (deterministic: cProfile counts).
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.test.iosim import connectedServerAndClient  # noqa: E402

from bench.machine import describe  # noqa: E402
from xdiskd.dmsg.link import DMSGLink  # noqa: E402
from xdiskd.export.server import Exporter  # noqa: E402
from xdiskd.export.spec import ExportSpec  # noqa: E402
from xdiskd.export.store import openStore  # noqa: E402
from xdiskd.nbd import wire  # noqa: E402
from xdiskd.nbd.server import NBDServerFactory  # noqa: E402
from xdiskd.node import Node  # noqa: E402
from xdiskd.xa.importer import Importer  # noqa: E402


class Side:
    """CPU seconds (and optionally a profile) spent inside wrapped calls."""

    def __init__(self, name):
        self.name = name
        self.cpu = 0.0
        self.prof = None

    def wrap(self, fn):
        clock = time.process_time

        def wrapped(*a):
            prof = self.prof
            t0 = clock()
            if prof is not None:
                prof.enable()
                try:
                    return fn(*a)
                finally:
                    prof.disable()
                    self.cpu += clock() - t0
            try:
                return fn(*a)
            finally:
                self.cpu += clock() - t0
        return wrapped


def build(path, imp, exp):
    exporter = Exporter()
    spec = ExportSpec("hot", path)
    exporter.add(spec, openStore(spec, None, None))
    enode = Node(exporter=exporter, hostname="e")
    importer = Importer(Clock())
    inode = Node(importer=importer, hostname="i")
    ilink, elink, pump = connectedServerAndClient(
        lambda: DMSGLink(enode, "e"), lambda: DMSGLink(inode, "i"))
    pump.flush()
    ilink.dataReceived = imp.wrap(ilink.dataReceived)
    elink.dataReceived = exp.wrap(elink.dataReceived)
    factory = NBDServerFactory(importer)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(wire.encodeClientFlags(3) + wire.encodeOption(
        wire.OPT_EXPORT_NAME, b"xa0"))
    for _ in range(10):
        pump.flush()
    assert transport.value()[18:], "no EXPORT_NAME answer"
    transport.clear()
    feed = imp.wrap(proto.dataReceived)
    unit = importer.lookup("xa0")
    return unit, pump, feed, transport


def run(unit, pump, feed, transport, n, qd, write, imp, exp):
    data = os.urandom(4096)
    size = unit.size // 4096
    kind = wire.CMD_WRITE if write else wire.CMD_READ
    want = qd * (16 if write else 16 + 4096)
    imp.cpu = exp.cpu = 0.0
    done = 0
    while done < n:
        parts = []
        for i in range(qd):
            off = ((done + i) * 7919 % size) * 4096
            parts.append(wire.encodeRequest(0, kind, done + i, off, 4096))
            if write:
                parts.append(data)
        feed(b"".join(parts))
        pump.flush()
        got = len(transport.value())
        assert got == want, (got, want)
        transport.clear()
        done += qd
    return imp.cpu / done * 1e6, exp.cpu / done * 1e6


def calls(prof, n, name):
    import pstats
    st = pstats.Stats(prof)
    rows = []
    for (fn, line, func), (cc, nc, tt, ct, _) in st.stats.items():
        if nc * 32 >= n:
            rows.append((nc / n, tt / n * 1e6, "%s:%d(%s)" % (
                fn.replace(os.getcwd() + "/", "").replace(
                    sys.prefix, "py"), line, func)))
    rows.sort(key=lambda r: -r[1])
    total = sum(r[0] for r in rows)
    print("%s: %.1f calls per request (functions called at least once "
          "per 32 requests); own time under cProfile" % (name, total))
    for per, us, where in rows:
        print("  %6.2f  %6.2f us  %s" % (per, us, where))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--calls", action="store_true")
    ap.add_argument("--only", default="", help="one workload, e.g. "
                    "'read QD32' (for instruction counts under callgrind: "
                    "run with two --n and take the difference)")
    a = ap.parse_args()
    print("\n".join(describe()))
    fd, path = tempfile.mkstemp(prefix="xdhot-")
    os.write(fd, os.urandom(64 << 20))
    os.close(fd)
    imp, exp = Side("importer"), Side("exporter")
    try:
        unit, pump, feed, transport = build(path, imp, exp)
        args = (unit, pump, feed, transport)
        warm = 320 if a.only else 2000
        run(*args, warm, 32, False, imp, exp)        # warm up
        run(*args, warm, 32, True, imp, exp)
        if a.calls:
            import cProfile
            for name, write in (("read QD32", False), ("write QD32", True)):
                imp.prof, exp.prof = cProfile.Profile(), cProfile.Profile()
                run(*args, a.n, 32, write, imp, exp)
                calls(imp.prof, a.n, "importer, 4 KiB " + name)
                calls(exp.prof, a.n, "exporter, 4 KiB " + name)
            return
        for name, qd, write in (("read QD1", 1, False),
                                ("read QD32", 32, False),
                                ("write QD1", 1, True),
                                ("write QD32", 32, True)):
            if a.only and a.only != name:
                continue
            i, e = run(*args, a.n, qd, write, imp, exp)
            print("4 KiB %-10s importer %5.1f  exporter %5.1f us CPU per "
                  "request (Python, in-memory link, NBD front)" % (
                      name, i, e))
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
