"""
Issue 18's black-box attack run, replayed against an importing node: a
raw DMSG peer advertises spans whose labels are bytes no codec chose
(built at the byte level, as a hostile peer sends them), and NBD option
haggling, logs, control and metrics must stay well-formed.
"""

from twisted.internet.task import Clock
from twisted.logger import eventAsJSON, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.control import metrics
from xdiskd.dmsg import constants as C
from xdiskd.dmsg import wire as dwire
from xdiskd.dmsg.limits import LinkLimits
from xdiskd.dmsg.wire import Message, RawExt
from xdiskd.nbd import wire
from xdiskd.nbd.options import Negotiator
from xdiskd.node import Node
from xdiskd.xa.importer import Importer
from tests.rawpeer import RawPeer

#: Issue 18 item 1: a pfs_label of 64 bytes 0x80..0xbf (not UTF-8).
NOT_UTF8 = bytes(range(0x80, 0xC0))
#: Issue 18 item 2: a newline, a forged log line and an ANSI escape.
FORGED = b"hx/\n[-] forged\x1b[31m"
SIZE = 64 << 20
MiB = 1 << 20


def spanExt(label, size=SIZE, blksize=512, maxio=MiB, peer=b"evil/peer"):
    """A LNK_SPAN extension packed by hand (spec §4.3 layout)."""
    data = bytearray(dwire._SPAN.size)
    dwire._SPAN.pack_into(data, 0, bytes(16), bytes(16), C.PFSTYPE_DEFAULT,
                          C.PEER_BLOCK, C.SPAN_PROTO_1, 0, b"", 0, 0, size,
                          blksize, maxio, 0, b"", peer, label)
    return RawExt(bytes(data))


def connExt(label):
    """A LNK_CONN extension packed by hand (spec §4.2 layout)."""
    data = bytearray(dwire._CONN.size)
    dwire._CONN.pack_into(data, 0, bytes(16), bytes(16), bytes(16),
                          1 << C.PEER_BLOCK, C.PEER_BLOCK, 0,
                          C.SPAN_PROTO_1, 0, 0, 0, b"", label)
    return RawExt(bytes(data))


def replyParts(reply):
    """(option, reply type, data) of one option reply."""
    _, option, kind, n = wire._OPTION_REPLY.unpack_from(reply)
    return option, kind, reply[wire._OPTION_REPLY.size:]


def printable(test, text):
    test.assertTrue(text.isprintable(), repr(text))
    test.assertNotIn("\x1b", text)


class Base(SynchronousTestCase):
    limits = None

    def setUp(self):
        self.clock = Clock()
        self.importer = Importer(self.clock, linger=5)
        self.node = Node(None, self.importer, "victim")
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver,
                        self.events.append)
        self.peer = self.connect()
        self.msgid = 100

    def connect(self, limits=None, conn=None):
        peer = RawPeer(self.node, limits or self.limits, self.clock)
        if conn is None:
            peer.handshake(C.PEER_BLOCK)
        else:
            peer.send(Message(C.LNK_CONN | C.CREATE | 6, 1, ext=conn),
                      Message(C.LNK_ERROR | C.CREATE | C.REPLY
                              | C.REVTRANS, 1))
            peer.poll()
        return peer

    def span(self, label, peer=None, **kw):
        """Advertise a span; return its msgid."""
        self.msgid += 1
        (peer or self.peer).send(Message(C.LNK_SPAN | C.CREATE | 7,
                                         self.msgid, ext=spanExt(label,
                                                                 **kw)))
        return self.msgid

    def withdraw(self, msgid, peer=None):
        (peer or self.peer).send(Message(C.LNK_ERROR | C.DELETE, msgid))

    def logged(self):
        """Every log event since setUp, as text and as a JSON line."""
        return [(formatEvent(e), eventAsJSON(e)) for e in self.events
                if e.get("log_namespace", "").startswith("xdiskd")]


