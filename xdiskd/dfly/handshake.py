"""
DragonFly's key negotiation, sans-IO (dmsg-crypto.md §3-§7.4).

Each side writes a 512-byte block, raw-RSA transformed twice (own private
key, then the peer's public key), and reads the peer's.  The block holds
a random 64-byte C{sess}; each direction is then encrypted with its
sender's C{sess} (AES-256 key C{sess[0:32]}, IV prefix C{sess[32:36]}).

Then the stream format: libdmsg has two (L{xdiskd.dfly.stream}) and
says nothing about which it speaks, so a receiver tells them apart from
the first 80 stream bytes (§7.4); libdmsg always speaks first (its
LNK_CONN).  Two xdiskd peers would each wait for the other, so xdiskd
names the format it sends to another xdiskd in the block's free-text
C{quickmsg} (C{"xdiskd U"}; to libdmsg it answers in libdmsg's format,
whatever it named), which libdmsg only prints ("auth success: xdiskd U"):
a peer that names its format is believed (the block is signed), any
other is detected from its first 80 stream bytes, and nothing is sent
before that.  To an xdiskd peer we send U (or what the endpoint forces,
C{format=u|t}); to any other, what it sends (a forced format that
differs refuses the link).

L{Negotiation} is fed received bytes and returns an L{Established} once
both are settled.  Every failure raises a L{NegotiationError} whose text
is the log line.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Optional

import attr

from xdiskd.dfly.bigint import invert, powmod
from xdiskd.dfly.keys import PrivateKey, PublicKey
from xdiskd.dfly.stream import (
    DETECT_BYTES, FORMATS, Cipher, detectFormat, receiver, sender)

BLOCK_SIZE = 512
VERSION = 1
MAGIC = 0x4832
MAGIC_SWAPPED = 0x3248
_HEAD = struct.Struct("<HHI")        # magic, version, flags at 0x08
_HEAD_SWAPPED = struct.Struct(">HHI")
_U32 = struct.Struct("<I")
SESS = slice(0x10, 0x50)
VERF = slice(0x50, 0x60)
QUICKMSG = slice(0x60, 0x80)
#: What xdiskd writes in C{quickmsg}, then the format it sends.
QUICKMSG_PREFIX = b"xdiskd "


class NegotiationError(Exception):
    """The negotiation failed; the text says why (one log line)."""


class KeyMismatch(NegotiationError):
    """The peer's block does not decrypt with the keys we hold."""


class BadBlock(NegotiationError):
    """The peer's block decrypted but is not a valid handshake block."""


class FormatMismatch(NegotiationError):
    """The peer sends another stream format than the endpoint forces."""


class KeyTooSmall(NegotiationError):
    """A key cannot carry the block (not 2048/4096 bits)."""


def verifier(sess: bytes) -> bytes:
    """C{verf[j]} = XOR of C{sess[4j:4j+4]} (§3.1; not "~sess")."""
    out = bytearray(16)
    for j in range(16):
        out[j] = sess[4 * j] ^ sess[4 * j + 1] ^ sess[4 * j + 2] ^ (
            sess[4 * j + 3])
    return bytes(out)


def _private(key: PrivateKey, c: int, random: Callable[[int], bytes]) -> int:
    """C{c^d mod n} by CRT, blinded (the peer chooses C{c})."""
    n = key.n
    while True:
        r = int.from_bytes(random(key.k), "big") % n
        if r > 1:
            break
    cb = c * powmod(r, key.e, n) % n
    m1 = powmod(cb, key.dp, key.p)
    m2 = powmod(cb, key.dq, key.q)
    h = key.qinv * (m1 - m2) % key.p
    mb = m2 + h * key.q
    return mb * invert(r, n) % n


def buildBlock(quickmsg: bytes, random: Callable[[int], bytes] = os.urandom
               ) -> bytearray:
    """
    A plaintext handshake block (§3.2): random bytes, C{quickmsg}
    NUL-terminated at 0x60, magic/version/flags, the top two bits of
    0x000 and 0x100 cleared, the verifier of C{sess}.
    """
    if len(quickmsg) > 31 or b"\0" in quickmsg:
        raise ValueError("quickmsg must be at most 31 bytes, no NUL")
    block = bytearray(random(BLOCK_SIZE))
    if len(block) != BLOCK_SIZE or not any(block):
        raise NegotiationError("bad random bytes from the system")
    block[0x60:0x60 + len(quickmsg) + 1] = quickmsg + b"\0"
    _HEAD.pack_into(block, 0x08, MAGIC, VERSION, 0)
    block[0x000] &= 0x3F
    block[0x100] &= 0x3F
    block[VERF] = verifier(bytes(block[SESS]))
    return block


