"""
Test helpers: a throw-away PKI made with C{cryptography} — a CA, server
and client certificates (EC P-256, fast to make), an expired one, and a
certificate from a second, untrusted CA — written as PEM files.

Client directories use the file names qemu's C{tls-creds-x509} and
libnbd's C{tls-certificates=} expect: C{ca-cert.pem}, C{client-cert.pem},
C{client-key.pem}.
"""

import datetime
import os
import shutil
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                         "xdiskd tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Issuer:
    """A CA that signs certificates."""

    def __init__(self, cn):
        self.key = _key()
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                           critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256()))

    def issue(self, cn, dns=("localhost",), ips=("127.0.0.1", "::1"),
              notBefore=None, notAfter=None):
        """Return (certificate, key) for C{cn}, good for both ends."""
        import ipaddress
        key = _key()
        now = _now()
        names = [x509.DNSName(d) for d in dns] + [
            x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore or now - _DAY)
            .not_valid_after(notAfter or now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH,
                 ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False))
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def certPEM(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def keyPEM(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


class PKI:
    """
    Every file a test needs, in one temporary directory (short path, for
    UNIX sockets next to it):

      - C{ca}: the trusted CA; C{server}/C{serverKey}: CN localhost with
        SANs localhost, 127.0.0.1, ::1; C{client}/C{clientKey}: CN
        importer1; C{intruder}/C{intruderKey}: CN intruder, same CA;
      - C{expired}/C{expiredKey}; C{rogue}/C{rogueKey}: CN importer1
        from another CA; C{otherName}: CN elsewhere, SAN elsewhere.example
        only;
      - C{clientDir(name)}: a qemu/libnbd directory for a client.
    """

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="xdpki-", dir="/tmp")
        self.issuer = Issuer("xdiskd test CA")
        self.ca = write(self._p("ca.pem"), certPEM(self.issuer.cert))
        self.server, self.serverKey = self._pair("server", "localhost")
        self.client, self.clientKey = self._pair("client", "importer1")
        self.intruder, self.intruderKey = self._pair("intruder", "intruder")
        now = _now()
        self.expired, self.expiredKey = self._pair(
            "expired", "localhost", notBefore=now - 10 * _DAY,
            notAfter=now - _DAY)
        self.otherName, self.otherNameKey = self._pair(
            "othername", "elsewhere", dns=("elsewhere.example",), ips=())
        rogueCA = Issuer("rogue CA")
        cert, key = rogueCA.issue("importer1")
        self.rogue = write(self._p("rogue.pem"), certPEM(cert))
        self.rogueKey = write(self._p("rogue.key"), keyPEM(key))
        self.rogueCA = write(self._p("rogue-ca.pem"), certPEM(rogueCA.cert))

    def _p(self, name):
        return os.path.join(self.dir, name)

    def _pair(self, name, cn, **kw):
        cert, key = self.issuer.issue(cn, **kw)
        return (write(self._p(name + ".pem"), certPEM(cert)),
                write(self._p(name + ".key"), keyPEM(key)))

    def clientDir(self, name, cert=None, key=None, ca=None):
        """A directory with ca-cert.pem (+ client-cert/key.pem)."""
        d = self._p(name)
        os.mkdir(d)
        shutil.copy(ca or self.ca, os.path.join(d, "ca-cert.pem"))
        if cert is not None:
            shutil.copy(cert, os.path.join(d, "client-cert.pem"))
            shutil.copy(key, os.path.join(d, "client-key.pem"))
        return d

    def cleanup(self):
        shutil.rmtree(self.dir, True)
