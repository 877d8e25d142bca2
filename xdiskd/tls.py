"""
TLS for DMSG links and the NBD front end: credentials loaded and checked
at start-up, OpenSSL contexts built from them, and the allow-list checked
once a handshake is done.

Every file is read and every certificate checked while the options are
parsed, so a missing key, an unreadable CA file, an expired certificate
or a key that does not match its certificate stops the daemon with a
usage error; nothing falls back to plaintext.

DMSG (C{tls:} endpoints, see L{xdiskd.endpoints}):
  - listeners present C{--tls-cert}/C{--tls-key} and, unless
    C{--tls-no-client-auth}, require a client certificate signed by a CA
    of C{--tls-ca} (mutual TLS), whose subject common name must be one
    of C{--tls-allow} when that is given;
  - outbound links verify the server's certificate against C{--tls-ca}
    and its name (DNS name or IP address, with service-identity) against
    the host dialled, and present C{--tls-cert} when one is configured.

NBD (STARTTLS, C{--nbd-tls on|require}): the server certificate is
C{--nbd-tls-cert}/C{--nbd-tls-key}, else the DMSG one; with
C{--nbd-tls-verify-client} (or C{--nbd-tls-allow}) clients must present
a certificate signed by C{--nbd-tls-ca} (default C{--tls-ca}).
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import attr
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.python import usage

#: Endpoint descriptions with this prefix are wrapped in TLS.
TLS_PREFIX = "tls:"

NBD_TLS_MODES = ("off", "on", "require")


class TLSConfigError(usage.UsageError):
    """TLS is misconfigured: the daemon must not start."""


def isTLS(desc: str) -> bool:
    """The endpoint description asks for TLS (C{tls:...})."""
    return desc.startswith(TLS_PREFIX)


# ----------------------------------------------------------------------
# Loading and checking files

def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError("cannot read %s %s: %s" % (
            what, path, e.strerror or e))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def subjectText(cert: Any) -> str:
    """RFC 4514 subject of a cryptography or pyOpenSSL certificate."""
    cert = getattr(cert, "to_cryptography", lambda: cert)()
    return str(cert.subject.rfc4514_string())


def commonNames(cert: Any) -> Tuple[str, ...]:
    """The subject common names of a certificate."""
    cert = getattr(cert, "to_cryptography", lambda: cert)()
    return tuple(str(a.value) for a in
                 cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


def loadCertificates(path: str, what: str,
                     now: Optional[datetime.datetime] = None
                     ) -> List[x509.Certificate]:
    """
    Read PEM certificates from C{path}; each must be valid now.

    @raise TLSConfigError: unreadable, no certificate, expired or not yet
        valid.
    """
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSConfigError("%s %s holds no usable PEM certificate (%s)" % (
            what, path, e))
    now = now or _now()
    for cert in certs:
        if now > cert.not_valid_after_utc:
            raise TLSConfigError("%s %s: certificate %s expired on %s" % (
                what, path, subjectText(cert),
                cert.not_valid_after_utc.isoformat()))
        if now < cert.not_valid_before_utc:
            raise TLSConfigError(
                "%s %s: certificate %s is not valid before %s" % (
                    what, path, subjectText(cert),
                    cert.not_valid_before_utc.isoformat()))
    return certs


def loadKey(path: str) -> Any:
    """
    Read an unencrypted PEM private key (never prompts for a passphrase).

    @raise TLSConfigError: unreadable, encrypted or not a key.
    """
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError("private key %s is encrypted; give an "
                             "unencrypted key (mode 0600)" % (path,))
    except (ValueError, crypto.Error) as e:
        raise TLSConfigError("%s holds no usable PEM private key (%s)" % (
            path, e))


def _spki(publicKey: Any) -> bytes:
    return bytes(publicKey.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo))


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Credentials:
    """
    A certificate (with the intermediates that follow it in its file) and
    the matching private key.
    """

    certificate: x509.Certificate
    key: Any
    chain: Tuple[x509.Certificate, ...] = ()

    @property
    def subject(self) -> str:
        return subjectText(self.certificate)


def loadCredentials(certPath: str, keyPath: Optional[str] = None,
                    now: Optional[datetime.datetime] = None) -> Credentials:
    """
    Load a certificate chain and its key (from C{certPath} too when
    C{keyPath} is None) and check that they belong together.

    @raise TLSConfigError: see L{loadCertificates}, L{loadKey}; or the key
        does not match the certificate.
    """
    certs = loadCertificates(certPath, "certificate", now)
    key = loadKey(keyPath or certPath)
    if _spki(key.public_key()) != _spki(certs[0].public_key()):
        raise TLSConfigError("private key %s does not match certificate %s "
                             "(%s)" % (keyPath or certPath, certPath,
                                       subjectText(certs[0])))
    return Credentials(certs[0], key, tuple(certs[1:]))


# ----------------------------------------------------------------------
# Contexts

def _x509(cert: x509.Certificate) -> crypto.X509:
    return crypto.X509.from_cryptography(cert)


def _trustRoot(authorities: Sequence[x509.Certificate]) -> Any:
    return ssl.trustRootFromCertificates(
        [ssl.Certificate(_x509(c)) for c in authorities])


#: DMSG links run between xdiskd daemons only: TLS 1.3 (no renegotiation,
#: whose reads a link pausing its reading could starve).
DMSG_TLS = ssl.TLSVersion.TLSv1_3
#: NBD clients (qemu, libnbd with GnuTLS) may be older.
NBD_TLS = ssl.TLSVersion.TLSv1_2


def serverOptions(creds: Credentials,
                  authorities: Sequence[x509.Certificate] = (),
                  minimum: Any = NBD_TLS) -> ssl.CertificateOptions:
    """
    Server-side TLS (C{minimum} or later) presenting C{creds}; with
    C{authorities}, clients must present a certificate they signed.

    @raise TLSConfigError: OpenSSL refuses the combination.
    """
    kw: dict = {}
    if authorities:
        kw["trustRoot"] = _trustRoot(authorities)
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(creds.key),
        certificate=_x509(creds.certificate),
        extraCertChain=[_x509(c) for c in creds.chain],
        raiseMinimumTo=minimum, **kw)
    try:
        options.getContext()
    except SSL.Error as e:
        raise TLSConfigError("TLS set-up with %s failed: %s" % (
            creds.subject, e))
    return options


def clientOptions(hostname: str, authorities: Sequence[x509.Certificate],
                  creds: Optional[Credentials] = None,
                  minimum: Any = DMSG_TLS) -> Any:
    """
    Client-side TLS: the server must present a certificate signed by one
    of C{authorities} and valid for C{hostname} (a DNS name or an IP
    address); C{creds}, if any, is our client certificate.
    """
    client = None
    extra: dict = {"raiseMinimumTo": minimum}
    if creds is not None:
        client = ssl.PrivateCertificate.fromCertificateAndKeyPair(
            ssl.Certificate(_x509(creds.certificate)),
            ssl.KeyPair(crypto.PKey.from_cryptography_key(creds.key)))
        if creds.chain:
            extra["extraCertChain"] = [_x509(c) for c in creds.chain]
    return ssl.optionsForClientTLS(hostname, _trustRoot(authorities), client,
                                   extraCertificateOptions=extra)


class PeerPolicy:
    """
    Checks a verified TLS peer after the handshake: it must have sent a
    certificate and, if the allow-list is not empty, one of the subject
    common names listed.
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = frozenset(allowed)

    def __call__(self, transport: Any) -> Optional[str]:
        """
        @return: None to accept the peer, else why it is refused (naming
            its subject).
        """
        get = getattr(transport, "getPeerCertificate", None)
        cert = get() if get is not None else None
        if cert is None:
            return "no client certificate"
        if self.allowed and not set(commonNames(cert)) & self.allowed:
            return "certificate subject %s is not in the allow-list" % (
                subjectText(cert),)
        return None


