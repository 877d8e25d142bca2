"""
Sans-IO DMSG codec: messages in, bytes out; bytes in, messages out.

No sockets, reactors or clocks here (the link layer in L{xdiskd.dmsg.link}
does I/O).  Layout facts come from the project's DMSG spec: §1 framing,
§2 base header, §3 cmd word, §4 extension structures.

Every integer is little-endian (§1.2).  A message on the wire is the
header (base header + extension + zero padding, C{(cmd & 0xFF) * 64}
bytes) followed by the aux payload zero-padded to 64 bytes (§1.1).
"""

from __future__ import annotations

import struct
from typing import Any, List, NamedTuple, Optional, Union

from crc32c import crc32c as _crc32c

from xdiskd.buffers import take as _takeBuffer
from xdiskd.dmsg import constants as C
from xdiskd.labels import show

BytesLike = Union[bytes, bytearray, memoryview]

# §2: the base header, 64 bytes.
HEADER = struct.Struct("<HHIQQQIIIIQII")
# Below this many missing bytes a message is not worth a recv_into.
RECV_INTO_MIN = 32 << 10
_HDR_CRC = struct.Struct("<I")
_HDR_CRC_OFFSET = 0x3C
_ZERO4 = b"\0\0\0\0"
_PAD = bytes(C.ALIGN)


def crc32c(data: BytesLike, value: int = 0) -> int:
    """
    CRC-32C (Castagnoli), DragonFly's C{iscsi_crc32()} (§1.5), computed by
    a hardware-accelerated implementation where the CPU has one.
    C{value} continues a previous CRC.
    """
    return _crc32c(data, value)


# ----------------------------------------------------------------------
# Framing errors: one class per cause, so logs and tests can name it.

class FramingError(Exception):
    """The byte stream is not valid DMSG; the link must be closed."""


class BadMagicError(FramingError):
    """The magic field is neither 0x4832 nor its byte-swapped form."""


class ReversedMagicError(BadMagicError):
    """The magic is 0x3248: the peer uses the other byte order (§1.2)."""


class HeaderSizeError(FramingError):
    """The header size is below 64 or above DMSG_HDR_MAX (2048) (§1.3)."""


class AuxSizeError(FramingError):
    """aux_bytes is above DMSG_AUX_MAX (1 MiB) (§1.3)."""


class HeaderCRCError(FramingError):
    """hdr_crc does not match the header (§1.5)."""


class AuxCRCError(FramingError):
    """aux_crc does not match the padded payload (§1.5)."""


class SaltError(FramingError):
    """salt is out of sequence for this direction (§1.6)."""


class EncodeError(ValueError):
    """A message cannot be encoded (bad sizes, labels or extension)."""


# ----------------------------------------------------------------------
# Labels (§4.1): fixed 128-byte NUL-padded C strings.

def decodeLabel(raw: bytes) -> bytes:
    """
    Decode a label field: forced NUL in the last byte, the bytes up to the
    first NUL.  A label stays bytes (any bytes a peer sends); it is shown
    only through L{xdiskd.labels.show}.
    """
    end = raw.find(b"\0", 0, C.LABEL_SIZE - 1)
    if end < 0:
        end = C.LABEL_SIZE - 1
    return bytes(raw[:end])


def encodeLabel(label: bytes) -> bytes:
    """Encode a label; at most 127 bytes so the field stays NUL-ended."""
    if not isinstance(label, bytes):
        raise EncodeError("label is not bytes: %s" % (type(label).__name__,))
    if len(label) >= C.LABEL_SIZE or b"\0" in label:
        raise EncodeError("label too long or contains NUL: %s" % (
            show(label),))
    return label


# ----------------------------------------------------------------------
# Extension structures (§4).  Each is an immutable NamedTuple with
# C{packInto(buf)} writing its fields at offset 64 of a zeroed header
# and C{unpackFrom(buf)} reading them back.

_CONN = struct.Struct("<16s16s16sQBBHIIQ56s128s")
_SPAN = struct.Struct("<16s16sBBHI8sIIQIIQ32s128s128s")
_OPEN = struct.Struct("<II")
_BLKIO = struct.Struct("<QQIIII")
_BLKERR = struct.Struct("<QII64s")
_U16 = bytes(16)