class LabelTests(Base):
    def test_nonUTF8SerialKeepsNBDWorking(self):
        """
        Item 1: a span labelled with 64 bytes 0x80..0xbf is a unit whose
        NBD name and description are printable UTF-8; LIST, INFO by its
        shown serial, and a GO refused with the serial in its text all
        answer, for this and any other client.
        """
        self.span(b"good/0")
        msgid = self.span(NOT_UTF8)
        self.assertEqual(len(self.importer.units), 2)
        for _ in range(2):      # "every NBD_OPT_LIST, from any client"
            decision = Negotiator(self.importer).handleOption(
                wire.OPT_LIST, b"")
            servers = [replyParts(r) for r in decision.replies]
            self.assertEqual([k for _, k, _ in servers],
                             [wire.REP_SERVER, wire.REP_SERVER,
                              wire.REP_ACK])
            texts = [data[4:].decode("utf-8") for _, _, data in servers[:2]]
        shown = "".join("\\x%02x" % b for b in NOT_UTF8[:63])
        self.assertEqual(texts, ["xa0good/0", "xa1" + shown])
        unit = self.importer.lookup(shown)
        self.assertEqual(unit.name, "xa1")
        self.assertEqual(unit.serial, NOT_UTF8[:63])
        # GO with no path left: the refusal names the serial.
        self.withdraw(msgid)
        d = Negotiator(self.importer).handleOption(
            wire.OPT_GO, wire.encodeExportRequest("xa1"))
        decision = self.successResultOf(d)
        [(_, kind, text)] = [replyParts(r) for r in decision.replies]
        self.assertEqual(kind, wire.REP_ERR_UNKNOWN)
        self.assertIn(shown, text.decode("utf-8"))
        printable(self, text.decode("utf-8"))

    def test_controlCharactersEscaped(self):
        """
        Item 2: a serial with a newline and an ANSI escape, and a
        LNK_CONN peer_label with them, reach no log line, JSON log field,
        NBD error text, control reply or metrics label raw.
        """
        peer = self.connect(conn=connExt(FORGED))
        msgid = self.span(FORGED, peer)
        self.withdraw(msgid, peer)
        d = Negotiator(self.importer).handleOption(
            wire.OPT_GO, wire.encodeExportRequest("xa0"))
        [(_, kind, text)] = [replyParts(r) for r in
                             self.successResultOf(d).replies]
        self.assertEqual(kind, wire.REP_ERR_UNKNOWN)
        text = text.decode("utf-8")
        printable(self, text)
        self.assertIn("hx/\\x0a[-] forged\\x1b[31m", text)
        lines = self.logged()
        self.assertTrue(any("forged" in t for t, _ in lines))
        for text, line in lines:
            printable(self, text)
            self.assertNotIn("\\u001b", line)
            self.assertNotIn("\\n[-]", line)
        [unit] = self.importer.devices()
        snap = unit.snapshot()
        printable(self, snap["serial"])
        rendered = metrics.Registry()
        metrics._units(rendered, self.importer)
        for line in rendered.render().splitlines():
            printable(self, line)


class NameTests(Base):
    def test_serialCannotTakeAName(self):
        """
        A span whose serial is another unit's name (C{xa1}) makes its
        own unit (xa0); NBD and the control API still find xa1 by that
        name, not the impostor.
        """
        self.span(b"xa1")
        self.span(b"serno/A")
        self.assertEqual(self.importer.lookup("xa1").serial, b"serno/A")
        self.assertEqual(self.importer.lookup("xa0").serial, b"xa1")
        self.assertIsNone(self.importer.lookup("xa2"))