def _checkKeys(own: PrivateKey, peer: PublicKey) -> int:
    k = own.k
    if k != peer.k or BLOCK_SIZE % k or k < 256:
        raise KeyTooSmall("key sizes %d and %d bits: both must be 2048 "
                          "or 4096" % (own.bits, peer.bits))
    return k


def encryptBlock(block: bytearray, own: PrivateKey, peer: PublicKey,
                 random: Callable[[int], bytes] = os.urandom) -> bytes:
    """
    The wire form of C{block} (§4.1): per k-byte piece, bump the LE u32
    at +4 until C{m^d_own} is below 2^(8k-2), then raise that to the
    peer's public exponent.  C{block} is changed (the counters).
    """
    k = _checkKeys(own, peer)
    limit = 1 << (8 * k - 2)
    out = bytearray()
    for o in range(0, BLOCK_SIZE, k):
        while True:
            (count,) = _U32.unpack_from(block, o + 4)
            _U32.pack_into(block, o + 4, (count + 1) & 0xFFFFFFFF)
            m = int.from_bytes(block[o:o + k], "big")
            if m >= own.n:      # the 0x3F masks rule this out for k >= 256
                raise KeyTooSmall("handshake piece not below our modulus")
            s = _private(own, m, random)
            if s < limit:
                break
        out += powmod(s, peer.e, peer.n).to_bytes(k, "big")
    return bytes(out)


def decryptBlock(wire: bytes, own: PrivateKey, peer: PublicKey,
                 random: Callable[[int], bytes] = os.urandom) -> bytes:
    """
    The peer's plaintext block (§4.2): own private key, then the peer's
    public key, per piece.

    @raise KeyMismatch: a piece is out of range for the keys.
    """
    k = _checkKeys(own, peer)
    out = bytearray()
    for o in range(0, BLOCK_SIZE, k):
        c = int.from_bytes(wire[o:o + k], "big")
        if c >= own.n:
            raise KeyMismatch(
                "peer's handshake is not encrypted for our key (piece at "
                "%d above our modulus): the peer has another key for us "
                "than our rsa.pub" % (o,))
        s = _private(own, c, random)
        if s >= peer.n:
            raise KeyMismatch(
                "peer's handshake does not decrypt with its key in "
                "remote/ (piece at %d): wrong peer key, or the peer has "
                "another key for us" % (o,))
        out += powmod(s, peer.e, peer.n).to_bytes(k, "big")
    return bytes(out)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PeerBlock:
    """What a verified peer block tells: its session key material."""

    sess: bytes
    quickmsg: bytes

    @property
    def key(self) -> bytes:
        return self.sess[0:32]

    @property
    def fixed(self) -> bytes:
        return self.sess[32:36]

    @property
    def announced(self) -> Optional[str]:
        """The format an xdiskd peer says it sends, else None."""
        q = self.quickmsg
        if q.startswith(QUICKMSG_PREFIX) and len(q) == len(
                QUICKMSG_PREFIX) + 1 and q[-1:].decode("latin-1") in FORMATS:
            return q[-1:].decode("latin-1")
        return None


def checkBlock(plain: bytes) -> PeerBlock:
    """
    Accept iff version is 1 and the verifier matches (§3.3); magic and
    flags are not looked at, except that a byte-swapped magic swaps the
    version.

    @raise BadBlock: otherwise.
    """
    magic, version, _ = _HEAD.unpack_from(plain, 0x08)
    if magic == MAGIC_SWAPPED:
        _, version, _ = _HEAD_SWAPPED.unpack_from(plain, 0x08)
    sess = bytes(plain[SESS])
    if verifier(sess) != bytes(plain[VERF]):
        raise BadBlock("peer's handshake block fails its verifier: wrong "
                       "keys on one side (ours in remote/ for the peer, or "
                       "the peer's for us)")
    if version != VERSION:
        raise BadBlock("peer's handshake block has version %d, not 1" % (
            version,))
    q = bytes(plain[QUICKMSG])
    return PeerBlock(sess, q.split(b"\0", 1)[0])


