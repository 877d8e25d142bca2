"""
Tests for L{xdiskd.nbd.server}: the NBD server protocol, driven through a
L{StringTransport} by a client built from L{xdiskd.nbd.wire} helpers.
"""

import struct

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from xdiskd import errors
from xdiskd.interfaces import (
    IBlockDevice, IBlockDeviceRegistry, ICallbackBlockDevice)
from xdiskd.nbd import wire
from xdiskd.nbd.commands import SectorLocks
from xdiskd.nbd.server import NBDServerFactory

MiB = 1024 * 1024


@implementer(IBlockDevice)
class MemoryDevice:
    """
    A bytearray-backed block device.  With C{hold} set, every operation
    waits in C{held} until the test calls L{release}; the operation acts
    on the data only then, as a remote disk would.
    """

    def __init__(self, name="xa0", serial="SER-0", size=MiB, sectorSize=512,
                 readOnly=False):
        self.name = name
        self.serial = serial
        self.size = size
        self.sectorSize = sectorSize
        self.readOnly = readOnly
        self.data = bytearray(size)
        self.log = []
        self.unaligned = []
        self.opens = 0
        self.closes = 0
        self.openResult = None
        self.hold = False
        self.held = []
        self.failure = None

    def open(self):
        if self.openResult is not None:
            return self.openResult
        self.opens += 1
        return succeed(None)

    def close(self):
        self.closes += 1

    def _op(self, name, offset, length, action):
        self.log.append((name, offset, length))
        if offset % self.sectorSize or length % self.sectorSize:
            self.unaligned.append((name, offset, length))
        if self.hold:
            d = Deferred()
            self.held.append((name, offset, length, action, d))
            return d
        if self.failure is not None:
            return fail(self.failure)
        return succeed(action())

    def release(self, index=0):
        name, offset, length, action, d = self.held.pop(index)
        if self.failure is not None:
            d.errback(self.failure)
        else:
            d.callback(action())

    def releaseAll(self):
        while self.held:
            self.release()

    def read(self, offset, length):
        return self._op("read", offset, length,
                        lambda: bytes(self.data[offset:offset + length]))

    def readv(self, offset, length):
        # In 64 KiB pieces, as a split remote read would come.
        def action():
            end = offset + length
            return [bytes(self.data[o:min(o + 65536, end)])
                    for o in range(offset, end, 65536)]
        return self._op("read", offset, length, action)

    def write(self, offset, data):
        data = bytes(data)

        def action():
            self.data[offset:offset + len(data)] = data
        return self._op("write", offset, len(data), action)

    def flush(self):
        return self._op("flush", 0, 0, lambda: None)

    def trim(self, offset, length):
        def action():
            self.data[offset:offset + length] = bytes(length)
        return self._op("trim", offset, length, action)


@implementer(ICallbackBlockDevice)
class CallbackMemoryDevice(MemoryDevice):
    """
    A L{MemoryDevice} that also takes READ and WRITE with completion
    callbacks, which the server uses for plain requests; C{direct} logs
    those calls.
    """

    def __init__(self, *args, **kwargs):
        MemoryDevice.__init__(self, *args, **kwargs)
        self.direct = []

    def startRead(self, offset, length, done):
        self.direct.append(("read", offset, length))
        return _Handle(self.readv(offset, length), done)

    def startWrite(self, offset, data, done):
        self.direct.append(("write", offset, len(data)))
        return _Handle(self.write(offset, data), done)


class _Handle:
    """A Deferred seen through the ICallbackBlockDevice contract."""

    def __init__(self, d, done):
        self._d = d
        self.finished = False

        def fire(result):
            self.finished = True
            if isinstance(result, Failure):
                done(None, result)
            else:
                done(result, None)
        d.addBoth(fire)

    def cancel(self):
        self._d.cancel()


@implementer(IBlockDeviceRegistry)
class Registry:
    def __init__(self, devices):
        self._devices = list(devices)

    def lookup(self, name):
        for d in self._devices:
            if name in (d.name, d.serial):
                return d
        return None

    def devices(self):
        return sorted(self._devices, key=lambda d: d.name)


class TLSStringTransport(StringTransport):
    tlsStarted = None

    def startTLS(self, contextFactory):
        self.tlsStarted = contextFactory


class Peer:
    """The client end of a test connection."""

    def __init__(self, proto, transport):
        self.proto = proto
        self.transport = transport
        self.pos = 0

    def send(self, data, step=None):
        if step is None:
            self.proto.dataReceived(data)
        else:
            for i in range(0, len(data), step):
                self.proto.dataReceived(data[i:i + step])

    def available(self):
        return len(self.transport.value()) - self.pos

    def take(self, n):
        data = self.transport.value()
        if len(data) - self.pos < n:
            raise AssertionError("wanted %d bytes, server sent %d"
                                 % (n, len(data) - self.pos))
        chunk = data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def option(self, option, data=b""):
        self.send(wire.encodeOption(option, data))

    def optionReply(self):
        magic, option, kind, length = struct.unpack(">QIII", self.take(20))
        assert magic == wire.OPTION_REPLY_MAGIC
        return option, kind, self.take(length)

    def optionReplies(self):
        """Read replies up to and including the final one."""
        replies = []
        while True:
            reply = self.optionReply()
            replies.append(reply)
            if reply[1] == wire.REP_ACK or reply[1] & wire.REP_FLAG_ERROR:
                return replies

    def handshake(self, flags=3):
        assert self.take(18) == wire.NBDServerConnection().greeting()
        self.send(wire.encodeClientFlags(flags))

    def go(self, name="xa0", infos=(wire.INFO_BLOCK_SIZE,),
           structured=False, meta=False):
        if structured:
            self.option(wire.OPT_STRUCTURED_REPLY)
            assert self.optionReply()[1] == wire.REP_ACK
        if meta:
            self.option(wire.OPT_SET_META_CONTEXT,
                        wire.encodeMetaContextRequest(
                            name, ["base:allocation"]))
            assert self.optionReplies()[-1][1] == wire.REP_ACK
        self.option(wire.OPT_GO, wire.encodeExportRequest(name, infos))
        return self.optionReplies()

    def request(self, kind, cookie, offset=0, length=0, flags=0,
                payload=b"", step=None):
        if kind == wire.CMD_WRITE and not payload:
            payload = b"\0" * length
        self.send(wire.encodeRequest(flags, kind, cookie, offset, length)
                  + payload, step)

    def simple(self, length=0):
        """Read a simple reply; return (error, cookie, data)."""
        magic, error, cookie = struct.unpack(">IIQ", self.take(16))
        assert magic == wire.SIMPLE_REPLY_MAGIC, hex(magic)
        data = self.take(length) if length and not error else b""
        return error, cookie, data

    def chunk(self):
        """Read a structured chunk; return (flags, type, cookie, payload)."""
        magic, flags, kind, cookie, length = struct.unpack(
            ">IHHQI", self.take(20))
        assert magic == wire.STRUCTURED_REPLY_MAGIC, hex(magic)
        return flags, kind, cookie, self.take(length)


