"""
End-to-end tests of the operations side against real daemons: the
C{xdisk} command over the control socket (list, stat, attach/detach with
I/O failing over, export add/remove seen at a peer), metrics scraped
over HTTP, SIGHUP reload of a config file, JSON logs.

Every wait is bounded and polls a condition.
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from tests.daemons import Daemon, nbdURI, requireTools, run, waitNBD
from tests.test_cli import xdisk
from tests.test_metrics import parse, value

MiB = 1 << 20

# Keeps I/O going (8 x 64 KiB writes in flight, then read back and
# checked) until the stop file exists; every byte is verified.
IO_LOOP = r"""
import os, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
started, stop = sys.argv[2], sys.argv[3]
deadline = time.monotonic() + 90
rounds = 0
while not os.path.exists(stop) and time.monotonic() < deadline:
    data = [bytes([(rounds * 8 + i) % 251]) * 65536 for i in range(8)]
    base = (rounds % 64) * 8 * 65536
    cookies = [h.aio_pwrite(data[i], base + i * 65536) for i in range(8)]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for i in range(8):
        assert h.pread(65536, base + i * 65536) == data[i], (rounds, i)
    rounds += 1
    if rounds == 1:
        open(started, "w").close()
assert rounds > 0
print("ok", rounds)
"""


def waitFor(what, predicate, timeout=20.0, interval=0.05):
    """Poll C{predicate} until it returns a true value; return it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s (last: %r)" % (
        timeout, what, last))


class Ctl:
    """The xdisk command aimed at one daemon."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.args = ["--state-dir", daemon.dir]

    def __call__(self, *args, ok=True):
        code, out, err = xdisk(*(self.args + list(args)))
        if ok and code != 0:
            raise AssertionError("xdisk %s failed (%d): %s%s" % (
                " ".join(args), code, out, err))
        return code, out, err

    def json(self, *args):
        return json.loads(self("--json", *args)[1])

    def unit(self, serial):
        """The unit's C{list} entry; None also while the daemon starts."""
        code, out, err = self("--json", "list", ok=False)
        if code == 3:
            return None
        if code:
            raise AssertionError("xdisk list failed: " + err)
        for u in json.loads(out)["units"]:
            if u["serial"] == serial:
                return u
        return None

    def stats(self, serial):
        for u in self.json("stat", "-c", "1", "-i", "0.05")["units"]:
            if u["serial"] == serial:
                return u
        return None


