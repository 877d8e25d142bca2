"""
Option haggling for the NBD server: what to answer to each option, and
when to enter the transmission phase.

L{Negotiator} turns one option into a L{Decision}: the reply bytes to send
and what the connection does next.  It knows the device registry and opens
the chosen device for GO / EXPORT_NAME; it does no I/O of its own, so the
protocol stays thin and the rules can be tested without a transport.
"""

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import attr
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from xdiskd.labels import clean, show
from xdiskd.nbd import wire

log = Logger(namespace="xdiskd.nbd.options")

#: The only metadata context served (proto.md "The base: metadata namespace").
BASE_ALLOCATION = "base:allocation"
#: Context id handed out by SET_META_CONTEXT (LIST uses 0, as advised).
BASE_ALLOCATION_ID = 1
#: Export chosen by an empty export name.
DEFAULT_EXPORT = "xa0"
#: Preferred block size floor (proto.md: a power of two >= max(min, 512)).
PREFERRED_BLOCK = 4096

#: An L{xdiskd.interfaces.IBlockDevice} provider (zope interfaces are not
#: mypy types).
BlockDevice = Any
#: An L{xdiskd.interfaces.IBlockDeviceRegistry} provider.
Registry = Any

CONTINUE = "continue"
CLOSE = "close"
TRANSMIT = "transmit"
STARTTLS = "starttls"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Export:
    """
    What option haggling settled for the transmission phase.

    @ivar device: the opened L{IBlockDevice}.
    @ivar flags: transmission flags sent to the client.
    @ivar structuredReplies: NBD_OPT_STRUCTURED_REPLY was acknowledged.
    @ivar metaContextId: id of base:allocation if selected, else None.
    @ivar blockSizeAgreed: the client sent GO with an NBD_INFO_BLOCK_SIZE
        request, so it promised to keep to C{minimumBlock}.
    """

    device: BlockDevice
    flags: int
    structuredReplies: bool
    metaContextId: Optional[int]
    blockSizeAgreed: bool
    minimumBlock: int
    maxPayload: int


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Decision:
    """The answer to one option: bytes to send, then the next step."""

    replies: List[bytes]
    action: str = CONTINUE
    export: Optional[Export] = None


def transmissionFlags(device: BlockDevice, structuredReplies: bool) -> int:
    """Return the transmission flags advertised for C{device}."""
    flags = (wire.FLAG_HAS_FLAGS | wire.FLAG_SEND_FLUSH | wire.FLAG_SEND_FUA
             | wire.FLAG_SEND_CACHE | wire.FLAG_CAN_MULTI_CONN)
    if structuredReplies:
        # Reads are always answered with one data chunk, so DF holds.
        flags |= wire.FLAG_SEND_DF
    if device.readOnly:
        flags |= wire.FLAG_READ_ONLY
    else:
        flags |= (wire.FLAG_SEND_TRIM | wire.FLAG_SEND_WRITE_ZEROES
                  | wire.FLAG_SEND_FAST_ZERO)
    return flags


def blockSizes(device: BlockDevice, maxPayload: int) -> Tuple[int, int, int]:
    """Return the (minimum, preferred, maximum) block sizes of C{device}."""
    minimum = int(device.sectorSize)
    return minimum, max(PREFERRED_BLOCK, minimum), maxPayload


