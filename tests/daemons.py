"""
Test helpers for end-to-end tests: real C{twistd xdiskd} processes on
UNIX sockets in a temporary directory, and real NBD clients.

Every wait is bounded; every process is killed in cleanup.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
STEP = os.path.join(REPO, "tests", "nbdstep.py")
TOOLS = ("nbdinfo", "nbdcopy", "qemu-img", "qemu-io", "nbdsh")


def parseOptions(*args):
    """The daemon's options from C{args} (no control socket, /tmp)."""
    from xdiskd.options import Options
    o = Options()
    o.parseOptions(["--no-control", "--state-dir", "/tmp"] + list(args))
    return o


def requireTools(*names):
    missing = [n for n in names or TOOLS if shutil.which(n) is None]
    if missing:
        raise SkipTest("missing NBD clients: %s (run scripts/setup)" % (
            " ".join(missing),))


def nbdsh(uri, script, timeout=120):
    """Run a libnbd Python script (h = nbd.NBD() etc.) under nbdsh."""
    # nbdsh needs Debian's python3, where python3-libnbd lives.
    return run(["/usr/bin/python3", "-m", "nbd",
                "-c", "import sys; sys.argv = ['nbdsh', %r]" % (uri,),
                "-c", script], timeout)


def nbdURI(sock, name="xa0"):
    return "nbd+unix:///%s?socket=%s" % (name, sock)


class Daemon:
    """One C{twistd -n xdiskd} process."""

    def __init__(self, case, name, args, prefix=()):
        """
        @param prefix: a command to run the daemon under, e.g. C{ip netns
            exec NS} (L{tests.netbed.NetBed.prefix}).
        """
        self.case = case
        self.name = name
        self.args = list(args)
        self.prefix = list(prefix)
        # Short paths: AF_UNIX socket paths are limited to 107 bytes.
        self.dir = tempfile.mkdtemp(prefix="xdiskd-", dir="/tmp")
        case.addCleanup(shutil.rmtree, self.dir, True)
        self.log = os.path.join(self.dir, name + ".log")
        self.proc = None
        case.addCleanup(self.kill)

    def start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (
            ":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = self.prefix + [TWISTD, "-n",
               "--pidfile=", "--logfile=" + self.log, "xdiskd",
               "--state-dir", self.dir] + self.args
        self.proc = subprocess.Popen(cmd, cwd=self.dir, env=env,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.log + ".err", "ab"))
        return self

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def stop(self):
        """SIGINT (Ctrl-C) and wait; return the exit code."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(15)
        self.proc = None
        return code

    def logText(self):
        text = ""
        for p in (self.log, self.log + ".err"):
            if os.path.exists(p):
                with open(p, errors="replace") as f:
                    text += f.read()
        return text

    def waitLog(self, needle, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.logText():
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("%s: %r not in log within %ss:\n%s" % (
            self.name, needle, timeout, self.logText()[-4000:]))


def run(cmd, timeout=120, check=True, input=None):
    """Run a client command; return its CompletedProcess."""
    p = subprocess.run(cmd, capture_output=True, timeout=timeout,
                       input=input)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s\n%s" % (
            " ".join(cmd), p.returncode, p.stdout.decode(errors="replace"),
            p.stderr.decode(errors="replace")))
    return p


def waitURI(uri, sock, timeout=20.0):
    """Wait until C{uri} answers nbdinfo (C{sock} exists first)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if os.path.exists(sock):
            last = run(["nbdinfo", "--size", uri], 10, check=False)
            if last.returncode == 0:
                return int(last.stdout)
        time.sleep(0.1)
    raise AssertionError("NBD export %s not ready: %r" % (
        uri, last and last.stderr))


def waitNBD(sock, name="xa0", timeout=20.0):
    """Wait until C{name} answers nbdinfo on C{sock}; return its size."""
    return waitURI(nbdURI(sock, name), sock, timeout)


class Client:
    """tests/nbdstep.py: one NBD connection, one command at a time."""

    def __init__(self, case, uri):
        self.p = subprocess.Popen(
            ["/usr/bin/python3", STEP, uri], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        case.addCleanup(self.close)

    def send(self, line):
        self.p.stdin.write((line + "\n").encode())
        self.p.stdin.flush()

    def reply(self, timeout=60.0):
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not ready:
            raise AssertionError("NBD client: no reply in %ss" % (timeout,))
        line = self.p.stdout.readline()
        if not line:
            raise AssertionError("NBD client died: %s" % (
                self.p.stderr.read().decode(errors="replace")[-2000:],))
        return json.loads(line)

    def do(self, line, timeout=60.0):
        self.send(line)
        return self.reply(timeout)

    def ok(self, line, timeout=60.0):
        out = self.do(line, timeout)
        if not out["ok"]:
            raise AssertionError("%s: %s" % (line, out))
        return out

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