def infoExport(replies):
    for option, kind, data in replies:
        if kind == wire.REP_INFO and data[:2] == b"\0\0":
            return struct.unpack(">QH", data[2:])
    raise AssertionError("no NBD_INFO_EXPORT")


class ServerTestMixin:
    Device = MemoryDevice

    def connect(self, devices=None, transport=None, **kwargs):
        if devices is None:
            devices = [self.Device()]
        self.devices = devices
        self.factory = NBDServerFactory(Registry(devices), **kwargs)
        proto = self.factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 4242))
        transport = transport or StringTransport()
        proto.makeConnection(transport)
        return Peer(proto, transport)

    def transmit(self, device=None, structured=False, meta=False,
                 blockSize=True, **kwargs):
        """Connect and GO to xa0; return the peer."""
        peer = self.connect([device or self.Device()], **kwargs)
        peer.handshake()
        infos = (wire.INFO_BLOCK_SIZE,) if blockSize else ()
        replies = peer.go(infos=infos, structured=structured, meta=meta)
        self.assertEqual(replies[-1][1], wire.REP_ACK)
        self.flags = infoExport(replies)[1]
        return peer

    def lose(self, peer):
        peer.proto.connectionLost(Failure(ConnectionDone()))


class HandshakeTests(ServerTestMixin, SynchronousTestCase):
    def test_fakeDevice(self):
        verifyObject(IBlockDevice, MemoryDevice())
        verifyObject(IBlockDeviceRegistry, Registry([]))

    def test_greeting(self):
        peer = self.connect()
        self.assertEqual(peer.take(18), bytes.fromhex(
            "4e42444d41474943" "49484156454f5054" "0003"))
        self.assertIsNotNone(peer.transport.producer)

    def test_badClientFlags(self):
        peer = self.connect()
        peer.handshake(flags=4)
        self.assertTrue(peer.transport.disconnecting)

    def test_exportNameNoZeroes(self):
        """EXPORT_NAME: size and flags, without the zeroes if asked."""
        for flags, tail in ((3, 0), (1, 124)):
            peer = self.connect()
            peer.handshake(flags)
            peer.option(wire.OPT_EXPORT_NAME, b"xa0")
            size, tflags = struct.unpack(">QH", peer.take(10))
            self.assertEqual(size, MiB)
            self.assertTrue(tflags & wire.FLAG_HAS_FLAGS)
            self.assertEqual(peer.take(tail), bytes(tail))
            self.assertEqual(peer.available(), 0)
            self.assertEqual(self.devices[0].opens, 1)
            peer.request(wire.CMD_READ, 1, 0, 512)
            self.assertEqual(peer.simple(512), (0, 1, bytes(512)))

    def test_exportNameUnknown(self):
        peer = self.connect()
        peer.handshake()
        peer.option(wire.OPT_EXPORT_NAME, b"nope")
        self.assertTrue(peer.transport.disconnecting)
        self.assertEqual(self.devices[0].opens, 0)

    def test_exportNameOpenFails(self):
        device = MemoryDevice()
        device.openResult = fail(errors.NoPathError("no span"))
        peer = self.connect([device])
        peer.handshake()
        peer.option(wire.OPT_EXPORT_NAME, b"xa0")
        self.assertTrue(peer.transport.disconnecting)
        self.lose(peer)
        self.assertEqual(device.closes, 0)

    def test_list(self):
        peer = self.connect([MemoryDevice("xa1", "S1"),
                             MemoryDevice("xa0", "S0")])
        peer.handshake()
        peer.option(wire.OPT_LIST)
        self.assertEqual(peer.optionReplies(), [
            (3, wire.REP_SERVER, b"\0\0\0\3xa0S0"),
            (3, wire.REP_SERVER, b"\0\0\0\3xa1S1"),
            (3, wire.REP_ACK, b"")])

    def test_listWithData(self):
        peer = self.connect()
        peer.handshake()
        peer.option(wire.OPT_LIST, b"x")
        [(_, kind, _)] = peer.optionReplies()
        self.assertEqual(kind, wire.REP_ERR_INVALID)

    def test_unknownOptionContinues(self):
        peer = self.connect()
        peer.handshake()
        for option in (99, wire.OPT_STARTTLS, wire.OPT_EXTENDED_HEADERS):
            peer.option(option, b"junk")
            [(got, kind, message)] = peer.optionReplies()
            self.assertEqual((got, kind), (option, wire.REP_ERR_UNSUP))
        peer.option(wire.OPT_LIST)
        self.assertEqual(peer.optionReplies()[-1][1], wire.REP_ACK)

    def test_infoBlockSize(self):
        """INFO answers EXPORT, NAME, DESCRIPTION, BLOCK_SIZE; no open."""
        for sector, preferred in ((512, 4096), (8192, 8192)):
            peer = self.connect([MemoryDevice(sectorSize=sector)])
            peer.handshake()
            peer.option(wire.OPT_INFO, wire.encodeExportRequest(
                "xa0", [wire.INFO_NAME, wire.INFO_DESCRIPTION,
                        wire.INFO_BLOCK_SIZE]))
            replies = peer.optionReplies()
            items = {data[:2]: data[2:] for _, kind, data in replies
                     if kind == wire.REP_INFO}
            self.assertEqual(items[b"\0\1"], b"xa0")
            self.assertEqual(items[b"\0\2"], b"SER-0")
            self.assertEqual(struct.unpack(">III", items[b"\0\3"]),
                             (sector, preferred, 32 * MiB))
            self.assertEqual(infoExport(replies)[0], MiB)
            self.assertEqual(replies[-1][1], wire.REP_ACK)
            self.assertEqual(self.devices[0].opens, 0)
            self.assertFalse(peer.proto._conn.held)

    def test_infoMalformed(self):
        peer = self.connect()
        peer.handshake()
        peer.option(wire.OPT_INFO, b"\0\0\0\7xa0")
        self.assertEqual(peer.optionReplies()[-1][1], wire.REP_ERR_INVALID)

    def test_goFlags(self):
        peer = self.transmit()
        self.assertEqual(self.devices[0].opens, 1)
        for flag in (wire.FLAG_HAS_FLAGS, wire.FLAG_SEND_FLUSH,
                     wire.FLAG_SEND_FUA, wire.FLAG_SEND_TRIM,
                     wire.FLAG_SEND_WRITE_ZEROES, wire.FLAG_SEND_FAST_ZERO,
                     wire.FLAG_SEND_CACHE, wire.FLAG_CAN_MULTI_CONN):
            self.assertTrue(self.flags & flag, flag)
        self.assertFalse(self.flags & (wire.FLAG_READ_ONLY
                                       | wire.FLAG_SEND_DF))
        self.assertEqual(peer.proto._conn.state, "transmission")

    def test_unknownExportGo(self):
        """ERR_UNKNOWN names the exports; haggling continues."""
        peer = self.connect([MemoryDevice("xa0"), MemoryDevice("xa7", "S7")])
        peer.handshake()
        [(_, kind, message)] = peer.go("zz")
        self.assertEqual(kind, wire.REP_ERR_UNKNOWN)
        self.assertIn(b"xa0, xa7", message)
        self.assertEqual(peer.go("S7")[-1][1], wire.REP_ACK)
        self.assertEqual(self.devices[1].opens, 1)

    def test_emptyNameIsXa0(self):
        peer = self.connect([MemoryDevice("xa1", "S1"), MemoryDevice("xa0")])
        peer.handshake()
        replies = peer.go("", infos=())
        self.assertIn((7, wire.REP_INFO, b"\0\1xa0"), replies)
        self.assertEqual(self.devices[1].opens, 1)

    def test_emptyNameWithoutXa0(self):
        peer = self.connect([MemoryDevice("xa1", "S1")])
        peer.handshake()
        self.assertEqual(peer.go("")[-1][1], wire.REP_ERR_UNKNOWN)

    def test_goOpenFails(self):
        """A failed open is an error reply; another GO may follow."""
        device = MemoryDevice()
        device.openResult = fail(errors.NoPathError("no span"))
        peer = self.connect([device])
        peer.handshake()
        [(_, kind, message)] = peer.go()
        self.assertEqual(kind, wire.REP_ERR_UNKNOWN)
        self.assertIn(b"no span", message)
        self.assertEqual(peer.proto._conn.state, "options")
        device.openResult = None
        self.assertEqual(peer.go()[-1][1], wire.REP_ACK)
        self.lose(peer)
        self.assertEqual((device.opens, device.closes), (1, 1))

    def test_openAndCloseOnce(self):
        peer = self.transmit()
        peer.request(wire.CMD_READ, 1, 0, 512)
        self.lose(peer)
        self.lose(peer)
        self.assertEqual((self.devices[0].opens, self.devices[0].closes),
                         (1, 1))

    def test_openFiresAfterDisconnect(self):
        device = MemoryDevice()
        device.openResult = Deferred()
        peer = self.connect([device])
        peer.handshake()
        peer.option(wire.OPT_GO, wire.encodeExportRequest("xa0"))
        self.lose(peer)
        device.openResult.callback(None)
        self.assertEqual(device.closes, 1)

    def test_abort(self):
        peer = self.connect()
        peer.handshake()
        peer.option(wire.OPT_ABORT)
        self.assertEqual(peer.optionReplies(), [(2, wire.REP_ACK, b"")])
        self.assertTrue(peer.transport.disconnecting)

    def test_structuredReplyWithData(self):
        peer = self.connect()
        peer.handshake()
        peer.option(wire.OPT_STRUCTURED_REPLY, b"x")
        self.assertEqual(peer.optionReplies()[-1][1], wire.REP_ERR_INVALID)

    def test_metaContexts(self):
        peer = self.connect()
        peer.handshake()
        query = wire.encodeMetaContextRequest("xa0", [])
        peer.option(wire.OPT_SET_META_CONTEXT, query)
        self.assertEqual(peer.optionReplies()[-1][1], wire.REP_ERR_INVALID)
        peer.option(wire.OPT_STRUCTURED_REPLY)
        peer.optionReplies()
        peer.option(wire.OPT_LIST_META_CONTEXT, query)
        self.assertEqual(peer.optionReplies(), [
            (9, wire.REP_META_CONTEXT, b"\0\0\0\0base:allocation"),
            (9, wire.REP_ACK, b"")])
        peer.option(wire.OPT_LIST_META_CONTEXT,
                    wire.encodeMetaContextRequest("xa0", ["qemu:dirty"]))
        self.assertEqual(peer.optionReplies(), [(9, wire.REP_ACK, b"")])
        peer.option(wire.OPT_SET_META_CONTEXT, wire.encodeMetaContextRequest(
            "xa0", ["base:", "base:allocation", "x-y:z"]))
        self.assertEqual(peer.optionReplies(), [
            (10, wire.REP_META_CONTEXT, b"\0\0\0\1base:allocation"),
            (10, wire.REP_ACK, b"")])
        peer.option(wire.OPT_SET_META_CONTEXT,
                    wire.encodeMetaContextRequest("nope", ["base:allocation"]))
        self.assertEqual(peer.optionReplies()[-1][1], wire.REP_ERR_UNKNOWN)

    def test_tlsRequired(self):
        transport = TLSStringTransport()
        context = object()
        peer = self.connect(transport=transport, tlsRequired=True,
                            tlsContextFactory=context)
        peer.handshake()
        for option in (wire.OPT_LIST, wire.OPT_GO, 99):
            peer.option(option)
            self.assertEqual(peer.optionReplies()[-1][1],
                             wire.REP_ERR_TLS_REQD)
        peer.option(wire.OPT_STARTTLS)
        self.assertEqual(peer.optionReplies(), [(5, wire.REP_ACK, b"")])
        self.assertIs(transport.tlsStarted, context)
        peer.option(wire.OPT_STARTTLS)
        self.assertEqual(peer.optionReplies()[-1][1], wire.REP_ERR_INVALID)
        self.assertEqual(peer.go()[-1][1], wire.REP_ACK)

    def test_tlsRequiredExportName(self):
        peer = self.connect(tlsRequired=True, tlsContextFactory=object())
        peer.handshake()
        peer.option(wire.OPT_EXPORT_NAME, b"xa0")
        self.assertTrue(peer.transport.disconnecting)

    def test_tlsRequiredNeedsContext(self):
        self.assertRaises(ValueError, NBDServerFactory, Registry([]),
                          tlsRequired=True)

    def test_badOptionMagic(self):
        peer = self.connect()
        peer.handshake()
        with capturedLogs() as events:
            peer.send(bytes(16))
        self.assertTrue(peer.transport.disconnecting)
        self.assertEqual(len(events), 1)
        self.assertNotIn("log_failure", events[0])

    def test_shutdownWhileHaggling(self):
        peer = self.connect()
        peer.handshake()
        done = self.factory.shutdown()
        self.assertTrue(peer.transport.disconnecting)
        self.assertNoResult(done)
        self.lose(peer)
        self.successResultOf(done)
        self.assertEqual(self.factory.connections, set())


