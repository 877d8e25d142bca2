#!/usr/bin/env python3
"""
What the NBD client sees when things fail: the measured rows of the
README's failure table (issue 15).

Two hosts (network namespaces, tests/netbed.py) joined by two TCP paths.
On the exporter host, two exporter daemons ("heads") serve one shared
disk file under one serial, one on each path, so a head can fail while
the other lives.  The importer (default --link-timeout) connects to both;
a libnbd client (bench/soak_client.py) writes and verifies throughout,
and each fault is made once in the middle of its run:

  process kill      SIGKILL of the head in use; restarted 2 s later
  host hang         SIGSTOP of the head in use for 12 s (no FIN, no RST)
  cable cut         the importer's interface of the path in use down 12 s
  power loss        the head in use SIGKILLed while its path is
                    black-holed 12 s (the host vanishes without a word)
  every path gone   both paths black-holed 12 s, without and with
                    --stall-timeout 4

Each row prints: client errors, verify failures, longest single request,
and what the importer logged (links declared dead, failovers, fail-fast).

    sudo .venv/bin/python bench/failures.py [--rows ...]
"""

import argparse
import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from bench.common import cleanup, scratch, waitFor, xdiskd  # noqa: E402
from bench.soak import _Cleanups, collect, startClients  # noqa: E402

MiB = 1 << 20
ROWS = ("process-kill", "host-hang", "cable-cut", "power-loss",
        "all-paths", "all-paths-stall-timeout")


def row(name, d):
    from tests.netbed import NetBed
    cleanups = _Cleanups()
    net = NetBed(cleanups, 2)
    try:
        img = os.path.join(d, name + ".img")
        with open(img, "wb") as f:
            f.truncate(128 * MiB)

        def head(k):
            return xdiskd("%s-head%d" % (name, k), [
                "--no-import", "--no-control", "--listen",
                "tcp:9870:interface=%s" % (net.address(k, 1),),
                "--export", "shared0=" + img], d,
                prefix=net.prefix(net.exporterNS))
        heads = {1: head(1), 2: head(2)}
        time.sleep(1.0)
        extra = ["--stall-timeout", "4"] if name.endswith("timeout") else []
        nbd = os.path.join(d, name + "-nbd.sock")
        imp = xdiskd(name + "-imp", net.connectArgs() + [
            "--no-control", "--nbd", "unix:" + nbd] + extra, d,
            prefix=net.prefix(net.importerNS))
        uri = "nbd+unix:///shared0?socket=%s" % (nbd,)
        waitFor(["nbdinfo", "--size", uri], 30)
        time.sleep(1.5)
        log = os.path.join(d, name + "-imp.twistd.log")

        def active():
            with open(log, errors="replace") as f:
                opens = re.findall(r"xa0: open via (\S+)", f.read())
            return net.pathOf(opens[-1])
        seconds = 30
        [client] = startClients([(uri, 0)], seconds, 32 * MiB)
        time.sleep(6)
        k = active()
        t0 = time.monotonic()
        if name == "process-kill":
            heads[k].p.kill()
            heads[k].p.wait()
            time.sleep(2)
            heads[k] = head(k)
        elif name == "host-hang":
            heads[k].p.send_signal(signal.SIGSTOP)
            time.sleep(12)
            heads[k].p.send_signal(signal.SIGCONT)
        elif name == "cable-cut":
            net.carrierDown(k)
            time.sleep(12)
            net.carrierUp(k)
        elif name == "power-loss":
            net.blackhole(k)
            heads[k].p.kill()
            heads[k].p.wait()
            time.sleep(12)
            net.restore()
            heads[k] = head(k)
        else:
            net.blackhole(1)
            net.blackhole(2)
            time.sleep(12)
            net.restore()
        faultSeconds = time.monotonic() - t0
        [r] = collect([client], seconds + 120)
        imp.stop()
        for h in heads.values():
            h.stop()
        with open(log, errors="replace") as f:
            text = f.read()
        return {
            "row": name, "faultSeconds": round(faultSeconds, 1),
            "nbdErrors": len(r["errors"]),
            "firstError": (r["errors"] or [None])[0],
            "verifyFailures": r["verifyFailures"],
            "writes": r["writes"], "finalVerified": r.get("finalVerified"),
            "longestRequest": round(r.get("maxLatency", 0), 2),
            "longestFailedRequest": round(r.get("maxErrorLatency", 0), 2),
            "linksDeclaredDead": len(re.findall(r"dead: nothing received",
                                                text)),
            "failovers": len(re.findall(r"open via .* lost", text)),
            "failedFast": "(--stall-timeout); failing" in text,
            "tracebacks": text.count("Traceback"),
        }
    finally:
        cleanups.run()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=",".join(ROWS))
    a = ap.parse_args()
    d = scratch()
    try:
        for name in a.rows.split(","):
            print(json.dumps(row(name, d)), flush=True)
    finally:
        cleanup(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
