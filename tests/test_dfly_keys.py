"""
Key files in DragonFly's layout (xdiskd.dfly.keys): what loads, what is
refused with which message, the per-peer decision of dmsg-crypto.md
§2.3, and xdisk rsainit / rsashow.
"""

import io
import os
import stat
import subprocess

from cryptography.hazmat.primitives import serialization
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from xdiskd import cli
from xdiskd.dfly import keys as K
from tests.dflykeys import keyDir, privatePEM, publicPEM, rsaKey, write


class LoadTests(SynchronousTestCase):
    def test_ownPair(self):
        d = keyDir(self, "A")
        own = K.loadOwn(d)
        self.assertEqual(own.private.bits, 2048)
        self.assertEqual(own.public.n, rsaKey("A").public_key()
                         .public_numbers().n)
        self.assertTrue(own.pem.startswith(b"-----BEGIN PUBLIC KEY-----"))

    def test_pkcs8PrivateAccepted(self):
        """OpenSSL 3's genrsa writes PKCS#8 'PRIVATE KEY' (§2.4)."""
        d = keyDir(self, "A")
        write(os.path.join(d, "rsa.prv"), privatePEM(rsaKey("A"), True))
        K.loadOwn(d)

    def test_pkcs1PublicRefused(self):
        """libdmsg reads only 'PUBLIC KEY'; say so, with the fix."""
        d = keyDir(self, "A")
        write(os.path.join(d, "rsa.pub"), rsaKey("A").public_key()
              .public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.PKCS1))
        e = self.assertRaises(K.DFlyKeyError, K.loadOwn, d)
        self.assertIn("PKCS#1 'RSA PUBLIC KEY'", str(e))
        self.assertIn("-RSAPublicKey_in", str(e))

    def test_encryptedPrivateRefused(self):
        d = keyDir(self, "A")
        write(os.path.join(d, "rsa.prv"), rsaKey("A").private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"pw")))
        e = self.assertRaises(K.DFlyKeyError, K.loadOwn, d)
        self.assertIn("is encrypted", str(e))

    def test_missing(self):
        d = keyDir(self, "A")
        os.unlink(os.path.join(d, "rsa.prv"))
        e = self.assertRaises(K.DFlyKeyError, K.loadOwn, d)
        self.assertIn("rsa.prv does not exist", str(e))

    def test_garbage(self):
        d = keyDir(self, "A")
        write(os.path.join(d, "rsa.pub"), b"hello")
        e = self.assertRaises(K.DFlyKeyError, K.loadOwn, d)
        self.assertIn("holds no PEM 'PUBLIC KEY'", str(e))

    def test_pairMismatch(self):
        """rsa.pub must be rsa.prv's: peers are given rsa.pub."""
        d = keyDir(self, "A")
        write(os.path.join(d, "rsa.pub"), publicPEM(rsaKey("B")))
        e = self.assertRaises(K.DFlyKeyError, K.loadOwn, d)
        self.assertIn("is not the public key of", str(e))

    def test_1024Refused(self):
        d = keyDir(self, "A")
        write(os.path.join(d, "rsa.prv"), privatePEM(rsaKey("S", 1024)))
        e = self.assertRaises(K.DFlyKeyError, K.loadOwn, d)
        self.assertIn("1024-bit RSA key", str(e))

    def test_badRemoteKeyAtStart(self):
        """Every remote/*.pub present at start-up is checked."""
        d = keyDir(self, "A", peers=[("10.0.0.1", "B")])
        write(os.path.join(d, "remote", "10.0.0.2.pub"), b"junk")
        e = self.assertRaises(K.DFlyKeyError, K.KeyDirectory(d).load)
        self.assertIn("10.0.0.2.pub", str(e))

    def test_remoteSizeMismatchAtStart(self):
        d = keyDir(self, "A")
        write(os.path.join(d, "remote", "10.0.0.3.pub"),
              publicPEM(rsaKey("B4", 4096)))
        e = self.assertRaises(K.DFlyKeyError, K.KeyDirectory(d).load)
        self.assertIn("4096 bits but ours", str(e))


