"""
Tests for L{xdiskd.cli} (the C{xdisk} command) without a daemon: output
formats, path handling, and clear errors when no daemon answers.  The
commands against running daemons are in L{tests.test_ops_e2e}.
"""

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from xdiskd import cli
from xdiskd.control.client import DEFAULT_STATE_DIR, controlPath
from xdiskd.options import DEFAULT_STATE_DIR as DAEMON_STATE_DIR
from tests.daemons import REPO


def xdisk(*args, timeout=30):
    """Run the xdisk command as a process; return (code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("XDISKD_CONTROL", None)
    p = subprocess.run([sys.executable, "-m", "xdiskd.cli"] + list(args),
                       capture_output=True, timeout=timeout, env=env)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def _unit(name="xa0", paths=("link1(unix:/x)",), **stats):
    s = dict(ops=dict(read=0, write=0, flush=0, trim=0),
             bytes=dict(read=0, write=0), errors=0, retries=0,
             latencySum=0.0, latencyCount=0)
    s.update(stats)
    return dict(name=name, serial="serno/" + name, size=1 << 30,
                state="open", opencnt=1, paths=list(paths), queued=0,
                inflight=2, readOnly=False, openVia=paths[0] if paths else
                None, stats=s)


class FormatTests(SynchronousTestCase):
    def test_humanSize(self):
        self.assertEqual([cli.humanSize(n) for n in
                          (0, 512, 1536, 1 << 20, 128 << 20, 1 << 30,
                           3 << 40)],
                         ["0", "512", "1.5K", "1M", "128M", "1G", "3T"])

    def test_statRows(self):
        """Rates over the interval; counts are deltas; new units start at 0."""
        before = dict(time=10.0, units=[_unit()])
        after = dict(time=12.0, units=[
            _unit(ops=dict(read=200, write=100, flush=0, trim=0),
                  bytes=dict(read=4 << 20, write=2 << 20), errors=1,
                  retries=3, latencySum=0.6, latencyCount=300),
            _unit("xa1", (), ops=dict(read=2, write=0, flush=0, trim=0))])
        rows = cli.statRows(before, after)
        self.assertEqual(rows[0], cli.STAT_HEADER)
        self.assertEqual(rows[1], ["xa0", "100.0", "50.0", "2.00", "1.00",
                                   "2.00", 2, 0, 1, 3, "open", 1])
        self.assertEqual(rows[2][:3], ["xa1", "1.0", "0.0"])
        self.assertEqual(rows[2][-1], 0)

    def test_showList(self):
        out = io.StringIO()
        unit = _unit(paths=("l1", "l2"))
        unit["window"] = dict(inUse=3 << 20, replays=2,
                              replayedBytes=24 << 20)
        cli.showList(dict(units=[unit], exports=[],
                          links=[], connectors=[]), out)
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[0].split(), ["UNIT", "SERIAL", "SIZE", "STATE",
                                            "OPENS", "QUEUED", "INFLIGHT",
                                            "UNFLUSHED", "REPLAYS",
                                            "REPLAYED", "PATHS"])
        # The path the unit is open on is starred.
        self.assertEqual(lines[1].split(), ["xa0", "serno/xa0", "1G", "open",
                                            "1", "0", "2", "3M", "2", "24M",
                                            "l1*,l2"])
        out = io.StringIO()
        cli.showList(dict(units=[]), out)
        self.assertEqual(out.getvalue(), "no units\n")

    def test_absolutePaths(self):
        here = os.getcwd()
        self.assertEqual(cli.absSpec("s=d.img,ro"),
                         "s=%s,ro" % os.path.join(here, "d.img"))
        self.assertEqual(cli.absSpec("s=/d.img"), "s=/d.img")
        self.assertEqual(cli.absEndpoint("unix:x.sock:timeout=3"),
                         "unix:%s:timeout=3" % os.path.join(here, "x.sock"))
        for desc in ("unix:/x.sock", "tcp:h:1", "unix:path=x"):
            self.assertEqual(cli.absEndpoint(desc), desc)

    def test_controlPath(self):
        self.assertEqual(DEFAULT_STATE_DIR, DAEMON_STATE_DIR)
        self.assertEqual(controlPath("/a/b"), "/a/b")
        self.assertEqual(controlPath(None, "/s"), "/s/control.sock")
        self.assertEqual(controlPath(None, None),
                         os.path.join(DEFAULT_STATE_DIR, "control.sock"))


class UnreachableTests(SynchronousTestCase):
    """Clear messages and exit status 3 when no daemon answers."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="xdisk-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_noSocket(self):
        code, out, err = xdisk("--state-dir", self.dir, "list")
        self.assertEqual(code, cli.EXIT_UNREACHABLE)
        self.assertIn("no control socket at %s/control.sock" % self.dir, err)
        self.assertIn("is xdiskd running?", err)
        self.assertNotIn("Traceback", err)

    def test_staleSocket(self):
        path = os.path.join(self.dir, "control.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()
        code, out, err = xdisk("--control", path, "stat", "-c", "1")
        self.assertEqual(code, cli.EXIT_UNREACHABLE)
        self.assertIn("xdiskd is not running", err)

    def test_notASocket(self):
        path = os.path.join(self.dir, "file")
        open(path, "w").close()
        code, out, err = xdisk("--control", path, "list")
        self.assertEqual(code, cli.EXIT_UNREACHABLE)
        self.assertIn(path, err)
        self.assertNotIn("Traceback", err)

    def test_permissionDenied(self):
        if os.geteuid() == 0:
            # root passes every permission check: use an unprivileged uid.
            if shutil.which("setpriv") is None:
                raise self.skipTest("running as root without setpriv")
        path = os.path.join(self.dir, "control.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.listen(1)
        self.addCleanup(s.close)
        os.chmod(path, 0o600)
        os.chmod(self.dir, 0o755)
        cmd = [sys.executable, "-m", "xdiskd.cli", "--control", path, "list"]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534",
                   "--clear-groups"] + cmd
        p = subprocess.run(cmd, capture_output=True, timeout=30,
                           env=dict(os.environ, PYTHONPATH=REPO))
        err = p.stderr.decode()
        if "No module named" in err:
            raise self.skipTest("the unprivileged user cannot read the "
                                "checkout")
        self.assertEqual(p.returncode, cli.EXIT_UNREACHABLE, err)
        self.assertIn("permission denied", err)

    def test_usage(self):
        code, out, err = xdisk("frob")
        self.assertEqual(code, cli.EXIT_USAGE)
        code, out, err = xdisk("stat", "-c", "0")
        self.assertEqual(code, cli.EXIT_USAGE)
        self.assertIn("-c N >= 1", err)
