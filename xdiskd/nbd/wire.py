"""
Sans-IO codec for the server side of the NBD protocol (fixed newstyle).

Bytes from the client go in through L{NBDServerConnection.receiveData};
events come out of L{NBDServerConnection.nextEvent}.  Reply bytes are built
by the module-level functions (C{optionReply}, C{simpleReply},
C{offsetDataHeader}, ...).  Nothing here does I/O or knows about Twisted.

Values and layouts follow doc/proto.md of the NBD project (big-endian
throughout); the constants live in L{xdiskd.nbd.constants} and are
re-exported here, so C{wire.CMD_READ}, C{wire.EINVAL} etc. work.

Oversized WRITE payloads: a WRITE whose length exceeds C{maxPayload} but not
C{discardLimit} has its payload consumed and thrown away without buffering
it (the decoder only counts bytes), and yields an L{OversizedWrite} event
so the server can answer EINVAL and keep the stream in sync.  A WRITE longer
than C{discardLimit} raises L{PayloadTooLargeError}: the server should hard
disconnect (proto.md "Block size constraints" allows this for payloads
large enough to be a denial of service).
"""

import struct
from typing import NamedTuple, Optional, Sequence, Tuple, Union

from xdiskd.buffers import take as _takeBuffer
from xdiskd.nbd.constants import *  # noqa: F401,F403 (re-exported)
from xdiskd.nbd.constants import (
    CMD_DISC, CMD_WRITE, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO_BLOCK_SIZE,
    INFO_DESCRIPTION, INFO_EXPORT, INFO_NAME, MAX_OPTION_LENGTH, MAX_PAYLOAD,
    MAX_STRING, NBDMAGIC, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_STARTTLS,
    OPTION_REPLY_MAGIC, REP_INFO, REP_META_CONTEXT, REP_SERVER,
    REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR,
    REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, DISCARD_LIMIT)

