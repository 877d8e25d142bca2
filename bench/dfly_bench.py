#!/usr/bin/env python3
"""
What DragonFly's link encryption costs: an exporter and an importer
daemon over loopback TCP, plain (C{tcp:}) against C{dfly:tcp:} with keys
in stream format U (and T, DragonFly's older format, if asked), measured
in alternation round by round; fio (ioengine=nbd) 1 MiB sequential reads
and writes at QD8 through the importer's NBD socket, with the CPU seconds
per GiB moved of each daemon.

    .venv/bin/python bench/dfly_bench.py [--size-mib 256] [--runtime 5]
        [--rounds 3] [--formats U,T] [--markdown bench/RESULTS.md]

The machine may be shared: say so next to any numbers kept.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from bench.common import (  # noqa: E402
    cleanup, freePort, randomFile, scratch, waitFor, xdiskd)
from bench.run import fio  # noqa: E402
from xdiskd.dfly.keys import rsainit  # noqa: E402

JOBS = [("seq-read-1M-qd8", "read"), ("seq-write-1M-qd8", "write")]


def keyPair(d, name, peerName):
    """Key dirs for two daemons that both see each other as 127.0.0.1."""
    a, b = os.path.join(d, name + ".keys"), os.path.join(d, peerName +
                                                          ".keys")
    rsainit(a)
    rsainit(b)
    for mine, theirs in ((a, b), (b, a)):
        with open(os.path.join(theirs, "rsa.pub"), "rb") as f:
            pub = f.read()
        with open(os.path.join(mine, "remote", "127.0.0.1.pub"), "wb") as f:
            f.write(pub)
    return a, b


def start(d, img, name):
    port = freePort()
    sock = os.path.join(d, name + ".sock")
    if name == "tcp":
        lst = "tcp:%d:interface=127.0.0.1" % port
        con = "tcp:127.0.0.1:%d" % port
        ekeys = ikeys = []
    else:
        fmt = name.split("-")[1].lower()
        ek, ik = keyPair(d, "exp-" + name, "imp-" + name)
        lst = "dfly:format=%s:tcp:%d:interface=127.0.0.1" % (fmt, port)
        con = "dfly:format=%s:tcp:127.0.0.1:%d" % (fmt, port)
        ekeys, ikeys = ["--dfly-dir", ek], ["--dfly-dir", ik]
    procs = [xdiskd("exp-" + name, ["--no-import", "--listen", lst,
                                    "--export", "b=" + img] + ekeys, d),
             xdiskd("imp-" + name, ["--connect", con, "--nbd",
                                    "unix:" + sock] + ikeys, d)]
    uri = "nbd+unix:///xa0?socket=" + sock
    waitFor(["nbdinfo", "--size", uri], 60)
    return procs, uri


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runtime", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--formats", default="U")
    ap.add_argument("--markdown", default="")
    a = ap.parse_args()
    d = scratch()
    img = randomFile(os.path.join(d, "disk.img"), a.size_mib)
    names = ["tcp"] + ["dfly-" + f for f in a.formats.split(",") if f]
    topos = {}
    results = {}
    try:
        for n in names:
            topos[n] = start(d, img, n)
        for _ in range(a.rounds):
            for job, rw in JOBS:
                for n, (procs, uri) in topos.items():
                    c0 = [p.cpuSeconds() for p in procs]
                    r = fio(uri, rw, "1M", 8, None, a.size_mib << 20,
                            a.runtime)
                    gib = max(r["bytes"] / (1 << 30), 1e-9)
                    r["cpu"] = [(p.cpuSeconds() - c) / gib
                                for p, c in zip(procs, c0)]
                    results.setdefault((job, n), []).append(r)
    finally:
        for procs, _ in topos.values():
            for p in procs:
                p.stop()
        cleanup(d)
    lines = report(results, names, a)
    print("\n".join(lines))
    if a.markdown:
        with open(a.markdown, "a") as f:
            f.write("\n".join(lines) + "\n\n")


def report(results, names, a):
    load = open("/proc/loadavg").read().split()[:3]
    lines = ["## %s — dfly: link encryption vs plain TCP, loopback, %d MiB "
             "file in page cache, fio nbd 1 MiB QD8, %d s runs, %d rounds "
             "alternated (medians); load average at the end %s on 2 shared "
             "cores" % (time.strftime("%Y-%m-%d %H:%M"), a.size_mib,
                        a.runtime, a.rounds, " ".join(load)),
             "",
             "| workload | link | MB/s | p50 µs | p99 µs | CPU s/GiB "
             "exporter | CPU s/GiB importer | MB/s vs tcp |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for job, _ in JOBS:
        base = statistics.median(r["bw"] for r in results[(job, "tcp")])
        for n in names:
            rs = results[(job, n)]
            bw = statistics.median(r["bw"] for r in rs)
            lines.append("| %s | %s | %.0f | %.0f | %.0f | %.2f | %.2f | "
                         "%.2f× |" % (
                             job, n, bw / 1e6,
                             statistics.median(r["p50"] for r in rs),
                             statistics.median(r["p99"] for r in rs),
                             statistics.median(r["cpu"][0] for r in rs),
                             statistics.median(r["cpu"][1] for r in rs),
                             bw / base))
    return lines


if __name__ == "__main__":
    main()
