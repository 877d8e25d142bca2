"""
Tests for L{xdiskd.nbd.wire}: the sans-IO NBD server codec.
"""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.nbd import wire

H = bytes.fromhex


def feed(conn, data, step=None):
    """
    Feed C{data} (in pieces of C{step} bytes, or at once) and collect every
    event until the codec needs data or holds.
    """
    events = []
    pieces = [data] if step is None else [
        data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        conn.receiveData(piece)
        while True:
            event = conn.nextEvent()
            if event is wire.NEED_DATA or event is wire.PAUSED:
                break
            events.append(event)
    return events


def transmitting(**kwargs):
    """Return a connection already in the transmission phase."""
    conn = wire.NBDServerConnection(**kwargs)
    events = feed(conn, wire.encodeClientFlags(3)
                  + wire.encodeOption(wire.OPT_GO,
                                      wire.encodeExportRequest("xa0")))
    assert len(events) == 2 and conn.held
    conn.startTransmission()
    return conn


class GreetingTests(SynchronousTestCase):
    def test_greeting(self):
        """The greeting is NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES."""
        conn = wire.NBDServerConnection()
        self.assertEqual(conn.greeting(),
                         H("4e42444d41474943" "49484156454f5054" "0003"))

    def test_greetingWithoutNoZeroes(self):
        conn = wire.NBDServerConnection(offerNoZeroes=False)
        self.assertEqual(conn.greeting()[-2:], H("0001"))

    def test_clientFlags(self):
        for flags in (0, 1, 3):
            conn = wire.NBDServerConnection()
            [event] = feed(conn, struct.pack(">I", flags))
            self.assertEqual(event, wire.ClientFlags(flags))
            self.assertEqual(event.noZeroes, bool(flags & 2))
            self.assertEqual(conn.state, "options")

    def test_unknownClientFlag(self):
        conn = wire.NBDServerConnection()
        self.assertRaises(wire.BadClientFlagsError, feed, conn, H("00000004"))

    def test_noZeroesNotOffered(self):
        """C_NO_ZEROES must not be set when the server did not offer it."""
        conn = wire.NBDServerConnection(offerNoZeroes=False)
        self.assertRaises(wire.BadClientFlagsError, feed, conn, H("00000003"))


class OptionTests(SynchronousTestCase):
    def setUp(self):
        self.conn = wire.NBDServerConnection()
        feed(self.conn, wire.encodeClientFlags(1))

    def test_option(self):
        data = H("49484156454f5054" "00000003" "00000000")
        self.assertEqual(feed(self.conn, data),
                         [wire.OptionRequest(wire.OPT_LIST, b"")])

    def test_optionsOneByteAtATime(self):
        data = (wire.encodeOption(99, b"abc") + wire.encodeOption(3)
                + wire.encodeOption(8))
        self.assertEqual(feed(self.conn, data, step=1), [
            wire.OptionRequest(99, b"abc"), wire.OptionRequest(3, b""),
            wire.OptionRequest(8, b"")])

    def test_holdsAfterGo(self):
        """After GO nothing is parsed until the caller picks a phase."""
        go = wire.encodeOption(wire.OPT_GO, wire.encodeExportRequest("x"))
        more = wire.encodeOption(wire.OPT_LIST)
        events = feed(self.conn, go + more)
        self.assertEqual([e.option for e in events], [wire.OPT_GO])
        self.assertTrue(self.conn.held)
        self.assertIs(self.conn.nextEvent(), wire.PAUSED)
        self.conn.resumeOptions()
        self.assertEqual(self.conn.nextEvent(),
                         wire.OptionRequest(wire.OPT_LIST, b""))

    def test_phaseChangeOnlyWhenHeld(self):
        self.assertRaises(RuntimeError, self.conn.startTransmission)
        self.assertRaises(RuntimeError, self.conn.resumeOptions)

    def test_badOptionMagic(self):
        self.assertRaises(wire.BadOptionMagicError, feed, self.conn,
                          H("0000000000000000" "00000003" "00000000"))

    def test_optionTooLarge(self):
        conn = wire.NBDServerConnection(maxOptionLength=100)
        feed(conn, wire.encodeClientFlags(1))
        self.assertRaises(wire.OptionTooLargeError, feed, conn,
                          wire.encodeOption(3, b"x" * 101))

    def test_truncatedAtEOF(self):
        feed(self.conn, wire.encodeOption(3, b"abcd")[:-1])
        self.assertRaises(wire.TruncatedMessageError, self.conn.receiveEOF)

    def test_cleanEOF(self):
        feed(self.conn, wire.encodeOption(3))
        self.conn.receiveEOF()


class RequestTests(SynchronousTestCase):
    def setUp(self):
        self.conn = transmitting(maxPayload=1024, discardLimit=4096)

    def test_read(self):
        data = H("25609513" "0001" "0000" "0102030405060708"
                 "0000000000001000" "00000200")
        self.assertEqual(feed(self.conn, data), [
            wire.Request(1, wire.CMD_READ, 0x0102030405060708, 4096, 512,
                         None)])

    def test_writeWhole(self):
        data = wire.encodeRequest(0, wire.CMD_WRITE, 7, 0, 5) + b"hello"
        [event] = feed(self.conn, data)
        self.assertEqual(event[:5], (0, wire.CMD_WRITE, 7, 0, 5))
        self.assertEqual(bytes(event.data), b"hello")

    def test_writeSplit(self):
        """A payload arriving in pieces is assembled in its own buffer."""
        data = (wire.encodeRequest(0, wire.CMD_WRITE, 7, 0, 600)
                + b"a" * 600 + wire.encodeRequest(0, wire.CMD_FLUSH, 8, 0, 0))
        for step in (1, 7, 100, 29):
            conn = transmitting(maxPayload=1024)
            events = feed(conn, data, step=step)
            self.assertEqual(len(events), 2)
            self.assertEqual(bytes(events[0].data), b"a" * 600)
            self.assertEqual(events[1].type, wire.CMD_FLUSH)

    def test_writeReceivedInPlace(self):
        """
        Once a large payload is under way, recvBuffer lends the rest of
        its buffer; what is received there and reported with filled()
        makes the same request, and the stream goes on after it.
        """
        payload = bytes(range(256)) * 4
        data = (wire.encodeRequest(0, wire.CMD_WRITE, 7, 0, 1024)
                + payload + wire.encodeRequest(0, wire.CMD_FLUSH, 8, 0, 0))
        conn = transmitting(maxPayload=1024)
        self.assertIsNone(conn.recvBuffer(1))
        conn.receiveData(data[:100])
        self.assertIs(conn.nextEvent(), wire.NEED_DATA)
        self.assertIsNone(conn.recvBuffer(2000))
        view = conn.recvBuffer(100)
        self.assertEqual(len(view), 1024 - 72)
        view[:500] = data[100:600]
        conn.filled(500)
        self.assertIs(conn.nextEvent(), wire.NEED_DATA)
        view = conn.recvBuffer(100)
        self.assertEqual(len(view), 1024 - 572)
        view[:] = data[600:1052]
        conn.filled(452)
        self.assertIsNone(conn.recvBuffer(1))
        events = feed(conn, data[1052:])
        self.assertEqual(bytes(events[0].data), payload)
        self.assertEqual(events[1].type, wire.CMD_FLUSH)

    def test_filledWithoutBuffer(self):
        """filled() outside a payload is a caller bug."""
        self.assertRaises(ValueError, self.conn.filled, 1)

    def test_manyAtOnce(self):
        """A batch is parsed with one buffer; it is compacted at the end."""
        data = b"".join(wire.encodeRequest(0, wire.CMD_READ, i, i * 512, 512)
                        for i in range(200))
        self.conn.receiveData(data + b"\x25")
        buf = self.conn._buf
        size = len(buf)
        events = []
        while True:
            event = self.conn.nextEvent()
            if event is wire.NEED_DATA:
                break
            self.assertEqual(len(buf), size)
            events.append(event)
        self.assertEqual([e.cookie for e in events], list(range(200)))
        self.assertEqual(bytes(self.conn._buf), b"\x25")

    def test_disc(self):
        data = (wire.encodeRequest(0, wire.CMD_DISC, 1, 0, 0)
                + wire.encodeRequest(0, wire.CMD_READ, 2, 0, 512))
        [event] = feed(self.conn, data)
        self.assertEqual(event.type, wire.CMD_DISC)
        self.assertIs(self.conn.nextEvent(), wire.PAUSED)
        self.conn.receiveEOF()

    def test_badRequestMagic(self):
        self.assertRaises(wire.BadRequestMagicError, feed, self.conn,
                          H("25609514") + bytes(24))

    def test_oversizedWriteSkipped(self):
        """A WRITE over maxPayload is skipped; the stream stays in sync."""
        data = (wire.encodeRequest(0, wire.CMD_WRITE, 1, 0, 2000)
                + b"x" * 2000 + wire.encodeRequest(0, wire.CMD_READ, 2, 0, 1))
        for step in (None, 1, 333):
            conn = transmitting(maxPayload=1024, discardLimit=4096)
            events = feed(conn, data, step=step)
            self.assertEqual(events, [
                wire.OversizedWrite(0, wire.CMD_WRITE, 1, 0, 2000),
                wire.Request(0, wire.CMD_READ, 2, 0, 1, None)])
            self.assertEqual(len(conn._buf), 0)

    def test_writeOverDiscardLimit(self):
        self.assertRaises(wire.PayloadTooLargeError, feed, self.conn,
                          wire.encodeRequest(0, wire.CMD_WRITE, 1, 0, 4097))

    def test_truncatedPayloadAtEOF(self):
        feed(self.conn, wire.encodeRequest(0, wire.CMD_WRITE, 1, 0, 10)
             + b"abc")
        self.assertRaises(wire.TruncatedMessageError, self.conn.receiveEOF)

    def test_truncatedHeaderAtEOF(self):
        feed(self.conn, wire.encodeRequest(0, wire.CMD_READ, 1, 0, 10)[:20])
        self.assertRaises(wire.TruncatedMessageError, self.conn.receiveEOF)


class OptionDataTests(SynchronousTestCase):
    def test_exportRequest(self):
        data = H("00000003") + b"xa0" + H("0002" "0003" "0001")
        self.assertEqual(wire.parseExportRequest(data), ("xa0", (3, 1)))
        self.assertEqual(wire.encodeExportRequest("xa0", [3, 1]), data)

    def test_exportRequestTruncated(self):
        for data in (b"", H("00000006") + b"xa0" + H("0000"),
                     H("00000003") + b"xa0",
                     H("00000003") + b"xa0" + H("0002" "0003")):
            self.assertRaises(wire.TruncatedOptionDataError,
                              wire.parseExportRequest, data)

    def test_exportRequestTrailing(self):
        self.assertRaises(wire.TrailingOptionDataError,
                          wire.parseExportRequest,
                          H("00000000" "0000" "00"))

    def test_badStrings(self):
        for name in (b"a\0b", b"\xff\xfe", b"x" * 4097):
            data = struct.pack(">I", len(name)) + name + H("0000")
            self.assertRaises(wire.BadOptionStringError,
                              wire.parseExportRequest, data)

    def test_metaContextRequest(self):
        data = wire.encodeMetaContextRequest("xa0", ["base:", "x-a:b"])
        self.assertEqual(data, H("00000003") + b"xa0" + H("00000002")
                         + H("00000005") + b"base:" + H("00000005") + b"x-a:b")
        self.assertEqual(wire.parseMetaContextRequest(data),
                         ("xa0", ("base:", "x-a:b")))

    def test_metaContextRequestBroken(self):
        good = wire.encodeMetaContextRequest("xa0", ["base:allocation"])
        self.assertRaises(wire.TruncatedOptionDataError,
                          wire.parseMetaContextRequest, good[:-1])
        self.assertRaises(wire.TrailingOptionDataError,
                          wire.parseMetaContextRequest, good + b"!")
        self.assertRaises(wire.TruncatedOptionDataError,
                          wire.parseMetaContextRequest,
                          H("00000000" "ffffffff"))


class ReplyTests(SynchronousTestCase):
    """Reply builders against hand-written bytes from proto.md layouts."""

    def test_optionReply(self):
        self.assertEqual(wire.optionReply(wire.OPT_LIST, wire.REP_ACK),
                         H("0003e889045565a9" "00000003" "00000001"
                           "00000000"))
        self.assertEqual(
            wire.optionError(7, wire.REP_ERR_UNKNOWN, "no"),
            H("0003e889045565a9" "00000007" "80000006" "00000002") + b"no")

    def test_serverReply(self):
        self.assertEqual(wire.serverReply(3, "xa0", "S1"),
                         H("0003e889045565a9" "00000003" "00000002"
                           "00000009" "00000003") + b"xa0S1")

    def test_infoItems(self):
        prefix = H("0003e889045565a9" "00000007" "00000003")
        self.assertEqual(wire.infoExport(7, 1 << 20, 0x0d0d),
                         prefix + H("0000000c" "0000" "0000000000100000"
                                    "0d0d"))
        self.assertEqual(wire.infoBlockSize(7, 512, 4096, 1 << 25),
                         prefix + H("0000000e" "0003" "00000200" "00001000"
                                    "02000000"))
        self.assertEqual(wire.infoName(7, "xa0"),
                         prefix + H("00000005" "0001") + b"xa0")
        self.assertEqual(wire.infoDescription(7, "d"),
                         prefix + H("00000003" "0002") + b"d")

    def test_metaContextReply(self):
        self.assertEqual(wire.metaContextReply(10, 1, "base:allocation"),
                         H("0003e889045565a9" "0000000a" "00000004"
                           "00000013" "00000001") + b"base:allocation")

    def test_exportNameReply(self):
        self.assertEqual(wire.exportNameReply(4096, 3, True),
                         H("0000000000001000" "0003"))
        self.assertEqual(wire.exportNameReply(4096, 3, False),
                         H("0000000000001000" "0003") + bytes(124))

    def test_simpleReply(self):
        self.assertEqual(wire.simpleReply(22, 0x0102030405060708),
                         H("67446698" "00000016" "0102030405060708"))

    def test_structuredChunks(self):
        self.assertEqual(wire.structuredNone(9),
                         H("668e33ef" "0001" "0000" "0000000000000009"
                           "00000000"))
        self.assertEqual(wire.offsetDataHeader(9, 4096, 512, True),
                         H("668e33ef" "0001" "0001" "0000000000000009"
                           "00000208" "0000000000001000"))
        self.assertEqual(wire.offsetDataHeader(9, 0, 1, False)[4:6],
                         H("0000"))
        self.assertEqual(wire.blockStatusChunk(9, 1, [(4096, 0), (512, 3)]),
                         H("668e33ef" "0001" "0005" "0000000000000009"
                           "00000014" "00000001" "00001000" "00000000"
                           "00000200" "00000003"))
        self.assertEqual(wire.errorChunk(9, 5, "bad"),
                         H("668e33ef" "0001" "8001" "0000000000000009"
                           "00000009" "00000005" "0003") + b"bad")

    def test_requestEncoding(self):
        self.assertEqual(wire.encodeRequest(1, 1, 2, 3, 4),
                         H("25609513" "0001" "0001" "0000000000000002"
                           "0000000000000003" "00000004"))


_CODEC_ERRORS = (wire.NBDProtocolError,)


class TextTests(SynchronousTestCase):
    """Protocol strings are UTF-8 whatever text the server hands over."""

    def test_surrogatesNeverRaise(self):
        """
        A lone surrogate (how surrogateescape shows a byte that is not
        UTF-8) is sent as a backslash escape, in every string encoder.
        """
        text = b"\x80\xbf".decode("utf-8", "surrogateescape")
        self.assertEqual(wire.encodeText(text), b"\\udc80\\udcbf")
        reply = wire.optionError(wire.OPT_GO, wire.REP_ERR_UNKNOWN, text)
        reply[20:].decode("utf-8")
        wire.serverReply(wire.OPT_LIST, "xa0", text)[24:].decode("utf-8")
        wire.infoDescription(wire.OPT_GO, text)[22:].decode("utf-8")

    @given(st.text(max_size=3000))
    def test_cutAtCharacterBoundary(self, text):
        """Cut to the limit, a string is still valid UTF-8."""
        raw = wire.encodeText(text * 3, 4096)
        self.assertLessEqual(len(raw), 4096)
        full = (text * 3).encode("utf-8", "backslashreplace")
        self.assertTrue(full.startswith(raw))
        raw.decode("utf-8")
        self.assertGreater(len(raw), min(len(full), 4096) - 4)


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600), st.integers(1, 64),
           st.sampled_from(["flags", "options", "transmission"]))
    def test_randomBytes(self, data, step, phase):
        """Random input raises nothing but the codec's own errors."""
        if phase == "transmission":
            conn = transmitting(maxPayload=256, discardLimit=512)
        else:
            conn = wire.NBDServerConnection(maxOptionLength=256)
            if phase == "options":
                feed(conn, wire.encodeClientFlags(3))
        try:
            for event in feed(conn, data, step=step):
                if isinstance(event, wire.OptionRequest):
                    for parse in (wire.parseExportRequest,
                                  wire.parseMetaContextRequest):
                        try:
                            parse(event.data)
                        except wire.OptionDataError:
                            pass
                if conn.held:
                    conn.resumeOptions()
            conn.receiveEOF()
        except _CODEC_ERRORS:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_randomOptionData(self, data):
        for parse in (wire.parseExportRequest, wire.parseMetaContextRequest):
            try:
                parse(data)
            except wire.OptionDataError:
                pass

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(
        st.integers(0, 0xffff), st.sampled_from([0, 1, 3, 4, 5, 6, 7]),
        st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 64 - 1),
        st.integers(0, 300)), max_size=20), st.integers(1, 50))
    def test_requestRoundTrip(self, requests, step):
        """Encoded requests decode to themselves however they are cut."""
        conn = transmitting(maxPayload=300)
        data = b""
        expected = []
        for flags, kind, cookie, offset, length in requests:
            data += wire.encodeRequest(flags, kind, cookie, offset, length)
            payload = None
            if kind == wire.CMD_WRITE:
                payload = bytes([cookie & 0xff]) * length
                data += payload
            expected.append((flags, kind, cookie, offset, length, payload))
        got = [tuple(e[:5]) + (None if e.data is None else bytes(e.data),)
               for e in feed(conn, data, step=step)]
        self.assertEqual(got, expected)
