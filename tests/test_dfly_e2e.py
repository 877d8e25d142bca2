"""
End to end over C{dfly:tcp:} on loopback: real twistd daemons with key
directories in DragonFly's layout, a real NBD client through the
importer, and peers that get it wrong (wrong key, no key, C{.none} on one
side only, corrupted and truncated streams from a raw peer), each of
which must close only its own link, with a clear log line, while the
good link keeps working.

Peers are told apart by source address (C{bindAddress=127.0.0.N}), as
DragonFly tells them apart.
"""

import os
import socket
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from bench.common import freePort
from tests.daemons import REPO, TWISTD, Daemon, requireTools, run, waitNBD
from tests.dflykeys import keyDir, rsaKey
from xdiskd.dfly import handshake as H, stream
from xdiskd.dfly.keys import KeyDirectory
from xdiskd.dmsg.wire import Encoder, LnkConn, Message

MiB = 1 << 20


def rawPeer(case, port, ip, name, fmt):
    """
    A Python peer from C{ip} that runs the negotiation with key C{name}
    (forcing C{fmt}) against the exporter and returns (socket,
    Established).
    """
    keys = KeyDirectory(keyDir(case, name, peers=[("127.0.0.1", "A")]))
    keys.load()
    s = socket.create_connection(("127.0.0.1", port), 10,
                                 source_address=(ip, 0))
    case.addCleanup(s.close)
    neg = H.Negotiation(keys.own.private, keys.decide("127.0.0.1").peer,
                        fmt)
    s.sendall(neg.start())      # names fmt as what it sends
    neg.fmt = "auto"            # and takes what the exporter sends
    est = None
    while est is None:
        data = s.recv(4096)
        if not data:
            raise AssertionError("exporter closed during the negotiation")
        est = neg.receive(data)
    sess = bytes(neg._block[0x10:0x50])
    est.tx = stream.sender(fmt, sess[:32], sess[32:36])
    return s, est


