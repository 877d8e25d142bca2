#!/usr/bin/env python3
"""
The cost of the importer's unflushed window (issue 16): the 2-hop path
(exporter daemon <- DMSG over UNIX <- importer daemon <- client) of this
tree against the same path of a base revision without the window, in
alternation in one run: fio (ioengine=nbd) 1 MiB sequential write QD8
and nbdcopy write of a 1 GiB file, neither flushing until the end (the
worst case: the window fills and the importer flushes every
--unflushed-window bytes).  Prints MB/s and CPU seconds per GiB per
process (exporter, importer), median of the rounds, and the ratios.

    .venv/bin/python bench/window_bench.py [--base ba0d285] [--rounds 3]
        [--size-mib 1024] [--runtime 5]
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
    REPO, TWISTD, Proc, cleanup, randomFile, scratch, sparseFile, waitFor)

GiB = 1 << 30


def baseTree(rev, d):
    """The files of C{rev} in a scratch directory (git archive)."""
    tree = os.path.join(d, "base")
    os.makedirs(tree)
    archive = subprocess.run(["git", "-C", REPO, "archive", rev],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def daemon(name, tree, args, d):
    state = os.path.join(d, name + ".state")
    os.makedirs(state, exist_ok=True)
    return Proc(name, [TWISTD, "-n", "--pidfile=", "--logfile=" +
                       os.path.join(d, name + ".twistd.log"), "xdiskd",
                       "--state-dir", state, "--no-control"] + args,
                dict(os.environ, PYTHONPATH=tree), d)


class Stack:
    """One 2-hop path of one tree."""

    def __init__(self, label, tree, d, mib, extra=()):
        self.label = label
        img = sparseFile(os.path.join(d, label + ".img"), mib)
        dmsg = os.path.join(d, label + "-dmsg.sock")
        nbd = os.path.join(d, label + "-nbd.sock")
        self.exp = daemon(label + "-exp", tree, [
            "--no-import", "--listen", "unix:" + dmsg,
            "--export", "bench=" + img], d)
        time.sleep(0.5)
        self.imp = daemon(label + "-imp", tree, [
            "--connect", "unix:" + dmsg, "--nbd", "unix:" + nbd]
            + list(extra), d)
        self.uri = "nbd+unix:///xa0?socket=" + nbd
        waitFor(["nbdinfo", "--size", self.uri], 60)

    def procs(self):
        return (self.exp, self.imp)

    def cpu(self):
        return [p.cpuSeconds() for p in self.procs()]

    def stop(self):
        for p in self.procs():
            p.stop()


def measure(stack, what, a, src):
    """Run one workload; (bytes, seconds, [cpu exporter, importer])."""
    before = stack.cpu()
    t = time.perf_counter()
    if what == "fio":
        out = subprocess.run(
            ["fio", "--name=j", "--ioengine=nbd", "--uri=" + stack.uri,
             "--rw=write", "--bs=1M", "--iodepth=8",
             "--size=%d" % (a.size_mib << 20), "--time_based",
             "--runtime=%d" % a.runtime, "--output-format=json"],
            capture_output=True, check=True).stdout
        job = json.loads(out[out.index(b"{"):])["jobs"][0]
        nbytes = job["write"]["io_bytes"]
        seconds = job["write"]["runtime"] / 1000.0
    else:
        subprocess.run(["nbdcopy", src, stack.uri], check=True,
                       capture_output=True)
        nbytes = a.size_mib << 20
        seconds = time.perf_counter() - t
    after = stack.cpu()
    return nbytes, seconds, [y - x for x, y in zip(before, after)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="ba0d285")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runtime", type=int, default=5)
    ap.add_argument("--big-window", default=None,
                    help="also run this tree with --unflushed-window SIZE "
                    "(e.g. 4G: no flush for room; the bookkeeping alone)")
    a = ap.parse_args()
    d = scratch()
    stacks = []
    try:
        src = randomFile(os.path.join(d, "src"), a.size_mib)
        stacks = [Stack("before", baseTree(a.base, d), d, a.size_mib),
                  Stack("after", REPO, d, a.size_mib)]
        if a.big_window:
            stacks.append(Stack("after-" + a.big_window, REPO, d,
                                a.size_mib, ["--unflushed-window",
                                             a.big_window]))
        res = {(s.label, w): [] for s in stacks for w in ("fio", "nbdcopy")}
        for r in range(a.rounds):
            order = stacks if r % 2 == 0 else stacks[::-1]
            for what in ("fio", "nbdcopy"):
                for s in order:
                    res[(s.label, what)].append(measure(s, what, a, src))
        rss = {p.name: p.rssPeakKiB() for s in stacks for p in s.procs()}
    finally:
        for s in stacks:
            s.stop()
        cleanup(d)
    load = open("/proc/loadavg").read().split()[:3]
    print("unflushed window cost: %s (before, %s) vs this tree (after); "
          "%d rounds, median; load average %s" % (
              a.base, "no window", a.rounds, " ".join(load)))
    print("%-26s %9s %14s %14s" % ("", "MB/s", "exp CPU s/GiB",
                                    "imp CPU s/GiB"))
    for what, name in (("fio", "1 MiB seq write QD8"),
                       ("nbdcopy", "nbdcopy 1 GiB write")):
        row = {}
        for label in [s.label for s in stacks]:
            runs = res[(label, what)]
            bw = statistics.median(n / t / 1e6 for n, t, _ in runs)
            exp = statistics.median(c[0] / (n / GiB) for n, _, c in runs)
            imp = statistics.median(c[1] / (n / GiB) for n, _, c in runs)
            row[label] = (bw, exp, imp)
            print("%-26s %9.0f %14.2f %14.2f" % (
                "%s %s" % (name, label), bw, exp, imp))
        b = row["before"]
        for label in [s.label for s in stacks][1:]:
            f = row[label]
            print("%-26s %9.2f %14.2f %14.2f" % (
                "%s %s/before" % (name, label), f[0] / b[0], f[1] / b[1],
                f[2] / b[2]))
    print("peak RSS MiB: " + ", ".join(
        "%s %.0f" % (k, v / 1024) for k, v in rss.items()))


if __name__ == "__main__":
    main()
