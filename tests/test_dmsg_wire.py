"""
Tests for L{xdiskd.dmsg.wire}: the spec's hex examples (§14) byte for
byte, round trips, chunked decoding and every framing error.
"""

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.wire import (
    AuxCRCError, AuxSizeError, BadMagicError, BlkError, BlkIO, BlkOpen,
    Decoder, Encoder, HeaderCRCError, HeaderSizeError, LnkConn, LnkSpan,
    Message, RawExt, ReversedMagicError, SaltError, crc32c, encodeMessage,
    HEADER)

# Spec §14: ids of the example session.
C1, C2, C3 = 0xFFFFF80001000100, 0xFFFFF80001000200, 0xFFFFF80001000300
S2 = 0xFFFFF80002000200
AUX = bytes(i & 0xFF for i in range(4096))

# Spec §14 hex examples (whole headers; the 4096-byte payload is AUX).
EX_LNK_CONN = bytes.fromhex(
    "32480000000000000001000100f8ffff00000000000000000000000000000000"
    "06110080000000000000000000000000000000000000000000000000b8029b07"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000004000000000000003f00010000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000006d79686f73742f786469736b00000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
)
EX_CONN_RESULT = bytes.fromhex(
    "32480000010000000001000100f8ffff00000000000000000000000000000000"
    "01ff0fa8000000000000000000000000000000000000000000000000bd2e08d8"
)
EX_LNK_SPAN = bytes.fromhex(
    "32480000020000000002000200f8ffff00000000000000000000000000000000"
    "07120080000000000000000000000000000000000000000000000000be852442"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0002010000000000000000000000000000000000000000000000004000000000"
    "0002000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000006469736b686f73742f64613000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000007365726e6f2f58595a00000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
)
EX_BLK_OPEN = bytes.fromhex(
    "32480000030000000002000100f8ffff0002000200f8ffff0000000000000000"
    "02015084000000000000000000000000000000000000000000000000922a50b1"
    "0100000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
)
EX_BLK_READ = bytes.fromhex(
    "32480000040000000003000100f8ffff0002000100f8ffff0000000000000000"
    "020350c000000000000000000000000000000000000000000000000000f3a479"
    "0000000000000000002000000000000000100000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
)
EX_BLK_ERROR_HDR = bytes.fromhex(
    "32480000040000000003000100f8ffff0002000100f8ffff0000000000000000"
    "03ff5fec32fe719c00100000000000000000000000000000000000007e7b845e"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
)
EX_READ_REPLY_HDR = bytes.fromhex(
    "32480000040000000003000100f8ffff0002000100f8ffff0000000000000000"
    "01ff0fec32fe719c0010000000000000000000000000000000000000fd5cff1f"
)


def _join(msg):
    return b"".join(bytes(b) for b in encodeMessage(msg))


def _example_messages():
    """The spec's §14 session as Message objects, paired with their bytes."""
    return [
        (Message(0x80001106, C1, 0, 0, LnkConn(
            peer_mask=4, peer_type=63, proto_version=1,
            peer_label=b"myhost/xdisk"), salt=0), EX_LNK_CONN),
        (Message(0xA80FFF01, C1, 0, 0, salt=1), EX_CONN_RESULT),
        (Message(0x80001207, S2, 0, 0, LnkSpan(
            peer_type=2, media_bytes=0x40000000, media_blksize=0x200,
            peer_label=b"diskhost/da0", pfs_label=b"serno/XYZ",
            media_rest=bytes(32)), salt=2), EX_LNK_SPAN),
        (Message(0x84500102, C2, S2, 0, BlkOpen(1), salt=3), EX_BLK_OPEN),
        (Message(0xC0500302, C3, C2, 0, BlkIO(0x2000, 0x1000), salt=4),
         EX_BLK_READ),
        (Message(0xEC5FFF03, C3, C2, 0, BlkError(0, 0, bytes(64)), AUX,
                 salt=4), EX_BLK_ERROR_HDR + AUX),
        (Message(0xEC0FFF01, C3, C2, 0, None, AUX, salt=4),
         EX_READ_REPLY_HDR + AUX),
    ]


