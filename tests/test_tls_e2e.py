"""
End-to-end TLS: real daemons, real clients, certificates made here.

  - NBD STARTTLS with TLS required: nbdinfo (libnbd C{nbds+unix://...
    ?tls-certificates=DIR}) and qemu-img / qemu-io (C{--object
    tls-creds-x509}) get through; a plain client gets ERR_TLS_REQD; a
    client that does not trust our CA gives up;
  - NBD with client certificates and an allow-list;
  - DMSG over mutual TLS between two daemons on loopback TCP, and
    importers whose certificate is refused (not on the allow-list, from
    another CA, none at all).
"""

import os
import socket
import struct

from twisted.trial.unittest import SynchronousTestCase

from bench.common import freePort
from tests.certs import PKI
from tests.daemons import Daemon, requireTools, run, waitNBD, waitURI

MiB = 1 << 20


def tlsURI(sock, certDir, name="xa0"):
    return "nbds+unix:///%s?socket=%s&tls-certificates=%s" % (
        name, sock, certDir)


def waitTLS(sock, certDir, timeout=20.0):
    """Wait until xa0 answers nbdinfo over TLS; return its size."""
    return waitURI(tlsURI(sock, certDir), sock, timeout)


def qemuTLS(tool, sock, certDir, *args):
    """
    C{qemu-img SUBCOMMAND ...} / C{qemu-io ...} over STARTTLS with creds
    from C{certDir}: C{args[0]} is qemu-img's subcommand.
    """
    head = [tool, args[0]] if tool == "qemu-img" else [tool]
    rest = list(args[1:] if tool == "qemu-img" else args)
    return head + [
        "--object",
        "tls-creds-x509,id=tls0,dir=%s,endpoint=client" % (certDir,),
        ] + rest + [
        "--image-opts",
        "driver=nbd,path=%s,export=xa0,tls-creds=tls0,"
        "tls-hostname=localhost" % (sock,)]




class _PKIMixin:
    """A fresh PKI per test (EC keys: a few milliseconds)."""

    @property
    def pki(self):
        pki = self.__dict__.get("_pki")
        if pki is None:
            pki = self._pki = PKI()
            self.addCleanup(pki.cleanup)
        return pki


class NBDRequiredTLSTests(_PKIMixin, SynchronousTestCase):
    """--nbd-tls require, server certificate only."""

    def setUp(self):
        requireTools()
        p = self.pki
        self.d = Daemon(self, "node", [])
        img = os.path.join(self.d.dir, "disk.img")
        self.img = img
        self.sock = os.path.join(self.d.dir, "nbd.sock")
        dmsg = os.path.join(self.d.dir, "dmsg.sock")
        self.d.args += [
            "--image", img + "=64M", "--export", "serno/TLS=" + img,
            "--listen", "unix:" + dmsg, "--connect", "unix:" + dmsg,
            "--nbd", "unix:" + self.sock, "--nbd-tls", "require",
            "--tls-cert", p.server, "--tls-key", p.serverKey]
        self.d.start()
        self.certs = os.path.join(self.d.dir, "certs")
        if not os.path.exists(self.certs):
            os.mkdir(self.certs)
            os.symlink(p.ca, os.path.join(self.certs, "ca-cert.pem"))
        self.assertEqual(waitTLS(self.sock, self.certs), 64 * MiB)

    def test_nbdinfo(self):
        out = run(["nbdinfo", tlsURI(self.sock, self.certs)]).stdout
        self.assertIn(b"export-size: 67108864", out)
        self.assertIn(b"description: serno/TLS", out)
        # The listener is private and says so.
        self.assertEqual(os.stat(self.sock).st_mode & 0o777, 0o600)
        self.assertTrue(os.path.lexists(self.sock + ".lock"))
        self.d.waitLog("NBD listening on unix:%s:mode=600:lockfile=1 "
                       "(UNIX socket" % (self.sock,))

    def test_qemuImgAndIo(self):
        out = run(qemuTLS("qemu-img", self.sock, self.certs, "info",
                          "--output=json")).stdout
        self.assertIn(b'"virtual-size": 67108864', out)
        out = run(qemuTLS("qemu-io", self.sock, self.certs,
                          "-c", "write -P 0x5a 1M 64k",
                          "-c", "read -P 0x5a 1M 64k")).stdout
        self.assertNotIn(b"Pattern verification failed", out)
        with open(self.img, "rb") as f:
            f.seek(MiB)
            self.assertEqual(f.read(65536), b"\x5a" * 65536)

    def test_plainClientRefused(self):
        """
        TLS required: plain clients get NBD_REP_ERR_TLS_REQD and fail
        (libnbd 1.14 reports it as "Operation not supported", qemu names
        TLS and shows our message).
        """
        p = run(["nbdinfo", "nbd+unix:///xa0?socket=" + self.sock],
                check=False)
        self.assertNotEqual(p.returncode, 0)
        p = run(["qemu-img", "info", "nbd+unix:///xa0?socket=" + self.sock],
                check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"TLS negotiation required", p.stderr)
        self.assertIn(b"TLS is required; send NBD_OPT_STARTTLS", p.stderr)
        # The reply itself, on the wire.
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(self.sock)
        self.assertEqual(len(s.recv(18)), 18)
        s.sendall(struct.pack(">I", 1) + b"IHAVEOPT" + struct.pack(
            ">II", 7, 9) + struct.pack(">I", 3) + b"xa0" + bytes(2))
        magic, option, kind, length = struct.unpack(">QIII", s.recv(20))
        s.close()
        self.assertEqual((option, kind), (7, 0x80000005))

    def test_clientTrustsAnotherCA(self):
        """qemu verifies our certificate and gives up."""
        d = self.pki.clientDir("rogue-%d" % (id(self),),
                               ca=self.pki.rogueCA)
        p = run(qemuTLS("qemu-img", self.sock, d, "info"), check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"hasn't got a known issuer", p.stderr)
        self.assertNotIn("Traceback", self.d.logText())