# -- precompiled layouts -------------------------------------------------------
_GREETING = struct.Struct(">QQH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_OPTION_HEADER = struct.Struct(">QII")
_OPTION_REPLY = struct.Struct(">QIII")
_EXPORT_NAME_REPLY = struct.Struct(">QH")
_INFO_EXPORT = struct.Struct(">HQH")
_INFO_BLOCK_SIZE = struct.Struct(">HIII")
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_STRUCTURED = struct.Struct(">IHHQI")
_OFFSET_DATA = struct.Struct(">IHHQIQ")
_ERROR_CHUNK = struct.Struct(">IHHQIIH")
_BLOCK_STATUS_HEAD = struct.Struct(">IHHQII")
_DESCRIPTOR = struct.Struct(">II")

_ZEROES_124 = bytes(124)
_REQUEST_SIZE = _REQUEST.size
_OPTION_HEADER_SIZE = _OPTION_HEADER.size


# -- errors ----------------------------------------------------------------
class NBDProtocolError(Exception):
    """The client broke the framing; the connection cannot continue."""


class BadClientFlagsError(NBDProtocolError):
    """The client flags set a bit the server did not offer."""


class BadOptionMagicError(NBDProtocolError):
    """An option header did not start with IHAVEOPT."""


class OptionTooLargeError(NBDProtocolError):
    """An option announced more data than the server accepts."""


class BadRequestMagicError(NBDProtocolError):
    """A transmission request did not start with NBD_REQUEST_MAGIC."""


class PayloadTooLargeError(NBDProtocolError):
    """A WRITE payload is beyond the discard limit."""


class TruncatedMessageError(NBDProtocolError):
    """The stream ended in the middle of a message."""


class OptionDataError(ValueError):
    """
    The data of an option is malformed.  The option is answered with
    NBD_REP_ERR_INVALID; haggling continues.
    """


class TruncatedOptionDataError(OptionDataError):
    """A length inside the option data reaches past its end."""


class TrailingOptionDataError(OptionDataError):
    """The option data has bytes left over after its last field."""


class BadOptionStringError(OptionDataError):
    """A string in the option data is too long, not UTF-8, or has a NUL."""


# -- events ----------------------------------------------------------------
class ClientFlags(NamedTuple):
    """The client's answer to the greeting."""

    flags: int

    @property
    def fixedNewstyle(self) -> bool:
        return bool(self.flags & FLAG_C_FIXED_NEWSTYLE)

    @property
    def noZeroes(self) -> bool:
        return bool(self.flags & FLAG_C_NO_ZEROES)


class OptionRequest(NamedTuple):
    """One option sent during haggling."""

    option: int
    data: bytes


class Request(NamedTuple):
    """
    One transmission request.  C{data} is the WRITE payload (C{bytes} or a
    read-only C{memoryview}, exactly C{length} bytes) or None.
    """

    flags: int
    type: int
    cookie: int
    offset: int
    length: int
    data: Union[bytes, memoryview, None]


class OversizedWrite(NamedTuple):
    """A WRITE longer than C{maxPayload}; its payload was skipped."""

    flags: int
    type: int
    cookie: int
    offset: int
    length: int


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: L{NBDServerConnection.nextEvent}: more bytes are needed.
NEED_DATA = _Sentinel("NEED_DATA")
#: L{NBDServerConnection.nextEvent}: the caller must choose the next phase
#: (after GO, EXPORT_NAME, STARTTLS, ABORT), or the client sent DISC.
PAUSED = _Sentinel("PAUSED")

Event = Union[ClientFlags, OptionRequest, Request, OversizedWrite, _Sentinel]

# connection states
_FLAGS = "flags"
_OPTIONS = "options"
_HELD = "held"
_TRANSMISSION = "transmission"
_PAYLOAD = "payload"
_DISCARD = "discard"
_DONE = "done"

#: Options after which the decoder holds until the caller picks a phase.
_HOLDING_OPTIONS = frozenset(
    [OPT_EXPORT_NAME, OPT_GO, OPT_STARTTLS, OPT_ABORT])


class NBDServerConnection:
    """
    The server side of one NBD connection, as a state machine over bytes.

    The decoder keeps one C{bytearray} and a read offset; consumed bytes
    are dropped only when it runs out of complete messages.  A large WRITE
    payload is copied straight from the incoming data into its own buffer.

    @ivar handshakeFlags: the flags sent in the greeting.
    @ivar clientFlags: the client flags once received, else None.
    """

    def __init__(self, maxPayload: int = MAX_PAYLOAD,
                 discardLimit: int = DISCARD_LIMIT,
                 maxOptionLength: int = MAX_OPTION_LENGTH,
                 offerNoZeroes: bool = True) -> None:
        self.maxPayload = maxPayload
        self.discardLimit = max(discardLimit, maxPayload)
        self.maxOptionLength = maxOptionLength
        self.handshakeFlags = FLAG_FIXED_NEWSTYLE
        if offerNoZeroes:
            self.handshakeFlags |= FLAG_NO_ZEROES
        self.clientFlags: Union[ClientFlags, None] = None
        self._state = _FLAGS
        self._buf = bytearray()
        self._pos = 0
        self._payload: Union[bytearray, None] = None
        self._fill = 0
        self._remaining = 0
        self._header: Tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)

    @property
    def state(self) -> str:
        """The decoder state, for logs and tests."""
        return self._state

    @property
    def held(self) -> bool:
        """True while waiting for L{startTransmission}/L{resumeOptions}."""
        return self._state is _HELD

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (payloads not counted)."""
        return len(self._buf) - self._pos

    def greeting(self) -> bytes:
        """Return the bytes the server sends first."""
        return _GREETING.pack(NBDMAGIC, IHAVEOPT, self.handshakeFlags)

    def receiveData(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """
        Add bytes received from the client.

        @param data: any bytes-like object; it is not kept.
        """
        state = self._state
        if state is _PAYLOAD:
            payload = self._payload
            assert payload is not None
            take = min(len(payload) - self._fill, len(data))
            if take:
                payload[self._fill:self._fill + take] = (
                    memoryview(data)[:take])
                self._fill += take
                if take == len(data):
                    return
                self._buf += memoryview(data)[take:]
                return
        elif state is _DISCARD:
            take = min(self._remaining, len(data))
            self._remaining -= take
            if take == len(data):
                return
            self._buf += memoryview(data)[take:]
            return
        self._buf += data

    def recvBuffer(self, minimum: int = 32 << 10) -> Optional[memoryview]:
        """
        Where the rest of a large WRITE payload may be received without a
        copy: a writable view of exactly the bytes still missing, when at
        least C{minimum} are; else None (use L{receiveData}).  Report the
        bytes received into it with L{filled}.
        """
        if self._state is not _PAYLOAD:
            return None
        payload = self._payload
        assert payload is not None
        if len(payload) - self._fill < minimum:
            return None
        return memoryview(payload)[self._fill:]

    def filled(self, count: int) -> None:
        """C{count} bytes were received into L{recvBuffer}'s view."""
        payload = self._payload
        if self._state is not _PAYLOAD or payload is None or (
                self._fill + count > len(payload)):
            raise ValueError("filled() without a matching recvBuffer()")
        self._fill += count

    def receiveEOF(self) -> None:
        """
        The client closed its side.

        @raise TruncatedMessageError: if part of a message is buffered.
        """
        state = self._state
        if state is _PAYLOAD or state is _DISCARD or (
                len(self._buf) > self._pos and state is not _DONE):
            raise TruncatedMessageError(
                "connection closed inside a message (%s)" % (state,))

    def startTransmission(self) -> None:
        """Leave a held state for the transmission phase."""
        if self._state is not _HELD:
            raise RuntimeError("not waiting for a phase decision")
        self._state = _TRANSMISSION

    def resumeOptions(self) -> None:
        """Leave a held state and keep haggling (e.g. GO failed)."""
        if self._state is not _HELD:
            raise RuntimeError("not waiting for a phase decision")
        self._state = _OPTIONS

    def _compact(self) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0

    def nextEvent(self) -> Event:
        """
        Return the next event, L{NEED_DATA} or L{PAUSED}.

        @raise NBDProtocolError: a subclass naming the framing error.
        """
        state = self._state
        if state is _TRANSMISSION:
            return self._nextRequest()
        if state is _PAYLOAD:
            payload = self._payload
            assert payload is not None
            if self._fill < len(payload):
                return NEED_DATA
            self._payload = None
            self._state = _TRANSMISSION
            return Request(*self._header, memoryview(payload).toreadonly())
        if state is _DISCARD:
            if self._remaining:
                return NEED_DATA
            self._state = _TRANSMISSION
            return OversizedWrite(*self._header)
        if state is _OPTIONS:
            return self._nextOption()
        if state is _FLAGS:
            return self._nextFlags()
        return PAUSED

    def _nextFlags(self) -> Event:
        buf = self._buf
        if len(buf) - self._pos < 4:
            return NEED_DATA
        (flags,) = _U32.unpack_from(buf, self._pos)
        self._pos += 4
        allowed = FLAG_C_FIXED_NEWSTYLE
        if self.handshakeFlags & FLAG_NO_ZEROES:
            allowed |= FLAG_C_NO_ZEROES
        if flags & ~allowed:
            raise BadClientFlagsError("client flags 0x%08x" % (flags,))
        self.clientFlags = ClientFlags(flags)
        self._state = _OPTIONS
        return self.clientFlags

    def _nextOption(self) -> Event:
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < _OPTION_HEADER_SIZE:
            self._compact()
            return NEED_DATA
        magic, option, length = _OPTION_HEADER.unpack_from(buf, pos)
        if magic != IHAVEOPT:
            raise BadOptionMagicError("option magic 0x%016x" % (magic,))
        if length > self.maxOptionLength:
            raise OptionTooLargeError(
                "option %d with %d bytes of data" % (option, length))
        end = pos + _OPTION_HEADER_SIZE + length
        if len(buf) < end:
            self._compact()
            return NEED_DATA
        data = bytes(buf[pos + _OPTION_HEADER_SIZE:end])
        self._pos = end
        if option in _HOLDING_OPTIONS:
            self._state = _HELD
        return OptionRequest(option, data)

    def _nextRequest(self) -> Event:
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < _REQUEST_SIZE:
            self._compact()
            return NEED_DATA
        magic, flags, kind, cookie, offset, length = _REQUEST.unpack_from(
            buf, pos)
        if magic != REQUEST_MAGIC:
            raise BadRequestMagicError("request magic 0x%08x" % (magic,))
        pos += _REQUEST_SIZE
        avail -= _REQUEST_SIZE
        if kind != CMD_WRITE:
            self._pos = pos
            if kind == CMD_DISC:
                self._state = _DONE
            return Request(flags, kind, cookie, offset, length, None)
        if length > self.maxPayload:
            if length > self.discardLimit:
                raise PayloadTooLargeError(
                    "WRITE payload of %d bytes" % (length,))
            if length <= avail:
                self._pos = pos + length
                return OversizedWrite(flags, kind, cookie, offset, length)
            self._header = (flags, kind, cookie, offset, length)
            self._pos = pos + avail
            self._remaining = length - avail
            self._state = _DISCARD
        elif length <= avail:
            # Whole payload buffered: one copy out of the shared buffer.
            self._pos = pos + length
            with memoryview(buf) as view:
                data = bytes(view[pos:pos + length])
            return Request(flags, kind, cookie, offset, length, data)
        else:
            self._header = (flags, kind, cookie, offset, length)
            self._pos = pos + avail
            payload = _takeBuffer(length)
            if avail:
                with memoryview(buf) as view:
                    payload[:avail] = view[pos:pos + avail]
            self._payload = payload
            self._fill = avail
            self._state = _PAYLOAD
        self._compact()
        return NEED_DATA


