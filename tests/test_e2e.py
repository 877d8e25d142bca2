"""
End-to-end tests: real daemons on UNIX sockets and real NBD clients
(nbdinfo, nbdcopy, qemu-img, qemu-io, nbdsh/libnbd).
"""

import hashlib
import os
import socket
import struct
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.daemons import (
    Daemon, nbdURI, nbdsh, requireTools, run, waitNBD)

MiB = 1 << 20


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class OneProcessTests(SynchronousTestCase):
    """Exporter and importer in one daemon, as in the demo."""

    def setUp(self):
        requireTools()
        self.d = Daemon(self, "node", [])
        self.img = os.path.join(self.d.dir, "disk.img")
        self.sock = os.path.join(self.d.dir, "nbd.sock")
        self.dmsg = os.path.join(self.d.dir, "dmsg.sock")
        self.d.args += [
            "--image", self.img + "=256M",
            "--export", "serno/E2E=" + self.img,
            "--listen", "unix:" + self.dmsg,
            "--connect", "unix:" + self.dmsg,
            "--nbd", "unix:" + self.sock]
        self.d.start()
        self.assertEqual(waitNBD(self.sock), 256 * MiB)
        self.uri = nbdURI(self.sock)

    def test_nbdinfo(self):
        """nbdinfo shows the export, size, block sizes and flags."""
        out = run(["nbdinfo", self.uri]).stdout.decode()
        for line in ("export-size: 268435456", "description: serno/E2E",
                     "block_size_minimum: 512",
                     "block_size_preferred: 4096",
                     "block_size_maximum: 33554432", "can_flush: true",
                     "can_trim: true", "can_multi_conn: true",
                     "is_read_only: false", "base:allocation"):
            self.assertIn(line, out)
        listing = run(["nbdinfo", "--list",
                       "nbd+unix:///?socket=" + self.sock]).stdout.decode()
        self.assertIn('export="xa0"', listing)
        self.assertIn("serno/E2E", listing)
        # The serial works as an export name too.
        self.assertEqual(waitNBD(self.sock, "serno/E2E"), 256 * MiB)

    def test_qemuImgInfo(self):
        out = run(["qemu-img", "info", "--output=json", "-f", "raw",
                   self.uri]).stdout.decode()
        self.assertIn('"virtual-size": 268435456', out)

    def test_nbdcopyRoundTrip(self):
        """64 MiB of random data written with nbdcopy and read back."""
        src = os.path.join(self.d.dir, "src")
        back = os.path.join(self.d.dir, "back")
        with open(src, "wb") as f:
            f.write(os.urandom(64 * MiB))
        run(["nbdcopy", src, self.uri])
        run(["nbdcopy", self.uri, back])
        with open(back, "rb") as f:
            got = f.read(64 * MiB)
        with open(src, "rb") as f:
            self.assertEqual(hashlib.sha256(got).hexdigest(),
                             hashlib.sha256(f.read()).hexdigest())
        # And the exported file holds it.
        with open(self.img, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read(64 * MiB)).hexdigest(),
                             sha(src))

    def test_qemuIo(self):
        """Patterns, unaligned 1-byte I/O, trim reading back zeros."""
        out = run(["qemu-io", "-f", "raw",
                   "-c", "write -P 0xab 1M 64k",
                   "-c", "read -P 0xab 1M 64k",
                   "-c", "write -P 0x11 3 1",
                   "-c", "read -P 0x11 3 1",
                   "-c", "read -P 0x00 0 3",
                   "-c", "write -P 0x22 1000001 7",
                   "-c", "read -P 0x22 1000001 7",
                   "-c", "discard 1M 64k",
                   "-c", "read -P 0 1M 64k",
                   self.uri]).stdout.decode()
        self.assertNotIn("Pattern verification failed", out)
        with open(self.img, "rb") as f:
            data = f.read(2 * MiB)
        self.assertEqual(data[3:4], b"\x11")
        self.assertEqual(data[1000001:1000008], b"\x22" * 7)
        self.assertEqual(data[MiB:MiB + 65536], bytes(65536))

    def test_libnbdStructuredAndConcurrent(self):
        """
        libnbd: structured replies and block status negotiated; 32
        concurrent commands in flight complete with the right data.
        """
        script = r"""
import os, sys
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
assert h.get_structured_replies_negotiated()
assert h.can_meta_context("base:allocation")
data = [os.urandom(65536) for i in range(32)]
cookies = [h.aio_pwrite(data[i], i * 65536) for i in range(32)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    assert h.aio_command_completed(c)
h.flush()
bufs = [nbd.Buffer(65536) for i in range(32)]
cookies = [h.aio_pread(bufs[i], (31 - i) * 65536) for i in range(32)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for i in range(32):
    assert bufs[i].to_bytearray() == data[31 - i], i
seen = []
def cb(metacontext, offset, entries, err):
    seen.append((metacontext, offset, list(entries)))
h.block_status(1 << 20, 0, cb)
assert seen and seen[0][0] == "base:allocation", seen
assert seen[0][2][0] >= 1 << 20 or sum(seen[0][2][0::2]) >= 1 << 20
print("ok", len(seen))
"""
        out = nbdsh(self.uri, script).stdout.decode()
        self.assertIn("ok", out)

    def test_multiConn(self):
        """Two connections write halves; flush on one; read on the other."""
        script = r"""
import sys
a = nbd.NBD(); a.connect_uri(sys.argv[1])
b = nbd.NBD(); b.connect_uri(sys.argv[1])
assert a.can_multi_conn()
a.pwrite(b"A" * 65536, 0)
b.pwrite(b"B" * 65536, 65536)
a.flush()
assert b.pread(131072, 0) == b"A" * 65536 + b"B" * 65536
assert a.pread(131072, 0) == b"A" * 65536 + b"B" * 65536
print("ok")
"""
        out = nbdsh(self.uri, script).stdout.decode()
        self.assertIn("ok", out)

    def _raw(self):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(self.sock)
        hello = b""
        while len(hello) < 18:
            hello += s.recv(18 - len(hello))
        self.assertEqual(hello[:16], b"NBDMAGICIHAVEOPT")
        return s

    def _recvAll(self, s):
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return data, False
            if not chunk:
                return data, True
            data += chunk

    def test_malformedClientsDoNotHurtOthers(self):
        """
        Bad client flags, bad option magic, truncated packets and bad
        request magic close that connection; the daemon keeps serving.
        """
        s = self._raw()
        s.sendall(struct.pack(">I", 0xFFFFFFFF))        # bad client flags
        self.assertTrue(self._recvAll(s)[1])
        s = self._raw()
        s.sendall(struct.pack(">I", 1) + b"NOTMAGIC" + bytes(8))
        self.assertTrue(self._recvAll(s)[1])
        s = self._raw()
        s.sendall(struct.pack(">I", 1) + b"IHAVEOPT" + bytes(3))
        s.close()                                     # truncated, gone
        s = self._raw()
        # EXPORT_NAME xa0 then a request with bad magic.
        s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" +
                  struct.pack(">II", 1, 3) + b"xa0")
        s.recv(10)
        s.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, 0, 1, 0, 512))
        self.assertTrue(self._recvAll(s)[1])
        s = self._raw()
        # Unknown option → ERR_UNSUP, and the handshake continues.
        s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" +
                  struct.pack(">II", 99, 0))
        rep = s.recv(20)
        magic, opt, kind, length = struct.unpack(">QIII", rep)
        self.assertEqual((magic, opt, kind), (0x3e889045565a9, 99,
                                              0x80000001))
        s.recv(length)
        # ...and the same connection can still LIST.
        s.sendall(b"IHAVEOPT" + struct.pack(">II", 3, 0))
        rep = s.recv(20)
        self.assertEqual(struct.unpack(">QIII", rep)[1:3], (3, 2))
        s.close()
        # A healthy client still works.
        out = run(["qemu-io", "-f", "raw", "-c", "read 0 4k",
                   self.uri]).stdout.decode()
        self.assertIn("read 4096/4096", out)
        self.assertNotIn("Traceback", self.d.logText())