# ----------------------------------------------------------------------
# The daemon's configuration

@attr.s(frozen=True, slots=True, auto_attribs=True)
class TLSConfig:
    """
    Everything TLS the daemon needs, checked (see L{fromOptions}).

    @ivar credentials: C{--tls-cert}/C{--tls-key}, or None.
    @ivar authorities: the CAs of C{--tls-ca} (may be empty).
    @ivar clientAuth: C{tls:} listeners require client certificates.
    @ivar allow: C{--tls-allow} common names (empty: any the CA signed).
    @ivar nbdMode: C{off}, C{on} or C{require}.
    @ivar nbdCredentials: the NBD server certificate (mode not off).
    @ivar nbdAuthorities: CAs for NBD client certificates; empty means
        clients are not asked for one.
    @ivar nbdAllow: C{--nbd-tls-allow} common names.
    """

    credentials: Optional[Credentials] = None
    authorities: Tuple[x509.Certificate, ...] = ()
    clientAuth: bool = True
    allow: Tuple[str, ...] = ()
    nbdMode: str = "off"
    nbdCredentials: Optional[Credentials] = None
    nbdAuthorities: Tuple[x509.Certificate, ...] = ()
    nbdAllow: Tuple[str, ...] = ()

    def serverOptions(self) -> ssl.CertificateOptions:
        """For C{tls:} DMSG listeners."""
        if self.credentials is None:
            raise TLSConfigError("tls: listeners need --tls-cert")
        return serverOptions(self.credentials,
                             self.authorities if self.clientAuth else (),
                             DMSG_TLS)

    def clientOptions(self, hostname: str) -> Any:
        """For C{tls:} DMSG connections to C{hostname}."""
        if not self.authorities:
            raise TLSConfigError("tls: connections need --tls-ca")
        return clientOptions(hostname, self.authorities, self.credentials)

    def peerPolicy(self) -> Optional[PeerPolicy]:
        """The check for peers of C{tls:} listeners, if any."""
        if not self.clientAuth:
            return None
        return PeerPolicy(self.allow)

    def nbdContextFactory(self) -> Optional[ssl.CertificateOptions]:
        """For NBD STARTTLS, or None when NBD TLS is off."""
        if self.nbdMode == "off" or self.nbdCredentials is None:
            return None
        return serverOptions(self.nbdCredentials, self.nbdAuthorities)

    def nbdPeerPolicy(self) -> Optional[PeerPolicy]:
        if self.nbdMode == "off" or not self.nbdAuthorities:
            return None
        return PeerPolicy(self.nbdAllow)

    @property
    def nbdVerifiesClients(self) -> bool:
        return self.nbdMode != "off" and bool(self.nbdAuthorities)