class DecideTests(SynchronousTestCase):
    def setUp(self):
        self.d = keyDir(self, "A", peers=[("10.0.0.1", "B"),
                                          ("10.0.0.9", "C")],
                        none=["10.0.0.2", "10.0.0.9"])
        self.keys = K.KeyDirectory(self.d).load()

    def test_pub(self):
        got = self.keys.decide("10.0.0.1")
        self.assertIsInstance(got, K.Encrypted)
        self.assertEqual(got.peer.n, rsaKey("B").public_key()
                         .public_numbers().n)

    def test_none(self):
        got = self.keys.decide("10.0.0.2")
        self.assertEqual(got, K.Plain(os.path.join(
            self.d, "remote", "10.0.0.2.none")))

    def test_pubBeatsNone(self):
        self.assertIsInstance(self.keys.decide("10.0.0.9"), K.Encrypted)

    def test_neither(self):
        """One line naming both files looked for."""
        got = self.keys.decide("10.0.0.3")
        self.assertEqual(got, K.Refused(
            "no key for peer 10.0.0.3 (looked for %s and %s)" % (
                os.path.join(self.d, "remote", "10.0.0.3.pub"),
                os.path.join(self.d, "remote", "10.0.0.3.none"))))

    def test_rereadPerConnection(self):
        """A peer added after start-up is found; a bad one refused."""
        write(os.path.join(self.d, "remote", "10.0.0.4.pub"),
              publicPEM(rsaKey("C")))
        self.assertIsInstance(self.keys.decide("10.0.0.4"), K.Encrypted)
        write(os.path.join(self.d, "remote", "10.0.0.5.pub"), b"junk")
        got = self.keys.decide("10.0.0.5")
        self.assertIsInstance(got, K.Refused)
        self.assertIn("10.0.0.5.pub holds no PEM", got.why)

    def test_mappedIPv6(self):
        """An IPv4-mapped IPv6 peer is looked up by its IPv4 address."""
        self.assertIsInstance(self.keys.decide("::ffff:10.0.0.1"),
                              K.Encrypted)

    def test_notNumeric(self):
        got = self.keys.decide("dchost.test")
        self.assertIsInstance(got, K.Refused)
        self.assertIn("not numeric", got.why)

    def test_noPathTricks(self):
        """A peer name can never reach outside remote/."""
        self.assertIsInstance(self.keys.decide("../rsa"), K.Refused)