class CRCTests(SynchronousTestCase):
    def test_checkValues(self):
        """§1.5 check values: CRC-32C, not zlib's CRC-32."""
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(crc32c(bytes(64)), 0x03C8EB67)

    def test_incremental(self):
        self.assertEqual(crc32c(b"56789", crc32c(b"1234")), 0xE3069283)


class SpecExampleTests(SynchronousTestCase):
    def test_hdrCRCs(self):
        """The hdr_crc values printed in §14."""
        crcs = [0x079B02B8, 0xD8082EBD, 0x422485BE, 0xB1502A92, 0x79A4F300,
                0x5E847B7E, 0x1FFF5CFD]
        for (msg, raw), crc in zip(_example_messages(), crcs):
            self.assertEqual(HEADER.unpack_from(raw)[-1], crc)
        self.assertEqual(HEADER.unpack_from(EX_BLK_ERROR_HDR)[7], 0x9C71FE32)

    def test_encode(self):
        """Every §14 example encodes byte for byte."""
        for msg, raw in _example_messages():
            self.assertEqual(_join(msg), raw, msg)

    def test_decode(self):
        """Every §14 example decodes back to the same message."""
        for msg, raw in _example_messages():
            d = Decoder(verifySalt=False)
            [got] = d.feed(raw)
            self.assertEqual(got, msg)
            self.assertEqual(d.buffered, 0)

    def test_decodeFields(self):
        d = Decoder(verifySalt=False)
        [span] = d.feed(EX_LNK_SPAN)
        self.assertEqual(span.cmd & C.BASECMDMASK, C.LNK_SPAN)
        self.assertEqual(span.ext.media_bytes, 1 << 30)
        self.assertEqual(span.ext.media_blksize, 512)
        self.assertEqual(span.ext.pfs_label, b"serno/XYZ")
        self.assertEqual(span.ext.peer_label, b"diskhost/da0")
        self.assertEqual(span.ext.peer_type, C.PEER_BLOCK)
        [read] = d.feed(EX_BLK_READ)
        self.assertEqual((read.ext.offset, read.ext.length), (8192, 4096))
        self.assertEqual(read.circuit, C2)

    def test_sessionStreams(self):
        """
        The client's half of §14 decodes as one stream whatever the
        chunking.  (Its salts are 0, 3, 4: the client's results to the
        server's LNK_CONN and LNK_SPAN took 1 and 2.)
        """
        ex = _example_messages()
        client = [ex[0][1], ex[3][1], ex[4][1]]
        for chunk in (1, 7, 64, 100, 10000):
            d = Decoder(verifySalt=False)
            data = b"".join(client)
            got = []
            for i in range(0, len(data), chunk):
                got.extend(d.feed(data[i:i + chunk]))
            self.assertEqual([m.cmd for m in got],
                             [0x80001106, 0x84500102, 0xC0500302])


