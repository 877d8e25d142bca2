"""
Tests for L{xdiskd.tls} and L{xdiskd.endpoints}: option checking (every
misconfiguration is a usage error), endpoint descriptions, the start-up
exposure notices, and DMSG links over real loopback TLS in this process:
mutual TLS, a client certificate from another CA, no client
certificate, the allow-list and a server name that does not match.
"""

import os
import subprocess

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from xdiskd.dmsg.link import DMSGFactory
from xdiskd.dmsg.limits import LinkLimits
from xdiskd.endpoints import (
    clientEndpoint, exposure, listenerNotice, serverEndpoint, splitTLS,
    tlsServerName)
from xdiskd.options import Options, serverEndpointString
from xdiskd.tls import TLSConfig, loadCredentials
from tests.certs import PKI, write
from tests.dmsgpeer import RecordingReceiver

_pki = None


def pki():
    """One PKI for the whole module, removed at exit."""
    global _pki
    if _pki is None:
        import atexit
        _pki = PKI()
        atexit.register(_pki.cleanup)
    return _pki


def parse(*args):
    o = Options()
    o.parseOptions(["--no-control", "--state-dir", "/tmp"] + list(args))
    return o


class OptionErrorTests(SynchronousTestCase):
    """Every TLS misconfiguration stops start-up with a clear message."""

    def assertUsage(self, needle, *args):
        e = self.assertRaises(usage.UsageError, parse, *args)
        self.assertIn(needle, str(e))
        return e

    def test_listenWithoutCert(self):
        self.assertUsage("need --tls-cert", "--listen", "tls:tcp:0")

    def test_listenWithoutCA(self):
        p = pki()
        self.assertUsage("give --tls-ca", "--listen", "tls:tcp:0",
                         "--tls-cert", p.server, "--tls-key", p.serverKey)

    def test_missingKey(self):
        p = pki()
        self.assertUsage("cannot read private key /nonexistent/k.pem",
                         "--tls-cert", p.server, "--tls-key",
                         "/nonexistent/k.pem")

    def test_keyNotInCertFile(self):
        p = pki()
        self.assertUsage("no usable PEM private key", "--tls-cert",
                         p.server)

    def test_unreadableCA(self):
        p = pki()
        self.assertUsage("cannot read CA file /nonexistent/ca.pem",
                         "--tls-cert", p.server, "--tls-key", p.serverKey,
                         "--tls-ca", "/nonexistent/ca.pem")
        self.assertUsage("cannot read CA file", "--tls-ca", p.dir)

    def test_garbageCA(self):
        path = write(os.path.join(pki().dir, "garbage.pem"), b"not a cert")
        self.assertUsage("no usable PEM certificate", "--tls-ca", path)

    def test_expiredCertificate(self):
        p = pki()
        self.assertUsage("expired on", "--tls-cert", p.expired,
                         "--tls-key", p.expiredKey)

    def test_expiredNBDCertificate(self):
        p = pki()
        self.assertUsage("expired on", "--nbd-tls", "require",
                         "--nbd-tls-cert", p.expired,
                         "--nbd-tls-key", p.expiredKey)

    def test_keyMismatch(self):
        p = pki()
        self.assertUsage("does not match certificate", "--tls-cert",
                         p.server, "--tls-key", p.clientKey)

    def test_encryptedKey(self):
        p = pki()
        key = serialization.load_pem_private_key(
            open(p.serverKey, "rb").read(), None)
        path = write(os.path.join(p.dir, "enc.key"), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
        self.assertUsage("is encrypted", "--tls-cert", p.server,
                         "--tls-key", path)

    def test_connectWithoutCA(self):
        self.assertUsage("give --tls-ca", "--connect", "tls:tcp:h:1")

    def test_connectUnixWithoutName(self):
        p = pki()
        self.assertUsage("tls:name=HOST:unix:/x", "--tls-ca", p.ca,
                         "--connect", "tls:unix:/x")

    def test_allowWithoutClientAuth(self):
        p = pki()
        self.assertUsage("--tls-allow needs client certificates",
                         "--tls-cert", p.server, "--tls-key", p.serverKey,
                         "--tls-ca", p.ca, "--tls-no-client-auth",
                         "--tls-allow", "x")

    def test_nbdRequireWithoutCert(self):
        self.assertUsage("needs a certificate", "--nbd-tls", "require")

    def test_nbdBadMode(self):
        self.assertUsage("--nbd-tls must be one of", "--nbd-tls", "maybe")

    def test_nbdFilesWithTLSOff(self):
        """A certificate without a mode is not silently plaintext."""
        p = pki()
        self.assertUsage("--nbd-tls is off", "--nbd-tls-cert", p.server)
        self.assertUsage("--nbd-tls is off", "--nbd-tls-verify-client")

    def test_nbdVerifyWithoutCA(self):
        p = pki()
        self.assertUsage("needs --nbd-tls-ca or --tls-ca", "--nbd-tls", "on",
                         "--nbd-tls-cert", p.server, "--nbd-tls-key",
                         p.serverKey, "--nbd-tls-verify-client")

    def test_nbdTLSEndpoint(self):
        self.assertUsage("NBD uses STARTTLS", "--nbd", "tls:tcp:10809")

    def test_badLinkLimit(self):
        self.assertUsage("bad link limit", "--link-limit", "bogus=1")
        self.assertUsage("below the minimum", "--link-limit",
                         "transactions=1")
        self.assertUsage("bad value", "--link-limit", "stall=soon")


class OptionTests(SynchronousTestCase):
    def test_fullConfig(self):
        p = pki()
        o = parse("--listen", "tls:tcp:0", "--tls-cert", p.server,
                  "--tls-key", p.serverKey, "--tls-ca", p.ca,
                  "--tls-allow", "importer1", "--nbd-tls", "require",
                  "--nbd-tls-allow", "qemu", "--link-limit",
                  "transactions=100", "--link-limit", "inflight=8M")
        tls = o["tls"]
        self.assertEqual(tls.credentials.subject,
                         "CN=localhost,O=xdiskd tests")
        self.assertEqual(len(tls.authorities), 1)
        self.assertEqual(tls.allow, ("importer1",))
        self.assertTrue(tls.clientAuth)
        self.assertEqual(tls.nbdMode, "require")
        self.assertIs(tls.nbdCredentials, tls.credentials)
        self.assertTrue(tls.nbdVerifiesClients)
        self.assertEqual(tls.nbdPeerPolicy().allowed, {"qemu"})
        self.assertEqual(o["link-limits"], LinkLimits()._replace(
            transactions=100, inflight=8 << 20))

    def test_keyInCertFile(self):
        p = pki()
        both = write(os.path.join(p.dir, "both.pem"),
                     open(p.server, "rb").read()
                     + open(p.serverKey, "rb").read())
        o = parse("--tls-cert", both)
        self.assertEqual(o["tls"].credentials.subject,
                         "CN=localhost,O=xdiskd tests")

    def test_configFile(self):
        p = pki()
        conf = write(os.path.join(p.dir, "x.conf"), (
            "[xdiskd]\ntls-cert = %s\ntls-key = %s\ntls-ca = %s\n"
            "tls-allow =\n  a\n  b\nnbd-tls = on\n"
            "link-limit = children=64\n" % (
                p.server, p.serverKey, p.ca)).encode())
        o = parse("--config", conf)
        self.assertEqual(o["tls"].allow, ("a", "b"))
        self.assertEqual(o["tls"].nbdMode, "on")
        self.assertFalse(o["tls"].nbdVerifiesClients)
        self.assertEqual(o["link-limits"].children, 64)

    def test_defaults(self):
        o = parse()
        self.assertEqual(o["tls"], TLSConfig())
        self.assertEqual(o["link-limits"], LinkLimits())


class EndpointTests(SynchronousTestCase):
    def test_splitTLS(self):
        self.assertEqual(splitTLS("tls:tcp:h:1"), (None, "tcp:h:1"))
        self.assertEqual(splitTLS("tls:name=d1:unix:/s"), ("d1", "unix:/s"))

    def test_serverName(self):
        self.assertEqual(tlsServerName("tls:tcp:disk1:9870"), "disk1")
        self.assertEqual(tlsServerName("tls:tcp:host=10.0.0.2:port=1"),
                         "10.0.0.2")
        self.assertEqual(tlsServerName("tls:tcp6:host=\\:\\:1:port=1"),
                         "::1")
        self.assertEqual(tlsServerName("tls:name=x:unix:/s"), "x")
        self.assertRaises(ValueError, tlsServerName, "tls:unix:/s")

    def test_privateUnixUnderTLS(self):
        self.assertEqual(serverEndpointString("tls:unix:/s", "600"),
                         "tls:unix:/s:mode=600:lockfile=1")

    def test_exposure(self):
        cases = {
            "unix:/run/x.sock": "local",
            "tcp:10809:interface=127.0.0.1": "loopback",
            "tcp:10809:127.0.0.2": "loopback",
            "tcp6:10809:interface=\\:\\:1": "loopback",
            "tcp:10809:interface=localhost": "loopback",
            "tcp:10809": "network",
            "tcp6:10809": "network",
            "tcp6:10809:interface=\\:\\:": "network",
            "tcp:10809:interface=0.0.0.0": "network",
            "tcp:10809:interface=192.168.1.5": "network",
            "tcp6:10809:interface=fe80\\:\\:1": "network",
            "ssl:10809:privateKey=k.pem": "network",
            "tls:tcp:9870:interface=127.0.0.1": "loopback",
            "systemd:domain=INET:index=0": "unknown",
        }
        for desc, scope in cases.items():
            self.assertEqual(exposure(desc).scope, scope, desc)

    def test_noticeWarnsOnlyForOpenNetworkListeners(self):
        plain = TLSConfig()
        required = TLSConfig(nbdMode="require")
        verified = TLSConfig(nbdMode="require",
                             nbdAuthorities=(object(),))  # type: ignore
        warn, text = listenerNotice("NBD", "tcp6:1:interface=\\:\\:1", plain)
        self.assertEqual((warn, "loopback only" in text), (False, True))
        warn, text = listenerNotice("NBD", "unix:/s", plain)
        self.assertEqual((warn, "local only" in text), (False, True))
        warn, text = listenerNotice("NBD", "tcp:10809", plain)
        self.assertTrue(warn)
        self.assertIn("NOT loopback-only (all interfaces (0.0.0.0)) and "
                      "without TLS: any host that can reach it can read "
                      "and write every unit", text)
        self.assertTrue(listenerNotice("NBD", "tcp:1:interface=10.1.1.1",
                                       TLSConfig(nbdMode="on"))[0])
        self.assertTrue(listenerNotice("NBD", "tcp:1", required)[0])
        self.assertFalse(listenerNotice("NBD", "tcp:1", verified)[0])
        self.assertTrue(listenerNotice("DMSG", "tcp:9870", plain)[0])
        self.assertFalse(listenerNotice("DMSG", "tls:tcp:9870", plain)[0])
        self.assertTrue(listenerNotice(
            "DMSG", "tls:tcp:9870", TLSConfig(clientAuth=False))[0])

    def test_tlsWithoutConfig(self):
        self.assertRaises(ValueError, serverEndpoint, reactor,
                          "tls:tcp:0", None)
        self.assertRaises(ValueError, clientEndpoint, reactor,
                          "tls:tcp:h:1", None)
        self.assertRaises(ValueError, clientEndpoint, reactor,
                          "tls:tcp:h:1", TLSConfig())


class _Receiver(RecordingReceiver):
    """Fires C{ready} when the link is ready, C{lost} when it is gone."""

    def __init__(self, *a):
        RecordingReceiver.__init__(self, *a)
        self.ready = Deferred()
        self.lost = Deferred()

    def linkReady(self, link):
        RecordingReceiver.linkReady(self, link)
        self.ready.callback(link)

    def linkLost(self, link, reason):
        RecordingReceiver.linkLost(self, link, reason)
        if not self.lost.called:
            self.lost.callback(reason.value)


class LoopbackTLSTests(TestCase):
    """DMSG links over TLS on 127.0.0.1 in this process."""

    timeout = 20

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver,
                        self.events.append)

    def logText(self):
        return "\n".join(formatEvent(e) for e in self.events)

    @inlineCallbacks
    def listen(self, allow=(), clientAuth=True):
        p = pki()
        creds = loadCredentials(p.server, p.serverKey)
        config = TLSConfig(creds, tuple(_cas(p.ca)), clientAuth,
                           tuple(allow))
        self.serverRecv = _Receiver()
        ep = serverEndpoint(reactor, "tls:tcp:0:interface=127.0.0.1",
                            config)
        factory = DMSGFactory(self.serverRecv, "in", clock=reactor,
                              peerCheck=config.peerPolicy())
        port = yield ep.listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def connect(self, port, cert=None, key=None, ca=None,
                name="127.0.0.1"):
        p = pki()
        creds = loadCredentials(cert, key) if cert else None
        config = TLSConfig(creds, tuple(_cas(ca or p.ca)))
        recv = _Receiver()
        ep = clientEndpoint(reactor, "tls:name=%s:tcp:127.0.0.1:%d" % (
            name, port), config)
        link = yield ep.connect(DMSGFactory(recv, "out", clock=reactor))
        self.addCleanup(lambda: link.connected and link.close("test end"))
        return link, recv

    @inlineCallbacks
    def test_mutualTLS(self):
        """Both sides verified: LNK_CONN completes both ways over TLS."""
        p = pki()
        port = yield self.listen(allow=["importer1"])
        link, recv = yield self.connect(port, p.client, p.clientKey)
        yield recv.ready
        yield self.serverRecv.ready
        self.assertTrue(link.ready)
        self.assertIn("TLS up, peer CN=importer1,O=xdiskd tests",
                      self.logText())
        self.assertIn("TLS up, peer CN=localhost,O=xdiskd tests",
                      self.logText())
        link.close("done")
        yield recv.lost
        yield self.serverRecv.lost

    @inlineCallbacks
    def _refused(self, port, **kw):
        link, recv = yield self.connect(port, **kw)
        yield recv.lost
        yield self.serverRecv.lost
        self.assertFalse(self.serverRecv.ready.called)
        self.assertFalse(recv.ready.called)
        self.assertNotIn("txn", self.serverRecv.kinds())

    @inlineCallbacks
    def test_clientCertFromOtherCA(self):
        p = pki()
        port = yield self.listen()
        yield self._refused(port, cert=p.rogue, key=p.rogueKey)

    @inlineCallbacks
    def test_noClientCert(self):
        port = yield self.listen()
        yield self._refused(port)

    @inlineCallbacks
    def test_allowList(self):
        """A certificate of the right CA, but not on the list."""
        p = pki()
        port = yield self.listen(allow=["importer1"])
        yield self._refused(port, cert=p.intruder, key=p.intruderKey)
        self.assertIn("refusing TLS peer: certificate subject "
                      "CN=intruder,O=xdiskd tests is not in the allow-list",
                      self.logText())

    @inlineCallbacks
    def test_serverNameMismatch(self):
        """The client checks the server's name with service-identity."""
        p = pki()
        port = yield self.listen()
        yield self._refused(port, cert=p.client, key=p.clientKey,
                            name="elsewhere.example")

    @inlineCallbacks
    def test_serverFromOtherCA(self):
        p = pki()
        port = yield self.listen()
        yield self._refused(port, cert=p.client, key=p.clientKey,
                            ca=p.rogueCA)

    @inlineCallbacks
    def test_noClientAuth(self):
        """--tls-no-client-auth: encryption and server identity only."""
        port = yield self.listen(clientAuth=False)
        link, recv = yield self.connect(port, name="localhost")
        yield recv.ready
        link.close("done")
        yield self.serverRecv.lost

    @inlineCallbacks
    def test_plaintextClientOnTLSListener(self):
        """Plain DMSG bytes on a TLS listener: no link, no crash."""
        from twisted.internet.endpoints import TCP4ClientEndpoint
        port = yield self.listen()
        recv = _Receiver()
        link = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            DMSGFactory(recv, "plain"))
        yield self.serverRecv.lost
        yield recv.lost
        self.assertFalse(link.ready)
        self.assertFalse(self.serverRecv.ready.called)


