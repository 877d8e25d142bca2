#!/usr/bin/env python3
"""
How cost grows with the work (issue 19, "Scale"), with real daemons over
UNIX sockets and real NBD clients (fio, ioengine=nbd, one NBD connection
per fio job).

Scenarios (sub-commands; ``all`` runs the three):

  units    1, 16, 256 units on one importer, each with 2 paths: two
           exporter daemons export the same N sparse files (--file-mib
           each, default 64; the same serials, so each unit gets one span
           from each).  Per N, fresh daemons:
           - span handling at start-up: the importer starts with no link;
             both exporters are attached through its control socket at
             once, and the time (and importer CPU) until ``list`` shows
             N units with 2 paths each is measured (polled every 20 ms);
           - idle: CPU seconds of each process over --idle seconds, RSS;
           - under load: 16 fio clients (4 KiB random reads, QD4 each,
             --runtime s) spread over the units (client k on unit
             k*N/16, so N=1 has all 16 on one unit): IOPS, p99, CPU and
             peak RSS (VmHWM) of each process; then the same clients
             write (4 KiB random writes, never flushing): RSS and the
             unflushed windows in use.
           RSS per unit is fitted by least squares over N = 1, 16, 256.
  clients  1, 8, 64 NBD clients on one unit, and 8 clients on each of 16
           units, each client 4 KiB random reads at QD4 on a file of
           random data (--client-file-mib, default 256, in page cache);
           one exporter and one importer, fresh per row: IOPS, p99, CPU
           per request, VmHWM and VmRSS of both daemons.
  mesh     8 relay nodes (``--relay``, each exporting --disks sparse
           disks of 16 MiB, default 2, and importing, no NBD) linked as a ring 0-1-..-7-0 plus one chord
           0-4 over UNIX sockets: spans held per node (relay sources +
           relayed copies, from ``xdisk list``), units and paths; then
           node 3 (ring only) is SIGKILLed and every survivor's control
           socket is polled (every 100 ms) until its state is final: no
           path to node 3's disks, at least one path to each of the
           others, and spans held unchanged for --settle seconds.  The
           time to converge is the last change seen, from the kill.

Every run records the machine (bench/machine.py) first.  Wrap it in
``flock /work/wt/bench.lock`` on a shared machine.

    .venv/bin/python bench/scale.py [units|clients|mesh|all]
        [--units 1,16,256] [--clients 1,8,64] [--idle 10] [--runtime 10]
        [--disks 2] [--tree DIR] [--markdown bench/RESULTS.md]

--tree DIR runs the daemons of another source tree (``git archive`` of
a commit), for a before/after.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from bench.common import (  # noqa: E402
    REPO, cleanup, randomFile, scratch, sparseFile, waitFor)
from bench.common import xdiskd as _xdiskd  # noqa: E402
from bench.machine import describe  # noqa: E402
from xdiskd.control.client import ControlClient  # noqa: E402


#: The source tree whose daemons run (--tree: another one, for an A/B).
TREE = [REPO]


def xdiskd(name, args, d):
    return _xdiskd(name, args, d, TREE[0])


def status(proc):
    """VmHWM and VmRSS of a process, KiB."""
    out = {"VmHWM": 0, "VmRSS": 0, "Threads": 0}
    try:
        with open("/proc/%d/status" % proc.p.pid) as f:
            for line in f:
                k = line.split(":", 1)[0]
                if k in out:
                    out[k] = int(line.split()[1])
    except OSError:
        pass
    return out


def control(d, name):
    return os.path.join(d, name + ".state", "control.sock")


def ask(d, name, cmd="list", **args):
    with ControlClient(control(d, name), timeout=30) as c:
        return c.call(cmd, **args)


def waitControl(d, name, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return ask(d, name)
        except Exception:
            time.sleep(0.05)
    raise RuntimeError("%s: no control socket after %gs" % (name, timeout))


def fio(jobs, runtime, qd=4, rw="randread"):
    """
    One fio run of 4 KiB random I/O (C{rw}: randread or randwrite);
    C{jobs} is a list of NBD URIs, one fio job (one NBD connection) each.
    IOPS and p99 over all jobs.
    """
    cmd = ["fio", "--ioengine=nbd", "--thread", "--rw=" + rw,
           "--bs=4k", "--iodepth=%d" % qd, "--time_based",
           "--runtime=%d" % runtime, "--output-format=json",
           "--group_reporting"]
    for i, uri in enumerate(jobs):
        cmd += ["--name=c%d" % i, "--uri=" + uri]
    run = subprocess.run(cmd, capture_output=True)
    if run.returncode:
        raise RuntimeError("fio with %d jobs failed (%d): %s" % (
            len(jobs), run.returncode, run.stderr.decode()[-2000:]))
    out = run.stdout
    job = json.loads(out[out.index(b"{"):])["jobs"][0][rw[4:]]
    pct = job["clat_ns"].get("percentile", {})
    return {"iops": job["iops"], "ios": job["total_ios"],
            "p99": pct.get("99.000000", 0) / 1000.0}


def cpuNs(proc):
    """
    CPU seconds of a process's live threads, from schedstat (nanosecond
    resolution; /proc/PID/stat counts 10 ms ticks).
    """
    total = 0
    base = "/proc/%d/task" % proc.p.pid
    try:
        tasks = os.listdir(base)
    except OSError:
        return 0.0
    for t in tasks:
        try:
            with open(os.path.join(base, t, "schedstat")) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def cpuOf(procs):
    return [cpuNs(p) for p in procs]


def delta(after, before):
    return [a - b for a, b in zip(after, before)]


def perRequest(cpu, result):
    """Each process's CPU µs per request of a fio C{result}."""
    ios = max(result["ios"], 1)
    return " + ".join("%.1f" % (c / ios * 1e6) for c in cpu)


