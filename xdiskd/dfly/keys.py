"""
Key files in DragonFly's layout (C{/etc/hammer2}, C{--dfly-dir}), and
what to do with a peer (dmsg-crypto.md §2):

  - C{rsa.prv}: our RSA private key, PEM C{RSA PRIVATE KEY} (PKCS#1) or
    unencrypted C{PRIVATE KEY} (PKCS#8), as C{hammer2 rsainit} writes;
  - C{rsa.pub}: our public key, PEM C{PUBLIC KEY}; what the peer's admin
    installs (it must be the public half of C{rsa.prv});
  - C{remote/<peer-numeric-ip>.pub}: the peer's public key: encrypted
    link;
  - C{remote/<peer-numeric-ip>.none}: plain DMSG, nothing negotiated;
  - neither: the link is refused.

Our own pair is read and checked once, at start-up; the C{remote/} files
are looked up afresh for every connection, as libdmsg does, so a peer can
be added without a restart (and every C{remote/*.pub} present at start-up
is checked then too).  Only 2048- and 4096-bit keys are accepted: libdmsg
cuts the 512-byte block into 512/k pieces and only masks the top bits of
the pieces at 0 and 256, so smaller keys fail at random (§2.5).

No Twisted here.
"""

from __future__ import annotations

import ipaddress
import os
from typing import List, Optional, Tuple, Union

import attr
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_DIR = "/etc/hammer2"
KEY_BITS = (2048, 4096)
INIT_BITS = 2048
PRIVATE_NAME = "rsa.prv"
PUBLIC_NAME = "rsa.pub"
REMOTE_DIR = "remote"
#: Key files are small; anything larger is not a key.
MAX_KEY_FILE = 64 << 10


class DFlyKeyError(ValueError):
    """A key file is missing, unreadable or unusable (one-line message)."""


class _Size:
    """C{k} (modulus bytes, OpenSSL's C{RSA_size}) and C{bits} of C{n}."""

    __slots__ = ()
    n: int

    @property
    def k(self) -> int:
        return (self.n.bit_length() + 7) // 8

    @property
    def bits(self) -> int:
        return self.n.bit_length()


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PublicKey(_Size):
    """An RSA public key as the handshake uses it: C{n}, C{e}, size C{k}."""

    n: int
    e: int
    path: str = ""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PrivateKey(_Size):
    """An RSA private key with its CRT parameters."""

    n: int
    e: int
    d: int
    p: int
    q: int
    dp: int
    dq: int
    qinv: int
    path: str = ""

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.n, self.e, self.path)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class OwnKeys:
    """Our key pair, read from C{rsa.prv} and C{rsa.pub}."""

    private: PrivateKey
    public: PublicKey
    pem: bytes


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise DFlyKeyError("%s %s does not exist" % (what, path))
    except OSError as e:
        raise DFlyKeyError("cannot read %s %s: %s" % (
            what, path, e.strerror or e))
    if len(data) > MAX_KEY_FILE:
        raise DFlyKeyError("%s %s is over %d bytes: not a key" % (
            what, path, MAX_KEY_FILE))
    return data


def _checkBits(bits: int, what: str, path: str) -> None:
    if bits not in KEY_BITS:
        raise DFlyKeyError(
            "%s %s is a %d-bit RSA key; DragonFly's handshake works only "
            "with 2048- or 4096-bit keys" % (what, path, bits))