class NBDClientCertTests(_PKIMixin, SynchronousTestCase):
    """--nbd-tls require with client certificates and an allow-list."""

    def setUp(self):
        requireTools()
        p = self.pki
        self.d = Daemon(self, "node", [])
        img = os.path.join(self.d.dir, "disk.img")
        self.sock = os.path.join(self.d.dir, "nbd.sock")
        dmsg = os.path.join(self.d.dir, "dmsg.sock")
        self.d.args += [
            "--image", img + "=32M", "--export", "serno/MTLS=" + img,
            "--listen", "unix:" + dmsg, "--connect", "unix:" + dmsg,
            "--nbd", "unix:" + self.sock, "--nbd-tls", "require",
            "--tls-cert", p.server, "--tls-key", p.serverKey,
            "--tls-ca", p.ca, "--nbd-tls-allow", "importer1"]
        self.d.start()
        tag = str(id(self))
        self.good = p.clientDir("good" + tag, p.client, p.clientKey)
        self.intruder = p.clientDir("intr" + tag, p.intruder,
                                    p.intruderKey)
        self.rogue = p.clientDir("rogue" + tag, p.rogue, p.rogueKey)
        self.anonymous = p.clientDir("anon" + tag)
        self.assertEqual(waitTLS(self.sock, self.good), 32 * MiB)

    def test_clientCertificates(self):
        out = run(qemuTLS("qemu-img", self.sock, self.good, "info",
                          "--output=json")).stdout
        self.assertIn(b'"virtual-size": 33554432', out)
        for d in (self.intruder, self.rogue, self.anonymous):
            p = run(["nbdinfo", "--size", tlsURI(self.sock, d)], check=False)
            self.assertNotEqual(p.returncode, 0, d)
        self.d.waitLog("refusing TLS client: certificate subject "
                       "CN=intruder,O=xdiskd tests is not in the "
                       "allow-list")
        self.assertNotIn("Traceback", self.d.logText())