class TransmissionTests(ServerTestMixin, SynchronousTestCase):
    def test_simpleRead(self):
        device = self.Device()
        device.data[512:1024] = b"r" * 512
        peer = self.transmit(device)
        peer.request(wire.CMD_READ, 7, 512, 512)
        self.assertEqual(peer.simple(512), (0, 7, b"r" * 512))

    def test_structuredRead(self):
        device = self.Device()
        device.data[:4096] = b"s" * 4096
        peer = self.transmit(device, structured=True)
        self.assertTrue(self.flags & wire.FLAG_SEND_DF)
        peer.request(wire.CMD_READ, 7, 0, 4096, flags=wire.CMD_FLAG_DF)
        flags, kind, cookie, payload = peer.chunk()
        self.assertEqual((flags, kind, cookie),
                         (wire.REPLY_FLAG_DONE, wire.REPLY_TYPE_OFFSET_DATA, 7))
        self.assertEqual(payload, b"\0" * 8 + b"s" * 4096)
        peer.request(wire.CMD_READ, 8, 0, 0)
        self.assertEqual(peer.chunk(), (1, wire.REPLY_TYPE_NONE, 8, b""))

    def test_writeRead(self):
        peer = self.transmit()
        data = bytes(range(256)) * 8
        peer.request(wire.CMD_WRITE, 1, 2048, 2048, payload=data, step=100)
        self.assertEqual(peer.simple(), (0, 1, b""))
        self.assertEqual(self.devices[0].data[2048:4096], data)
        peer.request(wire.CMD_READ, 2, 2048, 2048)
        self.assertEqual(peer.simple(2048), (0, 2, data))

    def test_flush(self):
        peer = self.transmit()
        peer.request(wire.CMD_FLUSH, 3)
        self.assertEqual(peer.simple(), (0, 3, b""))
        self.assertEqual(self.devices[0].log, [("flush", 0, 0)])

    def test_fua(self):
        """FUA: the op, then flush, then the reply."""
        device = self.Device()
        device.hold = True
        peer = self.transmit(device)
        for kind in (wire.CMD_WRITE, wire.CMD_TRIM, wire.CMD_WRITE_ZEROES):
            device.log = []
            peer.request(kind, 4, 0, 512, flags=wire.CMD_FLAG_FUA)
            device.release()
            self.assertEqual(peer.available(), 0)
            self.assertEqual(device.log[-1], ("flush", 0, 0))
            device.release()
            self.assertEqual(peer.simple(), (0, 4, b""))

    def test_trim(self):
        device = self.Device()
        device.data[:] = b"t" * MiB
        peer = self.transmit(device)
        peer.request(wire.CMD_TRIM, 5, 4096, 8192)
        self.assertEqual(peer.simple(), (0, 5, b""))
        self.assertEqual(device.log, [("trim", 4096, 8192)])
        self.assertEqual(device.data[4096:12288], bytes(8192))

    def test_trimUnalignedRoundsInward(self):
        peer = self.transmit(blockSize=False)
        peer.request(wire.CMD_TRIM, 5, 100, 1500)
        self.assertEqual(peer.simple(), (0, 5, b""))
        self.assertEqual(self.devices[0].log, [("trim", 512, 1024)])

    def test_writeZeroes(self):
        device = self.Device(size=4 * MiB)
        device.data[:] = b"z" * (4 * MiB)
        peer = self.transmit(device)
        peer.request(wire.CMD_WRITE_ZEROES, 6, 0, 4096)
        self.assertEqual(peer.simple(), (0, 6, b""))
        self.assertEqual(device.log, [("trim", 0, 4096)])
        device.log = []
        peer.request(wire.CMD_WRITE_ZEROES, 7, 4096, 3 * MiB,
                     flags=wire.CMD_FLAG_NO_HOLE)
        self.assertEqual(peer.simple(), (0, 7, b""))
        self.assertEqual(device.log, [("write", 4096 + i * MiB, MiB)
                                      for i in range(3)])
        self.assertEqual(device.data[:3 * MiB + 4096],
                         bytes(3 * MiB + 4096))
        self.assertEqual(device.data[3 * MiB + 4096:3 * MiB + 4097], b"z")

    def test_fastZero(self):
        peer = self.transmit()
        peer.request(wire.CMD_WRITE_ZEROES, 1, 0, 512,
                     flags=wire.CMD_FLAG_FAST_ZERO | wire.CMD_FLAG_NO_HOLE)
        self.assertEqual(peer.simple(), (wire.ENOTSUP, 1, b""))
        self.assertEqual(self.devices[0].log, [])
        peer.request(wire.CMD_WRITE_ZEROES, 2, 0, 512,
                     flags=wire.CMD_FLAG_FAST_ZERO)
        self.assertEqual(peer.simple(), (0, 2, b""))
        self.assertEqual(self.devices[0].log, [("trim", 0, 512)])

    def test_writeZeroesUnaligned(self):
        device = self.Device()
        device.data[:] = b"z" * MiB
        peer = self.transmit(device, blockSize=False)
        for flags in (0, wire.CMD_FLAG_NO_HOLE):
            device.data[:] = b"z" * MiB
            peer.request(wire.CMD_WRITE_ZEROES, 1, 600, 2000, flags=flags)
            self.assertEqual(peer.simple(), (0, 1, b""))
            self.assertEqual(device.data[:3000], b"z" * 600 + bytes(2000)
                             + b"z" * 400)
        self.assertEqual(device.unaligned, [])

    def test_cache(self):
        peer = self.transmit()
        peer.request(wire.CMD_CACHE, 1, 0, 65536)
        self.assertEqual(peer.simple(), (0, 1, b""))
        peer.request(wire.CMD_CACHE, 2, MiB - 512, 1024)
        self.assertEqual(peer.simple(), (wire.EINVAL, 2, b""))
        self.assertEqual(self.devices[0].log, [])

    def test_blockStatus(self):
        peer = self.transmit(structured=True, meta=True)
        peer.request(wire.CMD_BLOCK_STATUS, 9, 4096, 65536,
                     flags=wire.CMD_FLAG_REQ_ONE)
        self.assertEqual(peer.chunk(), (
            wire.REPLY_FLAG_DONE, wire.REPLY_TYPE_BLOCK_STATUS, 9,
            struct.pack(">III", 1, 65536, 0)))
        peer.request(wire.CMD_BLOCK_STATUS, 10, MiB - 512, 1024)
        flags, kind, cookie, payload = peer.chunk()
        self.assertEqual((kind, payload[:4]), (wire.REPLY_TYPE_ERROR,
                                               b"\0\0\0\x16"))

    def test_blockStatusWithoutContext(self):
        for structured in (False, True):
            peer = self.transmit(structured=structured)
            peer.request(wire.CMD_BLOCK_STATUS, 9, 0, 512)
            if structured:
                self.assertEqual(peer.chunk()[3][:4], b"\0\0\0\x16")
            else:
                self.assertEqual(peer.simple(), (wire.EINVAL, 9, b""))

    def test_metaContextForOtherExport(self):
        """Contexts set for another export do not carry over to GO."""
        peer = self.connect([self.Device("xa0"), self.Device("xa1", "S1")])
        peer.handshake()
        peer.option(wire.OPT_STRUCTURED_REPLY)
        peer.optionReplies()
        peer.option(wire.OPT_SET_META_CONTEXT, wire.encodeMetaContextRequest(
            "xa1", ["base:allocation"]))
        peer.optionReplies()
        peer.go("xa0")
        peer.request(wire.CMD_BLOCK_STATUS, 9, 0, 512)
        self.assertEqual(peer.chunk()[1], wire.REPLY_TYPE_ERROR)

    def test_outOfOrder(self):
        """Requests run together and are answered as they complete."""
        device = self.Device()
        device.data[:1024] = b"a" * 512 + b"b" * 512
        device.hold = True
        peer = self.transmit(device)
        peer.request(wire.CMD_READ, 1, 0, 512)
        peer.request(wire.CMD_READ, 2, 512, 512)
        self.assertEqual(len(device.held), 2)
        device.release(1)
        self.assertEqual(peer.simple(512), (0, 2, b"b" * 512))
        device.release(0)
        self.assertEqual(peer.simple(512), (0, 1, b"a" * 512))

    def test_oversizedRead(self):
        peer = self.transmit(self.Device(size=64 * MiB))
        peer.request(wire.CMD_READ, 1, 0, 32 * MiB + 512)
        self.assertEqual(peer.simple(), (wire.EINVAL, 1, b""))

    def test_oversizedWrite(self):
        """An oversized WRITE is answered EINVAL; the next one works."""
        peer = self.transmit(self.Device(size=64 * MiB), maxPayload=4096)
        peer.request(wire.CMD_WRITE, 1, 0, 8192, payload=b"x" * 8192,
                     step=1000)
        peer.request(wire.CMD_WRITE, 2, 0, 512, payload=b"y" * 512)
        self.assertEqual(peer.simple(), (wire.EINVAL, 1, b""))
        self.assertEqual(peer.simple(), (0, 2, b""))
        self.assertEqual(self.devices[0].data[:513], b"y" * 512 + b"\0")

    def test_writeOverDiscardLimit(self):
        peer = self.transmit(maxPayload=4096, discardLimit=8192)
        with capturedLogs() as events:
            peer.request(wire.CMD_WRITE, 1, 0, 8193, payload=b"x")
        self.assertTrue(peer.transport.disconnecting)
        self.assertEqual(len(events), 1)

    def test_outOfRange(self):
        peer = self.transmit()
        for kind, errno in ((wire.CMD_READ, wire.EINVAL),
                            (wire.CMD_WRITE, wire.ENOSPC),
                            (wire.CMD_WRITE_ZEROES, wire.ENOSPC),
                            (wire.CMD_TRIM, wire.EINVAL)):
            peer.request(kind, kind, MiB - 512, 1024)
            self.assertEqual(peer.simple(), (errno, kind, b""))
        peer.request(wire.CMD_READ, 9, 2 ** 64 - 512, 512)
        self.assertEqual(peer.simple(), (wire.EINVAL, 9, b""))
        self.assertEqual(self.devices[0].log, [])

    def test_unknownCommandAndFlags(self):
        peer = self.transmit(structured=True)
        peer.request(42, 1)
        self.assertEqual(peer.chunk()[3][:4], b"\0\0\0\x16")
        peer.request(wire.CMD_WRITE, 2, 0, 512, flags=wire.CMD_FLAG_NO_HOLE)
        flags, kind, cookie, payload = peer.chunk()
        self.assertEqual((kind, cookie, payload[:4]),
                         (wire.REPLY_TYPE_ERROR, 2, b"\0\0\0\x16"))
        self.assertEqual(self.devices[0].log, [])

    def test_structuredErrorMessage(self):
        device = self.Device()
        device.failure = errors.MediaError("bad sector")
        peer = self.transmit(device, structured=True)
        peer.request(wire.CMD_READ, 1, 0, 512)
        flags, kind, cookie, payload = peer.chunk()
        self.assertEqual((flags, kind, cookie),
                         (1, wire.REPLY_TYPE_ERROR, 1))
        self.assertEqual(payload, b"\0\0\0\5\0\x0abad sector")

    def test_errorMapping(self):
        device = self.Device()
        peer = self.transmit(device)
        for error, errno in ((errors.MediaError(), wire.EIO),
                             (errors.NoPathError(), wire.EIO),
                             (errors.OutOfRangeError(), wire.EINVAL),
                             (errors.ReadOnlyError(), wire.EPERM),
                             (errors.UnitGoneError(), wire.ESHUTDOWN),
                             (ValueError("boom"), wire.EIO),
                             (ValueError("again"), wire.EIO)):
            device.failure = error
            peer.request(wire.CMD_WRITE, 1, 0, 512)
            self.assertEqual(peer.simple(), (errno, 1, b""))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_readOnly(self):
        peer = self.transmit(self.Device(readOnly=True))
        self.assertTrue(self.flags & wire.FLAG_READ_ONLY)
        self.assertFalse(self.flags & (wire.FLAG_SEND_TRIM
                                       | wire.FLAG_SEND_WRITE_ZEROES
                                       | wire.FLAG_SEND_FAST_ZERO))
        for kind in (wire.CMD_WRITE, wire.CMD_TRIM, wire.CMD_WRITE_ZEROES):
            peer.request(kind, kind, 0, 512)
            self.assertEqual(peer.simple(), (wire.EPERM, kind, b""))
        peer.request(wire.CMD_READ, 1, 0, 512)
        self.assertEqual(peer.simple(512)[0], 0)
        self.assertEqual(self.devices[0].log, [("read", 0, 512)])

    def test_unalignedRead(self):
        device = self.Device()
        device.data[:2048] = bytes(range(256)) * 8
        peer = self.transmit(device, blockSize=False)
        peer.request(wire.CMD_READ, 1, 100, 1000)
        self.assertEqual(peer.simple(1000), (0, 1, bytes(device.data[100:1100])))
        self.assertEqual(device.log, [("read", 0, 1536)])

    def test_unalignedWrite(self):
        device = self.Device()
        device.data[:] = b"o" * MiB
        peer = self.transmit(device, blockSize=False)
        peer.request(wire.CMD_WRITE, 1, 500, 1000, payload=b"n" * 1000)
        self.assertEqual(peer.simple(), (0, 1, b""))
        self.assertEqual(device.data[:2048], b"o" * 500 + b"n" * 1000
                         + b"o" * 548)
        self.assertEqual(device.unaligned, [])

    def test_concurrentUnalignedWrites(self):
        """Two RMWs of one sector run one after the other; none is lost."""
        device = self.Device()
        device.hold = True
        peer = self.transmit(device, blockSize=False)
        peer.request(wire.CMD_WRITE, 3, 0, 512, payload=b"C" * 512)
        peer.request(wire.CMD_WRITE, 1, 10, 3, payload=b"AAA")
        peer.request(wire.CMD_WRITE, 2, 20, 3, payload=b"BBB")
        # The RMWs wait for the aligned write, then for each other.
        self.assertEqual([h[:3] for h in device.held], [("write", 0, 512)])
        device.release()
        self.assertEqual([h[:3] for h in device.held], [("read", 0, 512)])
        device.release()
        self.assertEqual([h[:3] for h in device.held], [("write", 0, 512)])
        device.releaseAll()
        replies = sorted([peer.simple(), peer.simple(), peer.simple()])
        self.assertEqual(replies, [(0, 1, b""), (0, 2, b""), (0, 3, b"")])
        self.assertEqual(device.data[:30], b"C" * 10 + b"AAA" + b"C" * 7
                         + b"BBB" + b"C" * 7)
        self.assertTrue(peer.proto._transmission.locks.idle())

    def test_unalignedWithBlockSize(self):
        peer = self.transmit()
        for kind in (wire.CMD_READ, wire.CMD_WRITE, wire.CMD_TRIM,
                     wire.CMD_WRITE_ZEROES, wire.CMD_CACHE):
            peer.request(kind, kind, 100, 512)
            self.assertEqual(peer.simple(), (wire.EINVAL, kind, b""))
        self.assertEqual(self.devices[0].log, [])

    def test_disc(self):
        """DISC: in-flight requests finish, then the connection closes."""
        device = self.Device()
        device.hold = True
        peer = self.transmit(device)
        peer.request(wire.CMD_READ, 1, 0, 512)
        peer.request(wire.CMD_DISC, 2)
        peer.request(wire.CMD_READ, 3, 0, 512)
        self.assertEqual(len(device.held), 1)
        self.assertFalse(peer.transport.disconnecting)
        device.release()
        self.assertEqual(peer.simple(512)[:2], (0, 1))
        self.assertEqual(peer.available(), 0)
        self.assertTrue(peer.transport.disconnecting)
        self.assertIsNone(peer.transport.producer)
        self.lose(peer)
        self.assertEqual(device.closes, 1)

    def test_badRequestMagic(self):
        peer = self.transmit()
        with capturedLogs() as events:
            peer.send(b"\x25\x60\x95\x14" + bytes(24))
        self.assertTrue(peer.transport.disconnecting)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertNotIn("log_failure", events[0])
        self.lose(peer)
        self.assertEqual(self.devices[0].closes, 1)

    def test_truncatedRequest(self):
        """The client leaves inside a request: no reply, device closed."""
        device = self.Device()
        peer = self.transmit(device)
        peer.send(wire.encodeRequest(0, wire.CMD_WRITE, 1, 0, 512) + b"x")
        self.lose(peer)
        self.assertEqual(peer.available(), 0)
        self.assertEqual((device.log, device.closes), ([], 1))

    def test_lostWithRequestsInFlight(self):
        """Requests in flight (and waiting for a lock) are cancelled."""
        device = self.Device()
        device.hold = True
        peer = self.transmit(device, blockSize=False)
        peer.request(wire.CMD_WRITE, 1, 10, 3, payload=b"AAA")
        peer.request(wire.CMD_WRITE, 2, 20, 3, payload=b"BBB")
        locks = peer.proto._transmission.locks
        self.assertFalse(locks.idle())
        self.lose(peer)
        self.assertEqual(device.closes, 1)
        self.assertTrue(locks.idle())
        device.releaseAll()
        self.assertTrue(locks.idle())
        self.assertEqual(device.data[:30], bytes(30))

    def test_oneByteAtATime(self):
        """A whole session fed byte by byte gives the same output."""
        outputs = []
        for step in (None, 1):
            peer = self.connect()
            peer.handshake()
            data = (wire.encodeOption(wire.OPT_STRUCTURED_REPLY)
                    + wire.encodeOption(wire.OPT_GO,
                                        wire.encodeExportRequest("xa0")))
            peer.send(data, step)
            peer.optionReplies()
            peer.optionReplies()
            peer.request(wire.CMD_WRITE, 1, 512, 1024,
                         payload=b"w" * 1024, step=step)
            peer.request(wire.CMD_READ, 2, 0, 2048, step=step)
            peer.request(wire.CMD_DISC, 3, step=step)
            outputs.append(peer.transport.value())
            self.assertTrue(peer.transport.disconnecting)
        self.assertEqual(outputs[0], outputs[1])

    def test_inflightBackPressure(self):
        device = self.Device()
        device.hold = True
        peer = self.transmit(device, maxInflightBytes=1024)
        transport = peer.transport
        peer.request(wire.CMD_READ, 1, 0, 512)
        peer.request(wire.CMD_READ, 2, 0, 1024)
        self.assertEqual(transport.producerState, "paused")
        peer.request(wire.CMD_READ, 3, 0, 512)
        self.assertEqual(len(device.held), 2)
        device.release(0)
        # Request 3 was taken up, which crosses the limit again.
        self.assertEqual([h[1:3] for h in device.held], [(0, 1024), (0, 512)])
        self.assertEqual(transport.producerState, "paused")
        device.releaseAll()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(sorted(peer.simple(n)[1] for n in (512, 1024, 512)),
                         [1, 2, 3])

    def test_sendBufferBackPressure(self):
        peer = self.transmit(maxBufferedBytes=1000)
        peer.proto.pauseProducing()  # the transport's send buffer is full
        peer.request(wire.CMD_READ, 1, 0, 512)
        self.assertEqual(peer.transport.producerState, "producing")
        peer.request(wire.CMD_READ, 2, 0, 512)
        self.assertEqual(peer.transport.producerState, "paused")
        peer.request(wire.CMD_READ, 3, 0, 512)
        self.assertEqual(peer.available(), 2 * (16 + 512))
        peer.proto.resumeProducing()  # drained
        self.assertEqual(peer.transport.producerState, "producing")
        self.assertEqual(peer.available(), 3 * (16 + 512))

    def test_shutdownFinishesInFlight(self):
        device = self.Device()
        device.hold = True
        peer = self.transmit(device)
        peer.request(wire.CMD_READ, 1, 0, 512)
        done = self.factory.shutdown()
        self.assertFalse(peer.transport.disconnecting)
        device.release()
        self.assertEqual(peer.simple(512)[:2], (0, 1))
        self.assertTrue(peer.transport.disconnecting)
        self.lose(peer)
        self.successResultOf(done)

    def test_locksShared(self):
        device = self.Device()
        self.transmit(device)
        factory = self.factory
        self.assertIs(factory.locksFor(device), factory.locksFor(device))


