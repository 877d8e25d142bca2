"""
Listeners let many clients connect at once (issue 19, Scale): 128 fio
NBD clients connecting together overflowed Twisted's default backlog of
50 and libnbd failed them ("server backlog overflowed").
"""

import errno
import os
import shutil
import socket
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from xdiskd.endpoints import LISTEN_BACKLOG, serverEndpoint, withBacklog
from xdiskd.options import serverEndpointString


class BacklogStringTests(TestCase):

    def test_added(self):
        self.assertEqual(withBacklog("unix:/s:mode=600:lockfile=1"),
                         "unix:/s:mode=600:lockfile=1:backlog=%d"
                         % LISTEN_BACKLOG)
        self.assertEqual(withBacklog("tcp:10809:interface=127.0.0.1"),
                         "tcp:10809:interface=127.0.0.1:backlog=%d"
                         % LISTEN_BACKLOG)

    def test_givenWins(self):
        self.assertEqual(withBacklog("unix:/s:backlog=7"),
                         "unix:/s:backlog=7")

    def test_otherKindsUntouched(self):
        self.assertEqual(withBacklog("ssl:443"), "ssl:443")


class BacklogListenTests(TestCase):
    """
    A real UNIX listener that is not accepting: connections queue in the
    kernel up to the backlog, then a non-blocking connect fails EAGAIN.
    """

    CLIENTS = 200

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="xdb-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)

    @inlineCallbacks
    def refusedOf(self, given):
        path = os.path.join(self.dir, "s%d.sock" % len(os.listdir(
            self.dir)))
        desc = serverEndpointString(given % (path,), "600")
        port = yield serverEndpoint(reactor, desc, None).listen(
            Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        port.stopReading()              # accept nothing: all queue
        socks, refused = [], 0
        try:
            for _ in range(self.CLIENTS):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                socks.append(s)
                try:
                    s.connect(path)
                except OSError as e:
                    self.assertEqual(e.errno, errno.EAGAIN)
                    refused += 1
        finally:
            for s in socks:
                s.close()
        return refused

    @inlineCallbacks
    def test_manyClientsQueue(self):
        """The daemon's listeners queue 200 connections at once."""
        self.assertEqual((yield self.refusedOf("unix:%s")), 0)

    @inlineCallbacks
    def test_smallBacklogOverflows(self):
        """The check can fail: with Twisted's 50 the queue overflows."""
        refused = yield self.refusedOf("unix:%s:backlog=50")
        self.assertEqual(refused, self.CLIENTS - 51)


class DaemonListenersTests(TestCase):
    """The daemon's own --listen and --nbd listeners get the backlog."""

    def test_listeners(self):
        from twisted.internet.testing import MemoryReactorClock
        from xdiskd.service import makeService
        from tests.daemons import parseOptions
        d = tempfile.mkdtemp(prefix="xdb-", dir="/tmp")
        self.addCleanup(shutil.rmtree, d, True)
        r = MemoryReactorClock()
        top = makeService(parseOptions(
            "--state-dir", d, "--nbd", "unix:" + d + "/n.sock",
            "--listen", "unix:" + d + "/l.sock",
            "--listen", "tcp:0:interface=127.0.0.1"), r)
        top.startService()
        self.addCleanup(top.stopService)
        self.assertEqual(sorted((path, backlog) for path, _, backlog, _, _
                                in r.unixServers),
                         [(d + "/l.sock", LISTEN_BACKLOG),
                          (d + "/n.sock", LISTEN_BACKLOG)])
        self.assertEqual([s[2] for s in r.tcpServers], [LISTEN_BACKLOG])