class DMSGMutualTLSTests(_PKIMixin, SynchronousTestCase):
    """Two daemons: exporter on tls:tcp (loopback), importers dialing."""

    def setUp(self):
        requireTools()
        p = self.pki
        self.exp = Daemon(self, "exporter", [])
        self.img = os.path.join(self.exp.dir, "disk.img")
        with open(self.img, "wb") as f:
            f.truncate(32 * MiB)
        self.port = freePort()
        self.exp.args += [
            "--no-import", "--export", "serno/DT=" + self.img,
            "--listen", "tls:tcp:%d:interface=127.0.0.1" % (self.port,),
            "--tls-cert", p.server, "--tls-key", p.serverKey,
            "--tls-ca", p.ca, "--tls-allow", "importer1"]
        self.exp.start()
        self.exp.waitLog("DMSG listening on tls:tcp:%d" % (self.port,))

    def importer(self, name, cert, key, ca=None, host="localhost"):
        d = Daemon(self, name, [])
        sock = os.path.join(d.dir, "nbd.sock")
        d.args += ["--connect", "tls:tcp:%s:%d" % (host, self.port),
                   "--tls-ca", ca or self.pki.ca, "--nbd", "unix:" + sock]
        if cert:
            d.args += ["--tls-cert", cert, "--tls-key", key]
        d.start()
        return d, sock

    def test_mutualTLS(self):
        """The unit arrives over mutual TLS; data goes both ways."""
        imp, sock = self.importer("imp", self.pki.client,
                                  self.pki.clientKey, host="127.0.0.1")
        self.assertEqual(waitNBD(sock), 32 * MiB)
        out = run(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 64k 64k",
                   "-c", "read -P 0x3c 64k 64k",
                   "nbd+unix:///xa0?socket=" + sock]).stdout
        self.assertNotIn(b"Pattern verification failed", out)
        with open(self.img, "rb") as f:
            f.seek(65536)
            self.assertEqual(f.read(65536), b"\x3c" * 65536)
        self.exp.waitLog("TLS up, peer CN=importer1,O=xdiskd tests")
        imp.waitLog("TLS up, peer CN=localhost,O=xdiskd tests")
        # TLS guarantees integrity: both offered to skip the aux CRC, and
        # the data above went that way.
        self.exp.waitLog("both ends skip the aux CRC")
        imp.waitLog("both ends skip the aux CRC")

    def test_refusedImporters(self):
        """Not on the allow-list, another CA, no certificate: no link."""
        p = self.pki
        intruder, s1 = self.importer("intruder", p.intruder, p.intruderKey)
        rogue, s2 = self.importer("rogue", p.rogue, p.rogueKey)
        anon, s3 = self.importer("anon", None, None)
        self.exp.waitLog("refusing TLS peer: certificate subject "
                         "CN=intruder,O=xdiskd tests is not in the "
                         "allow-list")
        for d in (intruder, rogue, anon):
            d.waitLog("disconnected")
        self.assertNotIn("LNK_CONN exchange complete", self.exp.logText())
        for d, s in ((intruder, s1), (rogue, s2), (anon, s3)):
            self.assertNotIn("new unit", d.logText())
            self.assertNotIn("Traceback", d.logText())
        self.assertNotIn("Traceback", self.exp.logText())


class NBDOptionalTLSTests(_PKIMixin, SynchronousTestCase):
    """--nbd-tls on: TLS offered, plain clients still served."""

    def test_both(self):
        requireTools()
        p = self.pki
        d = Daemon(self, "node", [])
        img = os.path.join(d.dir, "disk.img")
        sock = os.path.join(d.dir, "nbd.sock")
        dmsg = os.path.join(d.dir, "dmsg.sock")
        d.args += [
            "--image", img + "=16M", "--export", "serno/OPT=" + img,
            "--listen", "unix:" + dmsg, "--connect", "unix:" + dmsg,
            "--nbd", "unix:" + sock, "--nbd-tls", "on",
            "--tls-cert", p.server, "--tls-key", p.serverKey]
        d.start()
        self.assertEqual(waitNBD(sock), 16 * MiB)
        self.assertEqual(waitTLS(sock, p.clientDir("opt%d" % id(self))),
                         16 * MiB)
        self.assertNotIn("Traceback", d.logText())


class StartupErrorTests(_PKIMixin, SynchronousTestCase):
    def test_misconfigurationStopsTwistd(self):
        """twistd exits at once with the reason; nothing listens."""
        import subprocess
        from tests.daemons import REPO, TWISTD
        p = self.pki
        for args, needle in (
                (["--tls-cert", p.expired, "--tls-key", p.expiredKey],
                 b"expired on"),
                (["--tls-cert", p.server, "--tls-key", p.clientKey],
                 b"does not match certificate"),
                (["--tls-cert", p.server, "--tls-key", p.serverKey,
                  "--tls-ca", "/nonexistent/ca.pem"],
                 b"cannot read CA file /nonexistent/ca.pem")):
            out = subprocess.run(
                [TWISTD, "-n", "--pidfile=", "xdiskd", "--no-control",
                 "--state-dir", p.dir, "--listen", "tls:tcp:0"] + args,
                capture_output=True, timeout=60,
                env=dict(os.environ, PYTHONPATH=REPO))
            self.assertNotEqual(out.returncode, 0)
            self.assertIn(needle, out.stdout + out.stderr)
            self.assertNotIn(b"Traceback", out.stdout + out.stderr)
