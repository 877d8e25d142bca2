#!/usr/bin/env python3
"""
Per-hop cost of relays: nbdcopy read and write of one file through
exporter <- [relay <-]* importer with 0, 1 and 2 relays, measured in
alternation; ratios against the 0-relay path.

    .venv/bin/python bench/relay_bench.py [--size-mib 512] [--rounds 3]
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from bench.common import (  # noqa: E402
    cleanup, randomFile, scratch, sparseFile, timed, waitFor, xdiskd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    d = scratch()
    size = a.size_mib << 20
    img = sparseFile(os.path.join(d, "disk.img"), a.size_mib)
    src = randomFile(os.path.join(d, "src"), a.size_mib)
    procs = []
    e = os.path.join(d, "e.sock")
    procs.append(xdiskd("exporter", ["--no-import", "--listen", "unix:" + e,
                                     "--export", "bench=" + img], d))
    r1 = os.path.join(d, "r1.sock")
    r2 = os.path.join(d, "r2.sock")
    procs.append(xdiskd("relay1", ["--relay", "--no-import", "--connect",
                                   "unix:" + e, "--listen", "unix:" + r1], d))
    procs.append(xdiskd("relay2", ["--relay", "--no-import", "--connect",
                                   "unix:" + r1, "--listen", "unix:" + r2],
                        d))
    uris = {}
    for hops, target in ((0, e), (1, r1), (2, r2)):
        sock = os.path.join(d, "nbd%d.sock" % hops)
        procs.append(xdiskd("importer%d" % hops, [
            "--connect", "unix:" + target, "--nbd", "unix:" + sock], d))
        uris[hops] = "nbd+unix:///xa0?socket=" + sock
    try:
        for u in uris.values():
            waitFor(["nbdinfo", "--size", u])
        res = {(h, op): [] for h in uris for op in ("write", "read")}
        for _ in range(a.rounds):
            for h, u in uris.items():
                res[(h, "write")].append(timed(["nbdcopy", src, u]))
                res[(h, "read")].append(timed(["nbdcopy", u, "null:"]))
    finally:
        for p in procs:
            p.stop()
        cleanup(d)
    print("nbdcopy %d MiB through 0/1/2 relays, %d rounds (median)" % (
        a.size_mib, a.rounds))
    print("%-10s %6s %10s %10s %12s" % ("op", "relays", "seconds", "MB/s",
                                        "vs 0 relays"))
    for op in ("write", "read"):
        base = statistics.median(res[(0, op)])
        for h in uris:
            t = statistics.median(res[(h, op)])
            print("%-10s %6d %10.2f %10.0f %12.2f" % (
                op, h, t, size / t / 1e6, base / t))


if __name__ == "__main__":
    main()
