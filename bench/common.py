"""
Shared helpers for the benchmarks: start xdiskd daemons and peers as
child processes on UNIX sockets in a scratch directory, time commands.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Proc:
    def __init__(self, name, cmd, env=None, cwd=None):
        self.name = name
        self.cmd = cmd
        self.log = open(os.path.join(cwd or "/tmp", name + ".log"), "ab")
        self.p = subprocess.Popen(cmd, env=env, cwd=cwd,
                                  stdin=subprocess.DEVNULL,
                                  stdout=self.log, stderr=self.log)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def cpuSeconds(self):
        """User+system CPU of the process so far (from /proc)."""
        try:
            with open("/proc/%d/stat" % self.p.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            tick = os.sysconf("SC_CLK_TCK")
            return (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            return 0.0

    def rssPeakKiB(self):
        try:
            with open("/proc/%d/status" % self.p.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0


def xdiskd(name, args, workdir, repo=REPO, prefix=(), env=None):
    """
    A daemon of the xdiskd in C{repo} (another tree for an A/B); C{prefix}
    runs it under e.g. C{ip netns exec NS}; C{env} adds environment
    variables (e.g. C{XDISKD_PURE=1}: the pure-Python build).
    """
    env = dict(os.environ, PYTHONPATH=repo, **(env or {}))
    state = os.path.join(workdir, name + ".state")
    os.makedirs(state, exist_ok=True)
    cmd = list(prefix) + [
        TWISTD, "-n", "--pidfile=", "--logfile=" + os.path.join(
            workdir, name + ".twistd.log"), "xdiskd", "--state-dir",
        state] + args
    return Proc(name, cmd, env, workdir)


def waitFor(cmd, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("not ready: %s" % (" ".join(cmd),))


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def freePort():
    """A free TCP port on 127.0.0.1 (for a daemon to listen on)."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sparseFile(path, mib):
    """A sparse file of C{mib} MiB at C{path}."""
    with open(path, "wb") as f:
        f.truncate(mib << 20)
    return path


def randomFile(path, mib):
    """A file of C{mib} MiB of random data (one random MiB repeated)."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
    return path


def scratch():
    d = tempfile.mkdtemp(prefix="xdbench-", dir="/tmp")
    return d


def cleanup(d):
    shutil.rmtree(d, True)