class EncoderTests(SynchronousTestCase):
    def test_saltCounter(self):
        """§1.6: salt = per-direction counter mod 256, from 0."""
        e = Encoder()
        salts = []
        for i in range(300):
            raw = b"".join(bytes(b) for b in e.encode(Message(C.LNK_PING)))
            salts.append(HEADER.unpack_from(raw)[2])
        self.assertEqual(salts, [i & 0xFF for i in range(300)])

    def test_auxPadding(self):
        """Aux is padded to 64 with zeros; aux_bytes is the unpadded size."""
        raw = _join(Message(C.BLK_WRITE | C.CREATE | C.DELETE, 5, 0, 0,
                            BlkIO(0, 100), b"x" * 100))
        self.assertEqual(len(raw), 128 + 128)
        self.assertEqual(raw[128 + 100:], bytes(28))
        self.assertEqual(HEADER.unpack_from(raw)[8], 100)
        self.assertEqual(HEADER.unpack_from(raw)[7],
                         crc32c(b"x" * 100 + bytes(28)))

    def test_noAux(self):
        raw = _join(Message(C.LNK_PING))
        self.assertEqual(len(raw), 64)
        self.assertEqual(HEADER.unpack_from(raw)[7:9], (0, 0))

    def test_payloadNotCopied(self):
        """The payload is handed back as is, for writeSequence."""
        payload = bytearray(b"y" * 4096)
        parts = encodeMessage(Message(C.BLK_WRITE | C.CREATE, 1, 0, 0,
                                      BlkIO(0, 4096), payload))
        self.assertIs(parts[1], payload)

    def test_rawExtRoundTrip(self):
        """Unmodelled commands keep their extension bytes."""
        cmd = C.LNK_AUTH | C.CREATE
        msg = Message(cmd, 9, 0, 0, RawExt(bytes(range(64))))
        [got] = Decoder().feed(_join(msg))
        self.assertEqual(got.ext, RawExt(bytes(range(64))))


def _only(cls):
    """Build C{cls} from the given fields only (defaults elsewhere)."""
    return lambda **kw: cls(**kw)


# Labels are any bytes but NUL (non-UTF-8 and control characters
# included, as a hostile peer sends them), up to 127.
labels = st.one_of(
    st.binary(max_size=127),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([bytes(range(0x80, 0xC0)),
                     b"hx/\n[-] forged\x1b[31m"]),
).map(lambda b: b.replace(b"\0", b"")[:127])
u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
flags = st.sampled_from([0, C.CREATE, C.DELETE, C.CREATE | C.DELETE,
                         C.CREATE | C.REPLY | C.REVTRANS,
                         C.CREATE | C.DELETE | C.REPLY | C.REVTRANS
                         | C.REVCIRC])
exts = st.one_of(
    st.tuples(st.just(C.LNK_CONN), st.builds(
        _only(LnkConn), peer_mask=u64, peer_type=st.integers(0, 255),
        peer_label=labels)),
    st.tuples(st.just(C.LNK_SPAN), st.builds(
        _only(LnkSpan), peer_type=st.integers(0, 255), media_bytes=u64,
        media_blksize=u32, peer_label=labels, pfs_label=labels, dist=u32,
        rnss=u32, media_rest=st.just(bytes(32)), media_maxio=u32,
        media_incarnation=u64)),
    st.tuples(st.just(C.BLK_OPEN), st.builds(_only(BlkOpen), modes=u32)),
    st.tuples(st.sampled_from([C.BLK_READ, C.BLK_WRITE, C.BLK_FLUSH,
                               C.BLK_FREEBLKS]),
              st.builds(_only(BlkIO), offset=u64, length=u32, keyid=u64)),
    st.tuples(st.just(C.BLK_ERROR), st.builds(
        _only(BlkError), resid=u32, buf=st.just(bytes(64)))),
    st.tuples(st.just(C.LNK_ERROR), st.none()),
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(exts, flags, u64, u64, st.integers(0, 0xFF),
                              st.binary(max_size=300)), min_size=1,
                    max_size=6),
           st.integers(1, 600))
    def test_roundTrip(self, items, chunk):
        """Any sequence of messages survives encode + chunked decode."""
        enc = Encoder()
        sent = []
        data = bytearray()
        for (cmd, ext), fl, msgid, circuit, error, aux in items:
            m = Message(cmd | fl, msgid, circuit, error, ext, aux or None)
            for part in enc.encode(m):
                data += part
            sent.append(m)
        d = Decoder()
        got = []
        for i in range(0, len(data), chunk):
            got.extend(d.feed(bytes(data[i:i + chunk])))
        self.assertEqual(got, sent)
        self.assertEqual(d.buffered, 0)


