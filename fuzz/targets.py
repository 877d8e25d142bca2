"""
Coverage-guided fuzz targets (atheris) for long runs outside the test
suite; the suite's bounded fuzzing is tests/test_fuzz.py.

    pip install atheris
    PYTHONPATH=. python fuzz/targets.py dmsg -max_total_time=600 corpus/
    PYTHONPATH=. python fuzz/targets.py nbd -max_total_time=600
    PYTHONPATH=. python fuzz/targets.py seed corpus/   # starting inputs

C{dmsg}: the input is fed, in chunks chosen by its first byte, to a DMSG
link of a node exporting a read-write and a read-only file (inline I/O)
after a valid LNK_CONN exchange, so the fuzzer starts inside the state
machine; CRCs are not checked (the link is built with C{verifyCRC} and
C{verifySalt} off), so mutations reach the state machine at once.
C{nbd}: the input is a client's byte stream to the NBD server over two
in-memory devices and some with hostile serials (not UTF-8, control
characters).  Both check the same properties as the suite: no failure
logged, nothing outside an export changes size, the read-only export
never changes, NBD_OPT_LIST answers printable UTF-8 whatever the labels.
"""

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.logger import globalLogBeginner, globalLogPublisher
    from twisted.python.failure import Failure

    from xdiskd.dmsg import constants as C
    from xdiskd.dmsg.link import DMSGLink
    from xdiskd.dmsg.wire import Encoder, LnkConn, Message
    from xdiskd.export.server import Exporter
    from xdiskd.export.spec import ExportSpec
    from xdiskd.export.store import openStore
    from xdiskd.nbd.server import NBDServerFactory
    from xdiskd.node import Node
    from xdiskd.xa.importer import Importer

from twisted.internet.testing import StringTransport  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from tests.test_fuzz import HOSTILE_LABELS  # noqa: E402
from tests.test_nbd_server import MemoryDevice, Registry  # noqa: E402

SIZE = 64 * 1024
_failures = []
globalLogPublisher.addObserver(
    lambda e: _failures.append(e) if "log_failure" in e else None)
# Logging never "begins" here: stop Twisted buffering every event.
globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)


def _check():
    if _failures:
        f = _failures[0]["log_failure"]
        del _failures[:]
        raise RuntimeError("failure logged:\n" + f.getTraceback())


