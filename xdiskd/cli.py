"""
C{xdisk}: talk to a running xdiskd over its control socket.

    xdisk [--control PATH | --state-dir DIR] [--json] COMMAND

    list                    units, exports, links and connect targets
    stat [-i SEC] [-c N]    per-unit I/O rates, like iostat
    attach ENDPOINT         dial a DMSG peer (reconnecting)
    detach ENDPOINT|LINK    drop a connect target or a link
    export add SPEC         export SERIAL=PATH[,ro][,blksize=N][,label=L]
    export remove SERIAL    withdraw an export
    reload                  re-read the daemon's config file (as SIGHUP)
    rsainit [DIR]           make our DragonFly RSA key pair (no daemon)
    rsashow [DIR]           print our DragonFly public key (no daemon)

Exit status: 0 done, 1 the daemon refused the request, 2 usage error,
3 the daemon cannot be reached.  Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

from xdiskd.control.client import (
    ControlClient, ControlFailed, ControlUnavailable, controlPath)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
MiB = 1 << 20


def humanSize(n: float) -> str:
    """1073741824 → '1G'; 1536 → '1.5K'."""
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1024 or unit == "P":
            if unit == "" or n == int(n):
                return "%d%s" % (n, unit)
            return "%.1f%s" % (n, unit)
        n /= 1024.0
    return str(n)


def table(rows: List[List[Any]], out: TextIO) -> None:
    """Left-aligned columns, two spaces apart; the first row is a header."""
    text = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in text if i < len(r))
              for i in range(max(len(r) for r in text))]
    for r in text:
        cells = [c.ljust(widths[i]) for i, c in enumerate(r)]
        out.write("  ".join(cells).rstrip() + "\n")


def absEndpoint(desc: str) -> str:
    """A relative C{unix:} path is made absolute (the daemon's cwd differs)."""
    if not desc.startswith("unix:") or desc.startswith("unix:path="):
        return desc
    path, sep, rest = desc[5:].partition(":")
    if path and not os.path.isabs(path):
        path = os.path.abspath(path)
    return "unix:" + path + sep + rest


def absSpec(spec: str) -> str:
    """The PATH of SERIAL=PATH[,...] made absolute."""
    serial, sep, rest = spec.partition("=")
    if not sep:
        return spec
    path, comma, opts = rest.partition(",")
    if path and not os.path.isabs(path):
        path = os.path.abspath(path)
    return serial + sep + path + comma + opts


# -------------------------------------------------------------------
# list

def unitState(u: Dict[str, Any]) -> str:
    """
    A unit's state as C{xdisk list} and C{xdisk stat} show it: with how
    long it has been without a path, and C{failing} once its I/O fails
    fast (C{--stall-timeout}).
    """
    state = u["state"]
    if u.get("failingFast"):
        state = "failing"
    if u.get("stalledFor", 0) >= 1:
        state += "(%ds)" % (u["stalledFor"],)
    return state


def showList(reply: Dict[str, Any], out: TextIO) -> None:
    units = reply.get("units", [])
    if units:
        rows: List[List[Any]] = [["UNIT", "SERIAL", "SIZE", "STATE", "OPENS",
                                  "QUEUED", "INFLIGHT", "UNFLUSHED",
                                  "REPLAYS", "REPLAYED", "PATHS"]]
        for u in units:
            w = u.get("window") or {}
            rows.append([u["name"], u["serial"], humanSize(u["size"]),
                         unitState(u) + (",ro" if u.get("readOnly") else ""),
                         u["opencnt"], u["queued"], u["inflight"],
                         humanSize(w.get("inUse", 0)), w.get("replays", 0),
                         humanSize(w.get("replayedBytes", 0)),
                         ",".join(p + ("*" if p == u.get("openVia") else "")
                                  for p in u["paths"]) or "-"])
        table(rows, out)
    else:
        out.write("no units\n")
    exports = reply.get("exports", [])
    if exports:
        out.write("\n")
        rows = [["EXPORT", "PATH", "SIZE", "MODE", "SPANS", "OPENS",
                 "OPS", "ERRORS"]]
        for e in exports:
            rows.append([e["serial"], e["path"], humanSize(e["size"]),
                         "ro" if e["readOnly"] else "rw", len(e["spans"]),
                         e["opens"], e["ops"], e["errors"]])
        table(rows, out)
    links = reply.get("links", [])
    if links:
        out.write("\n")
        rows = [["LINK", "NAME", "DIR", "READY", "PEER", "MSGS-IN",
                 "MSGS-OUT"]]
        for link in links:
            rows.append([link["id"], link["name"], link["direction"],
                         "yes" if link["ready"] else "no",
                         link.get("peer") or "-", link["messagesIn"],
                         link["messagesOut"]])
        table(rows, out)
    connectors = reply.get("connectors", [])
    if connectors:
        out.write("\n")
        rows = [["CONNECT", "UP", "LINK", "RECONNECTS", "FAILED",
                 "LAST-ERROR"]]
        for c in connectors:
            rows.append([c["endpoint"], "yes" if c["up"] else "no",
                         c["link"] if c["link"] is not None else "-",
                         c["reconnects"], c.get("failures", 0),
                         c.get("lastError") or "-"])
        table(rows, out)


# -------------------------------------------------------------------
# stat

STAT_HEADER = ["UNIT", "r/s", "w/s", "rMB/s", "wMB/s", "lat-ms", "inflight",
               "queued", "errors", "retries", "state", "paths"]


def statRows(before: Dict[str, Any], after: Dict[str, Any]) -> List[List[Any]]:
    """One row per unit of C{after}: rates over the interval."""
    dt = max(after["time"] - before["time"], 1e-9)
    old = {(u["name"], u["serial"]): u["stats"] for u in before["units"]}
    rows: List[List[Any]] = [list(STAT_HEADER)]
    for u in after["units"]:
        s = u["stats"]
        p = old.get((u["name"], u["serial"]))
        if p is None:
            p = dict(ops={k: 0 for k in s["ops"]},
                     bytes={k: 0 for k in s["bytes"]}, errors=0,
                     retries=0, latencySum=0.0, latencyCount=0)
        ops = {k: s["ops"][k] - p["ops"].get(k, 0) for k in s["ops"]}
        nbytes = {k: s["bytes"][k] - p["bytes"].get(k, 0)
                  for k in s["bytes"]}
        count = s["latencyCount"] - p["latencyCount"]
        lat = ((s["latencySum"] - p["latencySum"]) / count * 1000.0
               if count > 0 else 0.0)
        rows.append([u["name"], "%.1f" % (ops["read"] / dt),
                     "%.1f" % (ops["write"] / dt),
                     "%.2f" % (nbytes["read"] / dt / MiB),
                     "%.2f" % (nbytes["write"] / dt / MiB),
                     "%.2f" % (lat,), u["inflight"], u["queued"],
                     s["errors"] - p["errors"], s["retries"] - p["retries"],
                     unitState(u), len(u["paths"])])
    return rows


def runStat(client: ControlClient, interval: float, count: Optional[int],
            asJSON: bool, out: TextIO) -> None:
    before = client.call("stat")
    n = 0
    while count is None or n < count:
        time.sleep(interval)
        after = client.call("stat")
        n += 1
        if asJSON:
            out.write(json.dumps(after) + "\n")
        else:
            if n > 1:
                out.write("\n")
            out.write(time.strftime("%H:%M:%S",
                                    time.localtime(after["wallclock"]))
                      + "\n")
            if after["units"]:
                table(statRows(before, after), out)
            else:
                out.write("no units\n")
        out.flush()
        before = after


# -------------------------------------------------------------------
# main

def _version() -> str:
    from xdiskd import __version__
    return "xdisk (xdiskd %s)" % (__version__,)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xdisk", description="Control a running xdiskd.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--control", metavar="PATH",
                       help="the daemon's control socket")
    where.add_argument("--state-dir", metavar="DIR",
                       help="the daemon's --state-dir (socket "
                            "DIR/control.sock; default /var/lib/xdiskd)")
    p.add_argument("--json", action="store_true",
                   help="print the daemon's JSON replies")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SEC",
                   help="give up on a reply after SEC seconds (30)")
    p.add_argument("--version", action="version", version=_version(),
                   help="print xdiskd's version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("list", help="units, exports, links, connect targets")
    s = sub.add_parser("stat", help="per-unit I/O rates, like iostat")
    s.add_argument("-i", "--interval", type=float, default=1.0,
                   metavar="SEC", help="seconds per sample (1)")
    s.add_argument("-c", "--count", type=int, default=None, metavar="N",
                   help="stop after N samples (default: until Ctrl-C)")
    a = sub.add_parser("attach", help="dial a DMSG peer")
    a.add_argument("endpoint", help="client endpoint, e.g. tcp:host:9870")
    d = sub.add_parser("detach", help="drop a connect target or link")
    d.add_argument("target", help="connect endpoint or link id")
    e = sub.add_parser("export", help="add or remove an export")
    esub = e.add_subparsers(dest="action", metavar="ACTION")
    esub.required = True
    ea = esub.add_parser("add", help="export a file or device")
    ea.add_argument("spec", help="SERIAL=PATH[,ro][,blksize=N][,label=L]")
    er = esub.add_parser("remove", help="withdraw an export")
    er.add_argument("serial")
    sub.add_parser("reload", help="re-read the daemon's config file")
    r = sub.add_parser("rsainit", help="make our DragonFly RSA key pair "
                       "for dfly: links, as hammer2 rsainit does")
    r.add_argument("dir", nargs="?", default=DFLY_DIR,
                   help="key directory (%s)" % (DFLY_DIR,))
    r = sub.add_parser("rsashow", help="print our DragonFly public key, "
                       "for the peer's remote/<our-ip>.pub")
    r.add_argument("dir", nargs="?", default=DFLY_DIR,
                   help="key directory (%s)" % (DFLY_DIR,))
    return p


DFLY_DIR = "/etc/hammer2"


def runKeys(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """C{rsainit} and C{rsashow}: local key files, no daemon."""
    from xdiskd.dfly.keys import DFlyKeyError, fingerprint, loadOwn, rsainit
    try:
        if args.command == "rsainit":
            for line in rsainit(args.dir):
                out.write("xdisk rsainit: %s\n" % (line,))
        own = loadOwn(args.dir)
    except (DFlyKeyError, OSError) as e:
        err.write("xdisk %s: %s\n" % (args.command, e))
        return EXIT_FAILED
    if args.command == "rsashow":
        out.write(own.pem.decode("ascii"))
        err.write("# %d-bit RSA, SHA-256 %s\n# install it on the DragonFly "
                  "host as /etc/hammer2/remote/<this host's IP, as it sees "
                  "it>.pub\n" % (own.public.bits, fingerprint(own.public)))
    else:
        out.write("xdisk rsainit: public key %s, SHA-256 %s\n" % (
            own.public.path, fingerprint(own.public)))
    return 0


def run(args: argparse.Namespace, client: ControlClient,
        out: TextIO) -> None:
    cmd = args.command
    if cmd == "stat":
        runStat(client, args.interval, args.count, args.json, out)
        return
    if cmd == "list":
        reply = client.call("list")
    elif cmd == "attach":
        reply = client.call("attach", endpoint=absEndpoint(args.endpoint))
    elif cmd == "detach":
        try:
            reply = client.call("detach", target=args.target)
        except ControlFailed:
            other = absEndpoint(args.target)
            if other == args.target:
                raise
            reply = client.call("detach", target=other)
    elif cmd == "export" and args.action == "add":
        reply = client.call("export-add", spec=absSpec(args.spec))
    elif cmd == "export":
        reply = client.call("export-remove", serial=args.serial)
    else:
        reply = client.call("reload")
    if args.json:
        out.write(json.dumps(reply, indent=2) + "\n")
    elif cmd == "list":
        showList(reply, out)
    elif cmd == "attach":
        out.write("attached %s\n" % (reply["endpoint"],))
    elif cmd == "detach":
        what = reply["endpoint"] or "link %s" % (
            ", ".join(str(i) for i in reply["links"]),)
        out.write("detached %s\n" % (what,))
    elif cmd == "export" and args.action == "add":
        out.write("exporting %s\n" % (reply["export"]["serial"],))
    elif cmd == "export":
        out.write("withdrew %s\n" % (reply["serial"],))
    else:
        changes = ", ".join("%s: %s" % (k, " ".join(v))
                            for k, v in reply.items()
                            if isinstance(v, list) and v)
        out.write("reloaded%s\n" % (": " + changes if changes else
                                    " (no changes)",))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "stat" and (args.interval <= 0 or (
            args.count is not None and args.count < 1)):
        p.error("stat wants -i SEC > 0 and -c N >= 1")
    if args.command in ("rsainit", "rsashow"):
        return runKeys(args, sys.stdout, sys.stderr)
    path = controlPath(args.control, args.state_dir)
    client = ControlClient(path, args.timeout)
    try:
        with client:
            run(args, client, sys.stdout)
    except ControlUnavailable as e:
        sys.stderr.write("xdisk: %s\n" % (e,))
        return EXIT_UNREACHABLE
    except ControlFailed as e:
        sys.stderr.write("xdisk: %s\n" % (e,))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