def loadPublic(path: str, what: str = "public key") -> PublicKey:
    """
    Read a PEM C{PUBLIC KEY} (X.509 SubjectPublicKeyInfo) RSA key, the
    only public format libdmsg reads (C{PEM_read_RSA_PUBKEY}).

    @raise DFlyKeyError: missing, unreadable, another format, not RSA, or
        not 2048/4096 bits.
    """
    data = _read(path, what)
    if b"-----BEGIN RSA PUBLIC KEY-----" in data:
        raise DFlyKeyError(
            "%s %s is a PKCS#1 'RSA PUBLIC KEY'; DragonFly reads only "
            "'PUBLIC KEY' (convert: openssl rsa -RSAPublicKey_in -in FILE "
            "-pubout)" % (what, path))
    if b"-----BEGIN PUBLIC KEY-----" not in data:
        raise DFlyKeyError("%s %s holds no PEM 'PUBLIC KEY'" % (what, path))
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise DFlyKeyError("%s %s: unusable PEM public key (%s)" % (
            what, path, e))
    if not isinstance(key, rsa.RSAPublicKey):
        raise DFlyKeyError("%s %s is not an RSA key" % (what, path))
    numbers = key.public_numbers()
    _checkBits(numbers.n.bit_length(), what, path)
    return PublicKey(numbers.n, numbers.e, path)