class TwoProcessTests(SynchronousTestCase):
    """exporter daemon ← importer daemon ← NBD clients."""

    def setUp(self):
        requireTools()
        self.exp = Daemon(self, "exporter", [])
        self.img = os.path.join(self.exp.dir, "disk.img")
        self.dmsg = os.path.join(self.exp.dir, "dmsg.sock")
        with open(self.img, "wb") as f:
            f.truncate(256 * MiB)
        self.exp.args += ["--no-import", "--listen", "unix:" + self.dmsg,
                          "--export", "serno/TWO=" + self.img]
        self.exp.start()
        self.exp.waitLog("DMSG listening")
        self.imp = Daemon(self, "importer", [])
        self.sock = os.path.join(self.imp.dir, "nbd.sock")
        self.imp.args += ["--connect", "unix:" + self.dmsg,
                          "--nbd", "unix:" + self.sock]
        self.imp.start()
        waitNBD(self.sock)
        self.uri = nbdURI(self.sock)

    def test_unitLogged(self):
        """The importer logs xa0 with its size and serial."""
        self.imp.waitLog("xa0: new unit serial=serno/TWO "
                         "size=268435456 sector=512")
        self.exp.waitLog("LNK_CONN exchange complete")

    def test_auxCRCSkippedOverUNIX(self):
        """Two xdiskd daemons on a UNIX link agree to skip the aux CRC."""
        self.exp.waitLog("both ends skip the aux CRC")
        self.imp.waitLog("both ends skip the aux CRC")

    def test_exporterRestartedMidCopy(self):
        """
        The headline: the exporter is SIGKILLed and restarted during an
        nbdcopy; the copy finishes without error and the data matches.
        """
        import subprocess
        src = os.path.join(self.imp.dir, "src")
        with open(src, "wb") as f:
            f.write(os.urandom(192 * MiB))
        # A shallow queue keeps the copy long enough (well over a second
        # here) for the first kill to land in the middle of it.
        copy = subprocess.Popen(["nbdcopy", "--connections=1",
                                 "--requests=2", "--request-size=65536",
                                 src, self.uri], stderr=subprocess.PIPE)
        kills = 0
        deadline = time.monotonic() + 90
        time.sleep(0.05)
        while copy.poll() is None and time.monotonic() < deadline:
            if kills < 3:
                self.exp.kill()
                kills += 1
                time.sleep(0.5)
                self.assertIsNone(copy.poll(), "copy ended during outage")
                self.exp.start()
            time.sleep(0.2)
        err = copy.communicate(timeout=120)[1]
        self.assertEqual(copy.returncode, 0, err)
        self.assertGreater(kills, 0)
        with open(self.img, "rb") as f:
            got = hashlib.sha256(f.read(192 * MiB)).hexdigest()
        self.assertEqual(got, sha(src))
        # Read back through NBD too.
        back = os.path.join(self.imp.dir, "back")
        run(["nbdcopy", self.uri, back])
        with open(back, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read(192 * MiB)).hexdigest(),
                             sha(src))
        self.assertIn("re-opening", self.imp.logText())

    def test_disconnectWithReadsInFlight(self):
        """
        NBD clients that hang up with reads in flight (nbd-tester-client
        does): the exporter's late replies are dropped without a single
        protocol violation on either side, and the unit serves the next
        client.
        """
        nbdsh(self.uri, "\n".join([
            "uri = sys.argv[1]",
            "for _ in range(5):",
            "    h = nbd.NBD()",
            "    h.connect_uri(uri)",
            "    bufs = [nbd.Buffer(1 << 20) for i in range(32)]",
            "    for i, b in enumerate(bufs):",
            "        h.aio_pread(b, i << 20)",
            "    h.poll(0)",
            "    del h"]))
        waitNBD(self.sock)
        p = run(["qemu-io", "-f", "raw", "-c", "read 0 1M", self.uri])
        self.assertIn(b"read 1048576/1048576", p.stdout)
        for d in (self.imp, self.exp):
            self.assertNotIn("violation", d.logText())
            self.assertNotIn("Traceback", d.logText())

    def test_readOnlyExport(self):
        """
        Issue 17, defect 2: a ,ro export imported is served read-only
        over NBD (nbdinfo: is_read_only true); writes fail at the client
        without reaching the file, and reads work.
        """
        import json
        self.exp.kill()
        self.exp.args[-1] = "serno/TWO=" + self.img + ",ro"
        self.exp.start()
        # The path is back (the first was added in setUp); nobody has
        # opened the unit since: ask with NBD_OPT_INFO first.
        deadline = time.monotonic() + 20
        while self.imp.logText().count("xa0: path added via") < 2:
            self.assertLess(time.monotonic(), deadline, self.imp.logText())
            time.sleep(0.05)
        p = run(["/usr/bin/python3", "-c", "\n".join([
            "import nbd, sys",
            "h = nbd.NBD()",
            "h.set_opt_mode(True)",
            "h.connect_uri(sys.argv[1])",
            "h.set_export_name('xa0')",
            "h.opt_info()",
            "print('ro', h.is_read_only(), 'trim', h.can_trim())",
            "h.opt_abort()"]), self.uri])
        self.assertEqual(p.stdout.split(), [b"ro", b"True", b"trim", b"False"])
        info = json.loads(run(["nbdinfo", "--json", self.uri]).stdout)
        [export] = info["exports"]
        self.assertIs(export["is_read_only"], True)
        self.assertNotIn("can_trim", [k for k, v in export.items()
                                      if v is True])
        p = run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4k",
                 self.uri], check=False)
        text = (p.stdout + p.stderr).decode()
        self.assertNotEqual(p.returncode, 0, text)
        self.assertNotIn("wrote 4096/4096", text)
        with open(self.img, "rb") as f:
            self.assertEqual(f.read(4096), bytes(4096))
        run(["qemu-io", "-f", "raw", "-r", "-c", "read -P 0 0 4k",
             self.uri])
        self.imp.waitLog("refuses write access to serno/TWO; opening it "
                         "read-only")