class RecvIntoTests(SynchronousTestCase):
    """L{Decoder.recvBuffer}/L{Decoder.filled}: large payloads in place."""

    def stream(self, sizes):
        enc = Encoder()
        sent = [Message(C.LNK_ERROR | C.CREATE | C.DELETE | C.REPLY, i + 1,
                        7, 0, None, bytes((i + j) & 0xFF for j in range(n))
                        or None)
                for i, n in enumerate(sizes)]
        return sent, b"".join(b"".join(enc.encode(m)) for m in sent)

    def readAll(self, d, data, chunk, minimum):
        """Read C{data} as a socket reader would: into a lent buffer
        whenever the decoder offers one, else C{chunk} bytes by feed."""
        got, pos, lent = [], 0, 0
        while pos < len(data):
            view = d.recvBuffer(minimum)
            if view is not None:
                n = min(len(view), chunk, len(data) - pos)
                view[:n] = data[pos:pos + n]
                view.release()
                got.extend(d.filled(n))
                lent += n
            else:
                n = min(chunk, len(data) - pos)
                got.extend(d.feed(data[pos:pos + n]))
            pos += n
        return got, lent

    def test_largePayloadLandsInPlace(self):
        """A 1 MiB payload read in 256 KiB reads: all but the first read
        go into the decoder's buffer, and the payload is a view of it."""
        sent, data = self.stream([C.AUX_MAX])
        d = Decoder()
        got, lent = self.readAll(d, data, 256 << 10, 32 << 10)
        self.assertEqual(got, sent)
        self.assertGreater(lent, len(data) - (256 << 10) - 1)
        self.assertIsInstance(got[0].aux, memoryview)
        self.assertEqual(d.buffered, 0)

    def test_smallRestIsFed(self):
        """Under the minimum missing bytes, no buffer is lent."""
        sent, data = self.stream([40000])
        d = Decoder()
        self.assertEqual(d.feed(data[:10000]), [])
        self.assertIsNone(d.recvBuffer(32 << 10))
        self.assertEqual(d.feed(data[10000:]), sent)

    def test_feedWhileLent(self):
        """feed() after a buffer was lent and partly filled keeps order."""
        sent, data = self.stream([200000, 10])
        d = Decoder()
        d.feed(data[:1000])
        view = d.recvBuffer(1000)
        view[:5000] = data[1000:6000]
        view.release()
        self.assertEqual(d.filled(5000), [])
        self.assertEqual(d.buffered, 6000)
        self.assertEqual(d.feed(data[6000:]), sent)
        self.assertEqual(d.buffered, 0)

    def test_filledWithoutBuffer(self):
        """filled() without a lent buffer is a caller bug."""
        self.assertRaises(ValueError, Decoder().filled, 10)

    def test_corruptPayloadInPlace(self):
        """The aux CRC is checked on a payload received in place."""
        sent, data = self.stream([300000])
        data = bytearray(data)
        data[-7] ^= 1
        d = Decoder()
        self.assertRaises(AuxCRCError, self.readAll, d, bytes(data),
                          65536, 1024)
        self.assertIsNone(d.recvBuffer())

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(0, 300000), min_size=1, max_size=5),
           st.integers(1, 300000), st.integers(1, 100000))
    def test_roundTrip(self, sizes, chunk, minimum):
        """Any mix of lent buffers and feeds decodes the same stream."""
        sent, data = self.stream(sizes)
        d = Decoder()
        got, _ = self.readAll(d, data, chunk, minimum)
        self.assertEqual(got, sent)
        self.assertEqual(d.buffered, 0)