@attr.s(slots=True, auto_attribs=True)
class Established:
    """
    The negotiated stream: C{tx}/C{rx} ciphers, their formats, and the
    plaintext the peer already sent (to hand to DMSG first).
    """

    tx: Cipher
    rx: Cipher
    txFormat: str
    rxFormat: str
    rest: bytes
    peerMessage: bytes


class Negotiation:
    """
    One side's negotiation.  L{start} returns the 512 bytes to send
    (write them before reading: libdmsg does); then L{receive} takes the
    peer's bytes, in any pieces, until it returns an L{Established}.

    @param fmt: C{"auto"}, C{"U"} or C{"T"}: what we send and expect.
    @ivar stage: C{"handshake"}, C{"format"} (waiting for the peer's
        first 80 stream bytes) or C{"done"}.
    """

    def __init__(self, own: PrivateKey, peer: PublicKey, fmt: str = "auto",
                 random: Callable[[int], bytes] = os.urandom) -> None:
        if fmt not in ("auto",) + FORMATS:
            raise ValueError("format must be auto, U or T")
        self.own = own
        self.peer = peer
        self.fmt = fmt
        self.random = random
        self.stage = "handshake"
        self._buf = bytearray()
        self._block: Optional[bytearray] = None
        self._peerBlock: Optional[PeerBlock] = None
        _checkKeys(own, peer)

    @property
    def received(self) -> int:
        """Bytes of the current stage received so far."""
        return len(self._buf)

    @property
    def head(self) -> bytes:
        """The first bytes received (for telling what a failed peer sent)."""
        return bytes(self._buf[:8]) if self.stage == "handshake" else b""

    @property
    def needed(self) -> int:
        """Bytes the current stage needs."""
        return BLOCK_SIZE if self.stage == "handshake" else DETECT_BYTES

    def start(self) -> bytes:
        """Build and encrypt our block; the bytes to send."""
        announce = "U" if self.fmt == "auto" else self.fmt
        self._block = buildBlock(QUICKMSG_PREFIX + announce.encode(),
                                 self.random)
        return encryptBlock(self._block, self.own, self.peer, self.random)

    def receive(self, data: bytes) -> Optional[Established]:
        """
        Take received bytes.

        @return: None while more are needed, then the L{Established}
            stream (bytes after what the negotiation used are in it).
        @raise NegotiationError: the negotiation failed.
        """
        if self.stage == "done":
            raise RuntimeError("negotiation already done")
        self._buf += data
        if self.stage == "handshake":
            if len(self._buf) < BLOCK_SIZE:
                return None
            wire = bytes(self._buf[:BLOCK_SIZE])
            del self._buf[:BLOCK_SIZE]
            self._peerBlock = checkBlock(
                decryptBlock(wire, self.own, self.peer, self.random))
            self.stage = "format"
        peer = self._peerBlock
        assert peer is not None and self._block is not None
        if peer.announced is not None:
            # An xdiskd peer names what it sends (its block is signed).
            if self.fmt != "auto" and peer.announced != self.fmt:
                raise FormatMismatch(
                    "peer sends stream format %s but this endpoint is "
                    "format=%s" % (peer.announced, self.fmt.lower()))
            rxFormat = peer.announced
            txFormat = "U" if self.fmt == "auto" else self.fmt
        else:
            # libdmsg speaks first; nothing is sent before its format is
            # known (a T host crashes on U data, dmsg-crypto.md §8.2).
            if len(self._buf) < DETECT_BYTES:
                return None
            rxFormat = detectFormat(peer.key, peer.fixed,
                                    bytes(self._buf[:DETECT_BYTES]))
            if self.fmt != "auto" and rxFormat != self.fmt:
                raise FormatMismatch(
                    "peer sends stream format %s but this endpoint is "
                    "format=%s; nothing sent" % (rxFormat, self.fmt.lower()))
            txFormat = rxFormat
        mine = bytes(self._block[SESS])
        tx = sender(txFormat, mine[0:32], mine[32:36])
        rx = receiver(rxFormat, peer.key, peer.fixed)
        rest = rx.update(bytes(self._buf)) if self._buf else b""
        self._buf = bytearray()
        self.stage = "done"
        return Established(tx, rx, txFormat, rxFormat, rest, peer.quickmsg)
