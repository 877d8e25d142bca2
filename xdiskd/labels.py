"""
Peer-supplied text: how wire bytes are kept, and how they are shown.

The one rule (like h11's C{bytesify} at its edges): a DMSG label or serial
is C{bytes} from the codec up (L{xdiskd.dmsg.wire.decodeLabel}); those
bytes are its identity (unit keys, relay identities, BLK routing).  What
a person or another protocol sees is L{show} of them, and only that: NBD
export names and descriptions (which must be UTF-8, NBD proto.md
"Option haggling"), NBD error texts, log lines and JSON log fields, the
control API, metrics labels.

L{show} keeps printable UTF-8 as it is and writes everything else as a
backslash escape: undecodable bytes as C{\\xNN}, control and format
characters (C0 and DEL as C{\\xNN}; C1, bidi overrides, line separators
as C{\\uNNNN} or C{\\UNNNNNNNN}), and the backslash itself as C{\\\\}.  So the
shown form is valid UTF-8 without a control character, a line break or
an ANSI escape, and it names the bytes unambiguously: L{parse} gives them
back (an operator may type the shown form of a serial).

Peer strings that are already C{str} (NBD export names from a client,
TLS subjects) go through L{show} too.  Free text of our own that may
quote shown labels (exception messages) goes through L{clean}: the same
escapes but for the backslash, so a shown label in it is not escaped
twice.
"""

from __future__ import annotations

import re
from typing import Union

#: The seed's label truncation: its buffers keep 63 bytes and a NUL.
LABEL_KEEP = 63


def _escapeChar(ch: str, backslash: str = "\\\\") -> str:
    n = ord(ch)
    if 0xDC80 <= n <= 0xDCFF:          # an undecodable byte (surrogateescape)
        return "\\x%02x" % (n - 0xDC00,)
    if ch == "\\":
        return backslash
    if ch.isprintable():
        return ch
    if n < 0x80:
        return "\\x%02x" % (n,)
    if n < 0x10000:                    # C1 as \u0080: \x80 is a raw byte
        return "\\u%04x" % (n,)
    return "\\U%08x" % (n,)


# Characters that need no escape: printable ASCII but the backslash.  The
# common case (ASCII serials) is one regex match, no per-character loop.
_PLAIN = re.compile(r"[ -\[\]-~]*\Z")


def show(value: Union[bytes, str]) -> str:
    """
    The printable form of peer-supplied bytes (or text): valid UTF-8, no
    control characters, backslash escapes for the rest (module docstring).
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("utf-8", "surrogateescape")
    else:
        text = value
    if _PLAIN.match(text):
        return text
    return "".join(_escapeChar(ch) for ch in text)


def clean(text: str) -> str:
    """
    Free text made printable: L{show}'s escapes, but a backslash stays
    one (the text may quote labels already shown).  Not reversible.
    """
    if _PLAIN.match(text):
        return text
    return "".join(_escapeChar(ch, "\\") for ch in text)


_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|\\)")


def parse(shown: str) -> bytes:
    """
    The bytes whose L{show} is C{shown} (an operator's or NBD client's
    name for a serial).  Text that is not such a form is taken as UTF-8.
    """
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(shown):
        out += shown[pos:m.start()].encode("utf-8", "surrogatepass")
        code = m.group(1)
        if code == "\\":
            out += b"\\"
        elif code[0] == "x":
            out.append(int(code[1:], 16))
        else:
            out += chr(int(code[1:], 16)).encode("utf-8", "surrogatepass")
        pos = m.end()
    out += shown[pos:].encode("utf-8", "surrogatepass")
    return bytes(out)


def unitKey(label: bytes) -> bytes:
    """The seed's label truncation: the first 63 bytes (spec §4.1)."""
    return bytes(label[:LABEL_KEEP])