class DaemonLifecycleTests(SynchronousTestCase):
    def test_listenAcceptsAndStopsCleanly(self):
        """
        twistd -n xdiskd --listen unix:... starts, completes the LNK_CONN
        exchange with a peer, and stops cleanly on Ctrl-C.
        """
        a = Daemon(self, "a", [])
        sock = os.path.join(a.dir, "x.sock")
        a.args += ["--no-nbd", "--listen", "unix:" + sock]
        a.start()
        a.waitLog("DMSG listening")
        self.assertEqual(oct(os.stat(sock).st_mode & 0o777), "0o600")
        b = Daemon(self, "b", ["--no-nbd", "--connect", "unix:" + sock])
        b.start()
        a.waitLog("LNK_CONN exchange complete")
        b.waitLog("LNK_CONN exchange complete")
        # twistd stops on SIGINT, then exits by that signal (-2).
        self.assertIn(a.stop(), (0, -2))
        a.waitLog("Server Shut Down.")
        b.waitLog("disconnected")
        self.assertIn(b.stop(), (0, -2))
        self.assertNotIn("Traceback", a.logText() + b.logText())

    def test_badExportIsStartupError(self):
        """A missing path is a clear start-up error."""
        import subprocess
        from tests.daemons import REPO, TWISTD
        p = subprocess.run(
            [TWISTD, "-n", "--pidfile=",
             "xdiskd", "--export", "x=/nonexistent/disk.img"],
            capture_output=True, timeout=60,
            env=dict(os.environ, PYTHONPATH=REPO))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"/nonexistent/disk.img", p.stdout + p.stderr)