def waitClosed(sock, timeout=15.0):
    """Read until EOF or reset (the peer closed); True if in time."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


class DFlyDaemonTests(SynchronousTestCase):
    """An exporter listening on dfly:tcp, importers dialing it."""

    def setUp(self):
        requireTools("qemu-io", "nbdinfo", "nbdcopy")
        self.port = freePort()
        for n in "ABCDEFG":
            rsaKey(n)
        # The exporter (127.0.0.1): B at .2 is right; it holds C's key
        # for .3 (whose importer uses D); nothing for .4; .none for .5;
        # E for raw peers from .6, F (format U) from .7.
        self.keysA = keyDir(self, "A", peers=[
            ("127.0.0.2", "B"), ("127.0.0.3", "C"), ("127.0.0.6", "E"),
            ("127.0.0.7", "F")], none=["127.0.0.5"])
        self.exp = Daemon(self, "exporter", [])
        self.img = os.path.join(self.exp.dir, "disk.img")
        with open(self.img, "wb") as f:
            f.truncate(32 * MiB)
        self.exp.args += [
            "--no-import", "--export", "serno/DF=" + self.img,
            "--listen", "dfly:tcp:%d:interface=127.0.0.1" % (self.port,),
            "--dfly-dir", self.keysA]
        self.exp.start()
        self.exp.waitLog("DMSG listening on dfly:tcp:%d" % (self.port,))

    def importer(self, name, key, ip, extra=()):
        d = Daemon(self, name, [])
        sock = os.path.join(d.dir, "nbd.sock")
        keys = keyDir(self, key, peers=[("127.0.0.1", "A")])
        d.args += ["--connect", "dfly:tcp:host=127.0.0.1:port=%d:"
                   "bindAddress=%s" % (self.port, ip),
                   "--dfly-dir", keys, "--nbd", "unix:" + sock] + list(extra)
        d.start()
        return d, sock

    def assertClean(self, *daemons):
        for d in daemons:
            self.assertNotIn("Traceback", d.logText())
            self.assertNotIn("Unhandled", d.logText())

    def test_roundTrip(self):
        """The unit arrives over the encrypted link; a real NBD client
        writes and reads it back; the exporter's file has the data."""
        imp, sock = self.importer("imp", "B", "127.0.0.2")
        self.assertEqual(waitNBD(sock), 32 * MiB)
        src = os.path.join(imp.dir, "src.bin")
        with open(src, "wb") as f:
            f.write(os.urandom(4 * MiB))
        uri = "nbd+unix:///xa0?socket=" + sock
        run(["nbdcopy", src, uri])
        back = os.path.join(imp.dir, "back.bin")
        run(["nbdcopy", uri, back])
        with open(src, "rb") as f:
            data = f.read()
        with open(back, "rb") as f:
            self.assertEqual(f.read(4 * MiB), data)
        with open(self.img, "rb") as f:
            self.assertEqual(f.read(4 * MiB), data)
        out = run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 8M 1M",
                   "-c", "read -P 0x5a 8M 1M", uri]).stdout
        self.assertNotIn(b"Pattern verification failed", out)
        self.exp.waitLog("dfly 127.0.0.2:")
        self.assertIn("encrypted link up (sending format U, receiving U; "
                      "peer says 'xdiskd U')", self.exp.logText())
        imp.waitLog("dfly 127.0.0.1:%d: encrypted link up" % (self.port,))
        self.assertClean(self.exp, imp)

    def test_badPeersCloseOnlyTheirLinks(self):
        """Wrong key, no key, .none on one side, bad tag, corrupted U and
        a truncated stream: each link closed with its own line; the good
        importer's unit keeps working throughout."""
        good, sock = self.importer("good", "B", "127.0.0.2")
        self.assertEqual(waitNBD(sock), 32 * MiB)
        wrong, _ = self.importer("wrong", "D", "127.0.0.3")
        nokey, _ = self.importer("nokey", "G", "127.0.0.4")
        plain, _ = self.importer("plain", "G", "127.0.0.5")
        self.exp.waitLog("dfly 127.0.0.3:")
        self.exp.waitLog("refused: no key for peer 127.0.0.4 (looked for "
                         "%s/remote/127.0.0.4.pub and %s/remote/127.0.0.4"
                         ".none)" % (self.keysA, self.keysA))
        self.exp.waitLog("dfly 127.0.0.3:")
        wrong.waitLog("negotiation failed:")
        nokey.waitLog("negotiation failed: closed by the peer before its "
                      "handshake")
        self.exp.waitLog("plain DMSG, nothing negotiated (%s/remote/"
                         "127.0.0.5.none)" % (self.keysA,))
        plain.waitLog("negotiation failed: closed by the peer after 384 "
                      "of 512 handshake bytes")
        self.assertIn("which look like plain DMSG: it has a .none file for "
                      "us", plain.logText())
        text = self.exp.logText()
        self.assertIn("framing error, closing: BadMagicError", text)
        wrongLines = [line for line in text.splitlines()
                      if "dfly 127.0.0.3:" in line]
        self.assertTrue(wrongLines)
        self.assertIn("closing: negotiation failed: peer's handshake",
                      wrongLines[0])

        # Raw peers with the right keys, then bad stream data.
        s, est = rawPeer(self, self.port, "127.0.0.6", "E", "T")
        s.sendall(os.urandom(80))
        self.assertTrue(waitClosed(s))
        self.exp.waitLog("dfly 127.0.0.6:%d: closing: format T: bad tag on "
                         "chunk 0 (stream byte 0)" % (s.getsockname()[1],))

        s, est = rawPeer(self, self.port, "127.0.0.6", "E", "T")
        conn = Encoder().encode(Message(0x80001106, 1, ext=LnkConn()))
        wire = est.tx.update(b"".join(conn))
        s.sendall(wire[:100])
        s.close()
        self.exp.waitLog("stream ended inside a chunk (20 bytes of an "
                         "incomplete one): truncated")

        s, est = rawPeer(self, self.port, "127.0.0.7", "F", "U")
        s.sendall(est.tx.update(b"\x33" * 64))
        self.assertTrue(waitClosed(s))
        self.exp.waitLog("framing error, closing: BadMagicError: bad magic "
                         "0x3333")

        out = run(["qemu-io", "-f", "raw", "-c", "write -P 0x77 1M 64k",
                   "-c", "read -P 0x77 1M 64k",
                   "nbd+unix:///xa0?socket=" + sock]).stdout
        self.assertNotIn(b"Pattern verification failed", out)
        self.assertEqual(good.logText().count("disconnected"), 0)
        self.assertClean(self.exp, good, wrong, nokey, plain)


class StartupTests(SynchronousTestCase):
    def test_missingKeyStopsTwistd(self):
        """No rsa.prv: twistd exits at once with one line, no Traceback."""
        d = keyDir(self, "A")
        os.unlink(os.path.join(d, "rsa.prv"))
        out = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "xdiskd", "--no-control",
             "--state-dir", d, "--listen", "dfly:tcp:0", "--dfly-dir", d],
            capture_output=True, timeout=60,
            env=dict(os.environ, PYTHONPATH=REPO))
        self.assertNotEqual(out.returncode, 0)
        self.assertIn(b"dfly: private key %s/rsa.prv does not exist" % (
            d.encode(),), out.stdout + out.stderr)
        self.assertNotIn(b"Traceback", out.stdout + out.stderr)
