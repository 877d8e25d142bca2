"""
The stream ciphers of xdiskd.dfly.stream against dmsg-crypto.md §7.6's
examples (real runs of hammer2 service), fed whole and a byte at a time,
tampered, and fuzzed.
"""

import os

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.dfly import stream

SCALE = float(os.environ.get("XDISKD_FUZZ_SCALE", "1"))
h = bytes.fromhex

# §7.6 U: first 64 stream bytes from the service (its LNK_CONN header).
U_KEY = h("1826f79a104e7db92486f9843fa4686ccd23bc6141317d3acf8116eea3ea97d0")
U_FIXED = h("5d98d3ce")
U_WIRE = h("b00b8d190d160d3355b774498c11d90f5fc1c6fa0aa25454351aca82d35f4a02"
           "96f03cc24133b1bd606ba7dfa66fd57829d0a6e3c306b686cb3f5df8112df2f8")
U_PLAIN = h("32480000004020b5f04b0170dc7f000000000000000000000000000000000000"
            "06110080000000000000000000000000000000000000000000000000dd99c3c5")
U_KEYSTREAM = h(
    "82438d190d562d86a5fc7539506ed90f5fc1c6fa0aa25454351aca82d35f4a02"
    "90e13c424133b1bd606ba7dfa66fd57829d0a6e3c306b686cb3f5df8ccb4313d")

# §7.6 T: first 80 stream bytes from the service (another connection).
T_KEY = h("18c2b47ba132b52096e89be1512d4db9084f578d378573421a921158591c3e52")
T_FIXED = h("1d71e8d4")
T_C0 = h("b2cd61a381037ad1ded136e8b43955ef63d8edc6d12d46ac44f320887dbad061"
         "842f69ef1a339c2aa2d96e156508a83d22e643599be54a0032d25d3272e16573")
T_T0 = h("4876b671999c490fe6f5b87e176b698f")
T_P0_HEAD = h("3248000000d39b7ff04b0150f97f0000") + bytes(16) + h(
    "061100800000")
T_P0_TAIL = h("0000000011843eef")


def cases(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=list(HealthCheck))


class FormatUTests(SynchronousTestCase):
    def test_specExample(self):
        """The service's LNK_CONN header decrypts as §7.6 shows."""
        rx = stream.receiver("U", U_KEY, U_FIXED)
        self.assertEqual(rx.update(U_WIRE), U_PLAIN)

    def test_keystreamStartsAtCounterTwo(self):
        """The keystream is AES-CTR from F ‖ 0⁸ ‖ 00000002 (§7.2)."""
        tx = stream.sender("U", U_KEY, U_FIXED)
        self.assertEqual(tx.update(bytes(64)), U_KEYSTREAM)

    def test_byteAtATime(self):
        """Any split gives the same bytes: the keystream carries over."""
        rx = stream.receiver("U", U_KEY, U_FIXED)
        out = b"".join(rx.update(U_WIRE[i:i + 1]) for i in range(64))
        self.assertEqual(out, U_PLAIN)

    def test_senderMatchesSpec(self):
        tx = stream.sender("U", U_KEY, U_FIXED)
        self.assertEqual(tx.update(U_PLAIN[:10]) + tx.update(U_PLAIN[10:]),
                         U_WIRE)

    def test_limit(self):
        """A direction past its limit raises StreamLimit, naming it."""
        tx = stream._U(U_KEY, U_FIXED, "send", limit=128)
        tx.update(bytes(128))
        e = self.assertRaises(stream.StreamLimit, tx.update, b"x")
        self.assertIn("format U send limit reached (128 bytes", str(e))

    def test_defaultLimit(self):
        """GCM's limit: 2^36 - 32 bytes (counter blocks 2 .. 2^32 - 1)."""
        self.assertEqual(stream.U_LIMIT, ((1 << 32) - 2) * 16)
        self.assertEqual(stream.sender("U", U_KEY, U_FIXED).limit,
                         stream.U_LIMIT)


