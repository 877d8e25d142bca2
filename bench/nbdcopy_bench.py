#!/usr/bin/env python3
"""
nbdcopy 1 GiB read and write through the full two-process xdiskd path
(exporter daemon <- DMSG over a UNIX socket <- importer daemon <- nbdcopy)
beside `nbdkit file` on the same file, measured in alternation.

    .venv/bin/python bench/nbdcopy_bench.py [--size-mib 1024] [--rounds 3]
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from bench.common import (  # noqa: E402
    Proc, cleanup, randomFile, scratch, sparseFile, timed, waitFor, xdiskd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-io", type=int, default=131072)
    ap.add_argument("--inline-io", action="store_true")
    a = ap.parse_args()
    d = scratch()
    size = a.size_mib << 20
    img = sparseFile(os.path.join(d, "disk.img"), a.size_mib)
    src = randomFile(os.path.join(d, "src"), a.size_mib)
    dmsg = os.path.join(d, "dmsg.sock")
    xsock = os.path.join(d, "xnbd.sock")
    ksock = os.path.join(d, "knbd.sock")
    exargs = ["--no-import", "--listen", "unix:" + dmsg,
              "--export", "bench=" + img]
    if a.inline_io:
        exargs.append("--inline-io")
    exp = xdiskd("exporter", exargs, d)
    imp = xdiskd("importer", ["--connect", "unix:" + dmsg, "--nbd",
                              "unix:" + xsock, "--max-io", str(a.max_io)],
                 d)
    kit = Proc("nbdkit", ["nbdkit", "-f", "-U", ksock, "file", img],
               cwd=d)
    xuri = "nbd+unix:///xa0?socket=" + xsock
    kuri = "nbd+unix:///?socket=" + ksock
    try:
        waitFor(["nbdinfo", "--size", xuri])
        waitFor(["nbdinfo", "--size", kuri])
        res = {k: [] for k in ("xw", "kw", "xr", "kr")}
        for _ in range(a.rounds):
            res["xw"].append(timed(["nbdcopy", src, xuri]))
            res["kw"].append(timed(["nbdcopy", src, kuri]))
            res["xr"].append(timed(["nbdcopy", xuri, "null:"]))
            res["kr"].append(timed(["nbdcopy", kuri, "null:"]))
        cpu = {p.name: p.cpuSeconds() for p in (exp, imp, kit)}
        rss = {p.name: p.rssPeakKiB() for p in (exp, imp, kit)}
    finally:
        for p in (exp, imp, kit):
            p.stop()
        cleanup(d)
    med = {k: statistics.median(v) for k, v in res.items()}
    mib = a.size_mib
    print("nbdcopy %d MiB, %d rounds (median), max-io %d%s" % (
        mib, a.rounds, a.max_io, ", inline-io" if a.inline_io else ""))
    print("%-32s %10s %10s %8s" % ("", "seconds", "MB/s", "ratio"))
    for op, x, k in (("write", "xw", "kw"), ("read", "xr", "kr")):
        print("%-32s %10.2f %10.0f %8.2f" % (
            "xdiskd 2-process " + op, med[x], size / med[x] / 1e6,
            med[k] / med[x]))
        print("%-32s %10.2f %10.0f %8s" % (
            "nbdkit file " + op, med[k], size / med[k] / 1e6, "1.00"))
    print("CPU seconds (whole run): " + ", ".join(
        "%s %.1f" % kv for kv in cpu.items()))
    print("peak RSS MiB: " + ", ".join(
        "%s %.0f" % (k, v / 1024) for k, v in rss.items()))


if __name__ == "__main__":
    main()