def _cas(path):
    from xdiskd.tls import loadCertificates
    return loadCertificates(path, "CA")


class OpenSSLInteropTests(SynchronousTestCase):
    """The generated PKI is sane by OpenSSL's own judgement."""

    def test_verify(self):
        p = pki()
        try:
            out = subprocess.run(
                ["openssl", "verify", "-CAfile", p.ca, p.server, p.client],
                capture_output=True, timeout=30)
        except FileNotFoundError:
            from twisted.trial.unittest import SkipTest
            raise SkipTest("no openssl command")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)


class AnnouncingEndpointTests(SynchronousTestCase):
    """A listener's start-up line comes once it listens, never before,
    and not at all if it cannot."""

    def test_announcedOnceListening(self):
        from xdiskd.endpoints import AnnouncingEndpoint

        class Inner:
            def listen(self, factory):
                self.d = Deferred()
                return self.d
        inner = Inner()
        said = []
        d = AnnouncingEndpoint(inner, said.append).listen(object())
        self.assertEqual(said, [])          # not bound yet
        inner.d.callback("port")
        self.assertEqual((said, self.successResultOf(d)), (["port"], "port"))

    def test_notAnnouncedWhenListenFails(self):
        from twisted.internet.defer import fail
        from xdiskd.endpoints import AnnouncingEndpoint

        class Inner:
            def listen(self, factory):
                return fail(OSError(98, "Address in use"))
        said = []
        d = AnnouncingEndpoint(Inner(), said.append).listen(object())
        self.failureResultOf(d, OSError)
        self.assertEqual(said, [])
