"""
Fuzzing, with a bounded budget (hypothesis), of both codecs and both
protocol state machines:

  - DMSG: random and mutated frames against a node that exports two
    files (one read-only) and imports spans.  Every frame is encoded with
    valid CRCs and salt; mutated frames get both recomputed afterwards,
    so the link's state machine is reached, not just the CRC check.
  - NBD: random handshakes and request streams against the server with
    in-memory devices (one read-only).

Properties: nothing escapes to the reactor or is logged as a failure;
no read or write outside an export (file and device lengths never
change, the read-only ones never change at all, bytes outside the
ranges the input asked to write keep their contents); a healthy link
(connection) next to the fuzzed one keeps working.

C{XDISKD_FUZZ_SCALE} multiplies the number of cases (default 1; about
20 s for the whole module on 2 cores).  Counts are written to the test
log (C{fuzz: ... cases}).
"""

import os
import struct

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.limits import LinkLimits
from xdiskd.dmsg.wire import (
    HEADER, BlkIO, BlkOpen, Decoder, LnkConn, LnkSpan, Message, RawExt,
    crc32c, encodeMessage)
from xdiskd.export.server import Exporter
from xdiskd.export.spec import ExportSpec
from xdiskd.export.store import openStore
from xdiskd.nbd import wire
from xdiskd.nbd.options import Negotiator
from xdiskd.nbd.server import NBDServerFactory
from xdiskd.node import Node
from xdiskd.xa.importer import Importer
from tests.rawpeer import RawPeer, io
from tests.test_nbd_server import (
    MemoryDevice, Peer, Registry, TLSStringTransport)

SCALE = float(os.environ.get("XDISKD_FUZZ_SCALE", "1"))
log = Logger(namespace="tests.test_fuzz")

SIZE = 64 * 1024          # export / device size: boundaries are near
U64 = 2 ** 64 - 1
#: Labels of issue 18's attack run: not UTF-8; a newline and an ANSI escape.
HOSTILE_LABELS = [bytes(range(0x80, 0xC0)), b"hx/\n[-] forged\x1b[31m",
                  b"\xff\xfe\x1b]0;title\x07", "\u202eevil".encode()]


def cases(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=list(HealthCheck))


class FailureWatch:
    """Every log event that carries a failure, while installed."""

    def __init__(self, case):
        self.failures = []
        globalLogPublisher.addObserver(self._observe)
        case.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        if "log_failure" in event:
            self.failures.append(event)

    def check(self, case):
        if self.failures:
            f = self.failures[0]["log_failure"]
            case.fail("failure logged: %s\n%s" % (
                self.failures[0].get("log_format"), f.getTraceback()))


def pattern(n, seed):
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


# ----------------------------------------------------------------------
# DMSG

def near(limit):
    """Integers that like the edges of C{limit}."""
    return st.one_of(
        st.sampled_from([0, 1, 511, 512, 4096, limit - 512, limit - 1,
                         limit, limit + 1, limit + 512, C.AUX_MAX,
                         C.AUX_MAX + 1, 2 ** 31, 2 ** 32 - 1, 2 ** 63,
                         U64]),
        st.integers(0, limit + 8192))


u64 = st.one_of(st.integers(0, 8), st.integers(0, U64))
FLAG_BITS = [C.CREATE, C.DELETE, C.REPLY, C.ABORT, C.REVTRANS, C.REVCIRC]
usualFlags = st.sampled_from([
    C.CREATE, C.CREATE | C.DELETE, C.CREATE | C.DELETE | C.REVCIRC,
    C.CREATE | C.DELETE | C.REVCIRC, C.CREATE | C.REVCIRC, C.DELETE,
    C.DELETE | C.REVCIRC, C.DELETE | C.REVTRANS, C.REPLY | C.REVTRANS, 0,
    C.ABORT | C.DELETE])
