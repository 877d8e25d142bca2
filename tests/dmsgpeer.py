"""
Test helpers: two DMSG links connected in memory (iosim), a recording
receiver, and a wire tap that decodes what each side sent.
"""

from twisted.test.iosim import connectedServerAndClient

from xdiskd.dmsg import constants as C
from xdiskd.dmsg.link import DMSGLink
from xdiskd.dmsg.wire import Decoder, LnkConn


class RecordingReceiver:
    """An ILinkReceiver that records events and accepts nothing."""

    def __init__(self, peerType=C.PEER_CLIENT, label="test/recv"):
        self.conn = LnkConn(peer_mask=1 << C.PEER_BLOCK, peer_type=peerType,
                            peer_label=label.encode("utf-8"))
        self.events = []
        self.accept = None   # callable(txn, msg) for top-level txns

    def localConn(self):
        return self.conn

    def linkMade(self, link):
        self.events.append(("made", link))

    def linkReady(self, link):
        self.events.append(("ready", link))

    def transactionReceived(self, txn, msg):
        self.events.append(("txn", txn, msg))
        if self.accept is None:
            return False
        return self.accept(txn, msg)

    def linkLost(self, link, reason):
        self.events.append(("lost", link))

    def kinds(self):
        return [e[0] for e in self.events]


class Tap:
    """Decode a copy of everything written by one side."""

    def __init__(self, link):
        self.decoder = Decoder(verifySalt=False)
        self.messages = []
        write = link._sendSeq

        def tappedWrite(bufs, size):
            self.messages.extend(self.decoder.feed(b"".join(bufs)))
            write(bufs, size)
        link._sendSeq = tappedWrite

    def cmds(self):
        return [m.cmd for m in self.messages]


def linkPair(serverReceiver=None, clientReceiver=None):
    """
    Return (serverLink, clientLink, pump) connected through iosim; the
    LNK_CONN exchange is already pumped through.
    """
    serverReceiver = serverReceiver or RecordingReceiver(C.PEER_BLOCK,
                                                         "test/server")
    clientReceiver = clientReceiver or RecordingReceiver()
    client, server, pump = connectedServerAndClient(
        lambda: DMSGLink(serverReceiver, "server"),
        lambda: DMSGLink(clientReceiver, "client"))
    pump.flush()
    return server, client, pump
