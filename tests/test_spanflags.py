"""
Tests for L{xdiskd.dmsg.spanflags}: an export given C{,ro} says so in
its span, and an importer reports it before it opens the unit.
"""

from twisted.trial.unittest import SynchronousTestCase

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.spanflags import READ_ONLY, flagsOf, withFlags
from xdiskd.dmsg.wire import LnkSpan, Message, encodeMessage
from xdiskd.export.server import Export
from xdiskd.export.spec import ExportSpec
from xdiskd.export.store import openStore
from xdiskd.nbd import wire as nwire
from xdiskd.nbd.options import transmissionFlags
from tests.stack import makeImage
from tests.test_hostile import Base, RawExt

SIZE = 1 << 20


def rawSpan(label, flags=None):
    """A LNK_SPAN extension as a peer sends it, flags at 0x90 or none."""
    ext = LnkSpan(media_bytes=SIZE, media_blksize=512, peer_label=b"h/d",
                  pfs_label=label,
                  media_rest=b"" if flags is None else withFlags(flags))
    raw = b"".join(encodeMessage(Message(C.LNK_SPAN | C.CREATE, 1, 0, 0,
                                         ext)))
    return RawExt(raw[C.HDR_SIZE:])


class LayoutTests(SynchronousTestCase):
    def test_readOnlyAt0x90(self):
        """The flag is bit 0 of the little-endian u32 at 0x90."""
        ext = LnkSpan(media_bytes=SIZE, media_rest=withFlags(READ_ONLY))
        raw = b"".join(encodeMessage(Message(C.LNK_SPAN | C.CREATE, 1, 0,
                                             0, ext)))
        self.assertEqual(raw[0x90:0x94], b"\x01\0\0\0")
        self.assertEqual(raw[0x94:0xB0], bytes(28))
        self.assertEqual(flagsOf(LnkSpan.unpackFrom(raw)), READ_ONLY)

    def test_dragonFlySpanHasNone(self):
        """DragonFly leaves the union's rest 0: no flags."""
        raw = b"".join(encodeMessage(Message(C.LNK_SPAN | C.CREATE, 1, 0,
                                             0, LnkSpan(media_bytes=SIZE))))
        self.assertEqual(flagsOf(LnkSpan.unpackFrom(raw)), 0)
        self.assertEqual(flagsOf(LnkSpan()), 0)

    def test_exportStatesIt(self):
        """An export given ,ro states READ_ONLY; a writable one does not."""
        path = makeImage(self)
        for ro in (True, False):
            spec = ExportSpec("serno/R", path, ro, 512, "h/r")
            store = openStore(spec, None, None)
            self.addCleanup(store.close)
            self.assertEqual(flagsOf(Export(spec, store).spanExt()),
                             READ_ONLY if ro else 0)


class ImporterTests(Base):
    def send(self, ext):
        self.msgid += 1
        self.peer.send(Message(C.LNK_SPAN | C.CREATE | 7, self.msgid,
                               ext=ext))
        return self.msgid

    def nbdReadOnly(self, unit):
        flags = transmissionFlags(unit, structuredReplies=True)
        return bool(flags & nwire.FLAG_READ_ONLY)

    def test_readOnlyBeforeOpen(self):
        """
        A unit whose span says READ_ONLY is read-only to NBD before
        anyone opened it (NBD_OPT_INFO); a DragonFly span (no flags) and
        a writable xdiskd one are not.
        """
        self.send(rawSpan(b"serno/RO", READ_ONLY))
        self.send(rawSpan(b"serno/RW", 0))
        self.send(rawSpan(b"serno/DF"))
        ro, rw, df = (self.importer.lookup(s) for s in
                      ("serno/RO", "serno/RW", "serno/DF"))
        self.assertTrue(self.nbdReadOnly(ro))
        self.assertFalse(self.nbdReadOnly(rw))
        self.assertFalse(self.nbdReadOnly(df))

    def test_exportChangedToWritable(self):
        """
        The export withdrawn and re-added writable (xdisk reload): the
        new span clears it, unless the unit is configured read-only.
        """
        first = self.send(rawSpan(b"serno/X", READ_ONLY))
        unit = self.importer.lookup("serno/X")
        self.withdraw(first)
        self.send(rawSpan(b"serno/X", 0))
        self.assertIs(self.importer.lookup("serno/X"), unit)
        self.assertFalse(self.nbdReadOnly(unit))
        unit.configuredReadOnly = True
        self.send(rawSpan(b"serno/X", 0))
        self.assertTrue(self.nbdReadOnly(unit))