class LnkConn(NamedTuple):
    """
    C{dmsg_lnk_conn} (§4.2), 328 bytes, header size 6 (384).

    C{xflags} is C{reserved03} (8 bytes at 0x84, read as a little-endian
    u64), which DragonFly leaves zero and does not look at: xdiskd peers
    state there what they offer each other (L{xdiskd.dmsg.integrity}).
    """

    peer_mask: int = 0
    peer_type: int = 0
    proto_version: int = C.SPAN_PROTO_1
    peer_label: bytes = b""
    status: int = 0
    rnss: int = 0
    media_id: bytes = _U16
    peer_id: bytes = _U16
    xflags: int = 0

    def packInto(self, buf: bytearray) -> None:
        _CONN.pack_into(buf, C.HDR_SIZE, self.media_id, self.peer_id, _U16,
                        self.peer_mask, self.peer_type, 0,
                        self.proto_version, self.status, self.rnss,
                        self.xflags, b"", encodeLabel(self.peer_label))

    @classmethod
    def unpackFrom(cls, buf: BytesLike) -> "LnkConn":
        (media_id, peer_id, _r1, peer_mask, peer_type, _r2, proto_version,
         status, rnss, xflags, _r4, label) = _CONN.unpack_from(
             buf, C.HDR_SIZE)
        return cls(peer_mask, peer_type, proto_version, decodeLabel(label),
                   status, rnss, media_id, peer_id, xflags)


class LnkSpan(NamedTuple):
    """
    C{dmsg_lnk_span} (§4.3), 432 bytes, header size 7 (448); the media
    union is read as C{media.block} (bytes, blksize, reserved01) plus the
    raw rest.

    C{media_maxio} is C{media.block.reserved01} (u32 at 0x84), which
    DragonFly leaves 0: an xdiskd exporter states there the largest
    READ/WRITE it accepts (0 means DragonFly's 131072, §8.3).

    C{media_incarnation} is the u64 at 0x88, the first bytes of the media
    union past C{media.block}, which DragonFly leaves 0 (spec §4.3: "rest
    0"): an xdiskd exporter states there which page cache its writes go
    into (L{xdiskd.export.incarnation}), so an importer knows whether
    writes not yet flushed can have been lost (0: unknown, assume lost).
    C{media_rest} is the 32 bytes after it.  Relays copy the media union
    through unchanged.
    """

    peer_type: int = C.PEER_BLOCK
    media_bytes: int = 0
    media_blksize: int = 0
    peer_label: bytes = b""
    pfs_label: bytes = b""
    proto_version: int = C.SPAN_PROTO_1
    pfs_type: int = C.PFSTYPE_DEFAULT
    dist: int = 0
    rnss: int = 0
    status: int = 0
    peer_id: bytes = _U16
    pfs_id: bytes = _U16
    media_rest: bytes = b""
    media_maxio: int = 0
    media_incarnation: int = 0

    def packInto(self, buf: bytearray) -> None:
        _SPAN.pack_into(buf, C.HDR_SIZE, self.peer_id, self.pfs_id,
                        self.pfs_type, self.peer_type, self.proto_version,
                        self.status, b"", self.dist, self.rnss,
                        self.media_bytes, self.media_blksize,
                        self.media_maxio, self.media_incarnation,
                        self.media_rest,
                        encodeLabel(self.peer_label),
                        encodeLabel(self.pfs_label))

    @classmethod
    def unpackFrom(cls, buf: BytesLike) -> "LnkSpan":
        (peer_id, pfs_id, pfs_type, peer_type, proto_version, status, _r2,
         dist, rnss, mbytes, mblksize, mmaxio, minc, mrest, peer_label,
         pfs_label) = _SPAN.unpack_from(buf, C.HDR_SIZE)
        return cls(peer_type, mbytes, mblksize, decodeLabel(peer_label),
                   decodeLabel(pfs_label), proto_version, pfs_type, dist,
                   rnss, status, peer_id, pfs_id, mrest, mmaxio, minc)


class BlkOpen(NamedTuple):
    """C{dmsg_blk_open} (§4.4), used by BLK_OPEN and BLK_CLOSE."""

    modes: int = C.BLKOPEN_RD

    def packInto(self, buf: bytearray) -> None:
        _OPEN.pack_into(buf, C.HDR_SIZE, self.modes, 0)

    @classmethod
    def unpackFrom(cls, buf: BytesLike) -> "BlkOpen":
        return cls(_OPEN.unpack_from(buf, C.HDR_SIZE)[0])


class BlkIO(NamedTuple):
    """
    C{dmsg_blk_read/write/flush/freeblks} (§4.5): one layout for all four.
    C{length} is the C{bytes} field.
    """

    offset: int = 0
    length: int = 0
    keyid: int = 0
    flags: int = 0

    def packInto(self, buf: bytearray) -> None:
        _BLKIO.pack_into(buf, C.HDR_SIZE, self.keyid, self.offset,
                         self.length, self.flags, 0, 0)

    @classmethod
    def unpackFrom(cls, buf: BytesLike) -> "BlkIO":
        keyid, offset, length, flags, _r1, _r2 = _BLKIO.unpack_from(
            buf, C.HDR_SIZE)
        return cls(offset, length, keyid, flags)