class SpanCheckTests(Base):
    def test_mismatchedSpanRefused(self):
        """
        Item 3: a span with a real unit's serial but another size, or
        another sector size, is not a path: refused, counted, logged,
        and the unit keeps its I/O size.
        """
        self.span(b"serno/A")
        [unit] = self.importer.devices()
        self.assertEqual(unit.maxIO, MiB)
        self.span(b"serno/A", size=2 ** 63, maxio=1)
        self.span(b"serno/A", blksize=4096)
        self.assertEqual(len(unit.spans), 1)
        self.assertEqual(unit.maxIO, MiB)
        self.assertEqual(self.importer.refused["mismatch"], 2)
        self.assertTrue(any("refused" in t and "9223372036854775808" in t
                            for t, _ in self.logged()))
        rendered = metrics.Registry()
        metrics._units(rendered, self.importer)
        self.assertIn('xdiskd_import_spans_refused_total{reason="mismatch"}'
                      ' 2', rendered.render())

    def test_resizedExportReplacesIdleUnit(self):
        """
        A unit with no path and no open gives way to a span of its
        serial with another size (an export resized and re-added): the
        new geometry is the unit's at once, nothing is refused.
        """
        first = self.span(b"serno/A")
        old = self.importer.lookup("serno/A")
        self.withdraw(first)
        self.span(b"serno/A", size=2 * SIZE, blksize=4096)
        unit = self.importer.lookup("serno/A")
        self.assertIsNot(unit, old)
        self.assertTrue(old.gone)
        self.assertEqual((unit.size, unit.sectorSize), (2 * SIZE, 4096))
        self.assertEqual(len(unit.spans), 1)
        self.assertEqual(self.importer.refused["mismatch"], 0)
        self.assertTrue(any("torn down (its serial now comes with" in t
                            for t, _ in self.logged()))
        # The old unit's linger timer is gone with it.
        self.clock.advance(60)
        self.assertIs(self.importer.lookup("serno/A"), unit)

    def test_refusedSpanTakenWhenUnitGoes(self):
        """
        A span refused as unlike its serial's unit is looked at again
        when that unit is torn down: it becomes the unit then, without
        the peer having to send it again.
        """
        first = self.span(b"serno/A")
        other = self.connect()
        self.span(b"serno/A", other, size=2 * SIZE)
        self.assertEqual(self.importer.refused["mismatch"], 1)
        self.withdraw(first)
        self.assertEqual(self.importer.lookup("serno/A").size, SIZE)
        self.clock.advance(6)       # linger=5
        unit = self.importer.lookup("serno/A")
        self.assertEqual(unit.size, 2 * SIZE)
        self.assertEqual([s.link for s in unit.spans], [other.link])

    def test_refusedSpanWithdrawnForgotten(self):
        """A refused span withdrawn before the unit goes is not used."""
        first = self.span(b"serno/A")
        other = self.connect()
        mismatched = self.span(b"serno/A", other, size=2 * SIZE)
        self.withdraw(mismatched, other)
        self.withdraw(first)
        self.clock.advance(6)
        self.assertIsNone(self.importer.lookup("serno/A"))
        self.assertEqual(self.importer._mismatched, {})

    def test_openUnitKeepsGeometry(self):
        """
        A unit a client has open keeps its geometry while it has no
        path: a span with another size is refused, not taken.
        """
        first = self.span(b"serno/A")
        unit = self.importer.lookup("serno/A")
        unit.opencnt = 1
        self.withdraw(first)
        self.span(b"serno/A", size=2 * SIZE)
        self.assertIs(self.importer.lookup("serno/A"), unit)
        self.assertEqual(unit.size, SIZE)
        self.assertEqual(self.importer.refused["mismatch"], 1)

    def test_badSectorSizeRefused(self):
        """
        A span whose sector size NBD cannot advertise (not a power of
        two in 512..65536) makes no unit; 0 means 512.
        """
        for blksize in (2 ** 32 - 1, 1000, 256, 1 << 17, 1):
            self.span(b"odd/%d" % (blksize,), blksize=blksize)
        self.assertEqual(self.importer.units, {})
        self.assertEqual(self.importer.refused["geometry"], 5)
        self.span(b"zero", blksize=0)
        self.assertEqual(self.importer.lookup("zero").sectorSize, 512)

    def test_smallMaxIORaisedToFloor(self):
        """
        Item 3: a path stating a maximum I/O of 1 byte is a path whose
        limit is max(sector size, 64 KiB), not 512 bytes.
        """
        self.span(b"serno/A")
        self.span(b"serno/A", maxio=1)
        [unit] = self.importer.devices()
        self.assertEqual(len(unit.spans), 2)
        self.assertEqual(unit.maxIO, 64 * 1024)


class UnitCreationTests(Base):
    limits = LinkLimits(units=4)

    def test_unitsPerLinkCapped(self):
        """
        Item 5: a link makes at most C{units} units; further serials are
        refused and counted, the link stays up, spans to its units and
        other links' new units are still taken.
        """
        for i in range(6):
            self.span(b"serno/%d" % (i,))
        self.assertEqual(len(self.importer.units), 4)
        self.assertEqual(self.importer.refused["units"], 2)
        self.assertTrue(self.peer.link.connected)
        other = self.connect()
        self.span(b"serno/0", other)
        self.span(b"serno/9", other)
        self.assertEqual(len(self.importer.units), 5)
        self.assertEqual(len(self.importer.lookup("serno/0").spans), 2)

    def test_creationDoesNotWalkUnits(self):
        """
        Item 5: making a unit does not go over every existing unit (it
        was quadratic: the set of used numbers rebuilt per unit); the
        lowest free number is still the one used.
        """
        walks = []

        class Units(dict):
            def values(self):
                walks.append(len(self))
                return dict.values(self)

            def __iter__(self):
                walks.append(len(self))
                return dict.__iter__(self)

        self.importer.units = Units()
        peer = self.connect(LinkLimits(units=1000, children=1000))
        ids = [self.span(b"serno/%d" % (i,), peer) for i in range(300)]
        self.assertEqual(walks, [])
        self.assertEqual(self.importer.lookup("serno/299").name, "xa299")
        for i in (7, 3):
            self.withdraw(ids[i], peer)
        self.clock.advance(6)
        self.span(b"serno/new1", peer)
        self.span(b"serno/new2", peer)
        self.span(b"serno/new3", peer)
        self.assertEqual([self.importer.lookup(b).name for b in
                          ("serno/new1", "serno/new2", "serno/new3")],
                         ["xa3", "xa7", "xa300"])