class FramingErrorTests(SynchronousTestCase):
    def _raw(self, msg=None):
        return bytearray(_join(msg or Message(C.LNK_PING)))

    def _fix(self, raw):
        """Recompute hdr_crc after a mutation."""
        raw[0x3C:0x40] = bytes(4)
        raw[0x3C:0x40] = crc32c(bytes(raw[:(raw[0x20] or 1) * 64])
                                ).to_bytes(4, "little")
        return raw

    def assertFails(self, raw, exc):
        d = Decoder()
        self.assertRaises(exc, d.feed, bytes(raw))
        # Final: the decoder stays failed.
        self.assertRaises(exc, d.feed, b"")

    def test_badMagic(self):
        raw = self._raw()
        raw[0:2] = b"\x00\x00"
        self.assertFails(raw, BadMagicError)

    def test_reversedMagic(self):
        raw = self._raw()
        raw[0:2] = b"\x48\x32"
        self.assertFails(raw, ReversedMagicError)

    def test_headerTooSmall(self):
        raw = self._raw()
        raw[0x20] = 0
        self.assertFails(self._fix(raw), HeaderSizeError)

    def test_headerTooLarge(self):
        raw = self._raw()
        raw[0x20] = 33
        self.assertFails(raw, HeaderSizeError)

    def test_auxTooLarge(self):
        raw = self._raw()
        raw[0x28:0x2C] = (C.AUX_MAX + 1).to_bytes(4, "little")
        self.assertFails(raw, AuxSizeError)

    def test_auxMaxAccepted(self):
        """Exactly DMSG_AUX_MAX is allowed."""
        msg = Message(C.BLK_WRITE | C.CREATE | C.DELETE, 1, 0, 0,
                      BlkIO(0, C.AUX_MAX), bytes(C.AUX_MAX))
        [got] = Decoder().feed(_join(msg))
        self.assertEqual(len(got.aux), C.AUX_MAX)

    def test_badHdrCRC(self):
        raw = self._raw()
        raw[0x08] ^= 1
        self.assertFails(raw, HeaderCRCError)

    def test_badHdrCRCInExtension(self):
        """hdr_crc covers the whole header, padding included."""
        raw = bytearray(EX_LNK_SPAN)
        raw[0x1B8] = 1
        d = Decoder(verifySalt=False)
        self.assertRaises(HeaderCRCError, d.feed, bytes(raw))

    def test_badAuxCRC(self):
        raw = self._raw(Message(C.BLK_WRITE | C.CREATE, 1, 0, 0,
                                BlkIO(0, 64), b"z" * 64))
        raw[-1] ^= 0xFF
        self.assertFails(raw, AuxCRCError)

    def test_badAuxPaddingCRC(self):
        """aux_crc covers the zero padding too."""
        raw = self._raw(Message(C.BLK_WRITE | C.CREATE, 1, 0, 0,
                                BlkIO(0, 10), b"z" * 10))
        raw[-1] = 1
        self.assertFails(raw, AuxCRCError)

    def test_saltOutOfSequence(self):
        e = Encoder()
        e.sequence = 1
        raw = b"".join(bytes(b) for b in e.encode(Message(C.LNK_PING)))
        self.assertFails(raw, SaltError)

    def test_saltCheckOff(self):
        e = Encoder()
        e.sequence = 5
        raw = b"".join(bytes(b) for b in e.encode(Message(C.LNK_PING)))
        self.assertEqual(len(Decoder(verifySalt=False).feed(raw)), 1)

    def test_goodMessageBeforeBad(self):
        """Messages before a framing error are not returned twice."""
        d = Decoder()
        e = Encoder()
        good = b"".join(bytes(b) for b in e.encode(Message(C.LNK_PING)))
        self.assertEqual(len(d.feed(good)), 1)
        self.assertRaises(BadMagicError, d.feed, bytes(64))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=3000))
    def test_randomBytes(self, data):
        """Arbitrary input yields messages or a FramingError, nothing else."""
        from xdiskd.dmsg.wire import FramingError
        d = Decoder()
        try:
            d.feed(data)
        except FramingError:
            pass