def startIOLoop(case, uri, where, timeout=30.0):
    """
    Start L{IO_LOOP} against C{uri} and wait until its first round was
    verified; return (the process, the file whose creation stops it).
    """
    started = os.path.join(where, "started")
    stop = os.path.join(where, "stop")
    io = subprocess.Popen(
        ["/usr/bin/python3", "-m", "nbd", "-c",
         "import sys; sys.argv = ['nbdsh', %r, %r, %r]" % (
             uri, started, stop), "-c", IO_LOOP],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    case.addCleanup(lambda: io.poll() is None and io.kill())
    waitFor("I/O started", lambda: os.path.exists(started)
            or io.poll() is not None, timeout=timeout)
    if io.poll() is not None:
        case.fail("I/O client failed: %r" % (io.communicate(),))
    return io, stop


def stopIOLoop(case, io, stop):
    """Stop L{startIOLoop}'s client; it must end well (every round
    verified)."""
    open(stop, "w").close()
    out, err = io.communicate(timeout=60)
    case.assertEqual(io.returncode, 0, err.decode())
    case.assertIn(b"ok", out)


def exporterHeads(case, names, serial="serno/TWO", size=64 * MiB):
    """
    One exporter daemon per name, all exporting C{serial} from one image
    file (paths to one disk), each listening on its own UNIX socket
    (C{daemon.sock}, C{daemon.endpoint}); return ({name: daemon}, image).
    """
    exps = {}
    img = None
    for name in names:
        d = Daemon(case, "exp-" + name, [])
        if img is None:
            img = os.path.join(d.dir, "disk.img")
            with open(img, "wb") as f:
                f.truncate(size)
        d.sock = os.path.join(d.dir, "dmsg.sock")
        d.args += ["--no-import", "--listen", "unix:" + d.sock,
                   "--export", "%s=%s" % (serial, img)]
        d.start()
        d.endpoint = "unix:" + d.sock
        exps[name] = d
    return exps, img


class TwoPathTests(SynchronousTestCase):
    """
    Exporters A and B both export serial serno/TWO (one image file: two
    paths to one disk); the importer dials both and serves metrics.
    """

    def setUp(self):
        requireTools()
        self.exps, self.img = exporterHeads(self, ("a", "b"))
        for d in self.exps.values():
            d.waitLog("DMSG listening")
        self.imp = Daemon(self, "importer", [])
        self.sock = os.path.join(self.imp.dir, "nbd.sock")
        self.imp.args += ["--connect", self.exps["a"].endpoint,
                          "--connect", self.exps["b"].endpoint,
                          "--nbd", "unix:" + self.sock,
                          "--metrics", "tcp:0:interface=127.0.0.1"]
        self.imp.start()
        waitNBD(self.sock)
        self.uri = nbdURI(self.sock)
        self.ctl = Ctl(self.imp)
        waitFor("two paths", lambda: len(
            (self.ctl.unit("serno/TWO") or {}).get("paths", ())) == 2)

    def test_listAndStat(self):
        """xdisk list shows the unit, links, targets; stat one sample."""
        code, out, err = self.ctl("list")
        lines = out.splitlines()
        self.assertEqual(lines[0].split()[:3], ["UNIT", "SERIAL", "SIZE"])
        self.assertEqual(lines[1].split()[:4],
                         ["xa0", "serno/TWO", "64M", "closed"])
        for d in self.exps.values():
            self.assertIn(d.endpoint, out)
        listing = self.ctl.json("list")
        self.assertEqual(sorted(c["endpoint"] for c in
                                listing["connectors"]),
                         sorted(d.endpoint for d in self.exps.values()))
        self.assertTrue(all(c["up"] for c in listing["connectors"]))
        self.assertEqual([link["direction"] for link in listing["links"]],
                         ["out", "out"])
        run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", self.uri])
        code, out, err = self.ctl("stat", "-c", "1", "-i", "0.2")
        lines = out.splitlines()
        self.assertRegex(lines[0], r"^\d\d:\d\d:\d\d$")
        self.assertEqual(lines[1].split(), [
            "UNIT", "r/s", "w/s", "rMB/s", "wMB/s", "lat-ms", "inflight",
            "queued", "errors", "retries", "state", "paths"])
        self.assertEqual(lines[2].split()[0], "xa0")
        self.assertEqual(lines[2].split()[-2:], ["closed", "2"])
        self.assertEqual(len(lines), 3)
        stats = self.ctl.stats("serno/TWO")["stats"]
        self.assertGreaterEqual(stats["bytes"]["write"], MiB)
        # The exporter lists its export, opened by nobody now.
        code, out, err = Ctl(self.exps["a"])("list")
        self.assertIn("serno/TWO", out)
        self.assertEqual(oct(os.stat(os.path.join(
            self.imp.dir, "control.sock")).st_mode & 0o777), "0o600")

    def test_detachAttachDuringIO(self):
        """
        The README walk-through: detach the path the unit is open on
        while I/O runs (it fails over), detach the other (I/O stalls:
        the numbers stop), attach one back (they move again); the client
        sees no error and every byte reads back.
        """
        io, stop = startIOLoop(self, self.uri, self.imp.dir)

        def writes():
            return self.ctl.stats("serno/TWO")["stats"]["ops"]["write"]

        u = self.ctl.unit("serno/TWO")
        self.assertEqual(u["state"], "open")
        links = {link["name"]: link["endpoint"]
                 for link in self.ctl.json("list")["links"]}
        first = links[u["openVia"]]
        other = [e for e in links.values() if e != first][0]
        code, out, err = self.ctl("detach", first)
        self.assertEqual(out, "detached %s\n" % (first,))
        # Failed over: open on the other path, I/O moving.
        n = writes()
        waitFor("writes after failover", lambda: writes() > n + 16)
        u = self.ctl.unit("serno/TWO")
        self.assertEqual((u["state"], len(u["paths"])), ("open", 1))
        self.assertEqual(self.ctl.stats("serno/TWO")["stats"]["failovers"],
                         1)
        # No path at all: the unit stalls and the counters stand still.
        self.ctl("detach", other)
        waitFor("stalled", lambda: self.ctl.unit("serno/TWO")["state"] ==
                "stalled")
        n = writes()
        code, out, err = self.ctl("stat", "-c", "1", "-i", "0.3")
        row = out.splitlines()[2].split()
        self.assertEqual(row[1:5], ["0.0", "0.0", "0.00", "0.00"])
        # "stalled", or "stalled(1s)" once a second has gone by (a loaded
        # machine takes that long between the detach and this sample).
        self.assertRegex(row[-2], r"^stalled(\(\d+s\))?$")
        self.assertEqual(row[-1], "0")
        self.assertEqual(writes(), n)
        self.assertIsNone(io.poll())
        # Back: I/O resumes on the re-attached path.
        code, out, err = self.ctl("attach", first)
        self.assertEqual(out, "attached %s\n" % (first,))
        waitFor("writes after re-attach", lambda: writes() > n + 16)
        stopIOLoop(self, io, stop)
        stats = self.ctl.stats("serno/TWO")["stats"]
        self.assertEqual(stats["errors"], 0)
        self.assertGreaterEqual(stats["stalls"], 1)
        log = self.imp.logText()
        self.assertIn("chunks queued for re-issue; re-opening", log)
        self.assertNotIn("Traceback", log)

    def test_exportAddRemoveSeenAtPeer(self):
        """A span appears and disappears at the importer: paths change."""
        img = os.path.join(self.exps["a"].dir, "new.img")
        with open(img, "wb") as f:
            f.truncate(8 * MiB)
        a, b = Ctl(self.exps["a"]), Ctl(self.exps["b"])
        code, out, err = a("export", "add", "serno/NEW=" + img)
        self.assertEqual(out, "exporting serno/NEW\n")
        waitFor("one path", lambda: len(
            (self.ctl.unit("serno/NEW") or {}).get("paths", ())) == 1)
        self.assertEqual(self.ctl.unit("serno/NEW")["size"], 8 * MiB)
        b("export", "add", "serno/NEW=" + img + ",ro")
        waitFor("two paths", lambda: len(
            self.ctl.unit("serno/NEW")["paths"]) == 2)
        code, out, err = a("export", "remove", "serno/NEW")
        self.assertEqual(out, "withdrew serno/NEW\n")
        waitFor("one path left", lambda: len(
            self.ctl.unit("serno/NEW")["paths"]) == 1)
        b("export", "remove", "serno/NEW")
        waitFor("no path", lambda: self.ctl.unit("serno/NEW")["paths"] == [])
        # Errors are clear, with exit status 1.
        code, out, err = a("export", "remove", "serno/NEW", ok=False)
        self.assertEqual((code, err), (1, "xdisk: no export 'serno/NEW' "
                                          "(see xdisk list)\n"))
        code, out, err = a("export", "add", "x=/nonexistent/img", ok=False)
        self.assertEqual(code, 1)
        self.assertIn("/nonexistent/img", err)

    def scrape(self):
        m = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics",
                      self.imp.logText())
        assert m, "metrics port not logged"
        url = "http://127.0.0.1:%s/metrics" % m.group(1)
        with urllib.request.urlopen(url, timeout=10) as r:
            self.assertIn("text/plain", r.headers["Content-Type"])
            return parse(r.read().decode())[0]

    def test_metrics(self):
        """Scraped and parsed; counters move; reconnects are counted."""
        samples = self.scrape()
        w0 = value(samples, "xdiskd_unit_ops_total", unit="xa0", op="write")
        b0 = value(samples, "xdiskd_unit_bytes_total", unit="xa0",
                   op="write")
        run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 2M",
             "-c", "read -P 0x11 0 2M", self.uri])
        samples = self.scrape()
        self.assertGreater(value(samples, "xdiskd_unit_ops_total",
                                 unit="xa0", op="write"), w0)
        self.assertGreaterEqual(value(samples, "xdiskd_unit_bytes_total",
                                      unit="xa0", op="write"), b0 + 2 * MiB)
        self.assertGreaterEqual(value(samples, "xdiskd_unit_bytes_total",
                                      unit="xa0", op="read"), 2 * MiB)
        count = value(samples, "xdiskd_unit_latency_seconds_count",
                      unit="xa0")
        self.assertEqual(value(samples, "xdiskd_unit_latency_seconds_bucket",
                               unit="xa0", le="+Inf"), count)
        self.assertEqual(value(samples, "xdiskd_unit_paths", unit="xa0"), 2)
        a = self.exps["a"].endpoint
        self.assertEqual(value(samples, "xdiskd_connect_up", endpoint=a), 1)
        self.assertEqual(value(samples, "xdiskd_connect_reconnects_total",
                               endpoint=a), 0)
        # Exporter A dies and comes back: one reconnect.
        self.exps["a"].kill()
        self.exps["a"].start()

        def reconnected():
            s = self.scrape()
            return (value(s, "xdiskd_connect_reconnects_total",
                          endpoint=a) == 1 and
                    value(s, "xdiskd_connect_up", endpoint=a) == 1)
        waitFor("reconnect", reconnected)


