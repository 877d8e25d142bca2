#!/usr/bin/env python3
"""
Fault-injection soak: write-then-verify through NBD on the 2-hop path
(exporter daemon <- DMSG <- importer daemon <- libnbd clients) while
faults are injected, bounded in time.

Scenarios (each runs --seconds):
  kill     the exporter is SIGKILLed and restarted every --period seconds
  paths    two exporters serve the same disk (two paths); one at a time is
           killed and restored every --period seconds
  multi    8 clients x 4 units concurrently, exporter killed every period
  blackhole two hosts (network namespaces) and two TCP paths; every
           period the path in use is black-holed (iptables DROP) for
           --outage seconds: silent failure, failover by link liveness
  crash    the exporter host loses power every --period seconds: the
           exporter is tests/powerloss.py (its writes since the last
           flush live in that process, so SIGKILL loses them) and comes
           back as a fresh boot; the client flushes every 16 writes.
           Nothing acknowledged may be lost (the importer replays its
           unflushed window); prints replays and bytes replayed too

Pass: zero NBD errors at every client, every block verifies (after each
write and again at the end), importer memory bounded.  Prints the counts:
kills, failovers, re-queued requests, max stall, max client latency.

    .venv/bin/python bench/soak.py [--seconds 300] [--period 3]
        [--scenarios kill,paths,multi,crash]
    .venv/bin/python bench/soak.py --scenarios blackhole --period 4 \
        --outage 8    (root; --outage above --link-timeout to see deaths)
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from bench.common import (  # noqa: E402
    REPO, Proc, cleanup, scratch, waitFor, xdiskd)

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "soak_client.py")
MiB = 1 << 20


POWERLOSS = os.path.join(REPO, "tests", "powerloss.py")


def powerLossHost(name, args, d):
    """tests/powerloss.py: the daemon over stores that lose unflushed
    writes with the process; each start is a fresh boot."""
    boot = os.path.join(d, name + ".boot")
    with open(boot, "w") as f:
        f.write(os.urandom(16).hex())
    state = os.path.join(d, name + ".state")
    os.makedirs(state, exist_ok=True)
    return Proc(name, [sys.executable, POWERLOSS, "--boot", boot, "--log",
                       os.path.join(d, name + ".twistd.log"), "--",
                       "--state-dir", state, "--no-control"] + args,
                dict(os.environ, PYTHONPATH=REPO), d)


def startClients(uris, seconds, size, seed=1, extra=()):
    procs = []
    for i, (uri, offset) in enumerate(uris):
        procs.append(subprocess.Popen(
            ["/usr/bin/python3", CLIENT, uri, "--seconds", str(seconds),
             "--offset", str(offset), "--size", str(size), "--seed",
             str(seed + i)] + list(extra), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE))
    return procs


def collect(procs, timeout):
    out = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = p.communicate()
            out.append({"errors": ["client hung past the deadline"],
                        "verifyFailures": 0, "writes": 0, "reads": 0})
            continue
        try:
            out.append(json.loads(so.decode().strip().splitlines()[-1]))
        except (ValueError, IndexError):
            out.append({"errors": ["client failed: %s" % se.decode()[-500:]],
                        "verifyFailures": 0, "writes": 0, "reads": 0})
    return out


def importerCounts(log):
    with open(log, errors="replace") as f:
        text = f.read()
    return {
        "failovers": len(re.findall(r"open via .* lost", text)),
        "tracebacks": text.count("Traceback"),
    }


def run(name, a, d):
    nunits = 4 if name == "multi" else 1
    imgs = []
    for u in range(nunits):
        img = os.path.join(d, "%s-%d.img" % (name, u))
        with open(img, "wb") as f:
            f.truncate(256 * MiB)
        imgs.append(img)
    exports = []
    for u, img in enumerate(imgs):
        exports += ["--export", "soak%d=%s" % (u, img)]
    sockA = os.path.join(d, name + "-a.sock")
    sockB = os.path.join(d, name + "-b.sock")
    nbd = os.path.join(d, name + "-nbd.sock")

    def exporter(tag, sock):
        args = ["--no-import", "--listen", "unix:" + sock] + exports
        if name == "crash":
            return powerLossHost("%s-exp%s" % (name, tag), args, d)
        return xdiskd("%s-exp%s" % (name, tag), args, d)
    exps = {"a": exporter("a", sockA)}
    connects = ["--connect", "unix:" + sockA]
    if name == "paths":
        exps["b"] = exporter("b", sockB)
        connects += ["--connect", "unix:" + sockB]
    time.sleep(0.5)
    imp = xdiskd(name + "-imp", connects + ["--nbd", "unix:" + nbd], d)
    uris = []
    for u in range(nunits):
        uri = "nbd+unix:///soak%d?socket=%s" % (u, nbd)
        waitFor(["nbdinfo", "--size", uri], 30)
        per = 8 // nunits if name == "multi" else 1
        for c in range(per):
            uris.append((uri, c * 32 * MiB))
    clients = startClients(uris, a.seconds, 32 * MiB, extra=(
        ["--flush-every", "16"] if name == "crash" else []))
    kills = 0
    rssMax = 0
    t0 = time.monotonic()
    victim = "a"
    while time.monotonic() - t0 < a.seconds:
        time.sleep(a.period)
        if time.monotonic() - t0 >= a.seconds:
            break
        p = exps[victim]
        p.p.kill()
        p.p.wait()
        kills += 1
        time.sleep(a.outage)
        exps[victim] = exporter(victim, sockA if victim == "a" else sockB)
        if name == "paths":
            victim = "b" if victim == "a" else "a"
        rssMax = max(rssMax, imp.rssPeakKiB())
    results = collect(clients, a.seconds + 120)
    rssMax = max(rssMax, imp.rssPeakKiB())
    stats = {}
    try:
        sock = os.path.join(d, name + "-imp.state", "control.sock")
        if os.path.exists(sock):
            stats = controlStat(sock)
    except Exception as e:   # the control API is optional here
        stats = {"error": str(e)}
    for p in list(exps.values()) + [imp]:
        p.stop()
    counts = importerCounts(os.path.join(d, name + "-imp.twistd.log"))
    errors = sum(len(r["errors"]) for r in results)
    verify = sum(r["verifyFailures"] for r in results)
    summary = {
        "scenario": name, "seconds": a.seconds, "clients": len(results),
        "kills": kills, "writes": sum(r["writes"] for r in results),
        "reads": sum(r["reads"] for r in results),
        "finalVerified": sum(r.get("finalVerified", 0) for r in results),
        "nbdErrors": errors, "verifyFailures": verify,
        "failovers": counts["failovers"],
        "retries": stats.get("retries"), "maxStall": stats.get("maxStall"),
        "replays": stats.get("replays"),
        "replayedBytes": stats.get("replayedBytes"),
        "maxReplaySeconds": stats.get("maxReplaySeconds"),
        "flushes": sum(r.get("flushes", 0) for r in results),
        "maxClientLatency": max(r.get("maxLatency", 0) for r in results),
        "importerPeakRSSMiB": round(rssMax / 1024),
        "tracebacks": counts["tracebacks"],
        "firstErrors": [e for r in results for e in r["errors"]][:5],
    }
    summary["ok"] = (errors == 0 and verify == 0 and
                     counts["tracebacks"] == 0 and summary["writes"] > 0)
    if name == "crash" and kills:
        # Each power loss found unflushed writes to replay.
        summary["ok"] = summary["ok"] and bool(summary["replays"])
    return summary


class _Cleanups:
    """What L{tests.netbed.NetBed} needs of a test case, outside trial."""

    def __init__(self):
        self.calls = []

    def addCleanup(self, f, *args):
        self.calls.append((f, args))

    def run(self):
        while self.calls:
            f, args = self.calls.pop()
            f(*args)


def runBlackhole(a, d):
    """
    Silent path failures (issue 15): an exporter and an importer on two
    hosts (network namespaces) joined by two TCP paths; every --period
    seconds the path in use is black-holed (iptables DROP both ways) for
    --outage seconds, alternating, while soak clients write and verify.
    """
    from tests.netbed import NetBed
    cleanups = _Cleanups()
    try:
        net = NetBed(cleanups, 2)
    except Exception as e:            # SkipTest: no namespaces here
        return {"scenario": "blackhole", "ok": True, "skipped": str(e)}
    try:
        img = os.path.join(d, "blackhole.img")
        with open(img, "wb") as f:
            f.truncate(256 * MiB)
        exp = xdiskd("blackhole-exp", net.listenArgs() + [
            "--no-import", "--export", "soak0=" + img], d,
            prefix=net.prefix(net.exporterNS))
        time.sleep(1.0)
        nbd = os.path.join(d, "blackhole-nbd.sock")
        imp = xdiskd("blackhole-imp", net.connectArgs() + [
            "--nbd", "unix:" + nbd], d,
            prefix=net.prefix(net.importerNS))
        uri = "nbd+unix:///soak0?socket=%s" % (nbd,)
        waitFor(["nbdinfo", "--size", uri], 30)
        time.sleep(1.0)
        clients = startClients([(uri, c * 32 * MiB) for c in range(2)],
                               a.seconds, 32 * MiB)
        log = os.path.join(d, "blackhole-imp.twistd.log")
        cuts = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < a.seconds - a.outage - 2:
            time.sleep(a.period)
            with open(log, errors="replace") as f:
                opens = re.findall(r"xa0: open via (\S+)", f.read())
            net.blackhole(net.pathOf(opens[-1]) if opens else 1)
            cuts += 1
            time.sleep(a.outage)
            net.restore()
        results = collect(clients, a.seconds + 120)
        rss = imp.rssPeakKiB()
        stats = {}
        sock = os.path.join(d, "blackhole-imp.state", "control.sock")
        if os.path.exists(sock):
            stats = controlStat(sock)
        imp.stop()
        exp.stop()
        with open(log, errors="replace") as f:
            text = f.read()
        deaths = re.findall(r"dead: nothing received for ([0-9.]+) s", text)
        errors = sum(len(r["errors"]) for r in results)
        verify = sum(r["verifyFailures"] for r in results)
        summary = {
            "scenario": "blackhole", "seconds": a.seconds,
            "outage": a.outage, "cuts": cuts,
            "linksDeclaredDead": len(deaths),
            "longestSilenceAtDeath": max(map(float, deaths or ["0"])),
            "failovers": len(re.findall(r"open via .* lost", text)),
            "writes": sum(r["writes"] for r in results),
            "finalVerified": sum(r.get("finalVerified", 0)
                                 for r in results),
            "nbdErrors": errors, "verifyFailures": verify,
            "maxStall": stats.get("maxStall"),
            "maxClientLatency": max(r.get("maxLatency", 0)
                                    for r in results),
            "importerPeakRSSMiB": round(rss / 1024),
            "tracebacks": text.count("Traceback"),
            "firstErrors": [e for r in results for e in r["errors"]][:5],
        }
        summary["ok"] = (errors == 0 and verify == 0 and cuts > 0
                         and summary["tracebacks"] == 0)
        return summary
    finally:
        cleanups.run()


def controlStat(sock):
    import socket as s
    c = s.socket(s.AF_UNIX)
    c.settimeout(5)
    c.connect(sock)
    c.sendall(b'{"cmd": "stat"}\n')
    data = b""
    while not data.endswith(b"\n"):
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    reply = json.loads(data)
    retries = replays = replayed = 0
    maxStall = maxReplay = 0.0
    for unit in reply.get("units", []):
        st = unit.get("stats", unit)
        retries += st.get("retries", 0)
        maxStall = max(maxStall, st.get("maxStall", 0.0))
        w = unit.get("window", {})
        replays += w.get("replays", 0)
        replayed += w.get("replayedBytes", 0)
        maxReplay = max(maxReplay, w.get("maxReplaySeconds", 0.0))
    return {"retries": retries, "maxStall": round(maxStall, 3),
            "replays": replays, "replayedBytes": replayed,
            "maxReplaySeconds": round(maxReplay, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--period", type=float, default=3.0)
    ap.add_argument("--outage", type=float, default=0.5)
    ap.add_argument("--scenarios", default="kill,paths,multi,crash")
    a = ap.parse_args()
    d = scratch()
    ok = True
    try:
        for name in a.scenarios.split(","):
            summary = (runBlackhole(a, d) if name == "blackhole"
                       else run(name, a, d))
            print(json.dumps(summary))
            ok = ok and summary["ok"]
    finally:
        cleanup(d)
    print("soak %s" % ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