class DirectTransmissionTests(TransmissionTests):
    """
    Every transmission test again on a device that takes callbacks: plain
    READs and WRITEs go to it without Deferreds, the rest as before.
    """

    Device = CallbackMemoryDevice

    def test_verifyDevice(self):
        verifyObject(ICallbackBlockDevice, CallbackMemoryDevice())

    def test_plainGoDirect(self):
        """Aligned READ and WRITE without flags use the callbacks."""
        device = self.Device()
        peer = self.transmit(device, structured=True)
        peer.request(wire.CMD_WRITE, 1, 512, 1024, payload=b"d" * 1024)
        self.assertEqual(peer.simple(), (0, 1, b""))
        peer.request(wire.CMD_READ, 2, 512, 1024)
        flags, kind, cookie, payload = peer.chunk()
        self.assertEqual((flags, kind, cookie, payload),
                         (wire.REPLY_FLAG_DONE, wire.REPLY_TYPE_OFFSET_DATA,
                          2, struct.pack(">Q", 512) + b"d" * 1024))
        self.assertEqual(device.direct, [("write", 512, 1024),
                                         ("read", 512, 1024)])
        self.assertEqual(peer.proto._pending, {})

    def test_othersUseDeferreds(self):
        """FUA, unaligned, empty or refused requests do not."""
        device = self.Device()
        peer = self.transmit(device, blockSize=False)
        peer.request(wire.CMD_WRITE, 1, 0, 512, payload=b"x" * 512,
                     flags=wire.CMD_FLAG_FUA)
        peer.request(wire.CMD_WRITE, 2, 3, 5, payload=b"y" * 5)
        peer.request(wire.CMD_READ, 3, 1, 10)
        peer.request(wire.CMD_READ, 4, 0, 0)
        peer.request(wire.CMD_READ, 5, MiB - 512, 1024)
        self.assertEqual(
            [peer.simple(n)[:2] for n in (0, 0, 10, 0, 0)],
            [(0, 1), (0, 2), (0, 3), (0, 4), (wire.EINVAL, 5)])
        self.assertEqual(device.direct, [])
        self.assertEqual(device.data[:8], b"xxxyyyyy")

    def test_deviceFailure(self):
        """A callback failure is mapped as a Deferred failure is."""
        device = self.Device()
        device.failure = Failure(errors.MediaError("bad sector"))
        peer = self.transmit(device)
        peer.request(wire.CMD_READ, 1, 0, 512)
        peer.request(wire.CMD_WRITE, 2, 0, 512, payload=b"z" * 512)
        self.assertEqual([peer.simple()[:2] for _ in range(2)],
                         [(wire.EIO, 1), (wire.EIO, 2)])
        self.assertTrue(peer.proto._transmission.locks.idle())

    def test_shortDirectRead(self):
        """A device answering a direct read with the wrong length gets
        EIO (and a logged error), not a corrupt reply stream."""
        device = self.Device()
        device.readv = lambda offset, length: succeed([b"x" * 100])
        peer = self.transmit(device)
        peer.request(wire.CMD_READ, 1, 0, 512)
        self.assertEqual(peer.simple(), (wire.EIO, 1, b""))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        peer.request(wire.CMD_WRITE, 2, 0, 512, payload=b"w" * 512)
        self.assertEqual(peer.simple(), (0, 2, b""))

    def test_directWriteAfterExclusiveWaiter(self):
        """A write behind a waiting RMW goes the Deferred way, in turn."""
        device = self.Device()
        device.hold = True
        peer = self.transmit(device, blockSize=False)
        peer.request(wire.CMD_WRITE, 1, 0, 512, payload=b"a" * 512)
        peer.request(wire.CMD_WRITE, 2, 10, 2, payload=b"bb")
        peer.request(wire.CMD_WRITE, 3, 0, 512, payload=b"c" * 512)
        self.assertEqual(device.direct, [("write", 0, 512)])
        while device.held:
            device.releaseAll()
        self.assertEqual(device.data[:512], b"c" * 512)
        self.assertTrue(peer.proto._transmission.locks.idle())