flagSets = st.one_of(
    usualFlags, usualFlags, usualFlags,
    st.lists(st.sampled_from(FLAG_BITS), max_size=6).map(
        lambda bits: sum(set(bits))))
usualCommands = st.sampled_from([
    C.LNK_CONN, C.LNK_SPAN, C.LNK_PING, C.LNK_ERROR, C.LNK_PAD, C.BLK_OPEN,
    C.BLK_CLOSE, C.BLK_READ, C.BLK_WRITE, C.BLK_FLUSH, C.BLK_FREEBLKS,
    C.BLK_ERROR, C.DBG_SHELL, C.BLK_READ, C.BLK_WRITE])
commands = st.one_of(
    usualCommands, usualCommands, usualCommands,
    st.builds(lambda cmd, size: (cmd & 0xFFFF00) | size,
              st.integers(0, 0xFFFFFF), st.integers(1, 32)))

# Parents: 0 = top level, "span" = one of the node's spans, "last" = a
# transaction the input opened before, or any number.
refs = st.one_of(st.just(0), st.just("span"), st.just("last"),
                 st.just("last2"), u64)
parents = st.one_of(st.just("span"), st.just("span"), st.just("last"),
                    refs)

def _lnkSpan(*args, **kw):
    """LnkSpan without hypothesis drawing its other (typed) fields."""
    return LnkSpan(*args, **kw)


exts = st.one_of(
    st.just("auto"), st.just("auto"), st.none(),
    st.builds(BlkIO, near(SIZE), near(SIZE), u64.map(lambda v: v % 2 ** 64),
              st.integers(0, 2 ** 32 - 1)),
    st.builds(BlkOpen, st.integers(0, 2 ** 32 - 1)),
    st.builds(_lnkSpan, st.integers(0, 255), near(SIZE),
              st.sampled_from([0, 1, 512, 4096, 2 ** 32 - 1]),
              st.sampled_from([b"", b"h/d", b"x" * 127] + HOSTILE_LABELS),
              st.sampled_from([b"", b"serno/F", b"serno/RO", b"y" * 127]
                              + HOSTILE_LABELS)),
    st.builds(LnkConn, st.integers(0, U64), st.integers(0, 255)),
    st.builds(RawExt, st.binary(max_size=200)))

# One frame in five mutated: most mutations end the stream (a size or
# magic byte), so unmutated frames carry the state machine deeper.
mutations = st.one_of(
    st.just([]), st.just([]), st.just([]), st.just([]),
    st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)),
             min_size=1, max_size=3))
auxes = st.one_of(st.none(), st.binary(max_size=600),
                  st.integers(0, 3).map(lambda k: bytes(k * 4096)))
anyMessage = st.fixed_dictionaries({
    "cmd": commands, "flags": flagSets, "msgid": refs, "circuit": parents,
    "error": st.sampled_from([0, 0, C.ERR_NOSUPP, C.ERR_IO, 2 ** 32 - 1]),
    "ext": exts, "aux": auxes, "mutate": mutations,
})
# Plausible I/O and opens on the node's spans, to reach the exporter.
ioMessage = st.fixed_dictionaries({
    "cmd": st.sampled_from([C.BLK_READ, C.BLK_WRITE, C.BLK_FREEBLKS,
                            C.BLK_FLUSH, C.BLK_OPEN]),
    "flags": st.sampled_from([C.CREATE | C.DELETE | C.REVCIRC,
                              C.CREATE | C.REVCIRC]),
    "msgid": st.integers(1000, 2 ** 20), "circuit": st.just("span"),
    "error": st.just(0),
    "ext": st.one_of(st.just("auto"), st.just("auto"), exts), "aux": auxes,
    "mutate": mutations,
})
# Well-formed top-level spans with hostile labels (issue 18): not UTF-8,
# control characters, a serial of the node's own exports, sizes and
# maximum I/O a real disk would not state.
spanMessage = st.fixed_dictionaries({
    "cmd": st.just(C.LNK_SPAN), "flags": st.just(C.CREATE),
    "msgid": st.integers(1 << 21, 1 << 22), "circuit": st.just(0),
    "error": st.just(0),
    "ext": st.builds(
        _lnkSpan, st.just(C.PEER_BLOCK),
        st.sampled_from([SIZE, 2 ** 63, 0, 512]),
        st.sampled_from([512, 4096, 1, 0]),
        st.sampled_from(HOSTILE_LABELS + [b"fuzz/h"]),
        st.sampled_from(HOSTILE_LABELS + [b"serno/F", b"xa0"]),
        media_maxio=st.sampled_from([0, 1, 512, C.AUX_MAX])),
    "aux": st.none(), "mutate": st.just([]),
})
messages = st.one_of(anyMessage, anyMessage, ioMessage, spanMessage)