class ReloadE2ETests(SynchronousTestCase):
    """SIGHUP reload of a config file; JSON logs."""

    def setUp(self):
        requireTools()
        self.exp = Daemon(self, "exp", [])
        self.conf = os.path.join(self.exp.dir, "xdiskd.conf")
        self.dmsg = os.path.join(self.exp.dir, "dmsg.sock")
        self.imgs = []
        for i in range(2):
            img = os.path.join(self.exp.dir, "d%d.img" % i)
            with open(img, "wb") as f:
                f.truncate(4 * MiB)
            self.imgs.append(img)
        self.writeConf(["serno/R0=" + self.imgs[0]])
        self.exp.args += ["--config", self.conf]
        self.exp.start()
        self.exp.waitLog("DMSG listening")
        self.imp = Daemon(self, "imp", ["--no-nbd", "--connect",
                                        "unix:" + self.dmsg])
        self.imp.start()
        self.ctl = Ctl(self.imp)
        self.expCtl = Ctl(self.exp)
        waitFor("R0", lambda: self.ctl.unit("serno/R0"))

    def writeConf(self, exports, extra=""):
        with open(self.conf + ".new", "w") as f:
            f.write("[xdiskd]\nno-import = yes\nlog-format = json\n"
                    "listen = unix:%s\nexport =\n%s\n%s" % (
                        self.dmsg, "".join("    %s\n" % e for e in exports),
                        extra))
        os.rename(self.conf + ".new", self.conf)

    def hup(self):
        self.exp.proc.send_signal(signal.SIGHUP)

    def test_reload(self):
        linkIds = [link["id"] for link in self.expCtl.json("list")["links"]]
        # Valid: R1 added, R0 made read-only (withdrawn and re-added).
        self.writeConf(["serno/R0=%s,ro" % self.imgs[0],
                        "serno/R1=" + self.imgs[1]])
        self.hup()
        waitFor("R1 at the importer", lambda: self.ctl.unit("serno/R1"))
        waitFor("R0 read-only", lambda: [
            e["readOnly"] for e in self.expCtl.json("list")["exports"]
            if e["serial"] == "serno/R0"] == [True])
        waitFor("R0 path back", lambda: len(
            self.ctl.unit("serno/R0")["paths"]) == 1)
        # The healthy link stayed: same link, no reconnect at the importer.
        self.assertEqual([link["id"] for link in
                          self.expCtl.json("list")["links"]], linkIds)
        self.assertEqual(self.ctl.json("list")["connectors"][0]["reconnects"],
                         0)
        # Invalid: a missing file; rejected, logged, nothing changes.
        before = self.expCtl.json("list")["exports"]
        self.writeConf(["serno/R2=/nonexistent/r2.img"])
        self.hup()
        self.exp.waitLog("rejected")
        self.assertEqual(self.expCtl.json("list")["exports"], before)
        self.assertIsNone(self.exp.proc.poll())
        # The same through xdisk reload: exit 1 and the reason.
        code, out, err = self.expCtl("reload", ok=False)
        self.assertEqual(code, 1)
        self.assertIn("config rejected", err)
        self.assertIn("/nonexistent/r2.img", err)
        self.writeConf(["serno/R0=%s,ro" % self.imgs[0]])
        code, out, err = self.expCtl("reload")
        self.assertEqual(out, "reloaded: exportsRemoved: serno/R1\n")
        waitFor("R1 path gone", lambda: self.ctl.unit("serno/R1")["paths"]
                == [])

    def test_jsonLog(self):
        """One JSON object per line, with the structured fields."""
        self.hup()
        self.exp.waitLog("config reloaded")
        with open(self.exp.log) as f:
            events = [json.loads(line) for line in f if line.strip()]
        self.assertTrue(any(e.get("log_format", "").startswith(
            "config reloaded") for e in events))
        spans = [e for e in events if e.get("serial") == "serno/R0"]
        self.assertTrue(spans, "no event with serial=serno/R0")
        self.assertTrue(any("link" in e for e in events))