def _given(option: str, path: str, load: Callable[..., Any],
           *args: Any) -> Any:
    """C{load(*args)}; its error names the option the file came from."""
    try:
        return load(*args)
    except TLSConfigError as e:
        raise TLSConfigError("--%s %s: %s" % (option, path, e))


def fromOptions(options: Any, now: Optional[datetime.datetime] = None
                ) -> TLSConfig:
    """
    Build the L{TLSConfig} of parsed options (a mapping with the option
    names of L{xdiskd.options.Options}), loading and checking every file.

    @raise TLSConfigError: on any misconfiguration.
    """
    get = options.get
    listensTLS = any(isTLS(d) for d in options["listen"])
    connectsTLS = any(isTLS(d) for d in options["connect"])
    for desc in options["nbd"]:
        if isTLS(desc):
            raise TLSConfigError("--nbd %s: NBD uses STARTTLS; use a plain "
                                 "endpoint and --nbd-tls on|require" % (
                                     desc,))
    if get("tls-key") and not get("tls-cert"):
        raise TLSConfigError("--tls-key needs --tls-cert")
    creds = (_given("tls-cert", options["tls-cert"], loadCredentials,
                    options["tls-cert"], get("tls-key"), now)
             if get("tls-cert") else None)
    authorities: Tuple[x509.Certificate, ...] = ()
    if get("tls-ca"):
        authorities = tuple(_given("tls-ca", options["tls-ca"],
                                   loadCertificates, options["tls-ca"],
                                   "CA file", now))
    clientAuth = not get("tls-no-client-auth")
    allow = tuple(get("tls-allow") or ())
    if listensTLS:
        if creds is None:
            raise TLSConfigError("tls: listeners need --tls-cert (and "
                                 "--tls-key unless the key is in it)")
        if clientAuth and not authorities:
            raise TLSConfigError(
                "tls: listeners verify client certificates: give --tls-ca, "
                "or --tls-no-client-auth to accept any client")
    if connectsTLS and not authorities:
        raise TLSConfigError("tls: connections verify the server: give "
                             "--tls-ca")
    if allow and not clientAuth:
        raise TLSConfigError("--tls-allow needs client certificates; drop "
                             "--tls-no-client-auth")
    if allow and not authorities:
        raise TLSConfigError("--tls-allow needs --tls-ca")

    mode = get("nbd-tls") or "off"
    if mode not in NBD_TLS_MODES:
        raise TLSConfigError("--nbd-tls must be one of %s, not %r" % (
            "|".join(NBD_TLS_MODES), mode))
    nbdAllow = tuple(get("nbd-tls-allow") or ())
    verify = bool(get("nbd-tls-verify-client")) or bool(nbdAllow)
    nbdFiles = [o for o in ("nbd-tls-cert", "nbd-tls-key", "nbd-tls-ca")
                if get(o)]
    if listensTLS:
        TLSConfig(creds, authorities, clientAuth).serverOptions()
    if mode == "off":
        if nbdFiles or verify:
            raise TLSConfigError("%s given but --nbd-tls is off; say "
                                 "--nbd-tls on or require" % (
                                     ", ".join("--" + o for o in nbdFiles)
                                     or "--nbd-tls-verify-client",))
        return TLSConfig(creds, authorities, clientAuth, allow)
    if get("nbd-tls-key") and not get("nbd-tls-cert"):
        raise TLSConfigError("--nbd-tls-key needs --nbd-tls-cert")
    if get("nbd-tls-cert"):
        nbdCreds = _given("nbd-tls-cert", options["nbd-tls-cert"],
                          loadCredentials, options["nbd-tls-cert"],
                          get("nbd-tls-key"), now)
    elif creds is not None:
        nbdCreds = creds
    else:
        raise TLSConfigError("--nbd-tls %s needs a certificate: "
                             "--nbd-tls-cert or --tls-cert" % (mode,))
    nbdAuthorities: Tuple[x509.Certificate, ...] = ()
    if verify:
        if get("nbd-tls-ca"):
            nbdAuthorities = tuple(_given(
                "nbd-tls-ca", options["nbd-tls-ca"], loadCertificates,
                options["nbd-tls-ca"], "NBD CA file", now))
        else:
            nbdAuthorities = authorities
        if not nbdAuthorities:
            raise TLSConfigError("verifying NBD client certificates needs "
                                 "--nbd-tls-ca or --tls-ca")
    elif get("nbd-tls-ca"):
        raise TLSConfigError("--nbd-tls-ca needs --nbd-tls-verify-client")
    config = TLSConfig(creds, authorities, clientAuth, allow, mode,
                       nbdCreds, nbdAuthorities, nbdAllow)
    config.nbdContextFactory()   # OpenSSL checks the pair now, not later
    return config