def fioMeasured(procs, uris, runtime, rw="randread"):
    """A fio run; (its result, each process's CPU seconds, their
    VmHWM/VmRSS after)."""
    c0 = cpuOf(procs)
    r = fio(uris, runtime, rw=rw)
    return r, delta(cpuOf(procs), c0), [status(p) for p in procs]


def fit(xs, ys):
    """Least-squares line y = a + b x; (a, b, max relative residual)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0
    a = my - b * mx
    worst = max(abs(y - (a + b * x)) / y for x, y in zip(xs, ys) if y)
    return a, b, worst


def stopAll(procs):
    for p in procs:
        p.stop()


# -------------------------------------------------------------------
# units


def unitsRow(n, a):
    d = scratch()
    procs = []
    try:
        files = [sparseFile(os.path.join(d, "u%d.img" % i), a.file_mib)
                 for i in range(n)]
        exps = []
        for side in ("A", "B"):
            sock = os.path.join(d, "e%s.sock" % side)
            args = ["--no-import", "--listen", "unix:" + sock]
            for i, f in enumerate(files):
                args += ["--export", "u%d=%s" % (i, f)]
            procs.append(xdiskd("exp" + side, args, d))
            exps.append(sock)
        nbd = os.path.join(d, "nbd.sock")
        imp = xdiskd("imp", ["--nbd", "unix:" + nbd], d)
        procs.append(imp)
        for side in ("A", "B"):
            waitControl(d, "exp" + side)
        waitControl(d, "imp")
        time.sleep(1.0)        # start-up settled
        c0 = cpuNs(imp)
        t0 = time.perf_counter()
        for sock in exps:
            ask(d, "imp", "attach", endpoint="unix:" + sock)
        polls = 0
        while True:
            units = ask(d, "imp")["units"]
            polls += 1
            if len(units) == n and all(u["spans"] == 2 for u in units):
                break
            if time.perf_counter() - t0 > 120:
                raise RuntimeError("units: %d of %d after 120 s" % (
                    len(units), n))
            time.sleep(0.02)
        spanTime = time.perf_counter() - t0
        spanCpu = cpuNs(imp) - c0
        names = [u["name"] for u in sorted(units,
                                           key=lambda u: u["serial"])]
        time.sleep(1.0)
        i0 = cpuOf(procs)
        time.sleep(a.idle)
        idle = delta(cpuOf(procs), i0)
        rssIdle = [status(p) for p in procs]
        uris = ["nbd+unix:///%s?socket=%s" % (names[k * n // 16], nbd)
                for k in range(16)]
        waitFor(["nbdinfo", "--size", uris[0]], 30)
        r, load, rssLoad = fioMeasured(procs, uris, a.runtime)
        w, write, rssWrite = fioMeasured(procs, uris, a.runtime,
                                         "randwrite")
        held = ask(d, "imp")["units"]
        window = (sum(u["window"]["inUse"] for u in held),
                  sum(u["window"]["peak"] for u in held))
    finally:
        stopAll(procs)
        cleanup(d)
    return dict(n=n, spanTime=spanTime, spanCpu=spanCpu, polls=polls,
                idle=idle, rssIdle=rssIdle, load=load, rssLoad=rssLoad,
                fio=r, write=write, rssWrite=rssWrite, wfio=w,
                window=window)


def units(a, lines):
    rows = [unitsRow(n, a) for n in a.units]
    lines += ["### units: N units on one importer, 2 paths each "
              "(two exporters, %d MiB sparse files)" % a.file_mib, "",
              "Span handling: from attaching both exporters (control "
              "socket) to N units x 2 paths in `xdisk list`; importer "
              "CPU over that time (includes answering the 20 ms polls). "
              "Idle: CPU milliseconds over %g s. Load: 16 fio clients, 4 KiB "
              "random reads QD4, %d s, spread over the units. Processes: "
              "exporter A, exporter B, importer." % (a.idle, a.runtime), "",
              "| units | span handling s | importer CPU s | idle CPU ms "
              "(A, B, imp) | idle VmRSS MiB (A, B, imp) | load IOPS | "
              "p99 µs | load CPU µs/req (A + B + imp) | VmHWM MiB "
              "(A, B, imp) | threads (A, B, imp) |",
              "|---:|---:|---:|---|---|---:|---:|---|---|---|"]
    for r in rows:
        lines.append("| %d | %.3f | %.3f | %s | %s | %.0f | %.0f | %s | "
                     "%s | %s |" % (
                         r["n"], r["spanTime"], r["spanCpu"],
                         ", ".join("%.1f" % (c * 1e3) for c in r["idle"]),
                         ", ".join("%.1f" % (s["VmRSS"] / 1024)
                                   for s in r["rssIdle"]),
                         r["fio"]["iops"], r["fio"]["p99"],
                         perRequest(r["load"], r["fio"]),
                         ", ".join("%.1f" % (s["VmHWM"] / 1024)
                                   for s in r["rssLoad"]),
                         ", ".join("%d" % s["Threads"]
                                   for s in r["rssLoad"])))
    lines += ["", "Then the same 16 clients write (4 KiB random writes QD4, "
              "%d s, never flushing): the importer keeps what it wrote "
              "since the last flush in each unit's unflushed window "
              "(--unflushed-window, 64 MiB per unit by default)." % (
                  a.runtime,), "",
              "| units | write IOPS | p99 µs | CPU µs/req (A + B + imp) | "
              "importer VmRSS / VmHWM MiB | windows in use / peak MiB "
              "(sum over units) |",
              "|---:|---:|---:|---|---|---|"]
    for r in rows:
        imp = r["rssWrite"][2]
        lines.append("| %d | %.0f | %.0f | %s | %.1f / %.1f | %.1f / %.1f "
                     "|" % (r["n"], r["wfio"]["iops"], r["wfio"]["p99"],
                            perRequest(r["write"], r["wfio"]),
                            imp["VmRSS"] / 1024, imp["VmHWM"] / 1024,
                            r["window"][0] / 2 ** 20,
                            r["window"][1] / 2 ** 20))
    ns = [r["n"] for r in rows]
    lines.append("")
    if len(ns) >= 2:
        for label, idx, key, src in (
                ("importer VmRSS idle", 2, "VmRSS", "rssIdle"),
                ("importer VmHWM under load", 2, "VmHWM", "rssLoad"),
                ("exporter A VmRSS idle", 0, "VmRSS", "rssIdle")):
            ys = [r[src][idx][key] for r in rows]
            a0, b, worst = fit(ns, ys)
            lines.append("- %s: %.0f KiB + %.1f KiB per unit (least "
                         "squares over N = %s; worst residual %.1f%%)" % (
                             label, a0, b, ", ".join(map(str, ns)),
                             100 * worst))
        sa, sb, sw = fit(ns, [r["spanCpu"] for r in rows])
        lines.append("- span handling, importer CPU: %.3f s + %.2f ms "
                     "per unit (2 spans), worst residual %.0f%%" % (
                         sa, sb * 1e3, 100 * sw))
    lines.append("")


# -------------------------------------------------------------------
# clients


def clientsRow(nunits, per, a):
    d = scratch()
    procs = []
    try:
        files = [randomFile(os.path.join(d, "c%d.img" % i),
                            a.client_file_mib if nunits == 1
                            else max(a.client_file_mib // nunits, 16))
                 for i in range(nunits)]
        sock = os.path.join(d, "e.sock")
        args = ["--no-import", "--listen", "unix:" + sock]
        for i, f in enumerate(files):
            args += ["--export", "c%d=%s" % (i, f)]
        procs.append(xdiskd("exp", args, d))
        nbd = os.path.join(d, "nbd.sock")
        procs.append(xdiskd("imp", ["--connect", "unix:" + sock, "--nbd",
                                    "unix:" + nbd], d))
        deadline = time.monotonic() + 60
        while True:
            try:
                us = ask(d, "imp")["units"]
            except Exception:
                us = []
            if len(us) == nunits:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("clients: units not up")
            time.sleep(0.1)
        names = [u["name"] for u in us]
        uris = ["nbd+unix:///%s?socket=%s" % (names[k % nunits], nbd)
                for k in range(nunits * per)]
        waitFor(["nbdinfo", "--size", uris[0]], 30)
        # Warm-up: the files into the page cache through the daemons.
        fio(uris[:nunits], 2)
        base = [status(p) for p in procs]
        r, used, after = fioMeasured(procs, uris, a.runtime)
    finally:
        stopAll(procs)
        cleanup(d)
    return dict(units=nunits, per=per, fio=r, cpu=used, base=base,
                after=after)


def clients(a, lines):
    shapes = [(1, c) for c in a.clients] + [(16, 8)]
    rows = [clientsRow(u, c, a) for u, c in shapes]
    lines += ["### clients: NBD clients on one importer (one exporter, "
              "one path)", "",
              "Each client: one fio job, one NBD connection, 4 KiB random "
              "reads QD4 for %d s over a file of random data (one unit: "
              "%d MiB; 16 units: %d MiB each), after a 2 s warm-up. "
              "Processes: exporter, importer; VmHWM is the peak over the "
              "daemon's life (fresh daemons per row)." % (
                  a.runtime, a.client_file_mib,
                  max(a.client_file_mib // 16, 16)), "",
              "| units x clients | clients | IOPS | p99 µs | CPU µs/req "
              "(exp + imp) | VmRSS MiB before -> after (exp, imp) | "
              "VmHWM MiB (exp, imp) |",
              "|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        lines.append("| %d x %d | %d | %.0f | %.0f | %s | %s | %s |" % (
            r["units"], r["per"], r["units"] * r["per"], r["fio"]["iops"],
            r["fio"]["p99"], perRequest(r["cpu"], r["fio"]),
            ", ".join("%.1f -> %.1f" % (b["VmRSS"] / 1024,
                                        f["VmRSS"] / 1024)
                      for b, f in zip(r["base"], r["after"])),
            ", ".join("%.1f" % (f["VmHWM"] / 1024) for f in r["after"])))
    one = [r for r in rows if r["units"] == 1]
    if len(one) >= 2:
        xs = [r["per"] for r in one]
        for idx, who in ((1, "importer"), (0, "exporter")):
            ys = [r["after"][idx]["VmHWM"] for r in one]
            a0, b, worst = fit(xs, ys)
            lines.append("")
            lines.append("- %s VmHWM, one unit: %.0f KiB + %.1f KiB per "
                         "client (least squares over %s clients; worst "
                         "residual %.1f%%)" % (
                             who, a0, b, ", ".join(map(str, xs)),
                             100 * worst))
    lines.append("")


# -------------------------------------------------------------------
# mesh

MESH = 8
EDGES = [(i, (i + 1) % MESH) for i in range(MESH)] + [(0, 4)]
VICTIM = 3


def meshState(d, i):
    info = ask(d, "n%d" % i)
    paths = {u["serial"]: u["spans"] for u in info["units"]}
    relay = info.get("relay") or {"sources": 0, "copies": 0}
    return dict(sources=relay["sources"], copies=relay["copies"],
                held=relay["sources"] + relay["copies"], paths=paths,
                links=sum(1 for link in info["links"] if link["ready"]))


def mesh(a, lines):
    d = scratch()
    procs = {}
    try:
        for i in range(MESH):
            sock = os.path.join(d, "n%d.sock" % i)
            args = ["--relay", "--no-nbd", "--listen", "unix:" + sock]
            for j in range(a.disks):
                f = sparseFile(os.path.join(d, "n%d-d%d.img" % (i, j)), 16)
                args += ["--export", "n%d-d%d=%s" % (i, j, f)]
            for x, y in EDGES:
                if x == i:
                    args += ["--connect", "unix:" + os.path.join(
                        d, "n%d.sock" % y)]
            procs[i] = xdiskd("n%d" % i, args, d)
        disks = {"n%d-d%d" % (i, j) for i in range(MESH)
                 for j in range(a.disks)}
        t0 = time.perf_counter()
        while True:
            try:
                st = {i: meshState(d, i) for i in procs}
            except Exception:
                st = None
            # Every node gets every disk, its own too (relayed back).
            if st and all(set(s["paths"]) == disks for s in st.values()):
                if all(min(s["paths"].values()) >= 1 for s in st.values()):
                    break
            if time.perf_counter() - t0 > 60:
                raise RuntimeError("mesh: not up after 60 s: %r" % (st,))
            time.sleep(0.1)
        upTime = time.perf_counter() - t0
        stable = waitStable(d, list(procs), lambda s: True, a.settle)
        before = stable[1]
        cpu0 = {i: cpuNs(p) for i, p in procs.items()}
        victim = procs.pop(VICTIM)
        tk = time.perf_counter()
        victim.p.send_signal(signal.SIGKILL)
        victim.p.wait()
        gone = {"n%d-d%d" % (VICTIM, j) for j in range(a.disks)}

        def final(s):
            return (all(s["paths"].get(g, 0) == 0 for g in gone)
                    and all(v >= 1 for k, v in s["paths"].items()
                            if k not in gone))
        conv, after = waitStable(d, list(procs), final, a.settle, tk)
        cpu = {i: cpuNs(p) - cpu0[i] for i, p in procs.items()}
    finally:
        stopAll(procs.values())
        cleanup(d)
    deg = {i: sum(1 for e in EDGES if i in e) for i in range(MESH)}
    lines += ["### mesh: 8 relay nodes, ring 0-1-...-7-0 plus chord 0-4, "
              "UNIX sockets, %d disks per node" % a.disks, "",
              "Every node: `--relay`, exports %d disks (16 MiB sparse), "
              "imports (no NBD). " % a.disks +
              "A node's own disks come back to it through the relays "
              "and are imported too (units and paths below count them). "
              "Spans held = relay sources (spans received) + relayed "
              "copies (spans it sent on), from `xdisk list`. All up "
              "(every node has a path to every disk) %.2f s after start. "
              "Node %d (ring only) SIGKILLed; converged = every survivor "
              "has no path to its disks, at least one to each other "
              "disk, and its spans held unchanged for %g s; the time is "
              "the last change seen after the kill (polled every "
              "100 ms)." % (upTime, VICTIM, a.settle), "",
              "| node | links | spans held before (sources + copies) | "
              "paths before (min-max per unit) | spans held after | "
              "paths after | CPU s kill -> converged |",
              "|---:|---:|---|---|---|---|---:|"]
    for i in range(MESH):
        b = before[i]
        row = ["%d" % i, "%d" % deg[i],
               "%d (%d + %d)" % (b["held"], b["sources"], b["copies"]),
               "%d-%d" % (min(b["paths"].values()),
                          max(b["paths"].values()))]
        if i in after:
            s = after[i]
            live = [v for k, v in s["paths"].items() if k not in gone]
            row += ["%d (%d + %d)" % (s["held"], s["sources"], s["copies"]),
                    "%d-%d" % (min(live), max(live)), "%.2f" % cpu[i]]
        else:
            row += ["killed", "", ""]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "- time to converge after the kill: %.2f s" % conv, ""]


def waitStable(d, nodes, final, settle, since=None):
    """
    Poll every node until C{final} holds for each and nothing changed
    for C{settle} seconds; return (seconds from C{since} to the last
    change, the states).
    """
    since = time.perf_counter() if since is None else since
    last = None
    lastChange = time.perf_counter()
    deadline = since + 120
    while True:
        st = {i: meshState(d, i) for i in nodes}
        key = {i: (s["held"], sorted(s["paths"].items()))
               for i, s in st.items()}
        now = time.perf_counter()
        if key != last:
            last = key
            lastChange = now
        elif (all(final(s) for s in st.values())
              and now - lastChange >= settle):
            return lastChange - since, st
        if now > deadline:
            raise RuntimeError("mesh: not converged after 120 s: %r" % (
                st,))
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", nargs="?", default="all",
                    choices=("units", "clients", "mesh", "all"))
    ap.add_argument("--units", default="1,16,256")
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--file-mib", type=int, default=64)
    ap.add_argument("--client-file-mib", type=int, default=256)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--runtime", type=int, default=10)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--disks", type=int, default=2,
                    help="disks each mesh node exports")
    ap.add_argument("--tree", default="",
                    help="run the daemons of another source tree")
    ap.add_argument("--markdown", default="")
    a = ap.parse_args()
    a.units = [int(x) for x in a.units.split(",")]
    a.clients = [int(x) for x in a.clients.split(",")]
    if a.tree:
        TREE[0] = os.path.abspath(a.tree)
    lines = ["## %s — bench/scale.py %s" % (time.strftime("%Y-%m-%d %H:%M"),
                                          a.scenario), ""] + describe() + [
        "- daemons from: %s" % (TREE[0],), ""]
    print("\n".join(lines))
    for name, fn in (("units", units), ("clients", clients),
                     ("mesh", mesh)):
        if a.scenario in (name, "all"):
            done = len(lines)
            fn(a, lines)
            print("\n".join(lines[done:]), flush=True)
    if a.markdown:
        with open(a.markdown, "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
