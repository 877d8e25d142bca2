"""
Test helper: a two-host network test bed for silent network failures.

Two network namespaces, an exporter host and an importer host, joined by
N veth pairs, one per path: path k has the exporter at 10.201.k.1 and the
importer at 10.201.k.2 (addresses only inside these namespaces, which the
test makes and removes).  Faults are made with iptables (nf_tables) and
ip link, as an admin would see them in a real network:

  - L{blackhole}: every packet on the path dropped, both ways (a switch
    or host that stops answering, a firewall);
  - L{carrierDown}: the importer's interface down (a cable pulled);
  - L{loss}: random loss (iptables C{-m statistic}) both ways;
  - L{dropLarge}: packets above a size dropped both ways (an MTU black
    hole: small packets, such as TCP keepalive probes, still pass).

Daemons run in a namespace through C{ip netns exec}; their NBD and control
sockets are UNIX sockets in the file system, which any namespace reaches.
Needs root and a kernel that allows namespaces; otherwise the tests skip
with the reason the kernel or tool gave.
"""

import os
import shutil
import subprocess

from twisted.trial.unittest import SkipTest

PORT = 9870


def _run(*cmd):
    p = subprocess.run(cmd, capture_output=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd),
                                       p.stderr.decode(errors="replace")))
    return p


class NetBed:
    """
    The test bed, torn down in the test's cleanup.

    @ivar exporterNS: the exporter host's namespace.
    @ivar importerNS: the importer host's namespace.
    """

    def __init__(self, case, paths=2):
        if os.geteuid() != 0:
            raise SkipTest("network namespaces need root")
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                raise SkipTest("%s is missing (scripts/setup installs "
                               "iproute2 and iptables)" % (tool,))
        tag = "x15%d" % (os.getpid() % 100000,)
        self.exporterNS = tag + "e"
        self.importerNS = tag + "i"
        self.paths = paths
        self._rules = []
        case.addCleanup(self.destroy)
        try:
            for ns in (self.exporterNS, self.importerNS):
                subprocess.run(["ip", "netns", "del", ns],
                               capture_output=True)
                _run("ip", "netns", "add", ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            for k in range(1, paths + 1):
                _run("ip", "-n", self.exporterNS, "link", "add", "e%d" % k,
                     "type", "veth", "peer", "name", "i%d" % k, "netns",
                     self.importerNS)
                for ns, side, host in ((self.exporterNS, "e", 1),
                                       (self.importerNS, "i", 2)):
                    _run("ip", "-n", ns, "addr", "add",
                         "%s/24" % (self.address(k, host),), "dev",
                         "%s%d" % (side, k))
                    _run("ip", "-n", ns, "link", "set", "%s%d" % (side, k),
                         "up")
            # A rule that the kernel refuses shows up now, as a skip.
            self._iptables(self.exporterNS, "-L", "-n")
        except RuntimeError as e:
            self.destroy()
            raise SkipTest("the kernel refused the test bed: %s" % (e,))

    @staticmethod
    def address(path, host):
        """Path C{path}'s address on host 1 (exporter) or 2 (importer)."""
        return "10.201.%d.%d" % (path, host)

    def listenArgs(self):
        """C{--listen} for every path, on the exporter's addresses."""
        args = []
        for k in range(1, self.paths + 1):
            args += ["--listen", "tcp:%d:interface=%s" % (
                PORT, self.address(k, 1))]
        return args

    def connectArgs(self, paths=None):
        args = []
        for k in paths or range(1, self.paths + 1):
            args += ["--connect", self.endpoint(k)]
        return args

    def endpoint(self, path):
        return "tcp:%s:%d" % (self.address(path, 1), PORT)

    def pathOf(self, text):
        """The path number whose exporter address appears in C{text}."""
        for k in range(1, self.paths + 1):
            if self.address(k, 1) in text:
                return k
        raise ValueError("no path address in %r" % (text,))

    def prefix(self, ns):
        return ["ip", "netns", "exec", ns]

    # ---------------------------------------------------------------
    # Faults (each undone by L{restore}, or at teardown)

    def _iptables(self, ns, *rule):
        return _run("ip", "netns", "exec", ns, "iptables", *rule)

    def _both(self, path, *match):
        """Add DROP rules matching C{match} on both ends of C{path}."""
        for ns, dev in ((self.exporterNS, "e%d" % path),
                        (self.importerNS, "i%d" % path)):
            for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
                rule = (chain, flag, dev) + match + ("-j", "DROP")
                self._iptables(ns, "-I", *rule)
                self._rules.append((ns, rule))

    def blackhole(self, path):
        self._both(path)

    def loss(self, path, probability):
        """
        Drop C{probability} of the packets each way, on the importer's
        end only (on both ends a packet would cross two rules).
        """
        dev = "i%d" % path
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            rule = (chain, flag, dev, "-m", "statistic", "--mode", "random",
                    "--probability", "%g" % (probability,), "-j", "DROP")
            self._iptables(self.importerNS, "-I", *rule)
            self._rules.append((self.importerNS, rule))

    def dropLarge(self, path, above=1000):
        self._both(path, "-m", "length", "--length", "%d:65535" % (above,))

    def carrierDown(self, path):
        _run("ip", "-n", self.importerNS, "link", "set", "i%d" % path,
             "down")

    def carrierUp(self, path):
        _run("ip", "-n", self.importerNS, "link", "set", "i%d" % path, "up")

    def restore(self):
        """Remove every DROP rule added so far."""
        rules, self._rules = self._rules, []
        for ns, rule in reversed(rules):
            self._iptables(ns, "-D", *rule)

    def destroy(self):
        for ns in (self.exporterNS, self.importerNS):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