# -- option data parsers -------------------------------------------------------
def decodeString(data: bytes) -> str:
    """
    Decode a protocol string (UTF-8, no NUL, at most 4096 bytes).

    @raise BadOptionStringError: if it is not one.
    """
    if len(data) > MAX_STRING:
        raise BadOptionStringError("string of %d bytes" % (len(data),))
    if b"\0" in data:
        raise BadOptionStringError("string contains NUL")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadOptionStringError("string is not UTF-8: %s" % (e,))


def _lengthPrefixed(data: bytes, pos: int) -> Tuple[str, int]:
    if len(data) - pos < 4:
        raise TruncatedOptionDataError("missing string length")
    (n,) = _U32.unpack_from(data, pos)
    pos += 4
    if n > len(data) - pos:
        raise TruncatedOptionDataError("string of %d bytes runs past the "
                                       "option data" % (n,))
    return decodeString(data[pos:pos + n]), pos + n


def parseExportRequest(data: bytes) -> Tuple[str, Tuple[int, ...]]:
    """
    Parse the data of NBD_OPT_INFO / NBD_OPT_GO.

    @return: (export name, information types requested)
    @raise OptionDataError: a subclass naming what is wrong.
    """
    name, pos = _lengthPrefixed(data, 0)
    if len(data) - pos < 2:
        raise TruncatedOptionDataError("missing information request count")
    (count,) = _U16.unpack_from(data, pos)
    pos += 2
    need = 2 * count
    if len(data) - pos < need:
        raise TruncatedOptionDataError("%d information requests announced, "
                                       "fewer sent" % (count,))
    if len(data) - pos > need:
        raise TrailingOptionDataError("bytes after the information requests")
    return name, struct.unpack_from(">%dH" % (count,), data, pos)