class SectorLocksTests(SynchronousTestCase):
    def test_sharedTogetherExclusiveAlone(self):
        locks = SectorLocks()
        ops = []

        def op(name):
            def run():
                d = Deferred()
                ops.append((name, d))
                return d
            return run
        locks.run(0, 512, False, op("w1"))
        locks.run(0, 512, False, op("w2"))
        locks.run(0, 512, True, op("rmw"))
        locks.run(512, 1024, False, op("other"))
        self.assertEqual([n for n, _ in ops], ["w1", "w2", "other"])
        ops[0][1].callback(None)
        ops[1][1].callback(None)
        self.assertEqual(ops[-1][0], "rmw")
        ops[-1][1].callback(None)
        ops[2][1].callback(None)
        self.assertTrue(locks.idle())

    def test_cancelWaiter(self):
        """A cancelled waiter leaves the queue and is never granted."""
        locks = SectorLocks()
        first = Deferred()
        locks.run(0, 512, True, lambda: first)
        ran = []
        waiting = locks.run(0, 512, True, lambda: ran.append(1) or succeed(1))
        waiting.cancel()
        self.failureResultOf(waiting)
        first.callback(None)
        self.assertEqual(ran, [])
        self.assertTrue(locks.idle())

    def test_tryShared(self):
        """Granted at once unless an exclusive lock is held or waited for."""
        locks = SectorLocks()
        token = locks.tryShared(0, 512)
        self.assertIsNotNone(token)
        self.assertIsNotNone(locks.tryShared(0, 512))
        first = Deferred()
        ran = []
        locks.run(0, 512, True, lambda: ran.append(1) or first)
        self.assertEqual(ran, [])
        self.assertIsNone(locks.tryShared(4096, 512))
        locks.release(token)
        self.assertEqual(ran, [])
        locks.release(token + 1)
        self.assertEqual(ran, [1])
        self.assertIsNone(locks.tryShared(4096, 8192))
        first.callback(None)
        self.assertTrue(locks.idle())

    def test_operationRaises(self):
        locks = SectorLocks()
        d = locks.run(0, 512, True, lambda: 1 / 0)
        self.failureResultOf(d, ZeroDivisionError)
        self.assertTrue(locks.idle())