class BlkError(NamedTuple):
    """C{dmsg_blk_error} (§4.6): an I/O reply with a residual count."""

    resid: int = 0
    keyid: int = 0
    buf: bytes = b""

    def packInto(self, buf: bytearray) -> None:
        _BLKERR.pack_into(buf, C.HDR_SIZE, self.keyid, self.resid, 0,
                          self.buf)

    @classmethod
    def unpackFrom(cls, buf: BytesLike) -> "BlkError":
        keyid, resid, _r, raw = _BLKERR.unpack_from(buf, C.HDR_SIZE)
        return cls(resid, keyid, raw)


class RawExt(NamedTuple):
    """The extension bytes of a command this codec does not model."""

    data: bytes = b""

    def packInto(self, buf: bytearray) -> None:
        end = min(len(buf), C.HDR_SIZE + len(self.data))
        buf[C.HDR_SIZE:end] = self.data[:end - C.HDR_SIZE]

    @classmethod
    def unpackFrom(cls, buf: BytesLike) -> "RawExt":
        return cls(bytes(buf[C.HDR_SIZE:]))


Extension = Union[LnkConn, LnkSpan, BlkOpen, BlkIO, BlkError, RawExt]

# Which extension a received message carries, by its own base command.
# Header-only commands (LNK_ERROR, PING, PAD) carry none.
EXTENSIONS: dict = {
    C.LNK_CONN: LnkConn,
    C.LNK_SPAN: LnkSpan,
    C.BLK_OPEN: BlkOpen,
    C.BLK_CLOSE: BlkOpen,
    C.BLK_READ: BlkIO,
    C.BLK_WRITE: BlkIO,
    C.BLK_FLUSH: BlkIO,
    C.BLK_FREEBLKS: BlkIO,
    C.BLK_ERROR: BlkError,
}


class Message:
    """
    One decoded (or to-be-encoded) DMSG message.

    @ivar cmd: the full cmd word, flags included.
    @ivar ext: the decoded extension (see L{EXTENSIONS}), a L{RawExt} for
        unmodelled commands with a larger header, or None.
    @ivar aux: the payload (exactly C{aux_bytes} long) or None.
    """

    __slots__ = ("cmd", "msgid", "circuit", "error", "ext", "aux", "salt",
                 "reserved02", "link_verifier")

    def __init__(self, cmd: int, msgid: int = 0, circuit: int = 0,
                 error: int = 0, ext: Optional[Extension] = None,
                 aux: Optional[BytesLike] = None, salt: int = 0,
                 reserved02: int = 0, link_verifier: int = 0) -> None:
        self.cmd = cmd
        self.msgid = msgid
        self.circuit = circuit
        self.error = error
        self.ext = ext
        self.aux = aux
        self.salt = salt
        self.reserved02 = reserved02
        self.link_verifier = link_verifier

    def __repr__(self) -> str:
        return "<Message %s msgid=%#x circuit=%#x error=%#x aux=%s>" % (
            C.cmdName(self.cmd), self.msgid, self.circuit, self.error,
            None if self.aux is None else len(self.aux))

    def __str__(self) -> str:
        """For log lines: the header fields, and how many payload bytes."""
        return "%s msgid=%#x circuit=%#x error=%#x%s" % (
            C.cmdName(self.cmd), self.msgid, self.circuit, self.error,
            "" if self.aux is None else " with %d bytes" % (len(self.aux),))

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n)
                   for n in self.__slots__ if n != "aux") and (
            bytes(self.aux or b"") == bytes(other.aux or b""))

    __hash__ = None  # type: ignore[assignment]


# ----------------------------------------------------------------------
# Encoding