def parseMetaContextRequest(data: bytes) -> Tuple[str, Tuple[str, ...]]:
    """
    Parse the data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.

    @return: (export name, queries)
    @raise OptionDataError: a subclass naming what is wrong.
    """
    name, pos = _lengthPrefixed(data, 0)
    if len(data) - pos < 4:
        raise TruncatedOptionDataError("missing query count")
    (count,) = _U32.unpack_from(data, pos)
    pos += 4
    if count > (len(data) - pos) // 4:
        raise TruncatedOptionDataError("%d queries announced, fewer sent"
                                       % (count,))
    queries = []
    for _ in range(count):
        query, pos = _lengthPrefixed(data, pos)
        queries.append(query)
    if pos != len(data):
        raise TrailingOptionDataError("bytes after the last query")
    return name, tuple(queries)


# -- server replies, handshake phase -----------------------------------------
def encodeText(text: str, limit: int = MAX_STRING) -> bytes:
    """
    A protocol string: UTF-8 (proto.md: strings are UTF-8) whatever
    C{text} holds (a lone surrogate becomes a backslash escape instead of
    raising), cut to C{limit} bytes at a character boundary.  Callers pass
    peer-supplied text through L{xdiskd.labels.show} first.
    """
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) > limit:
        cut = limit
        while cut and raw[cut] & 0xC0 == 0x80:   # inside a UTF-8 sequence
            cut -= 1
        raw = raw[:cut]
    return raw


def optionReply(option: int, replyType: int, data: bytes = b"") -> bytes:
    """Return one option reply (header and data)."""
    return _OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, replyType,
                              len(data)) + data


def optionError(option: int, replyType: int, message: str = "") -> bytes:
    """Return an error option reply carrying a human-readable message."""
    return optionReply(option, replyType, encodeText(message))


def serverReply(option: int, name: str, description: str = "") -> bytes:
    """Return an NBD_REP_SERVER reply describing one export."""
    raw = encodeText(name)
    return optionReply(option, REP_SERVER, _U32.pack(len(raw)) + raw
                       + encodeText(description))


def infoExport(option: int, size: int, flags: int) -> bytes:
    """Return an NBD_REP_INFO reply with NBD_INFO_EXPORT."""
    return optionReply(option, REP_INFO,
                       _INFO_EXPORT.pack(INFO_EXPORT, size, flags))


def infoName(option: int, name: str) -> bytes:
    """Return an NBD_REP_INFO reply with NBD_INFO_NAME."""
    return optionReply(option, REP_INFO,
                       _U16.pack(INFO_NAME) + encodeText(name))


