#!/usr/bin/env python3
"""
Replay times (issue 16): write N MiB (under the 64 MiB window) without a
flush through the 2-hop
path, cut the exporter host's power (tests/powerloss.py: SIGKILL loses
its unflushed writes), start it again as a fresh boot, and FLUSH on the
same NBD connection.  Prints, per size, the importer's replay time
(re-issue plus flush, from its window counters), the client's FLUSH
latency from the restart, and the bytes replayed.

    .venv/bin/python bench/replay_bench.py [--sizes 8,32,60] [--rounds 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from bench.common import (  # noqa: E402
    REPO, cleanup, scratch, sparseFile, waitFor, xdiskd)
from bench.soak import powerLossHost  # noqa: E402

STEP = os.path.join(REPO, "tests", "nbdstep.py")
MiB = 1 << 20


def ask(client, line):
    client.stdin.write((line + "\n").encode())
    client.stdin.flush()
    out = json.loads(client.stdout.readline())
    if not out["ok"]:
        raise RuntimeError("%s: %s" % (line, out))
    return out


def window(state):
    out = subprocess.run(
        [sys.executable, "-m", "xdiskd.cli", "--state-dir", state, "--json",
         "list"], capture_output=True, check=True,
        env=dict(os.environ, PYTHONPATH=REPO)).stdout
    return json.loads(out)["units"][0]["window"]


def one(d, mib, n):
    img = sparseFile(os.path.join(d, "r%d-%d.img" % (mib, n)), 256)
    sock = os.path.join(d, "r%d-%d.sock" % (mib, n))
    nbd = os.path.join(d, "r%d-%d-nbd.sock" % (mib, n))
    args = ["--no-import", "--no-nbd", "--listen", "unix:" + sock,
            "--export", "replay=" + img]
    name = "r%d-%d" % (mib, n)
    exp = powerLossHost(name + "-exp", args, d)
    time.sleep(0.5)
    imp = xdiskd(name + "-imp", ["--connect", "unix:" + sock, "--nbd",
                                 "unix:" + nbd], d)
    uri = "nbd+unix:///xa0?socket=" + nbd
    waitFor(["nbdinfo", "--size", uri], 60)
    client = subprocess.Popen(["/usr/bin/python3", STEP, uri],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        for off in range(0, mib, 8):
            ask(client, "write B %d %d" % (off * MiB,
                                           min(8, mib - off) * MiB))
        exp.p.kill()
        exp.p.wait()
        exp = powerLossHost(name + "-exp", args, d)   # a fresh boot
        t = time.perf_counter()
        ask(client, "flush")
        flush = time.perf_counter() - t
        w = window(os.path.join(d, name + "-imp.state"))
    finally:
        client.stdin.close()
        client.wait(30)
        exp.stop()
        imp.stop()
    return w["lastReplaySeconds"], flush, w["replayedBytes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="8,32,60")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    d = scratch()
    try:
        print("%-10s %14s %22s %16s" % ("unflushed", "replay s",
                                        "flush after restart s",
                                        "bytes replayed"))
        for mib in [int(x) for x in a.sizes.split(",")]:
            runs = [one(d, mib, n) for n in range(a.rounds)]
            print("%-10s %14.3f %22.3f %16d" % (
                "%d MiB" % (mib,),
                statistics.median(r[0] for r in runs),
                statistics.median(r[1] for r in runs), runs[0][2]))
    finally:
        cleanup(d)
    print("median of %d rounds; load average %s" % (
        a.rounds, " ".join(open("/proc/loadavg").read().split()[:3])))


if __name__ == "__main__":
    main()