def encodeMessage(msg: Message, auxCRC: bool = True) -> List[BytesLike]:
    """
    Encode C{msg} with its own salt; return the buffers to write in order
    (header, payload, padding), so a large payload is never concatenated.

    @param auxCRC: compute C{aux_crc}; if False it is sent as 0, for a
        peer that agreed not to check it (L{xdiskd.dmsg.integrity}).
        C{hdr_crc} is always computed.
    """
    cmd = msg.cmd
    hbytes = (cmd & C.SIZE) * C.ALIGN
    if hbytes < C.HDR_SIZE or hbytes > C.HDR_MAX:
        raise EncodeError("header size %d out of range" % (hbytes,))
    aux = msg.aux
    auxBytes = 0 if aux is None else len(aux)
    if auxBytes > C.AUX_MAX:
        raise EncodeError("aux of %d bytes over DMSG_AUX_MAX" % (auxBytes,))
    out: List[BytesLike]
    if auxBytes:
        pad = -auxBytes & C.ALIGN_MASK
        crc = _crc32c(aux) if auxCRC else 0  # type: ignore[arg-type]
        if pad:
            if auxCRC:
                crc = _crc32c(_PAD[:pad], crc)
            out = [b"", aux, _PAD[:pad]]  # type: ignore[list-item]
        else:
            out = [b"", aux]  # type: ignore[list-item]
    else:
        crc = 0
        out = [b""]
    header = bytearray(hbytes)
    if msg.ext is not None:
        if _EXT_SIZES.get(type(msg.ext), 0) > hbytes:
            raise EncodeError("%s does not fit a %d-byte header" % (
                type(msg.ext).__name__, hbytes))
        msg.ext.packInto(header)
    # §1.5: every field final, hdr_crc zero, then CRC all hbytes.
    HEADER.pack_into(header, 0, C.HDR_MAGIC, msg.reserved02, msg.salt,
                     msg.msgid, msg.circuit, msg.link_verifier, cmd, crc,
                     auxBytes, msg.error, 0, 0, 0)
    _HDR_CRC.pack_into(header, _HDR_CRC_OFFSET, _crc32c(header))
    out[0] = header
    return out


_EXT_SIZES = {LnkConn: 328, LnkSpan: 432, BlkOpen: 72, BlkIO: 96,
              BlkError: 144}


class Encoder:
    """
    Encodes the messages of one direction of one connection, numbering
    them with the per-direction salt counter (§1.6).
    """

    def __init__(self) -> None:
        self.sequence = 0
        self.auxCRC = True      # see encodeMessage

    def encode(self, msg: Message) -> List[BytesLike]:
        msg.salt = self.sequence & 0xFF
        out = encodeMessage(msg, self.auxCRC)
        self.sequence += 1
        return out


# ----------------------------------------------------------------------
# Decoding