class FormatTTests(SynchronousTestCase):
    def test_specExample(self):
        """Chunk 0 of §7.6 verifies and decrypts to the LNK_CONN header."""
        rx = stream.receiver("T", T_KEY, T_FIXED)
        p0 = rx.update(T_C0 + T_T0)
        self.assertEqual(len(p0), 64)
        self.assertTrue(p0.startswith(T_P0_HEAD))
        self.assertTrue(p0.endswith(T_P0_TAIL))

    def test_senderMatchesSpec(self):
        """Re-encrypting chunk 0 gives the service's wire bytes and tag."""
        p0 = stream.receiver("T", T_KEY, T_FIXED).update(T_C0 + T_T0)
        tx = stream.sender("T", T_KEY, T_FIXED)
        self.assertEqual(tx.update(p0), T_C0 + T_T0)

    def test_byteAtATime(self):
        rx = stream.receiver("T", T_KEY, T_FIXED)
        wire = T_C0 + T_T0
        out = b"".join(rx.update(wire[i:i + 1]) for i in range(80))
        self.assertEqual(len(out), 64)
        self.assertEqual(rx.pending, 0)

    def test_chunkCounter(self):
        """Chunk n uses IV F ‖ BE64(n): equal chunks encrypt differently."""
        tx = stream.sender("T", T_KEY, T_FIXED)
        wire = tx.update(bytes(192))
        self.assertEqual(len(wire), 240)
        chunks = {wire[i:i + 80] for i in range(0, 240, 80)}
        self.assertEqual(len(chunks), 3)
        self.assertEqual(stream.receiver("T", T_KEY, T_FIXED).update(wire),
                         bytes(192))

    def test_senderHoldsPartialChunk(self):
        """Only whole 64-byte chunks are sent; the rest waits."""
        tx = stream.sender("T", T_KEY, T_FIXED)
        whole = stream.sender("T", T_KEY, T_FIXED).update(bytes(128))
        self.assertEqual(tx.update(bytes(100)), whole[:80])
        self.assertEqual(tx.pending, 36)
        self.assertEqual(tx.update(bytes(28)), whole[80:])
        self.assertEqual(tx.pending, 0)

    def test_badTag(self):
        """One flipped bit anywhere in a unit: BadTag naming the chunk."""
        for pos in (0, 63, 64, 79):
            rx = stream.receiver("T", T_KEY, T_FIXED)
            wire = bytearray(T_C0 + T_T0)
            wire[pos] ^= 1
            e = self.assertRaises(stream.BadTag, rx.update, bytes(wire))
            self.assertIn("bad tag on chunk 0", str(e))

    def test_badTagLaterChunk(self):
        tx = stream.sender("T", T_KEY, T_FIXED)
        wire = bytearray(tx.update(bytes(256)))
        wire[2 * 80 + 5] ^= 0x80
        rx = stream.receiver("T", T_KEY, T_FIXED)
        e = self.assertRaises(stream.BadTag, rx.update, bytes(wire))
        self.assertIn("chunk 2 (stream byte 160)", str(e))


class DetectTests(SynchronousTestCase):
    def test_T(self):
        self.assertEqual(stream.detectFormat(T_KEY, T_FIXED, T_C0 + T_T0),
                         "T")

    def test_U(self):
        """§7.6's U stream with 16 more bytes: no valid tag → U."""
        tx = stream.sender("U", U_KEY, U_FIXED)
        wire = tx.update(U_PLAIN + bytes(64))
        self.assertEqual(wire[:64], U_WIRE)
        self.assertEqual(stream.detectFormat(U_KEY, U_FIXED, wire[:80]), "U")

    def test_firstChunkSameInBothFormats(self):
        """§7.4: the first 64 wire bytes do not depend on the format."""
        u = stream.sender("U", T_KEY, T_FIXED).update(bytes(64))
        t = stream.sender("T", T_KEY, T_FIXED).update(bytes(64))
        self.assertEqual(u, t[:64])

    def test_needs80(self):
        self.assertRaises(ValueError, stream.detectFormat, T_KEY, T_FIXED,
                          T_C0)


class FuzzTests(SynchronousTestCase):
    @cases(300)
    @given(st.binary(max_size=2000), st.lists(st.integers(1, 300),
                                              max_size=20))
    def test_decryptorsTakeAnything(self, data, cuts):
        """
        Arbitrary wire bytes in arbitrary pieces: U returns as many bytes
        as it got; T returns whole chunks or raises BadTag, nothing else.
        """
        u = stream.receiver("U", U_KEY, U_FIXED)
        t = stream.receiver("T", T_KEY, T_FIXED)
        pieces, o = [], 0
        for c in cuts:
            pieces.append(data[o:o + c])
            o += c
        pieces.append(data[o:])
        self.assertEqual(sum(len(u.update(p)) for p in pieces), len(data))
        try:
            for p in pieces:
                out = t.update(p)
                self.assertEqual(len(out) % 64, 0)
        except stream.BadTag:
            pass
        else:
            self.assertEqual(len(data) % 80, t.pending)

    @cases(100)
    @given(st.binary(max_size=1000), st.integers(0, 10 ** 6),
           st.sampled_from(stream.FORMATS))
    def test_roundTrip(self, plain, cut, fmt):
        """What a sender emits, a receiver gives back, however split."""
        plain = plain + bytes(-len(plain) % 64)
        wire = stream.sender(fmt, T_KEY, T_FIXED).update(plain)
        rx = stream.receiver(fmt, T_KEY, T_FIXED)
        cut = cut % (len(wire) + 1)
        self.assertEqual(rx.update(wire[:cut]) + rx.update(wire[cut:]),
                         plain)

    @cases(100)
    @given(st.binary(min_size=1, max_size=400), st.integers(0, 10 ** 6),
           st.integers(0, 7))
    def test_anyTamperFailsT(self, plain, pos, bit):
        """T: any flipped bit of the wire is caught."""
        plain = plain + bytes(-len(plain) % 64)
        wire = bytearray(stream.sender("T", T_KEY, T_FIXED).update(plain))
        wire[pos % len(wire)] ^= 1 << bit
        rx = stream.receiver("T", T_KEY, T_FIXED)
        self.assertRaises(stream.BadTag, rx.update, bytes(wire))