class ImporterUnitLimitTests(Base):
    """
    --max-units: the units of all links together are bounded; a link's
    own C{units} limit does not bound a peer that reconnects, or many.
    """

    def setUp(self):
        Base.setUp(self)
        self.importer.maxUnits = 3

    def test_peerThatReconnectsIsBounded(self):
        """
        A peer that makes units, drops the link and comes back with new
        serials gets no further than the limit while the old units are
        in use; refusals are counted and logged; the link stays up.
        """
        first = self.connect()
        for i in range(3):
            self.span(b"serno/old%d" % (i,), first)
        for unit in self.importer.devices():
            unit.opencnt = 1          # in use: never reclaimed
        first.link.transport.loseConnection()
        again = self.connect()
        self.span(b"serno/new0", again)
        self.assertEqual(len(self.importer.units), 3)
        self.assertIsNone(self.importer.lookup("serno/new0"))
        self.assertEqual(self.importer.refused["max-units"], 1)
        self.assertTrue(any("--max-units 3" in t for t, _ in self.logged()))
        self.assertTrue(again.link.connected)

    def test_lingeringUnitsReclaimedAtLimit(self):
        """
        At the limit, the unit that has lingered longest (no paths, no
        opens) is torn down early to make room; one with a path is kept.
        """
        a = self.connect()
        ids = [self.span(b"serno/%d" % (i,), a) for i in range(3)]
        self.withdraw(ids[1], a)
        self.clock.advance(1)
        self.withdraw(ids[0], a)
        self.span(b"serno/new", a)
        self.assertEqual(sorted(u.serial for u in self.importer.devices()),
                         [b"serno/0", b"serno/2", b"serno/new"])
        self.span(b"serno/new2", a)
        self.assertEqual(sorted(u.serial for u in self.importer.devices()),
                         [b"serno/2", b"serno/new", b"serno/new2"])
        self.span(b"serno/new3", a)
        self.assertEqual(len(self.importer.units), 3)
        self.assertEqual(self.importer.refused["max-units"], 1)
        # The reclaimed units' timers were cancelled: nothing fires later.
        self.clock.advance(60)
        self.assertEqual(len(self.importer.units), 3)


class RealClientTests(SynchronousTestCase):
    """
    The attack run's first two findings against a real importer daemon:
    a raw DMSG peer on its --listen socket, libnbd's nbdinfo as client.
    """

    def test_nbdinfoListsHostileSerials(self):
        """
        With spans labelled 0x80..0xbf and C{hx/\\n[-] forged\\x1b[31m}
        up, C{nbdinfo --list} works and shows both escaped; the log has
        neither the ANSI escape nor the forged line.
        """
        import json
        import os
        import socket
        from tests.daemons import Daemon, requireTools, run
        from xdiskd.dmsg.wire import Encoder
        requireTools("nbdinfo")
        d = Daemon(self, "importer", [])
        dmsg = os.path.join(d.dir, "dmsg.sock")
        nbd = os.path.join(d.dir, "nbd.sock")
        d.args += ["--listen", "unix:" + dmsg, "--nbd", "unix:" + nbd]
        d.start()
        d.waitLog("DMSG listening")
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(peer.close)
        peer.settimeout(20)
        peer.connect(dmsg)
        enc = Encoder()
        msgs = [Message(C.LNK_CONN | C.CREATE | 6, 1, ext=connExt(FORGED)),
                Message(C.LNK_ERROR | C.CREATE | C.REPLY | C.REVTRANS, 1),
                Message(C.LNK_SPAN | C.CREATE | 7, 2, ext=spanExt(NOT_UTF8)),
                Message(C.LNK_SPAN | C.CREATE | 7, 3, ext=spanExt(FORGED))]
        peer.sendall(b"".join(b"".join(bytes(b) for b in enc.encode(m))
                              for m in msgs))
        d.waitLog("xa1: new unit")
        d.waitLog("NBD listening")
        # (No GO: the units would wait for this peer to answer BLK_OPEN.)
        p = run(["nbdinfo", "--json", "--list",
                 "nbd+unix:///?socket=" + nbd], 30)
        exports = {e["export-name"]: e.get("description")
                   for e in json.loads(p.stdout)["exports"]}
        self.assertEqual(exports, {
            "xa0": "".join("\\x%02x" % b for b in NOT_UTF8[:63]),
            "xa1": "hx/\\x0a[-] forged\\x1b[31m"})
        log = d.logText()
        self.assertIn("forged", log)
        self.assertNotIn("\x1b", log)
        self.assertNotIn("\n[-] forged", log)