class Negotiator:
    """
    The server's half of option haggling for one connection.

    @ivar structuredReplies: structured replies were negotiated.
    @ivar tlsActive: TLS was started on this connection.
    """

    def __init__(self, registry: Registry,
                 tlsRequired: bool = False, tlsAvailable: bool = False,
                 maxPayload: int = wire.MAX_PAYLOAD) -> None:
        self.registry = registry
        self.tlsRequired = tlsRequired
        self.tlsAvailable = tlsAvailable
        self.maxPayload = maxPayload
        self.noZeroes = False
        self.shuttingDown = False
        self.tlsActive = False
        self._reset()
        self._handlers: Dict[int, Callable[[int, bytes],
                                           Union[Decision, Deferred]]] = {
            wire.OPT_EXPORT_NAME: self._exportName,
            wire.OPT_ABORT: self._abort,
            wire.OPT_LIST: self._list,
            wire.OPT_STARTTLS: self._startTLS,
            wire.OPT_INFO: self._infoOrGo,
            wire.OPT_GO: self._infoOrGo,
            wire.OPT_STRUCTURED_REPLY: self._structuredReply,
            wire.OPT_LIST_META_CONTEXT: self._metaContext,
            wire.OPT_SET_META_CONTEXT: self._metaContext,
        }

    def _reset(self) -> None:
        # STARTTLS: "the server MUST NOT preserve any negotiation state".
        self.structuredReplies = False
        self._metaDevice: Optional[BlockDevice] = None
        self._metaContextId: Optional[int] = None

    def clientFlags(self, flags: wire.ClientFlags) -> None:
        """Record the client's answer to the greeting."""
        self.noZeroes = flags.noZeroes

    def tlsStarted(self) -> None:
        """TLS now runs on the connection; haggling starts over."""
        self.tlsActive = True
        self._reset()

    def handleOption(self, option: int,
                     data: bytes) -> Union[Decision, Deferred]:
        """
        Answer one option.

        @return: a L{Decision}, or a L{Deferred} firing with one (GO and
            EXPORT_NAME wait for the device to open).  Never fails.
        """
        if option == wire.OPT_ABORT:
            return self._abort(option, data)
        if self.tlsRequired and not self.tlsActive:
            if option == wire.OPT_EXPORT_NAME:
                return Decision([], CLOSE)
            if option != wire.OPT_STARTTLS:
                return self._error(option, wire.REP_ERR_TLS_REQD,
                                   "TLS is required; send NBD_OPT_STARTTLS")
        if self.shuttingDown:
            if option == wire.OPT_EXPORT_NAME:
                return Decision([], CLOSE)
            return self._error(option, wire.REP_ERR_SHUTDOWN,
                               "server shutting down")
        handler = self._handlers.get(option)
        if handler is None:
            return self._error(option, wire.REP_ERR_UNSUP,
                               "option %d not supported" % (option,))
        return handler(option, data)

    # -- helpers ---------------------------------------------------------
    def _error(self, option: int, replyType: int, message: str) -> Decision:
        return Decision([wire.optionError(option, replyType, message)])

    def _lookup(self, name: str) -> Optional[BlockDevice]:
        return self.registry.lookup(name or DEFAULT_EXPORT)

    def _unknown(self, option: int, name: str) -> Decision:
        available = ", ".join(
            d.name for d in self.registry.devices())
        return self._error(option, wire.REP_ERR_UNKNOWN,
                           "no export '%s'; available: %s"
                           % (show(name or DEFAULT_EXPORT),
                              show(available) or "none"))

    def _export(self, device: BlockDevice, agreed: bool,
                sameMetaDevice: bool) -> Export:
        return Export(
            device=device,
            flags=transmissionFlags(device, self.structuredReplies),
            structuredReplies=self.structuredReplies,
            metaContextId=self._metaContextId if sameMetaDevice else None,
            blockSizeAgreed=agreed,
            minimumBlock=int(device.sectorSize),
            maxPayload=self.maxPayload)

    # -- options -----------------------------------------------------------
    def _abort(self, option: int, data: bytes) -> Decision:
        # proto.md: reply ACK and ignore any data.
        return Decision([wire.optionReply(option, wire.REP_ACK)], CLOSE)

    def _startTLS(self, option: int, data: bytes) -> Decision:
        if not self.tlsAvailable:
            return self._error(option, wire.REP_ERR_UNSUP,
                               "TLS is not configured")
        if data:
            return self._error(option, wire.REP_ERR_INVALID,
                               "STARTTLS takes no data")
        if self.tlsActive:
            return self._error(option, wire.REP_ERR_INVALID,
                               "TLS already started")
        return Decision([wire.optionReply(option, wire.REP_ACK)], STARTTLS)

    def _list(self, option: int, data: bytes) -> Decision:
        if data:
            return self._error(option, wire.REP_ERR_INVALID,
                               "NBD_OPT_LIST takes no data")
        replies = [wire.serverReply(option, show(d.name), show(d.serial))
                   for d in self.registry.devices()]
        replies.append(wire.optionReply(option, wire.REP_ACK))
        return Decision(replies)

    def _structuredReply(self, option: int, data: bytes) -> Decision:
        if data:
            return self._error(option, wire.REP_ERR_INVALID,
                               "NBD_OPT_STRUCTURED_REPLY takes no data")
        self.structuredReplies = True
        return Decision([wire.optionReply(option, wire.REP_ACK)])

    def _metaContext(self, option: int, data: bytes) -> Decision:
        isSet = option == wire.OPT_SET_META_CONTEXT
        if isSet:
            # "replaces all previously-set metadata contexts (including
            # when this command fails)"
            self._metaDevice = None
            self._metaContextId = None
        if not self.structuredReplies:
            return self._error(option, wire.REP_ERR_INVALID,
                               "negotiate structured replies first")
        try:
            name, queries = wire.parseMetaContextRequest(data)
        except wire.OptionDataError as e:
            return self._error(option, wire.REP_ERR_INVALID, str(e))
        device = self._lookup(name)
        if device is None:
            return self._unknown(option, name)
        if isSet:
            found = BASE_ALLOCATION in queries
        else:
            found = not queries or any(
                q in ("base:", BASE_ALLOCATION) for q in queries)
        replies = []
        if found:
            contextId = BASE_ALLOCATION_ID if isSet else 0
            replies.append(wire.metaContextReply(option, contextId,
                                                 BASE_ALLOCATION))
            if isSet:
                self._metaDevice = device
                self._metaContextId = BASE_ALLOCATION_ID
        replies.append(wire.optionReply(option, wire.REP_ACK))
        return Decision(replies)

    def _infoReplies(self, option: int, device: BlockDevice, name: str,
                     infos: Tuple[int, ...]) -> List[bytes]:
        replies = [wire.infoExport(
            option, int(device.size),
            transmissionFlags(device, self.structuredReplies))]
        # Unasked, NAME is still sent when the client used an alias (a
        # serial, or the empty default name); proto.md allows extra items.
        if wire.INFO_NAME in infos or name != device.name:
            replies.append(wire.infoName(option, show(device.name)))
        if wire.INFO_DESCRIPTION in infos:
            replies.append(wire.infoDescription(option,
                                                show(device.serial)))
        if wire.INFO_BLOCK_SIZE in infos:
            replies.append(wire.infoBlockSize(
                option, *blockSizes(device, self.maxPayload)))
        replies.append(wire.optionReply(option, wire.REP_ACK))
        return replies

    def _infoOrGo(self, option: int,
                  data: bytes) -> Union[Decision, Deferred]:
        try:
            name, infos = wire.parseExportRequest(data)
        except wire.OptionDataError as e:
            return self._error(option, wire.REP_ERR_INVALID, str(e))
        device = self._lookup(name)
        if device is None:
            return self._unknown(option, name)
        if option == wire.OPT_INFO:
            return Decision(self._infoReplies(option, device, name, infos))
        # Agreeing to block sizes takes a BLOCK_SIZE request in GO itself.
        agreed = wire.INFO_BLOCK_SIZE in infos
        # "the final time it was sent, it referred to the same export"
        sameMeta = self._metaDevice is device

        def opened(_: Any) -> Decision:
            # Flags after the open: a unit the exporter would only open
            # read-only is read-only from now on (its READ_ONLY flag).
            return Decision(self._infoReplies(option, device, name, infos),
                            TRANSMIT, self._export(device, agreed, sameMeta))

        def failed(f: Failure) -> Decision:
            error = clean(str(f.value))
            log.info("NBD GO {name}: open failed: {error}",
                     name=show(device.name), error=error)
            return self._error(option, wire.REP_ERR_UNKNOWN,
                               "export %s cannot be opened: %s"
                               % (show(device.name), error))

        return self._open(device).addCallbacks(opened, failed)

    def _exportName(self, option: int,
                    data: bytes) -> Union[Decision, Deferred]:
        try:
            name = wire.decodeString(data)
        except wire.OptionDataError:
            return Decision([], CLOSE)
        device = self._lookup(name)
        if device is None:
            return Decision([], CLOSE)

        sameMeta = self._metaDevice is device

        def opened(_: Any) -> Decision:
            export = self._export(device, False, sameMeta)
            return Decision([wire.exportNameReply(
                int(device.size), export.flags, self.noZeroes)], TRANSMIT,
                export)

        def failed(f: Failure) -> Decision:
            log.info("NBD EXPORT_NAME {name}: open failed: {error}",
                     name=show(device.name), error=clean(str(f.value)))
            return Decision([], CLOSE)

        return self._open(device).addCallbacks(opened, failed)

    def _open(self, device: BlockDevice) -> Deferred:
        return maybeDeferred(device.open)
