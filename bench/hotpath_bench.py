#!/usr/bin/env python3
"""
CPU cost of the DMSG hot path in Python, without sockets: an importer
node and an exporter node (inline store on a cached file) joined by an
in-memory transport in one process; 4 KiB reads and writes issued on the
xa unit at QD1 and QD32.  Prints microseconds of CPU per request (both
sides together), a number that moves with code changes and not with
machine load.  --profile prints the top functions.  Says which build
of the hot modules ran (xdiskd/compiled.py: XDISKD_PURE=1 for pure
Python).

--instructions runs each workload under valgrind's callgrind twice (N
requests, and none) and prints the instructions per request: the
difference over N, repeatable on a loaded machine (default N 2000).

    .venv/bin/python bench/hotpath_bench.py [--n 20000] [--profile]
        [--only "read QD32"] [--instructions]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from twisted.internet.task import Clock  # noqa: E402
from twisted.test.iosim import connectedServerAndClient  # noqa: E402

from bench.machine import describe  # noqa: E402
from xdiskd.compiled import describe as build  # noqa: E402
from xdiskd.dmsg.link import DMSGLink  # noqa: E402
from xdiskd.export.server import Exporter  # noqa: E402
from xdiskd.export.spec import ExportSpec  # noqa: E402
from xdiskd.export.store import openStore  # noqa: E402
from xdiskd.node import Node  # noqa: E402
from xdiskd.xa.importer import Importer  # noqa: E402


WORKLOADS = (("read QD1", 1, False), ("read QD32", 32, False),
             ("write QD1", 1, True), ("write QD32", 32, True))


def instructions(name, n):
    """Instructions (callgrind's Ir) of this script running C{name}."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, os.path.abspath(__file__), "--only", name,
         "--n", str(n)], capture_output=True, text=True, check=True)
    m = re.search(r"Collected : (\d+)", out.stderr)
    assert m, out.stderr[-2000:]
    return int(m.group(1))


def setUp(path):
    exporter = Exporter()
    spec = ExportSpec("hot", path)
    exporter.add(spec, openStore(spec, None, None))
    exp = Node(exporter=exporter, hostname="e")
    imp = Node(importer=Importer(Clock()), hostname="i")
    client, server, pump = connectedServerAndClient(
        lambda: DMSGLink(exp, "e"), lambda: DMSGLink(imp, "i"))
    pump.flush()
    unit = imp.importer.lookup("xa0")
    d = unit.open()
    pump.flush()
    assert d.called
    return unit, pump


def run(unit, pump, n, qd, write):
    data = os.urandom(4096)
    size = unit.size // 4096
    t0 = time.process_time()
    done = 0
    while done < n:
        ds = []
        for i in range(qd):
            off = ((done + i) * 7919 % size) * 4096
            ds.append(unit.write(off, data) if write else unit.read(off, 4096))
        pump.flush()
        for d in ds:
            assert d.called
        done += qd
    return (time.process_time() - t0) / done * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--only", choices=[w[0] for w in WORKLOADS])
    ap.add_argument("--instructions", action="store_true")
    a = ap.parse_args()
    print("\n".join(describe()))
    print("- " + build())
    if a.instructions:
        n = a.n if a.n != 20000 else 2000
        for name, qd, write in WORKLOADS:
            if a.only and name != a.only:
                continue
            per = (instructions(name, n) - instructions(name, 0)) / n
            print("4 KiB %-10s %8.0f instructions per request (callgrind, "
                  "importer + exporter, in-memory link)" % (name, per))
        return
    fd, path = tempfile.mkstemp(prefix="xdhot-")
    os.write(fd, os.urandom(64 << 20))
    os.close(fd)
    try:
        unit, pump = setUp(path)
        run(unit, pump, 2000, 32, False)        # warm up
        if a.profile:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.enable()
            run(unit, pump, a.n, 32, False)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return
        for name, qd, write in WORKLOADS:
            if a.only and name != a.only:
                continue
            us = run(unit, pump, a.n, qd, write) if a.n else 0.0
            print("4 KiB %-10s %6.1f us CPU per request (importer + "
                  "exporter, in-memory link)" % (name, us))
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