def infoDescription(option: int, text: str) -> bytes:
    """Return an NBD_REP_INFO reply with NBD_INFO_DESCRIPTION."""
    return optionReply(option, REP_INFO, _U16.pack(INFO_DESCRIPTION)
                       + encodeText(text))


def infoBlockSize(option: int, minimum: int, preferred: int,
                  maximum: int) -> bytes:
    """Return an NBD_REP_INFO reply with NBD_INFO_BLOCK_SIZE."""
    return optionReply(option, REP_INFO, _INFO_BLOCK_SIZE.pack(
        INFO_BLOCK_SIZE, minimum, preferred, maximum))


def metaContextReply(option: int, contextId: int, name: str) -> bytes:
    """Return an NBD_REP_META_CONTEXT reply."""
    return optionReply(option, REP_META_CONTEXT,
                       _U32.pack(contextId) + encodeText(name))


def exportNameReply(size: int, flags: int, noZeroes: bool) -> bytes:
    """Return the answer to a successful NBD_OPT_EXPORT_NAME."""
    reply = _EXPORT_NAME_REPLY.pack(size, flags)
    return reply if noZeroes else reply + _ZEROES_124


# -- server replies, transmission phase --------------------------------------
def simpleReply(error: int, cookie: int) -> bytes:
    """Return a simple reply header (READ data, if any, follows it)."""
    return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def structuredNone(cookie: int) -> bytes:
    """Return the final NBD_REPLY_TYPE_NONE chunk."""
    return _STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                            REPLY_TYPE_NONE, cookie, 0)


def offsetDataHeader(cookie: int, offset: int, dataLength: int,
                     done: bool) -> bytes:
    """
    Return the header of an NBD_REPLY_TYPE_OFFSET_DATA chunk; the caller
    sends C{dataLength} (at least 1) bytes of data after it.
    """
    return _OFFSET_DATA.pack(STRUCTURED_REPLY_MAGIC,
                             REPLY_FLAG_DONE if done else 0,
                             REPLY_TYPE_OFFSET_DATA, cookie, dataLength + 8,
                             offset)


def blockStatusChunk(cookie: int, contextId: int,
                     descriptors: Sequence[Tuple[int, int]],
                     done: bool = True) -> bytes:
    """
    Return an NBD_REPLY_TYPE_BLOCK_STATUS chunk.

    @param descriptors: (length, status flags) pairs, at least one.
    """
    head = _BLOCK_STATUS_HEAD.pack(
        STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0,
        REPLY_TYPE_BLOCK_STATUS, cookie, 4 + 8 * len(descriptors), contextId)
    return head + b"".join([_DESCRIPTOR.pack(n, f) for n, f in descriptors])


def errorChunk(cookie: int, error: int, message: str = "",
               done: bool = True) -> bytes:
    """Return an NBD_REPLY_TYPE_ERROR chunk."""
    text = encodeText(message)
    return _ERROR_CHUNK.pack(
        STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0,
        REPLY_TYPE_ERROR, cookie, 6 + len(text), error, len(text)) + text


# -- client side encoders (tests, tools) -------------------------------------
def encodeClientFlags(flags: int) -> bytes:
    """Return the client's answer to the greeting."""
    return _U32.pack(flags)


def encodeOption(option: int, data: bytes = b"") -> bytes:
    """Return one option as a client sends it."""
    return _OPTION_HEADER.pack(IHAVEOPT, option, len(data)) + data


def encodeExportRequest(name: str, infos: Sequence[int] = ()) -> bytes:
    """Return the data of NBD_OPT_INFO / NBD_OPT_GO."""
    raw = name.encode("utf-8")
    return (_U32.pack(len(raw)) + raw + _U16.pack(len(infos))
            + b"".join([_U16.pack(i) for i in infos]))


def encodeMetaContextRequest(name: str, queries: Sequence[str]) -> bytes:
    """Return the data of NBD_OPT_{LIST,SET}_META_CONTEXT."""
    raw = name.encode("utf-8")
    parts = [_U32.pack(len(raw)), raw, _U32.pack(len(queries))]
    for q in queries:
        rq = q.encode("utf-8")
        parts += [_U32.pack(len(rq)), rq]
    return b"".join(parts)


def encodeRequest(flags: int, kind: int, cookie: int, offset: int,
                  length: int) -> bytes:
    """Return a request header (a WRITE payload follows it)."""
    return _REQUEST.pack(REQUEST_MAGIC, flags, kind, cookie, offset, length)
