"""
Tests for L{xdiskd.export.incarnation}: which page cache an export's
writes go into, as its span states it.
"""

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.wire import LnkSpan, Message, encodeMessage
from xdiskd.export.incarnation import (
    bootId, incarnationOf, pageCacheIncarnation)
from xdiskd.export.server import Export
from xdiskd.export.spec import ExportSpec
from xdiskd.export.store import openStore
from tests.stack import makeImage

BOOT1 = b"6f0b7c1e-5f8e-4d59-a8f3-0c1f5a6b2d11"
BOOT2 = b"0d7c5a2e-9b4f-4a51-8c3e-7e2b1f6a9c42"


class _Store:
    def __init__(self, path, incarnation=None):
        self.path = path
        if incarnation is not None:
            self.incarnation = incarnation


class IncarnationTests(SynchronousTestCase):
    def setUp(self):
        self.path = makeImage(self)

    def test_sameFileSameBoot(self):
        """A restarted exporter of the same file on the same boot states
        the same value: a process kill loses nothing."""
        st = os.stat(self.path)
        self.assertEqual(pageCacheIncarnation(st, BOOT1),
                         pageCacheIncarnation(os.stat(self.path), BOOT1))
        self.assertNotEqual(pageCacheIncarnation(st, BOOT1), 0)

    def test_rebootOrOtherHostDiffers(self):
        """Another boot (a crash, a reboot, another host) differs."""
        st = os.stat(self.path)
        self.assertNotEqual(pageCacheIncarnation(st, BOOT1),
                            pageCacheIncarnation(st, BOOT2))

    def test_otherFileDiffers(self):
        other = makeImage(self)
        self.assertNotEqual(
            pageCacheIncarnation(os.stat(self.path), BOOT1),
            pageCacheIncarnation(os.stat(other), BOOT1))

    def test_blockDeviceByDeviceNumber(self):
        """A block device is named by its device number (its buffer
        cache), wherever its node is."""
        def blk(ino, rdev):
            return os.stat_result((stat.S_IFBLK | 0o600, ino, 5, 1, 0, 0,
                                   0, 0, 0, 0), {"st_rdev": rdev})
        self.assertEqual(pageCacheIncarnation(blk(10, 0x801), BOOT1),
                         pageCacheIncarnation(blk(99, 0x801), BOOT1))
        self.assertNotEqual(pageCacheIncarnation(blk(10, 0x801), BOOT1),
                            pageCacheIncarnation(blk(10, 0x802), BOOT1))

    def test_storeStatesItsOwn(self):
        """A store that knows better (the test power-loss store) states
        its own value; 0 would mean none and becomes 1."""
        self.assertEqual(incarnationOf(_Store(self.path, 42)), 42)
        self.assertEqual(incarnationOf(_Store(self.path, 0)), 1)
        self.assertEqual(incarnationOf(_Store(self.path), BOOT1),
                         pageCacheIncarnation(os.stat(self.path), BOOT1))

    def test_bootId(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(BOOT1 + b"\n")
        self.assertEqual(bootId(path), BOOT1)
        self.assertIsNone(bootId(path + ".absent"))
        if os.path.exists("/proc/sys/kernel/random/boot_id"):
            self.assertEqual(len(bootId()), 36)

    def test_spanStatesIt(self):
        """The export's span carries it in media_incarnation (the u64 at
        0x88, which DragonFly leaves 0), round trip through the codec."""
        spec = ExportSpec("serno/I", self.path, False, 512, "h/i")
        store = openStore(spec, None, None)
        self.addCleanup(store.close)
        export = Export(spec, store)
        self.assertEqual(export.incarnation, incarnationOf(store))
        ext = export.spanExt()
        self.assertEqual(ext.media_incarnation, export.incarnation)
        raw = b"".join(encodeMessage(Message(C.LNK_SPAN | C.CREATE, 1, 0,
                                             0, ext)))
        self.assertEqual(raw[0x88:0x90],
                         export.incarnation.to_bytes(8, "little"))
        self.assertEqual(raw[0x84:0x88], C.AUX_MAX.to_bytes(4, "little"))
        self.assertEqual(LnkSpan.unpackFrom(raw).media_incarnation,
                         export.incarnation)
        # DragonFly's span: zero there, read as "none stated".
        self.assertEqual(LnkSpan.unpackFrom(b"".join(encodeMessage(Message(
            C.LNK_SPAN | C.CREATE, 1, 0, 0, LnkSpan())))).media_incarnation,
            0)
