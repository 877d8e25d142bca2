"""Tests for L{xdiskd.io.sockets}: sizes applied to real transports."""

import socket

from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.internet.unix import Server
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.io.sockets import IO_CHUNK, tuneTransport


class TuneTransportTests(SynchronousTestCase):
    def test_unixSocket(self):
        """A UNIX transport reads and sends IO_CHUNK bytes per call and
        its socket buffers are set to what is asked."""
        a, b = socket.socketpair(socket.AF_UNIX)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        t = Server(a, Protocol(), None, None, 1, reactor)
        self.addCleanup(t.stopReading)
        tuneTransport(t, sockbuf=8 << 10)
        self.assertEqual((t.bufferSize, t.SEND_LIMIT), (IO_CHUNK, IO_CHUNK))
        # Linux doubles the value asked for; the default is far larger.
        self.assertLessEqual(
            a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), 16 << 10)
        self.assertLessEqual(
            a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), 16 << 10)

    def test_noSocket(self):
        """A transport without a socket is left working."""
        t = StringTransport()
        tuneTransport(t)
        t.write(b"x")
        self.assertEqual(t.value(), b"x")
