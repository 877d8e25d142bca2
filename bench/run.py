#!/usr/bin/env python3
"""
The comparison: xdiskd against nbdkit and qemu-nbd, every pair measured in
alternation in one run, over UNIX sockets with a file in page cache.

Topologies
  1 hop   xdiskd-1hop      one xdiskd: local export served over NBD
                           (--no-import --nbd-local: no DMSG)
          nbdkit-1hop      nbdkit file
          qemu-nbd-1hop    qemu-nbd
  2 hops  xdiskd-2hop-unix exporter daemon <- DMSG/UNIX <- importer daemon
          xdiskd-2hop-tcp  exporter daemon <- DMSG/TCP  <- importer daemon
          nbdkit-2hop      nbdkit file <- nbdkit nbd (proxy)
  variants  xdiskd-2hop-unix+--poll-us=0 (say): the same with options
                           given to both daemons, measured alongside;
            xdiskd-2hop-unix@/tmp/old: the daemons of another tree
                           (git archive of a commit), for a before/after
            xdiskd-2hop-unix+XDISKD_PURE=1: a +NAME=VALUE (no leading
                           dash) is an environment variable for both
                           daemons instead: here the pure-Python build
                           of a tree with compiled modules
                           (xdiskd/compiled.py)

Every run records the machine (bench/machine.py: CPU, kernel, nproc,
load and steal at start, memory, versions, commit, page-cache state of
the test file) and the CPU of each process.

Workloads: nbdcopy read/write of the whole file; fio (ioengine=nbd) 1 MiB
sequential read/write QD8, 4 KiB random read/write QD1 and QD32, 64 KiB
random 70/30 QD16; with --plot, 4 KiB random reads at QD 1..64.

    .venv/bin/python bench/run.py [--size-mib 1024] [--runtime 5]
        [--rounds 1] [--plot bench/qd.png] [--markdown bench/RESULTS.md]
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
    REPO, Proc, cleanup, freePort, randomFile, scratch, waitFor, xdiskd)
from bench.machine import describe, residency  # noqa: E402

PEERS = {"xdiskd-1hop": "nbdkit-1hop", "qemu-nbd-1hop": "nbdkit-1hop",
         "xdiskd-2hop-unix": "nbdkit-2hop",
         "xdiskd-2hop-tcp": "nbdkit-2hop"}

FIO_JOBS = [
    ("seq-read-1M-qd8", "read", "1M", 8, None),
    ("seq-write-1M-qd8", "write", "1M", 8, None),
    ("rand-read-4K-qd1", "randread", "4k", 1, None),
    ("rand-read-4K-qd32", "randread", "4k", 32, None),
    ("rand-write-4K-qd1", "randwrite", "4k", 1, None),
    ("rand-write-4K-qd32", "randwrite", "4k", 32, None),
    ("rand-rw70-64K-qd16", "randrw", "64k", 16, 70),
]


class Topology:
    def __init__(self, name, procs, uri):
        self.name = name
        self.procs = procs
        self.uri = uri

    def cpu(self):
        return sum(p.cpuSeconds() for p in self.procs)

    def cpuEach(self):
        return [p.cpuSeconds() for p in self.procs]

    def rss(self):
        return {p.name: p.rssPeakKiB() for p in self.procs}


def startAll(d, img, which):
    t = {}
    if "xdiskd-1hop" in which:
        s = os.path.join(d, "x1.sock")
        t["xdiskd-1hop"] = Topology("xdiskd-1hop", [xdiskd("x1", [
            "--no-import", "--export", "b=" + img, "--nbd-local",
            "--nbd", "unix:" + s], d)],
            "nbd+unix:///b?socket=" + s)
    if "nbdkit-1hop" in which:
        s = os.path.join(d, "k1.sock")
        t["nbdkit-1hop"] = Topology("nbdkit-1hop", [Proc(
            "nbdkit1", ["nbdkit", "-f", "-U", s, "file", img], cwd=d)],
            "nbd+unix:///?socket=" + s)
    if "qemu-nbd-1hop" in which:
        s = os.path.join(d, "q1.sock")
        t["qemu-nbd-1hop"] = Topology("qemu-nbd-1hop", [Proc(
            "qemu-nbd", ["qemu-nbd", "-f", "raw", "-t", "-k", s,
                         "--cache=writeback", "--aio=threads", img],
            cwd=d)], "nbd+unix:///?socket=" + s)
    for n, name in enumerate(which):
        # "xdiskd-2hop-unix+--poll-us=0": a variant with daemon options;
        # "xdiskd-2hop-unix@/tmp/old": the daemons of another tree.
        base, _, extra = name.partition("+")
        base, _, tree = base.partition("@")
        kind = base[len("xdiskd-2hop-"):]
        if not base.startswith("xdiskd-2hop-") or kind not in (
                "unix", "tcp"):
            continue
        opts = extra.split("+") if extra else []
        env = dict(o.split("=", 1) for o in opts
                   if "=" in o and not o.startswith("-"))
        opts = [o for o in opts if o.startswith("-") or "=" not in o]
        tag = "%s%d" % (kind, n)
        if kind == "unix":
            lst = con = "unix:" + os.path.join(d, "e%s.sock" % tag)
        else:
            port = freePort()
            lst = "tcp:%d:interface=127.0.0.1" % port
            con = "tcp:127.0.0.1:%d" % port
        s = os.path.join(d, "x2%s.sock" % tag)
        repo = os.path.abspath(tree) if tree else REPO
        t[name] = Topology(name, [
            xdiskd("exp-" + tag, ["--no-import", "--listen", lst,
                                  "--export", "b=" + img] + opts, d, repo,
                   env=env),
            xdiskd("imp-" + tag, ["--connect", con, "--nbd", "unix:" + s]
                   + opts, d, repo, env=env)], "nbd+unix:///xa0?socket=" + s)
    if "nbdkit-2hop" in which:
        s1 = os.path.join(d, "k2a.sock")
        s2 = os.path.join(d, "k2b.sock")
        t["nbdkit-2hop"] = Topology("nbdkit-2hop", [
            Proc("nbdkit2a", ["nbdkit", "-f", "-U", s1, "file", img], cwd=d),
            Proc("nbdkit2b", ["nbdkit", "-f", "-U", s2, "nbd",
                              "socket=" + s1], cwd=d)],
            "nbd+unix:///?socket=" + s2)
    for topo in t.values():
        waitFor(["nbdinfo", "--size", topo.uri], 60)
    return t


def fio(uri, rw, bs, qd, mix, size, runtime):
    cmd = ["fio", "--name=j", "--ioengine=nbd", "--uri=" + uri,
           "--rw=" + rw, "--bs=" + bs, "--iodepth=%d" % qd,
           "--size=%d" % size, "--time_based", "--runtime=%d" % runtime,
           "--output-format=json", "--group_reporting"]
    if mix is not None:
        cmd.append("--rwmixread=%d" % mix)
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    job = json.loads(out[out.index(b"{"):])["jobs"][0]
    res = {"bytes": 0, "ios": 0, "iops": 0.0, "bw": 0.0, "p50": [],
           "p99": []}
    for k in ("read", "write"):
        part = job[k]
        if not part["io_bytes"]:
            continue
        res["bytes"] += part["io_bytes"]
        res["ios"] += part["total_ios"]
        res["iops"] += part["iops"]
        res["bw"] += part["bw_bytes"]
        pct = part["clat_ns"].get("percentile", {})
        res["p50"].append(pct.get("50.000000", 0) / 1000)
        res["p99"].append(pct.get("99.000000", 0) / 1000)
    res["p50"] = max(res["p50"] or [0])
    res["p99"] = max(res["p99"] or [0])
    # The client's own CPU (fio: percent of the job's run time, in ms).
    res["clientUs"] = (job["usr_cpu"] + job["sys_cpu"]) / 100 * (
        job["job_runtime"] * 1000) / max(res["ios"], 1)
    return res


def nbdcopy(src, dst, size):
    t = time.perf_counter()
    subprocess.run(["nbdcopy", src, dst], check=True, capture_output=True)
    dt = time.perf_counter() - t
    return {"bytes": size, "ios": 0, "iops": 0.0, "bw": size / dt,
            "p50": 0.0, "p99": 0.0, "clientUs": 0.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runtime", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated workloads")
    ap.add_argument("--topologies", help=(
        "comma-separated; a 2-hop xdiskd name may end in +OPTION "
        "(repeatable, e.g. xdiskd-2hop-unix+--poll-us=0): a variant "
        "whose daemons get those options (+NAME=VALUE: an environment "
        "variable, e.g. +XDISKD_PURE=1); NAME@TREE runs the daemons of "
        "another source tree"), default=",".join(
        ["xdiskd-1hop", "nbdkit-1hop", "qemu-nbd-1hop", "xdiskd-2hop-unix",
         "xdiskd-2hop-tcp", "nbdkit-2hop"]))
    ap.add_argument("--plot", default="")
    ap.add_argument("--markdown", default="")
    a = ap.parse_args()
    machine = describe()
    d = scratch()
    size = a.size_mib << 20
    img = os.path.join(d, "disk.img")
    src = randomFile(os.path.join(d, "src"), a.size_mib)
    subprocess.run(["cp", src, img], check=True)
    which = a.topologies.split(",")
    cached = residency(img)
    machine.append("- disk.img (%d MiB) before the run: %s in page cache" % (
        a.size_mib, "?" if cached is None else "%.0f%%" % cached))
    topos = startAll(d, img, which)
    results = {}          # (workload, topology) -> list of result dicts
    workloads = [("nbdcopy-read", None), ("nbdcopy-write", None)] + [
        (j[0], j) for j in FIO_JOBS]
    if a.only:
        keep = a.only.split(",")
        workloads = [w for w in workloads if w[0] in keep]
    try:
        for wname, job in workloads:
            for _ in range(a.rounds):
                for name, topo in topos.items():   # alternate per round
                    c0 = topo.cpuEach()
                    if wname == "nbdcopy-read":
                        r = nbdcopy(topo.uri, "null:", size)
                    elif wname == "nbdcopy-write":
                        r = nbdcopy(src, topo.uri, size)
                    else:
                        _, rw, bs, qd, mix = job
                        r = fio(topo.uri, rw, bs, qd, mix, size, a.runtime)
                    used = [c - b for c, b in zip(topo.cpuEach(), c0)]
                    gib = max(r["bytes"] / (1 << 30), 1e-9)
                    r["cpuPerGiB"] = sum(used) / gib
                    r["cpuEach"] = [u / gib for u in used]
                    r["usPerReq"] = [
                        u / max(r["ios"], 1) * 1e6 for u in used]
                    results.setdefault((wname, name), []).append(r)
        qdcurve = {}
        if a.plot:
            for qd in (1, 4, 16, 32, 64):
                for name, topo in topos.items():
                    r = fio(topo.uri, "randread", "4k", qd, None, size,
                            a.runtime)
                    qdcurve[(name, qd)] = r
        rss = {name: t.rss() for name, t in topos.items()}
    finally:
        for t in topos.values():
            for p in t.procs:
                p.stop()
        cleanup(d)
    lines = report(results, rss, workloads, topos, a, machine)
    print("\n".join(lines))
    if a.markdown:
        with open(a.markdown, "a") as f:
            f.write("\n".join(lines) + "\n\n")
    if a.plot:
        plot(qdcurve, topos, a.plot)


def med(rs, key):
    return statistics.median(r[key] for r in rs)


def report(results, rss, workloads, topos, a, machine):
    lines = ["## %s — %d MiB file in page cache, %d s fio runs, %d "
             "round(s), UNIX sockets" % (time.strftime("%Y-%m-%d %H:%M"),
                                        a.size_mib, a.runtime, a.rounds),
             ""] + machine + [
             "",
             "CPU per process: seconds per GiB moved, and µs per request "
             "(fio rows), in the order of the topology's processes "
             "(2-hop xdiskd: exporter, importer; nbdkit-2hop: file, nbd "
             "proxy); fio µs/req is the client's own (fio's usr+sys).",
             "",
             "| workload | topology | MB/s | IOPS | p50 µs | p99 µs | "
             "CPU s/GiB | per process s/GiB | per process µs/req | "
             "fio µs/req | ratio vs peer |",
             "|---|---|---:|---:|---:|---:|---:|---|---|---:|---|"]
    for wname, _ in workloads:
        for name in topos:
            rs = results.get((wname, name))
            if not rs:
                continue
            peer = PEERS.get(name.partition("+")[0].partition("@")[0])
            ratio = ""
            if peer and (wname, peer) in results:
                key = "bw"
                ratio = "%.2f× %s" % (med(rs, key) / max(
                    med(results[(wname, peer)], key), 1e-9), peer)
            each = [statistics.median(r["cpuEach"][i] for r in rs)
                    for i in range(len(rs[0]["cpuEach"]))]
            perReq = ("" if wname.startswith("nbdcopy") else " + ".join(
                "%.1f" % statistics.median(r["usPerReq"][i] for r in rs)
                for i in range(len(each))))
            client = ("" if wname.startswith("nbdcopy")
                      else "%.1f" % med(rs, "clientUs"))
            lines.append("| %s | %s | %.0f | %.0f | %.0f | %.0f | %.2f | "
                         "%s | %s | %s | %s |" % (
                             wname, name, med(rs, "bw") / 1e6,
                             med(rs, "iops"), med(rs, "p50"),
                             med(rs, "p99"), med(rs, "cpuPerGiB"),
                             " + ".join("%.2f" % e for e in each), perReq,
                             client, ratio))
    lines += ["", "Peak RSS (MiB): " + "; ".join(
        "%s: %s" % (n, ", ".join("%s %.0f" % (p, v / 1024)
                                 for p, v in r.items()))
        for n, r in rss.items())]
    return lines


def plot(curve, topos, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    qds = (1, 4, 16, 32, 64)
    for name in topos:
        ax1.plot(qds, [curve[(name, q)]["iops"] / 1000 for q in qds],
                 marker="o", label=name)
        ax2.plot(qds, [curve[(name, q)]["bw"] / 1e6 for q in qds],
                 marker="o", label=name)
    for ax, lab in ((ax1, "k IOPS"), (ax2, "MB/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(qds)
        ax.set_xticklabels([str(q) for q in qds])
        ax.set_xlabel("queue depth (4 KiB random reads, fio nbd)")
        ax.set_ylabel(lab)
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
