"""
Export specifications: which local file or device is exported under
which serial number.

An export is written as::

    SERIAL=PATH[,ro][,blksize=N][,label=HOST/DEV]

(the value of a repeatable C{--export} option, and one entry of a config
file).  L{parseExportSpec} turns that text into an L{ExportSpec};
L{validateExports} checks a whole set of them for conflicts.

The limits come from the DragonFly xdisk client: it copies the serial into
a 64-byte field (63 bytes + NUL), so two serials that share their first 63
bytes would become one disk there; the label goes into a 128-byte field.
PATH may not contain a comma, since the comma separates the options.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Iterable

#: Longest serial, in bytes of UTF-8, the client keeps without truncating.
MAX_SERIAL_BYTES = 63

#: Longest label, in bytes of UTF-8, the client keeps without truncating.
MAX_LABEL_BYTES = 127

#: Largest block size an export may declare.
MAX_BLKSIZE = 65536

#: Smallest block size an export may declare: a disk sector (the seed
#: takes anything, but no disk or NBD client expects less).
MIN_BLKSIZE = 512

#: Block size used when the spec does not name one.
DEFAULT_BLKSIZE = 512

_DIGITS = re.compile(r"[0-9]+\Z")


class ExportSpecError(ValueError):
    """
    An export specification is malformed.  The message names the problem
    and quotes the offending text.
    """


def defaultLabel(path: str) -> str:
    """
    Return the label an export of C{path} gets when none is given:
    C{"HOST/NAME"}, the local host name and the last component of C{path}.

    @param path: The exported file or device.
    @return: The default label.
    """
    return f"{socket.gethostname()}/{os.path.basename(os.path.normpath(path))}"


def _checkSerial(serial: str, text: str) -> None:
    if not serial:
        raise ExportSpecError(f"empty serial in export {text!r}")
    if "\0" in serial:
        raise ExportSpecError(f"serial {serial!r} contains a NUL byte in export {text!r}")
    size = len(serial.encode("utf-8"))
    if size > MAX_SERIAL_BYTES:
        raise ExportSpecError(
            f"serial {serial!r} is {size} bytes of UTF-8, more than "
            f"{MAX_SERIAL_BYTES} (the client would truncate it), "
            f"in export {text!r}"
        )


def _checkPath(path: str, text: str) -> None:
    if not path:
        raise ExportSpecError(f"empty path in export {text!r}")
    if "\0" in path:
        raise ExportSpecError(f"path {path!r} contains a NUL byte in export {text!r}")


def _checkBlksize(blksize: int, text: str) -> None:
    if blksize <= 0 or blksize & (blksize - 1):
        raise ExportSpecError(
            f"blksize {blksize} is not a positive power of two in export {text!r}"
        )
    if blksize > MAX_BLKSIZE:
        raise ExportSpecError(
            f"blksize {blksize} is larger than {MAX_BLKSIZE} in export {text!r}"
        )
    if blksize < MIN_BLKSIZE:
        raise ExportSpecError(
            f"blksize {blksize} is smaller than {MIN_BLKSIZE} in export {text!r}"
        )


def _checkLabel(label: str, text: str) -> None:
    if not label:
        raise ExportSpecError(f"empty label in export {text!r}")
    if "\0" in label:
        raise ExportSpecError(f"label {label!r} contains a NUL byte in export {text!r}")
    size = len(label.encode("utf-8"))
    if size > MAX_LABEL_BYTES:
        raise ExportSpecError(
            f"label {label!r} is {size} bytes of UTF-8, more than "
            f"{MAX_LABEL_BYTES}, in export {text!r}"
        )


@dataclass(frozen=True)
class ExportSpec:
    """
    One exported file or block device.

    Constructing one directly validates it just as L{parseExportSpec} does,
    so an L{ExportSpec} in hand is always well-formed.

    @ivar serial: The disk's serial number, the span's label on the wire;
        unique among the exports of one daemon.
    @ivar path: The file or block device to export.
    @ivar readOnly: True to open C{path} read-only and refuse writes.
    @ivar blksize: The block size announced to clients, a power of two.
    @ivar label: A human-readable C{HOST/DEV} description; defaults to
        L{defaultLabel}C{(path)}.
    """

    serial: str
    path: str
    readOnly: bool = False
    blksize: int = DEFAULT_BLKSIZE
    label: str = field(default="")

    def __post_init__(self) -> None:
        text = self.unparse(withLabel=bool(self.label))
        _checkSerial(self.serial, text)
        _checkPath(self.path, text)
        _checkBlksize(self.blksize, text)
        if self.label:
            _checkLabel(self.label, text)
            return
        # Frozen: the default label depends on path, so set it here.
        object.__setattr__(self, "label", defaultLabel(self.path))
        try:
            _checkLabel(self.label, text)
        except ExportSpecError as e:
            raise ExportSpecError(f"default {e}; give a shorter label=") from None

    def unparse(self, withLabel: bool = True) -> str:
        """
        Return the C{SERIAL=PATH[,ro][,blksize=N][,label=L]} text of this
        spec; L{parseExportSpec} of it gives an equal spec.

        @param withLabel: Include the C{label=} option.
        """
        parts = [f"{self.serial}={self.path}"]
        if self.readOnly:
            parts.append("ro")
        if self.blksize != DEFAULT_BLKSIZE:
            parts.append(f"blksize={self.blksize}")
        if withLabel and self.label:
            parts.append(f"label={self.label}")
        return ",".join(parts)


def parseExportSpec(text: str) -> ExportSpec:
    """
    Parse C{SERIAL=PATH[,ro][,blksize=N][,label=HOST/DEV]}.

    The serial is everything before the first C{=}; PATH runs to the first
    comma; each option may be given once.

    @param text: The specification.
    @return: The parsed export.
    @raise ExportSpecError: if C{text} is malformed; the message names the
        problem and quotes C{text}.
    """
    serial, sep, rest = text.partition("=")
    if not sep:
        raise ExportSpecError(f"missing '=' between serial and path in export {text!r}")
    path, *options = rest.split(",")
    _checkSerial(serial, text)
    _checkPath(path, text)

    readOnly = False
    blksize = DEFAULT_BLKSIZE
    label = ""
    seen: set[str] = set()
    for option in options:
        name, hasValue, value = option.partition("=")
        if name in seen:
            raise ExportSpecError(f"option {name!r} given twice in export {text!r}")
        seen.add(name)
        if name == "ro":
            if hasValue:
                raise ExportSpecError(
                    f"option 'ro' takes no value, got {option!r} in export {text!r}"
                )
            readOnly = True
        elif name == "blksize":
            if not _DIGITS.match(value):
                raise ExportSpecError(
                    f"blksize {value!r} is not a decimal number in export {text!r}"
                )
            blksize = int(value)
            _checkBlksize(blksize, text)
        elif name == "label":
            _checkLabel(value, text)
            label = value
        elif not option:
            raise ExportSpecError(f"empty option in export {text!r}")
        else:
            raise ExportSpecError(f"unknown option {option!r} in export {text!r}")
    return ExportSpec(serial, path, readOnly, blksize, label)


def validateExports(specs: Iterable[ExportSpec]) -> list[ExportSpec]:
    """
    Check that a set of exports can be served together: every serial must
    be unique, since the serial is how clients tell disks apart.

    @param specs: The exports, in configuration order.
    @return: The exports as a list, in the same order.
    @raise ExportSpecError: naming the first serial used twice and both
        exports that use it.
    """
    bySerial: dict[str, ExportSpec] = {}
    result = []
    for spec in specs:
        other = bySerial.get(spec.serial)
        if other is not None:
            raise ExportSpecError(
                f"duplicate serial {spec.serial!r}: exports "
                f"{other.unparse()!r} and {spec.unparse()!r}"
            )
        bySerial[spec.serial] = spec
        result.append(spec)
    return result
