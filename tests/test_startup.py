"""
Start-up as an admin meets it, with real C{twistd -n xdiskd} processes:
every mistake is one line on standard error and exit status 1, with no
traceback and no socket, lock or pid file left behind; a second daemon
with every default starts (issue 17, defect 1); --version and --help.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from xdiskd import __version__
from tests.daemons import REPO, TWISTD

DEFAULT_CONTROL = "/var/lib/xdiskd/control.sock"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (
        ":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("XDISKD_CONTROL", None)
    return env


class StartupErrorTests(SynchronousTestCase):
    """Each case: args, then what the one line on stderr must say."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="xdiskd-st-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.state = os.path.join(self.dir, "state")
        self.procs = []
        self.addCleanup(self._killAll)

    def _killAll(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    def path(self, *names):
        return os.path.join(self.dir, *names)

    def twistd(self, *args, twistdArgs=("--pidfile=",)):
        return [TWISTD, "-n"] + list(twistdArgs) + [
            "xdiskd", "--state-dir", self.state] + list(args)

    def assertFails(self, args, message, twistdArgs=("--pidfile=",),
                    exact=False):
        """Run; exit 1, one 'xdiskd: ...' line on stderr with message."""
        p = subprocess.run(self.twistd(*args, twistdArgs=twistdArgs),
                           cwd=self.dir, env=_env(), capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        out = p.stdout.decode(errors="replace")
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 1, err + out)
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("xdiskd: "), lines[0])
        if exact:
            self.assertEqual(lines[0], "xdiskd: " + message)
        else:
            self.assertIn(message, lines[0])
        self.assertNotIn("Traceback", out + err)
        self.assertNotRegex(out + err, r"object at 0x[0-9a-f]+")
        return lines[0]

    def leftovers(self, *keep):
        """Sockets, lock links and pid files under the test directory."""
        found = []
        for root, dirs, files in os.walk(self.dir):
            for name in files:
                path = os.path.join(root, name)
                if path in keep:
                    continue
                if name.endswith((".lock", ".pid", ".sock")) or (
                        os.path.islink(path)):
                    found.append(path)
        return found

    def test_linger(self):
        """The issue's example, word for word."""
        self.assertFails(["--linger", "abc"],
                         "--linger: 'abc' is not a number of seconds",
                         exact=True)

    def test_numbersNameOptionAndValue(self):
        self.assertFails(["--max-io", "7"],
                         "--max-io: '7' is not a number of bytes (512 to "
                         "1048576)", exact=True)

    def test_unknownOption(self):
        self.assertFails(["--frobnicate"], "--frobnicate not recognized")

    def test_missingExportFile(self):
        self.assertFails(["--export", "x=/nonexistent/disk.img"],
                         "--export x=/nonexistent/disk.img: cannot export "
                         "'/nonexistent/disk.img'")

    def test_badExportSpec(self):
        self.assertFails(["--export", "x=/dev/null,blksize=100"],
                         "--export: blksize 100 is not a positive power of "
                         "two")

    def test_portOutOfRange(self):
        self.assertFails(["--listen", "tcp:99999"],
                         "--listen tcp:99999: '99999' is not a port number",
                         exact=False)

    def test_portNotANumber(self):
        self.assertFails(["--nbd", "tcp:notaport"],
                         "--nbd tcp:notaport: 'notaport' is not a port "
                         "number")

    def test_unknownEndpointType(self):
        self.assertFails(["--listen", "frob:1"], "--listen frob:1:")

    def test_missingDirectory(self):
        """A listener in a directory that does not exist, after another
        one had started: the first one's socket and lock are removed."""
        first = self.path("first.sock")
        bad = self.path("nodir", "x.sock")
        self.assertFails(["--listen", "unix:" + first, "--listen",
                          "unix:" + bad],
                         "--listen unix:%s: cannot listen: no directory %s" %
                         (bad, os.path.dirname(bad)), exact=True)
        self.assertEqual(self.leftovers(), [])

    def test_socketPathIsAFile(self):
        """A regular file where the socket should go is left alone."""
        path = self.path("d.sock")
        with open(path, "w") as f:
            f.write("not a socket\n")
        self.assertFails(["--no-nbd", "--listen", "unix:" + path],
                         "--listen unix:%s: cannot listen: %s exists and is "
                         "not a socket" % (path, path), exact=True)
        with open(path) as f:
            self.assertEqual(f.read(), "not a socket\n")
        self.assertEqual(self.leftovers(path), [])

    def test_portInUse(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        desc = "tcp:%d:interface=127.0.0.1" % (port,)
        for option in ("--listen", "--nbd", "--metrics"):
            self.assertFails(["--listen", "unix:" + self.path("d.sock"),
                              "--nbd", "unix:" + self.path("n.sock"),
                              option, desc],
                             "%s %s: cannot listen: address already in "
                             "use" % (option, desc))
            self.assertEqual(self.leftovers(), [])

    def test_badTLSFiles(self):
        junk = self.path("junk.pem")
        with open(junk, "w") as f:
            f.write("not a certificate\n")
        self.assertFails(["--listen", "tls:tcp:0:interface=127.0.0.1",
                          "--tls-cert", self.path("none.pem"),
                          "--tls-ca", junk],
                         "--tls-cert %s: cannot read certificate" % (
                             self.path("none.pem"),))
        self.assertFails(["--listen", "tls:tcp:0:interface=127.0.0.1",
                          "--tls-cert", junk, "--tls-ca", junk],
                         "holds no usable PEM certificate")

    def test_badConfigFile(self):
        conf = self.path("x.conf")
        with open(conf, "w") as f:
            f.write("[xdiskd]\nlinger = abc\n")
        self.assertFails(["--config", conf], "config %s: --linger: 'abc' "
                         "is not a number of seconds" % (conf,), exact=True)

    def test_pidFileOnlyWhenAsked(self):
        """-n writes no twistd.pid unless --pidfile is given (twistd's
        option, before the plugin name)."""
        from xdiskd.tap import _pidfileGiven
        self.assertFalse(_pidfileGiven(["-n", "xdiskd", "--pidfile=x"]))
        self.assertTrue(_pidfileGiven(["-n", "--pidfile=x", "xdiskd"]))
        self.assertTrue(_pidfileGiven(["--pidfile", "x", "-n", "xdiskd"]))
        self.assertTrue(_pidfileGiven(["--pid=x", "-n", "xdiskd"]))

    def test_pidFileRemoved(self):
        pidfile = self.path("x.pid")
        self.assertFails(["--listen", "unix:" + self.path("no", "x.sock")],
                         "cannot listen", twistdArgs=("--pidfile=" + pidfile,))
        self.assertFalse(os.path.exists(pidfile))

    def test_withoutForeground(self):
        """
        Without -n twistd forks first; a listener failing in the child is
        the critical log line, the parent prints it (twistd's format) and
        exits 1, and no socket, lock or pid file is left.
        """
        pidfile, log = self.path("x.pid"), self.path("x.log")
        bad = self.path("nodir", "x.sock")
        p = subprocess.run([TWISTD, "--pidfile=" + pidfile,
                            "--logfile=" + log, "xdiskd", "--state-dir",
                            self.state, "--no-nbd", "--listen",
                            "unix:" + self.path("ok.sock"), "--listen",
                            "unix:" + bad], cwd=self.dir, env=_env(),
                           capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 1)
        line = "--listen unix:%s: cannot listen: no directory" % (bad,)
        self.assertIn(line, p.stderr.decode())
        text = read(log)
        self.assertIn("[xdiskd.tap#critical] cannot start: " + line, text)
        self.assertNotIn("Traceback", text)
        # The parent exits as soon as the child reported the failure; the
        # child removes its pid file on its way out, a moment later (a
        # loaded CI machine once saw it still there): wait up to 10 s.
        deadline = time.monotonic() + 10
        while self.leftovers(log) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.leftovers(log), [])

    def _running(self, *args):
        """A daemon of ours that is up (its control socket answers)."""
        log = self.path("running.log")
        p = subprocess.Popen([TWISTD, "-n", "--pidfile=", "xdiskd"] +
                             list(args), cwd=self.dir, env=_env(),
                             stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        self.procs.append(p)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(log) as f:
                if "control socket " in f.read():
                    return p
            self.assertIsNone(p.poll(), "daemon died")
            time.sleep(0.05)
        self.fail("daemon did not start")

    def test_busySocketsOfAnotherDaemonKept(self):
        """
        A second daemon given the first one's --listen socket and
        --control path fails with one line naming each, and the first
        daemon's sockets and locks stay where they are.
        """
        control = self.path("c.sock")
        dmsg = self.path("d.sock")
        first = self._running("--state-dir", self.path("one"), "--no-nbd",
                              "--control", control, "--listen",
                              "unix:" + dmsg)
        mine = sorted(self.leftovers())
        self.assertEqual(mine, sorted([control, control + ".lock", dmsg,
                                       dmsg + ".lock"]))
        line = self.assertFails(["--no-nbd", "--listen", "unix:" + dmsg],
                                "--listen unix:%s: cannot listen: in use by "
                                "another process (pid %d)" % (dmsg,
                                                              first.pid))
        self.assertIn(dmsg + ".lock", line)
        self.assertFails(["--no-nbd", "--control", control],
                         "--control %s: cannot listen: in use by another "
                         "process (pid %d)" % (control, first.pid))
        self.assertEqual(sorted(self.leftovers()), mine)
        self.assertIsNone(first.poll())


class TwoDefaultDaemonsTests(SynchronousTestCase):
    """
    Defect 1: a second daemon on one host with every default (control
    socket under /var/lib/xdiskd, NBD on 127.0.0.1:10809) starts without
    what the first one holds, with one warning each saying what to set;
    it never removes the first one's socket.
    """

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="xdiskd-def-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def start(self, name):
        d = self.dir
        log = os.path.join(d, name + ".log")
        err = os.path.join(d, name + ".err")
        # Both in one directory, where twistd's default twistd.pid would
        # stop the second: in the foreground xdiskd writes none.
        p = subprocess.Popen([TWISTD, "-n", "xdiskd"], cwd=d, env=_env(),
                             stdout=open(log, "wb"), stderr=open(err, "wb"),
                             stdin=subprocess.DEVNULL)
        self.addCleanup(self._stop, p)
        return p, log, err

    def _stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def waitStarted(self, p, log):
        """Until both default listeners were set up or skipped."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = read(log)
            control = ("control socket %s" % (DEFAULT_CONTROL,) in text or
                       "(--control default)" in text)
            nbd = ("NBD listening on" in text or "(--nbd default)" in text)
            if control and nbd:
                return text
            self.assertIsNone(p.poll(), "daemon died:\n" + text)
            time.sleep(0.05)
        self.fail("daemon did not start:\n" + read(log))

    def test_secondDaemonStarts(self):
        a, aLog, aErr = self.start("a")
        aText = self.waitStarted(a, aLog)
        aHolds = "control socket %s" % (DEFAULT_CONTROL,) in aText
        b, bLog, bErr = self.start("b")
        bText = self.waitStarted(b, bLog)
        time.sleep(0.5)
        self.assertIsNone(b.poll(), "second daemon died:\n" + read(bLog))
        # Someone (the first daemon, or another on this host) holds both
        # defaults: one warning each, saying what to set.
        warnings = [line for line in bText.splitlines() if "#warn]" in line]
        control = [w for w in warnings if "(--control default)" in w]
        self.assertEqual(len(control), 1, bText)
        self.assertIn("in use by another process", control[0])
        self.assertIn("give --state-dir DIR or --control PATH", control[0])
        nbd = [w for w in warnings if "(--nbd default)" in w]
        self.assertEqual(len(nbd), 1, bText)
        self.assertIn("give --nbd ENDPOINT", nbd[0])
        for text in (read(aLog), read(bLog), read(aErr), read(bErr)):
            self.assertNotIn("Traceback", text)
            self.assertNotRegex(text, r"object at 0x[0-9a-f]+")
        self.assertEqual(read(bErr), "")
        self.assertFalse(os.path.exists(os.path.join(self.dir,
                                                     "twistd.pid")))
        # The second one stopping leaves the first one's socket alone.
        self._stop(b)
        # twistd stops on SIGTERM and then exits by that signal.
        self.assertIn(b.returncode, (0, -signal.SIGTERM))
        if aHolds:
            self.assertTrue(os.path.exists(DEFAULT_CONTROL))
            p = subprocess.run([sys.executable, "-m", "xdiskd.cli", "list"],
                               env=_env(), capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
        self._stop(a)
        self.assertIn(a.returncode, (0, -signal.SIGTERM))
        if aHolds:
            self.assertFalse(os.path.exists(DEFAULT_CONTROL))


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


class VersionAndHelpTests(SynchronousTestCase):
    def run_(self, cmd):
        p = subprocess.run(cmd, env=_env(), capture_output=True, timeout=60,
                           cwd=tempfile.gettempdir())
        self.assertEqual((p.returncode, p.stderr), (0, b""))
        return p.stdout.decode()

    def test_daemonVersion(self):
        out = self.run_([TWISTD, "xdiskd", "--version"])
        self.assertRegex(out, r"^xdiskd %s \(Twisted [\d.]+\w*, Python "
                              r"3\.[\d.]+\)\ncompiled: (yes|no|partial) "
                              r"\(.+\)\n$" % (re.escape(__version__),))

    def test_cliVersion(self):
        out = self.run_([sys.executable, "-m", "xdiskd.cli", "--version"])
        self.assertEqual(out, "xdisk (xdiskd %s)\n" % (__version__,))

    def test_help(self):
        out = self.run_([TWISTD, "-n", "xdiskd", "--help"])
        self.assertIn("\nDMSG links:\n  --listen ENDPOINT", out)
        self.assertIn("\nExamples:\n", out)
