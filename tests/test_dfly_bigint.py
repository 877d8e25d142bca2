"""
Tests for L{xdiskd.dfly.bigint}: GMP and Python's pow give the same
handshake, and GMP is what a set-up machine uses.
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from xdiskd.dfly import bigint, handshake
from tests.dflykeys import privateKey


def seeded(seed):
    rng = random.Random(seed)
    return lambda n: bytes(rng.getrandbits(8) for _ in range(n))


class BackendTests(SynchronousTestCase):
    def setUp(self):
        self.addCleanup(bigint.useGMP)

    def test_gmpInstalled(self):
        """scripts/setup installs gmpy2 (setup.cfg), and it is used."""
        self.assertTrue(bigint.useGMP())
        self.assertEqual(bigint.BACKEND, "gmpy2")

    def test_sameIntegers(self):
        rng = random.Random(7)
        cases = []
        for bits in (64, 1024, 2048):
            m = rng.getrandbits(bits) | (1 << (bits - 1)) | 1
            cases.append((rng.getrandbits(bits) % m, rng.getrandbits(bits),
                          m))
        results = {}
        for use in (bigint.useGMP, bigint.usePython):
            use()
            results[bigint.BACKEND] = [
                (bigint.powmod(b, e, m), bigint.invert(b, m) if
                 _coprime(b, m) else None) for b, e, m in cases]
            for got in results[bigint.BACKEND]:
                self.assertIs(type(got[0]), int)
        self.assertEqual(results["gmpy2"], results["python"])
        self.assertEqual(results["python"][0][0],
                         pow(cases[0][0], cases[0][1], cases[0][2]))

    def test_sameHandshake(self):
        """
        The wire block is the same bytes under both (same random
        bytes), and each decrypts what the other encrypted.
        """
        a, b = privateKey("a"), privateKey("b")
        wires = {}
        for use in (bigint.useGMP, bigint.usePython):
            use()
            block = handshake.buildBlock(b"xdiskd U", seeded(1))
            wires[bigint.BACKEND] = (bytes(block), handshake.encryptBlock(
                block, a, b.public, seeded(2)))
        self.assertEqual(wires["gmpy2"][1], wires["python"][1])
        plain = handshake.decryptBlock(wires["gmpy2"][1], b, a.public,
                                       seeded(3))
        bigint.useGMP()
        self.assertEqual(
            handshake.decryptBlock(wires["python"][1], b, a.public,
                                   seeded(4)), plain)
        self.assertEqual(handshake.checkBlock(plain).quickmsg[:8],
                         b"xdiskd U")


def _coprime(a, m):
    import math
    return math.gcd(a, m) == 1