def fixFrame(frame, salt):
    """
    Recompute salt, aux_crc and hdr_crc of a (mutated) frame, as far as
    its own size fields allow: the mutation is what the link sees.
    """
    buf = bytearray(frame)
    if len(buf) < C.HDR_SIZE:
        return bytes(buf)
    fields = list(HEADER.unpack_from(buf, 0))
    hbytes = (fields[6] & C.SIZE) * C.ALIGN
    auxBytes = fields[8]
    fields[2] = (fields[2] & ~0xFF) | (salt & 0xFF)
    abytes = (auxBytes + C.ALIGN_MASK) & ~C.ALIGN_MASK
    if auxBytes and C.HDR_SIZE <= hbytes and hbytes + abytes <= len(buf):
        fields[7] = crc32c(bytes(buf[hbytes:hbytes + abytes]))
    fields[12] = 0
    HEADER.pack_into(buf, 0, *fields)
    if C.HDR_SIZE <= hbytes <= len(buf):
        struct.pack_into("<I", buf, 0x3C, crc32c(bytes(buf[:hbytes])))
    return bytes(buf)


class DMSGFuzzTests(SynchronousTestCase):
    """Random and mutated DMSG input against an exporting/importing node."""

    def setUp(self):
        self.watch = FailureWatch(self)
        self.rwPath = self.mktemp()
        self.roPath = self.mktemp()
        self.rwInit = pattern(SIZE, 1)
        self.roInit = pattern(SIZE // 2, 2)
        self.count = 0
        self.ops = 0

    def tearDown(self):
        log.info("fuzz: {name}: {n} cases, {ops} BLK I/O requests reached "
                 "the exporter", name=self.id(), n=self.count, ops=self.ops)

    def node(self):
        for path, data in ((self.rwPath, self.rwInit),
                           (self.roPath, self.roInit)):
            with open(path, "wb") as f:
                f.write(data)
        exporter = Exporter(linkInflight=256 * 1024)
        for serial, path, ro in (("serno/F", self.rwPath, False),
                                 ("serno/RO", self.roPath, True)):
            spec = ExportSpec(serial, path, ro, 512, "fuzz/" + serial)
            exporter.add(spec, openStore(spec, None, None))
        self.clock = Clock()
        importer = Importer(self.clock, linger=5)
        return Node(exporter, importer, "fuzz")

    def stream(self, ops, spans, handshake):
        """Encode the ops as the raw peer would, mutated and fixed."""
        frames = []
        seq = 0
        last = [1, 1]

        def resolve(ref, i):
            if ref == "span":
                return spans[i % len(spans)] if spans else 1
            if ref == "last":
                return last[-1]
            if ref == "last2":
                return last[-2]
            return ref
        if handshake:
            for m in (Message(C.LNK_CONN | C.CREATE, 1, ext=LnkConn(
                          peer_mask=1 << C.PEER_BLOCK,
                          peer_type=C.PEER_BLOCK, peer_label=b"fuzz")),
                      Message(C.LNK_ERROR | C.CREATE | C.REPLY | C.REVTRANS,
                              1)):
                m.salt = seq
                frames.append(b"".join(bytes(b) for b in encodeMessage(m)))
                seq += 1
        for i, op in enumerate(ops):
            cmd = op["cmd"] | op["flags"]
            msgid = resolve(op["msgid"], i)
            if op["flags"] & C.CREATE and not op["flags"] & C.REPLY:
                last.append(msgid)
            ext = op["ext"]
            if ext == "auto":
                ext = _autoExt(op["cmd"], i)
            # Keep the extension where the header has room for it.
            msg = Message(cmd, msgid, resolve(op["circuit"], i + 1),
                          op["error"], ext, op["aux"], seq)
            try:
                frame = b"".join(bytes(b) for b in encodeMessage(msg))
            except Exception:
                msg.ext = None
                frame = b"".join(bytes(b) for b in encodeMessage(msg))
            if op["mutate"]:
                buf = bytearray(frame)
                for pos, value in op["mutate"]:
                    buf[pos % len(buf)] = value
                frame = fixFrame(buf, seq)
            frames.append(frame)
            seq += 1
        return b"".join(frames)

    def drive(self, ops, handshake, chunk):
        self.count += 1
        node = self.node()
        healthy = RawPeer(node, name="healthy")
        healthy.handshake()
        spans = sorted(healthy.spans())
        fuzzed = RawPeer(node, LinkLimits(transactions=256, children=64),
                         self.clock, name="fuzzed")
        fuzzed.poll()
        data = self.stream(ops, sorted(fuzzed.spans()) or spans, handshake)
        for i in range(0, len(data), chunk):
            fuzzed.link.dataReceived(data[i:i + chunk])
            if i % (chunk * 8) == 0:
                self.clock.advance(0.5)
        self.clock.advance(10)
        # What the link actually decoded (up to any framing error).
        seen = []
        dec = Decoder()
        try:
            seen = dec.feed(data)
        except Exception:
            seen = _decodeUntilError(data)
        written = []
        for m in seen:
            base = m.cmd & C.BASECMDMASK
            if base in (C.BLK_WRITE, C.BLK_FREEBLKS) and isinstance(
                    m.ext, BlkIO):
                written.append((m.ext.offset, m.ext.length))
        # The healthy link, beside it, still reads and writes.
        span = [s for s, ext in healthy.spans().items()
                if ext.pfs_label == b"serno/F"][0]
        healthy.poll()
        healthy.send(io(C.BLK_WRITE, 900, span, 0, 4096,
                        aux=pattern(4096, 9)),
                     io(C.BLK_READ, 901, span, 0, 4096))
        self.ops += sum(e.ops for e in node.exporter.exports.values())
        self.ops -= 2     # the healthy link's, below
        replies = {m.msgid: m for m in healthy.poll()}
        self.assertEqual(replies[900].error, 0)
        self.assertEqual(replies[901].aux, pattern(4096, 9))
        # Whatever labels the fuzzed peer gave its spans, NBD still works.
        checkNBDStrings(self, node.importer, bySerial=True)
        written.append((0, 4096))
        for peer in (fuzzed, healthy):
            if peer.link.connected:
                peer.link.connectionLost(Failure(ConnectionError("end")))
        node.importer.stop()
        for export in node.exporter.exports.values():
            export.store.close()
        self.watch.check(self)
        self.checkFiles(written)

    def checkFiles(self, written):
        with open(self.roPath, "rb") as f:
            self.assertEqual(f.read(), self.roInit, "read-only export "
                                                     "changed")
        with open(self.rwPath, "rb") as f:
            now = f.read()
        self.assertEqual(len(now), SIZE, "export size changed")
        touched = bytearray(SIZE)
        for offset, length in written:
            if offset < SIZE:
                end = min(SIZE, offset + length)
                touched[offset:end] = b"\1" * (end - offset)
        for i in range(SIZE):
            if not touched[i] and now[i] != self.rwInit[i]:
                self.fail("byte %d changed, no request wrote it" % (i,))

    @cases(300)
    @given(st.lists(messages, max_size=40), st.booleans(),
           st.sampled_from([1, 7, 64, 1000, 1 << 20]))
    def test_frames(self, ops, handshake, chunk):
        self.drive(ops, handshake or len(ops) > 30, chunk)

    @cases(100)
    @given(st.lists(st.one_of(spanMessage, spanMessage, ioMessage),
                    min_size=1, max_size=12),
           st.sampled_from([7, 64, 4096]))
    def test_hostileSpans(self, ops, chunk):
        """
        Issue 18: spans with non-UTF-8 and control-character labels,
        absurd sizes and maximum I/O, mixed with I/O: NBD names stay
        printable UTF-8 and the healthy link works (checked in drive).
        """
        self.drive(ops, True, chunk)

    @cases(200)
    @given(st.lists(st.tuples(
        st.sampled_from([C.BLK_OPEN, C.BLK_READ, C.BLK_WRITE,
                         C.BLK_FREEBLKS, C.BLK_FLUSH, C.BLK_CLOSE]),
        st.sampled_from(["span", "last", "last2"]),
        near(SIZE), near(SIZE), st.booleans(), st.booleans()),
        min_size=3, max_size=40))
    def test_ioSequences(self, ops):
        """Mostly well-formed I/O on opens and spans, near the edges."""
        out = []
        for cmd, parent, offset, length, delete, withAux in ops:
            ext = (BlkOpen(C.BLKOPEN_RD | C.BLKOPEN_WR)
                   if cmd in (C.BLK_OPEN, C.BLK_CLOSE)
                   else BlkIO(offset % (2 ** 64), length % (2 ** 32)))
            aux = None
            if cmd == C.BLK_WRITE and withAux:
                aux = pattern(min(length, 70000), 5)
            out.append({"cmd": cmd, "msgid": "new", "circuit": parent,
                        "flags": C.CREATE | C.REVCIRC * (parent == "span")
                        | (C.DELETE if delete else 0),
                        "error": 0, "ext": ext, "aux": aux, "mutate": []})
        counter = iter(range(5000, 10 ** 6))
        for op in out:
            op["msgid"] = next(counter)
        self.drive(out, True, 4096)


def checkNBDStrings(test, registry, bySerial=False):
    """
    NBD_OPT_LIST and NBD_OPT_INFO over every device of C{registry} answer
    with printable UTF-8 names and descriptions (proto.md), whatever
    serials the devices have; with C{bySerial}, each device is found by
    the description LIST gave (its shown serial) too.
    """
    neg = Negotiator(registry)
    decision = neg.handleOption(wire.OPT_LIST, b"")
    found = []
    for reply in decision.replies[:-1]:
        body = reply[wire._OPTION_REPLY.size:]
        (n,) = struct.unpack_from(">I", body)
        name = body[4:4 + n].decode("utf-8")
        description = body[4 + n:].decode("utf-8")
        test.assertTrue(name.isprintable(), name)
        test.assertTrue(description.isprintable(), description)
        found.append((name, description))
    test.assertEqual(len(found), len(registry.devices()))
    for name, description in found:
        keys = [name, description] if bySerial else [name]
        for key in keys:
            info = neg.handleOption(wire.OPT_INFO, wire.encodeExportRequest(
                key, (wire.INFO_DESCRIPTION,)))
            (_, _, kind, _) = wire._OPTION_REPLY.unpack_from(
                info.replies[-1])
            test.assertEqual(kind, wire.REP_ACK, key)
    return found


def _autoExt(cmd, i):
    """An extension that fits the command, with edgy numbers."""
    base = cmd & C.BASECMDMASK
    edges = [0, 512, SIZE - 512, SIZE, SIZE + 512, 2 ** 63]
    if base in (C.BLK_READ, C.BLK_WRITE, C.BLK_FLUSH, C.BLK_FREEBLKS):
        return BlkIO(edges[i % 6] if i % 3 else (i * 512) % SIZE,
                     [512, 4096, 0, C.AUX_MAX + 1][i % 4])
    if base in (C.BLK_OPEN, C.BLK_CLOSE):
        return BlkOpen(C.BLKOPEN_RD | C.BLKOPEN_WR)
    if base == C.LNK_SPAN:
        serials = [b"serno/S0", b"serno/S1"] + HOSTILE_LABELS
        return LnkSpan(C.PEER_BLOCK, [SIZE, 0, 2 ** 63][i % 3], 512,
                       HOSTILE_LABELS[i % len(HOSTILE_LABELS)],
                       serials[i % len(serials)])
    if base == C.LNK_CONN:
        return LnkConn(1 << C.PEER_BLOCK, C.PEER_BLOCK)
    return None


def _decodeUntilError(data):
    dec = Decoder()
    out = []
    for i in range(0, len(data), 64):
        try:
            out.extend(dec.feed(data[i:i + 64]))
        except Exception:
            break
    return out


# ----------------------------------------------------------------------
# NBD

names = st.sampled_from(["xa0", "ro0", "", "SER-0", "nope", "x" * 300])
infos = st.lists(st.integers(0, 5), max_size=4)
options = st.one_of(
    st.tuples(st.sampled_from([wire.OPT_GO, wire.OPT_INFO]),
              st.builds(wire.encodeExportRequest, names, infos)),
    st.tuples(st.sampled_from([wire.OPT_LIST_META_CONTEXT,
                               wire.OPT_SET_META_CONTEXT]),
              st.builds(wire.encodeMetaContextRequest, names,
                        st.lists(st.sampled_from(
                            ["base:allocation", "base:", "qemu:x", ""]),
                            max_size=3))),
    st.tuples(st.sampled_from([wire.OPT_LIST, wire.OPT_STRUCTURED_REPLY,
                               wire.OPT_STARTTLS, wire.OPT_ABORT,
                               wire.OPT_EXTENDED_HEADERS,
                               wire.OPT_EXPORT_NAME]),
              st.one_of(st.just(b""), names.map(str.encode))),
    st.tuples(st.integers(0, 2 ** 32 - 1), st.binary(max_size=64)))

# Mostly plausible requests (aligned, in range, known flags), so the
# device is reached; the rest anywhere near the edges or wild.
plausible = st.tuples(
    st.sampled_from([0, 1, 3, 4, 5, 6, 7]), st.sampled_from([0, 0, 0, 1]),
    st.integers(0, SIZE // 512 + 32).map(lambda n: n * 512),
    st.integers(1, 32).map(lambda n: n * 512), st.none())
wild = st.tuples(
    st.one_of(st.integers(0, 9), st.integers(0, 2 ** 16 - 1)),
    st.one_of(st.sampled_from([0, 1, 2, 4, 8, 16, 31]),
              st.integers(0, 2 ** 16 - 1)),
    near(SIZE), near(SIZE).map(lambda v: v % 2 ** 32),
    st.one_of(st.none(), st.integers(0, 9000)))
requests = st.one_of(plausible, plausible, plausible, wild)


class NBDFuzzTests(SynchronousTestCase):
    def setUp(self):
        self.watch = FailureWatch(self)
        self.count = 0
        self.ops = 0

    def tearDown(self):
        log.info("fuzz: {name}: {n} cases, {ops} device operations from "
                 "fuzzed input", name=self.id(), n=self.count, ops=self.ops)

    def serve(self):
        self.rw = MemoryDevice("xa0", "SER-0", SIZE)
        self.rw.data[:] = pattern(SIZE, 3)
        self.ro = MemoryDevice("ro0", "SER-1", SIZE // 2, readOnly=True)
        self.ro.data[:] = pattern(SIZE // 2, 4)
        # A device whose serial is hostile bytes (issue 18, item 1).
        self.hostile = MemoryDevice("hx0", HOSTILE_LABELS[0], 4096)
        self.clock = Clock()
        self.factory = NBDServerFactory(
            Registry([self.rw, self.ro, self.hostile]),
            tlsContextFactory=object(),
            clock=self.clock, maxInflightRequests=16)

    def connect(self):
        proto = self.factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 4242))
        t = TLSStringTransport(lenient=True)
        proto.makeConnection(t)
        return Peer(proto, t)

    def drive(self, data, chunk, written):
        self.count += 1
        peer = self.connect()
        for i in range(0, len(data), chunk):
            peer.proto.dataReceived(data[i:i + chunk])
        self.clock.advance(60)
        # A healthy client on the same server.
        good = self.connect()
        good.handshake()
        self.assertEqual(good.go()[-1][1], wire.REP_ACK)
        good.request(wire.CMD_WRITE, 1, 0, 512, payload=pattern(512, 8))
        good.request(wire.CMD_READ, 2, 0, 512)
        self.assertEqual(good.simple(), (0, 1, b""))
        self.assertEqual(good.simple(512), (0, 2, pattern(512, 8)))
        written.append((0, 512))
        self.ops += len(self.rw.log) + len(self.ro.log) - 2
        checkNBDStrings(self, self.factory.registry)
        for p in (peer, good):
            p.proto.connectionLost(Failure(ConnectionError("end")))
        self.watch.check(self)
        self.assertEqual(self.ro.data, bytearray(pattern(SIZE // 2, 4)))
        self.assertEqual(len(self.rw.data), SIZE)
        for name, offset, length in self.rw.log + self.ro.log:
            self.assertLessEqual(offset + length, SIZE, (name, offset))
        touched = bytearray(SIZE)
        for offset, length in written:
            if offset < SIZE:
                end = min(SIZE, offset + length)
                touched[offset:end] = b"\1" * (end - offset)
        init = pattern(SIZE, 3)
        for i in range(SIZE):
            if not touched[i] and self.rw.data[i] != init[i]:
                self.fail("device byte %d changed, no request wrote it" % (
                    i,))

    @cases(300)
    @given(st.one_of(st.sampled_from([1, 3]), st.integers(0, 2 ** 32 - 1)),
           st.lists(options, max_size=12), st.binary(max_size=40),
           st.sampled_from([1, 5, 64, 4096]))
    def test_handshakes(self, flags, opts, tail, chunk):
        self.serve()
        data = wire.encodeClientFlags(flags) + b"".join(
            wire.encodeOption(o, d) for o, d in opts) + tail
        self.drive(data, chunk, [])

    @cases(300)
    @given(st.booleans(), st.sampled_from(["xa0", "xa0", "xa0", "ro0"]),
           st.lists(requests, min_size=3, max_size=30),
           st.sampled_from([1, 13, 512, 1 << 20]))
    def test_requests(self, structured, name, reqs, chunk):
        self.serve()
        data = bytearray(wire.encodeClientFlags(3))
        if structured:
            data += wire.encodeOption(wire.OPT_STRUCTURED_REPLY)
            data += wire.encodeOption(
                wire.OPT_SET_META_CONTEXT,
                wire.encodeMetaContextRequest(name, ["base:allocation"]))
        data += wire.encodeOption(
            wire.OPT_GO, wire.encodeExportRequest(name, (3,)))
        written = []
        for i, (kind, flags, offset, length, payload) in enumerate(reqs):
            data += wire.encodeRequest(flags, kind, i, offset, length)
            if kind in (wire.CMD_WRITE, wire.CMD_TRIM,
                        wire.CMD_WRITE_ZEROES) and name == "xa0":
                written.append((offset, length))
            if kind == wire.CMD_WRITE:
                # The declared length, or (desynchronising) another one.
                n = length if payload is None or length <= 9000 and (
                    payload % 2) else payload
                data += pattern(min(n, 1 << 16), 6)
        self.drive(bytes(data), chunk, written)