class Decoder:
    """
    Incremental decoder for one direction of one connection.

    Feed it bytes in chunks of any size with L{feed}; it returns the
    complete messages.  Payloads are not copied: a message's C{aux} is a
    read-only view of the bytes it arrived in.  A message cut across
    chunks is joined once, when its last byte is in; until then the
    pieces are only kept.  A L{FramingError} is final: the stream cannot
    be resynchronised (§1.1).
    """

    def __init__(self, verifyCRC: bool = True, verifySalt: bool = True):
        self.verifyCRC = verifyCRC
        # aux_crc only; hdr_crc is checked either way.  With
        # offeredNoAuxCRC (we sent LNK_CONN with CONN_NO_AUX_CRC), the
        # check stops right after a peer's LNK_CONN with that bit, in
        # stream order: what follows it may come without (see
        # xdiskd.dmsg.integrity).
        self.verifyAuxCRC = True
        self.offeredNoAuxCRC = False
        self.verifySalt = verifySalt
        self.sequence = 0
        self._parts: List[BytesLike] = []
        self._have = 0          # bytes in _parts
        self._need = 0          # bytes _parts must reach to be worth a look
        self._into: Optional[bytearray] = None   # see recvBuffer
        self._failed: Optional[FramingError] = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return self._have

    def recvBuffer(self, minimum: int = RECV_INTO_MIN) -> Optional[memoryview]:
        """
        Where the rest of a large message may be received without a copy.

        While a message whose header is in hand still misses at least
        C{minimum} bytes, return a writable view of exactly the bytes it
        misses; the caller receives into it (C{recv_into}) and reports the
        count with L{filled}.  Otherwise (or after a framing error)
        return None: use L{feed}.
        """
        if self._failed is not None:
            return None
        into = self._into
        if into is None:
            need = self._need
            if need <= C.HDR_SIZE or need - self._have < minimum or (
                    not self._parts):
                return None
            # The held prefix (less than one read) moves once, into a
            # buffer the size of the message; the rest lands there.
            into = self._into = _takeBuffer(need)
            pos = 0
            for p in self._parts:
                n = len(p)
                into[pos:pos + n] = p
                pos += n
            self._parts.clear()
        return memoryview(into)[self._have:]

    def filled(self, count: int) -> List[Message]:
        """
        C{count} bytes were received into the view L{recvBuffer} gave;
        return every message now complete (as L{feed} does).
        """
        into = self._into
        if into is None or self._have + count > len(into):
            raise ValueError("filled() without a matching recvBuffer()")
        self._have += count
        if self._have < len(into):
            return []
        self._into = None
        self._have = 0
        # Ours alone from here on, and never written again.
        return self._parse(into)

    def _unInto(self) -> None:
        # Back to pieces: feed() was called while a buffer was lent out.
        into, self._into = self._into, None
        if into is not None and self._have:
            self._parts.append(memoryview(into)[:self._have])

    def feed(self, data: BytesLike) -> List[Message]:
        """
        Add C{data}; return every message now complete, in order.

        @raise FramingError: (a subclass naming the cause) on invalid
            input; every later call raises it again.
        """
        if self._failed is not None:
            raise self._failed
        if self._into is not None:
            self._unInto()
        parts = self._parts
        if parts:
            parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(parts)
            parts.clear()
            self._have = 0
        elif type(data) is not bytes:
            # Views of the input outlive this call: it must not change.
            data = bytes(data)
        return self._parse(data)

    def _parse(self, data: BytesLike) -> List[Message]:
        """Messages from C{data} (ours, never changed); keep the rest."""
        parts = self._parts
        out: List[Message] = []
        pos = 0
        end = len(data)
        view = memoryview(data)
        need = 0
        try:
            while True:
                if end - pos < C.HDR_SIZE:
                    need = C.HDR_SIZE
                    break
                (magic, reserved02, salt, msgid, circuit, verifier, cmd,
                 auxCRC, auxBytes, error, _descr, _r38,
                 hdrCRC) = HEADER.unpack_from(data, pos)
                if magic != C.HDR_MAGIC:
                    if magic == C.HDR_MAGIC_REV:
                        raise ReversedMagicError(
                            "reversed magic 0x3248: peer byte order differs")
                    raise BadMagicError("bad magic %#06x" % (magic,))
                hbytes = (cmd & C.SIZE) * C.ALIGN
                if hbytes < C.HDR_SIZE or hbytes > C.HDR_MAX:
                    raise HeaderSizeError(
                        "header size %d (cmd %#010x) out of range 64..%d" % (
                            hbytes, cmd, C.HDR_MAX))
                if auxBytes > C.AUX_MAX:
                    raise AuxSizeError(
                        "aux_bytes %d over DMSG_AUX_MAX" % (auxBytes,))
                total = hbytes + ((auxBytes + C.ALIGN_MASK) & ~C.ALIGN_MASK)
                if end - pos < total:
                    need = total
                    break
                hend = pos + hbytes
                if self.verifyCRC:
                    crc = _crc32c(_ZERO4, _crc32c(
                        view[pos:pos + _HDR_CRC_OFFSET]))
                    if hbytes > C.HDR_SIZE:
                        crc = _crc32c(view[pos + C.HDR_SIZE:hend], crc)
                    if crc != hdrCRC:
                        raise HeaderCRCError(
                            "bad hdr_crc %#010x, computed %#010x" % (
                                hdrCRC, crc))
                    if auxBytes and self.verifyAuxCRC and _crc32c(
                            view[hend:pos + total]) != auxCRC:
                        raise AuxCRCError("bad aux_crc %#010x" % (auxCRC,))
                if self.verifySalt and (salt & 0xFF) != (
                        self.sequence & 0xFF):
                    raise SaltError("salt %d, expected %d" % (
                        salt & 0xFF, self.sequence & 0xFF))
                self.sequence += 1
                ext: Optional[Extension]
                if hbytes > C.HDR_SIZE:
                    extType = EXTENSIONS.get(cmd & C.BASECMDMASK)
                    if extType is not None and hbytes >= _EXT_SIZES[extType]:
                        ext = extType.unpackFrom(view[pos:hend])
                        if (extType is LnkConn and self.offeredNoAuxCRC
                                and cmd & C.CREATE
                                and ext.xflags  # type: ignore[union-attr]
                                & C.CONN_NO_AUX_CRC):
                            self.verifyAuxCRC = False
                    else:
                        ext = RawExt(bytes(view[pos + C.HDR_SIZE:hend]))
                else:
                    ext = None
                out.append(Message(cmd, msgid, circuit, error, ext,
                                   view[hend:hend + auxBytes]
                                   if auxBytes else None,
                                   salt, reserved02, verifier))
                pos += total
        except FramingError as e:
            self._failed = e
            raise
        if pos < end:
            # Keep the rest as a view: copied only by the join above.
            parts.append(view[pos:] if pos else data)
            self._have = end - pos
            self._need = need
        return out