def loadPrivate(path: str) -> PrivateKey:
    """
    Read an unencrypted PEM RSA private key (PKCS#1 or PKCS#8).

    @raise DFlyKeyError: missing, unreadable, encrypted, not RSA, or not
        2048/4096 bits.
    """
    what = "private key"
    data = _read(path, what)
    if b"ENCRYPTED" in data:
        raise DFlyKeyError("%s %s is encrypted; libdmsg cannot use it "
                           "either: give an unencrypted key (mode 0600)" % (
                               what, path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise DFlyKeyError("%s %s: unusable PEM private key (%s)" % (
            what, path, e))
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DFlyKeyError("%s %s is not an RSA key" % (what, path))
    pn = key.private_numbers()
    pub = pn.public_numbers
    _checkBits(pub.n.bit_length(), what, path)
    return PrivateKey(pub.n, pub.e, pn.d, pn.p, pn.q, pn.dmp1, pn.dmq1,
                      pn.iqmp, path)


def loadOwn(directory: str) -> OwnKeys:
    """
    Read and check our key pair in C{directory}.

    @raise DFlyKeyError: either file missing or bad, or C{rsa.pub} not the
        public half of C{rsa.prv} (peers would be given the wrong key).
    """
    prvPath = os.path.join(directory, PRIVATE_NAME)
    pubPath = os.path.join(directory, PUBLIC_NAME)
    private = loadPrivate(prvPath)
    public = loadPublic(pubPath, "public key")
    if (public.n, public.e) != (private.n, private.e):
        raise DFlyKeyError(
            "%s is not the public key of %s (peers must be given the "
            "public half of our private key)" % (pubPath, prvPath))
    return OwnKeys(private, public, _read(pubPath, "public key"))


# ----------------------------------------------------------------------
# Per peer

def numericHost(host: str) -> str:
    """
    The name a peer's files carry: its numeric address (IPv4-mapped IPv6
    addresses as IPv4, as the DragonFly side would see them).

    @raise ValueError: not a numeric address.
    """
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return str(addr)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Encrypted:
    """Run the handshake with C{peer}, the key in C{remote/<ip>.pub}."""

    peer: PublicKey


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Plain:
    """C{remote/<ip>.none} exists: plain DMSG, nothing negotiated."""

    path: str


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Refused:
    """Neither file, or a bad one: close the link, saying C{why}."""

    why: str


Decision = Union[Encrypted, Plain, Refused]


class KeyDirectory:
    """
    C{--dfly-dir}: our pair (read once, by L{load}) and the peers' files
    (looked up per connection by L{decide}).
    """

    def __init__(self, path: str = DEFAULT_DIR) -> None:
        self.path = path
        self.own: Optional[OwnKeys] = None

    @property
    def remote(self) -> str:
        return os.path.join(self.path, REMOTE_DIR)

    def peerFiles(self, ip: str) -> Tuple[str, str]:
        """The C{.pub} and C{.none} paths for the numeric address C{ip}."""
        return (os.path.join(self.remote, ip + ".pub"),
                os.path.join(self.remote, ip + ".none"))

    def load(self) -> "KeyDirectory":
        """
        Read our pair and check every C{remote/*.pub} now present.

        @raise DFlyKeyError: the first problem found.
        """
        own = loadOwn(self.path)
        try:
            names = sorted(os.listdir(self.remote))
        except FileNotFoundError:
            names = []
        except OSError as e:
            raise DFlyKeyError("cannot list %s: %s" % (
                self.remote, e.strerror or e))
        for name in names:
            if name.endswith(".pub"):
                peer = loadPublic(os.path.join(self.remote, name),
                                  "peer key")
                self._checkSize(own, peer)
        self.own = own
        return self

    @staticmethod
    def _checkSize(own: OwnKeys, peer: PublicKey) -> None:
        if peer.k != own.private.k:
            raise DFlyKeyError(
                "peer key %s is %d bits but ours (%s) is %d: libdmsg "
                "needs all keys of one size" % (
                    peer.path, peer.bits, own.private.path,
                    own.private.bits))

    def decide(self, host: str) -> Decision:
        """
        What to do with a connection from or to C{host} (dmsg-crypto.md
        §2.3: C{.pub} first, then C{.none}, else refuse).
        """
        try:
            ip = numericHost(host)
        except ValueError:
            return Refused("peer address %r is not numeric" % (host,))
        pub, none = self.peerFiles(ip)
        if os.path.exists(pub):
            try:
                peer = loadPublic(pub, "peer key")
                assert self.own is not None
                self._checkSize(self.own, peer)
            except DFlyKeyError as e:
                return Refused(str(e))
            return Encrypted(peer)
        if os.path.exists(none):
            return Plain(none)
        return Refused("no key for peer %s (looked for %s and %s)" % (
            ip, pub, none))


# ----------------------------------------------------------------------
# rsainit / rsashow

def _writeNew(path: str, data: bytes, mode: int) -> None:
    """Write C{path} only if it does not exist; never a partial file."""
    tmp = "%s.tmp%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)      # fails if path appeared meanwhile
    finally:
        os.unlink(tmp)


def rsainit(directory: str = DEFAULT_DIR, bits: int = INIT_BITS) -> List[str]:
    """
    Make our key pair as C{hammer2 rsainit} does: C{directory} (mode
    0700) with C{rsa.prv} (PEM C{RSA PRIVATE KEY}, mode 0600) and
    C{rsa.pub} (PEM C{PUBLIC KEY}, mode 0644), plus an empty C{remote/}
    (0700).  An existing C{rsa.prv} is kept and its C{rsa.pub} derived
    from it; nothing is ever overwritten.

    @return: what was done, one line each.
    @raise DFlyKeyError: an existing file is unusable, or C{rsa.pub}
        exists without C{rsa.prv}.
    """
    done: List[str] = []
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
        done.append("created %s" % (directory,))
    remote = os.path.join(directory, REMOTE_DIR)
    if not os.path.isdir(remote):
        os.mkdir(remote, 0o700)
        done.append("created %s" % (remote,))
    prv = os.path.join(directory, PRIVATE_NAME)
    pub = os.path.join(directory, PUBLIC_NAME)
    if os.path.exists(prv):
        loadPrivate(prv)
        with open(prv, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        done.append("using existing private key %s" % (prv,))
    else:
        if os.path.exists(pub):
            raise DFlyKeyError(
                "%s exists without %s: move it away first (it would no "
                "longer match)" % (pub, prv))
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        _writeNew(prv, key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()), 0o600)
        done.append("created %s (%d-bit RSA, mode 0600)" % (prv, bits))
    if os.path.exists(pub):
        loadOwn(directory)
        done.append("both keys already exist")
    else:
        _writeNew(pub, key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
        done.append("created %s" % (pub,))
    return done


def fingerprint(key: PublicKey) -> str:
    """SHA-256 of the key's DER SubjectPublicKeyInfo, hex, colon-separated."""
    from cryptography.hazmat.primitives import hashes
    der = rsa.RSAPublicNumbers(key.e, key.n).public_key().public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo)
    h = hashes.Hash(hashes.SHA256())
    h.update(der)
    return ":".join("%02x" % b for b in h.finalize())
