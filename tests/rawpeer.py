"""
Test helper: a DMSG link under test on a L{StringTransport}, driven by
hand-made messages (encoded with valid CRCs and salts), and exporter
stores whose I/O completes only when the test says so.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.link import DMSGLink
from xdiskd.dmsg.wire import BlkIO, Decoder, Encoder, LnkConn, Message


def frame(encoder, msg):
    return b"".join(bytes(b) for b in encoder.encode(msg))


class RawPeer:
    """
    The far end of C{self.link}, speaking raw DMSG.

    @ivar sent: everything the link under test wrote, decoded.
    """

    def __init__(self, receiver, limits=None, clock=None, name="raw",
                 linkTimeout=0.0):
        kw = {"linkTimeout": linkTimeout}
        if limits is not None:
            kw["limits"] = limits
        self.transport = StringTransport(lenient=True)
        self.link = DMSGLink(receiver, name, clock=clock, **kw)
        self.link.makeConnection(self.transport)
        self.encoder = Encoder()
        self.decoder = Decoder(verifySalt=False)
        self.sent = []
        self._seen = 0

    def encode(self, *msgs):
        return b"".join(frame(self.encoder, m) for m in msgs)

    def send(self, *msgs):
        self.link.dataReceived(self.encode(*msgs))

    def poll(self):
        """Decode what the link wrote since the last poll; return it."""
        data = self.transport.value()
        new = self.decoder.feed(data[self._seen:])
        self._seen = len(data)
        self.sent.extend(new)
        return new

    def handshake(self, peerType=C.PEER_CLIENT):
        """Send our LNK_CONN and answer the link's (its msgid is 1)."""
        self.send(
            Message(C.LNK_CONN | C.CREATE, 1, ext=LnkConn(
                peer_mask=1 << C.PEER_BLOCK, peer_type=peerType,
                peer_label=b"raw/peer")),
            Message(C.LNK_ERROR | C.CREATE | C.REPLY | C.REVTRANS, 1))
        return self.poll()

    def spans(self):
        """msgid → LnkSpan of the spans the link advertised."""
        self.poll()
        return {m.msgid: m.ext for m in self.sent
                if m.cmd & C.BASECMDMASK == C.LNK_SPAN
                and m.cmd & C.CREATE}

    @property
    def aborted(self):
        # StringTransport.abortConnection sets "disconnected".
        return getattr(self.transport, "disconnected", False)


def io(cmd, msgid, circuit, offset, length, aux=None):
    """A one-message I/O transaction on the link's span C{circuit}."""
    return Message(cmd | C.CREATE | C.DELETE | C.REVCIRC, msgid, circuit,
                   ext=BlkIO(offset, length), aux=aux)


class HeldStore:
    """An export store whose operations wait in C{held} for release."""

    def __init__(self, size=64 << 20):
        self.size = size
        self.held = []
        self.offsets = []

    def _op(self, result):
        d = Deferred()
        self.held.append((d, result))
        return d

    def read(self, offset, length):
        self.offsets.append(offset)
        return self._op(b"\xa5" * length)

    def write(self, offset, data):
        return self._op(None)

    def flush(self):
        return self._op(None)

    def discard(self, offset, length):
        return self._op(None)

    def close(self):
        return succeed(None)

    def releaseAll(self):
        while self.held:
            d, result = self.held.pop(0)
            d.callback(result)