class RSAInitTests(SynchronousTestCase):
    def setUp(self):
        import shutil
        import tempfile
        self.top = tempfile.mkdtemp(prefix="i20r-")
        self.addCleanup(shutil.rmtree, self.top)
        self.dir = os.path.join(self.top, "hammer2")

    def mode(self, name):
        return stat.S_IMODE(os.stat(os.path.join(self.dir, name)).st_mode)

    def test_creates(self):
        """Directory 0700, rsa.prv 0600 as RSA PRIVATE KEY, rsa.pub."""
        done = K.rsainit(self.dir)
        self.assertIn("created %s/rsa.prv (2048-bit RSA, mode 0600)" % (
            self.dir,), done)
        self.assertEqual(self.mode("."), 0o700)
        self.assertEqual(self.mode("rsa.prv"), 0o600)
        self.assertEqual(self.mode("remote"), 0o700)
        with open(os.path.join(self.dir, "rsa.prv"), "rb") as f:
            self.assertTrue(f.read().startswith(
                b"-----BEGIN RSA PRIVATE KEY-----"))
        K.KeyDirectory(self.dir).load()

    def test_neverOverwrites(self):
        K.rsainit(self.dir)
        before = {n: open(os.path.join(self.dir, n), "rb").read()
                  for n in ("rsa.prv", "rsa.pub")}
        done = K.rsainit(self.dir)
        self.assertIn("both keys already exist", done)
        for n, data in before.items():
            with open(os.path.join(self.dir, n), "rb") as f:
                self.assertEqual(f.read(), data)

    def test_derivesMissingPublic(self):
        K.rsainit(self.dir)
        prv = open(os.path.join(self.dir, "rsa.prv"), "rb").read()
        os.unlink(os.path.join(self.dir, "rsa.pub"))
        K.rsainit(self.dir)
        self.assertEqual(open(os.path.join(self.dir, "rsa.prv"), "rb")
                         .read(), prv)
        K.loadOwn(self.dir)

    def test_publicWithoutPrivate(self):
        K.rsainit(self.dir)
        os.unlink(os.path.join(self.dir, "rsa.prv"))
        e = self.assertRaises(K.DFlyKeyError, K.rsainit, self.dir)
        self.assertIn("exists without", str(e))

    def test_opensslReadsIt(self):
        """The files are what OpenSSL (and so libdmsg) reads."""
        K.rsainit(self.dir)
        for args in (["rsa", "-in", "rsa.prv", "-check", "-noout"],
                     ["pkey", "-pubin", "-in", "rsa.pub", "-noout"]):
            p = subprocess.run(["openssl"] + args, cwd=self.dir,
                               capture_output=True)
            self.assertEqual(p.returncode, 0, p.stderr)

    def test_cli(self):
        """xdisk rsainit DIR and xdisk rsashow DIR (no daemon)."""
        out, err = io.StringIO(), io.StringIO()
        args = cli.parser().parse_args(["rsainit", self.dir])
        self.assertEqual(cli.runKeys(args, out, err), 0)
        self.assertIn("created %s/rsa.pub" % (self.dir,), out.getvalue())
        out, err = io.StringIO(), io.StringIO()
        args = cli.parser().parse_args(["rsashow", self.dir])
        self.assertEqual(cli.runKeys(args, out, err), 0)
        with open(os.path.join(self.dir, "rsa.pub")) as f:
            self.assertEqual(out.getvalue(), f.read())
        self.assertIn("2048-bit RSA, SHA-256 ", err.getvalue())
        self.assertIn("remote/<this host's IP", err.getvalue())

    def test_cliMissing(self):
        out, err = io.StringIO(), io.StringIO()
        args = cli.parser().parse_args(["rsashow", self.dir])
        self.assertEqual(cli.runKeys(args, out, err), cli.EXIT_FAILED)
        self.assertIn("rsa.prv does not exist", err.getvalue())
        self.assertEqual(out.getvalue(), "")


class OptionsTests(SynchronousTestCase):
    def parse(self, *args):
        from xdiskd.options import Options
        o = Options()
        o.parseOptions(["--no-control", "--state-dir", "/tmp"] + list(args))
        return o

    def test_loadedWithDflyEndpoint(self):
        d = keyDir(self, "A", peers=[("127.0.0.1", "B")])
        o = self.parse("--listen", "dfly:tcp:0", "--dfly-dir", d)
        self.assertEqual(o["dfly"].own.private.bits, 2048)

    def test_notLoadedWithout(self):
        o = self.parse("--dfly-dir", "/nonexistent")
        self.assertIsNone(o["dfly"])

    def test_missingKeyIsUsageError(self):
        e = self.assertRaises(usage.UsageError, self.parse, "--listen",
                              "dfly:tcp:0", "--dfly-dir", "/nonexistent")
        self.assertEqual(str(e), "dfly: private key /nonexistent/rsa.prv "
                         "does not exist")

    def test_connectWithoutPeerFile(self):
        d = keyDir(self, "A")
        e = self.assertRaises(usage.UsageError, self.parse, "--connect",
                              "dfly:tcp:127.0.0.7:987", "--dfly-dir", d)
        self.assertIn("no key for peer 127.0.0.7", str(e))

    def test_notTCP(self):
        d = keyDir(self, "A")
        e = self.assertRaises(usage.UsageError, self.parse, "--listen",
                              "dfly:unix:/tmp/x.sock", "--dfly-dir", d)
        self.assertIn("needs a tcp: endpoint", str(e))

    def test_badFormat(self):
        d = keyDir(self, "A")
        e = self.assertRaises(usage.UsageError, self.parse, "--listen",
                              "dfly:format=x:tcp:0", "--dfly-dir", d)
        self.assertIn("format must be u, t or auto", str(e))