class DMSGTarget:
    def __init__(self):
        d = tempfile.mkdtemp(prefix="xdfz-", dir="/tmp")
        self.rw = os.path.join(d, "rw.img")
        self.ro = os.path.join(d, "ro.img")
        self.roData = bytes(range(256)) * (SIZE // 512)
        with open(self.ro, "wb") as f:
            f.write(self.roData)
        with open(self.rw, "wb") as f:
            f.truncate(SIZE)

    def __call__(self, data):
        exporter = Exporter()
        for serial, path, ro in (("serno/F", self.rw, False),
                                 ("serno/RO", self.ro, True)):
            spec = ExportSpec(serial, path, ro, 512, "fuzz/" + serial)
            exporter.add(spec, openStore(spec, None, None))
        clock = Clock()
        node = Node(exporter, Importer(clock), "fuzz")
        link = DMSGLink(node, "fuzz", verifyCRC=False, verifySalt=False,
                        clock=clock)
        link.makeConnection(StringTransport(lenient=True))
        enc = Encoder()
        hello = b"".join(b"".join(bytes(b) for b in enc.encode(m)) for m in (
            Message(C.LNK_CONN | C.CREATE, 1, ext=LnkConn(
                peer_mask=1 << C.PEER_BLOCK, peer_type=C.PEER_BLOCK)),
            Message(C.LNK_ERROR | C.CREATE | C.REPLY | C.REVTRANS, 1)))
        link.dataReceived(hello)
        chunk = 1 + (data[0] if data else 0) * 16
        for i in range(1, len(data), chunk):
            link.dataReceived(data[i:i + chunk])
        # Whatever labels the spans had, NBD names stay printable UTF-8.
        _checkNames(node.importer)
        clock.advance(60)
        if link.connected:
            link.connectionLost(Failure(ConnectionError("end")))
        node.importer.stop()
        for export in exporter.exports.values():
            export.store.close()
        _check()
        assert os.path.getsize(self.rw) == SIZE
        with open(self.ro, "rb") as f:
            assert f.read() == self.roData


def _checkNames(registry):
    from xdiskd.nbd import wire
    from xdiskd.nbd.options import Negotiator
    for reply in Negotiator(registry).handleOption(wire.OPT_LIST,
                                                   b"").replies[:-1]:
        n = int.from_bytes(reply[20:24], "big")
        for raw in (reply[24:24 + n], reply[24 + n:]):
            text = raw.decode("utf-8")       # raises on invalid UTF-8
            assert text.isprintable(), text


class NBDTarget:
    def __call__(self, data):
        rw = MemoryDevice("xa0", "SER-0", SIZE)
        ro = MemoryDevice("ro0", "SER-1", SIZE, readOnly=True)
        ro.data[:] = b"\x5a" * SIZE
        hostile = [MemoryDevice("hx%d" % i, label, 4096)
                   for i, label in enumerate(HOSTILE_LABELS)]
        factory = NBDServerFactory(Registry([rw, ro] + hostile),
                                   clock=Clock())
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        proto.makeConnection(StringTransport(lenient=True))
        proto.dataReceived(data)
        proto.connectionLost(Failure(ConnectionError("end")))
        _check()
        assert len(rw.data) == SIZE and ro.data == b"\x5a" * SIZE


def seed(directory):
    """Write starting inputs: a plausible DMSG session and NBD session."""
    from xdiskd.dmsg.wire import BlkIO, BlkOpen, LnkSpan
    from xdiskd.nbd import wire
    os.makedirs(directory, exist_ok=True)
    enc = Encoder()
    enc.sequence = 2      # after the target's own LNK_CONN exchange
    msgs = [
        Message(C.LNK_SPAN | C.CREATE, 5, ext=LnkSpan(
            media_bytes=SIZE, media_blksize=512, pfs_label=b"serno/S")),
        Message(C.LNK_SPAN | C.CREATE, 10, ext=LnkSpan(
            media_bytes=SIZE, media_blksize=512,
            peer_label=HOSTILE_LABELS[1], pfs_label=HOSTILE_LABELS[0])),
        Message(C.BLK_OPEN | C.CREATE | C.REVCIRC, 6, 2, ext=BlkOpen(3)),
        Message(C.BLK_READ | C.CREATE | C.DELETE, 7, 6,
                ext=BlkIO(512, 4096)),
        Message(C.BLK_WRITE | C.CREATE | C.DELETE, 8, 6,
                ext=BlkIO(0, 512), aux=bytes(512)),
        Message(C.BLK_FREEBLKS | C.CREATE | C.DELETE | C.REVCIRC, 9, 3,
                ext=BlkIO(0, 512)),
        Message(C.LNK_PING), Message(C.LNK_ERROR | C.DELETE, 6, 2)]
    dmsg = b"\x04" + b"".join(
        b"".join(bytes(b) for b in enc.encode(m)) for m in msgs)
    nbd = (wire.encodeClientFlags(3)
           + wire.encodeOption(wire.OPT_STRUCTURED_REPLY)
           + wire.encodeOption(wire.OPT_LIST)
           + wire.encodeOption(wire.OPT_GO,
                               wire.encodeExportRequest("xa0", (3,)))
           + wire.encodeRequest(0, wire.CMD_WRITE, 1, 0, 512) + bytes(512)
           + wire.encodeRequest(0, wire.CMD_READ, 2, 512, 512)
           + wire.encodeRequest(0, wire.CMD_TRIM, 3, 0, 4096)
           + wire.encodeRequest(0, wire.CMD_DISC, 4, 0, 0))
    for name, data in (("dmsg-session", dmsg), ("nbd-session", nbd)):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def main():
    targets = {"dmsg": DMSGTarget, "nbd": NBDTarget}
    if len(sys.argv) == 3 and sys.argv[1] == "seed":
        return seed(sys.argv[2])
    if len(sys.argv) < 2 or sys.argv[1] not in targets:
        sys.exit("usage: targets.py dmsg|nbd [libFuzzer options] | "
                 "seed DIR")
    target = targets[sys.argv[1]]()
    atheris.Setup([sys.argv[0]] + sys.argv[2:], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
