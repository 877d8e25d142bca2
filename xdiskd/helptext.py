"""
What C{twistd -n xdiskd --help} prints: the options by group, the export
rules, the link limits with their defaults, and examples.

L{LAYOUT} is the one table that places an option: its group and the
name of its value.  An option missing from it is still shown (under
"Other"), and C{tests/test_helptext.py} fails until it is placed; the
same test checks that the man pages in C{man/} name every option.
"""

from __future__ import annotations

import textwrap
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

#: The groups of --help, in the order shown.
GROUPS: Tuple[str, ...] = (
    "DMSG links", "Exports", "Import", "NBD", "TLS", "Limits and tuning",
    "Operations")

#: Each option: (group, value name); flags have no value name.  Within a
#: group, options are shown in this order.
LAYOUT: Dict[str, Tuple[str, str]] = {
    "listen": ("DMSG links", "ENDPOINT"),
    "connect": ("DMSG links", "ENDPOINT"),
    "link-timeout": ("DMSG links", "SECONDS"),
    "relay": ("DMSG links", ""),
    "socket-mode": ("DMSG links", "MODE"),
    "hostname": ("DMSG links", "NAME"),
    "export": ("Exports", "SERIAL=PATH[,ro][,blksize=N][,label=HOST/DEV]"),
    "image": ("Exports", "PATH=SIZE"),
    "store-threads": ("Exports", "N"),
    "inline-io": ("Exports", ""),
    "inline-write-max": ("Exports", "BYTES"),
    "write-thread": ("Exports", "off|auto|all"),
    "seed-open-modes": ("Exports", ""),
    "no-import": ("Import", ""),
    "linger": ("Import", "SECONDS"),
    "max-units": ("Import", "N"),
    "stall-timeout": ("Import", "SECONDS"),
    "unflushed-window": ("Import", "SIZE"),
    "unflushed-memory": ("Import", "SIZE"),
    "unflushed": ("Import", "replay|fail"),
    "max-io": ("Import", "BYTES"),
    "readonly-unit": ("Import", "NAME"),
    "nbd": ("NBD", "ENDPOINT"),
    "no-nbd": ("NBD", ""),
    "nbd-local": ("NBD", ""),
    "nbd-handshake-timeout": ("NBD", "SECONDS"),
    "nbd-memory": ("Limits and tuning", "SIZE"),
    "tls-cert": ("TLS", "FILE"),
    "tls-key": ("TLS", "FILE"),
    "tls-ca": ("TLS", "FILE"),
    "tls-allow": ("TLS", "NAME"),
    "tls-no-client-auth": ("TLS", ""),
    "nbd-tls": ("TLS", "off|on|require"),
    "nbd-tls-cert": ("TLS", "FILE"),
    "nbd-tls-key": ("TLS", "FILE"),
    "nbd-tls-ca": ("TLS", "FILE"),
    "nbd-tls-verify-client": ("TLS", ""),
    "nbd-tls-allow": ("TLS", "NAME"),
    "dfly-dir": ("TLS", "DIR"),
    "link-limit": ("Limits and tuning", "NAME=VALUE"),
    "poll-us": ("Limits and tuning", "N"),
    "config": ("Operations", "FILE"),
    "state-dir": ("Operations", "DIR"),
    "control": ("Operations", "PATH"),
    "no-control": ("Operations", ""),
    "metrics": ("Operations", "ENDPOINT"),
    "log-format": ("Operations", "text|json"),
    "version": ("Operations", ""),
    "help": ("Operations", ""),
}

OTHER = "Other"
WIDTH = 79
_COLUMN = 28


class OptionDoc(NamedTuple):
    """One option as --help shows it."""

    name: str
    short: Optional[str]
    metavar: str
    doc: str
    default: Any
    flag: bool


def optionDocs(options: Any) -> List[OptionDoc]:
    """
    Every long option of a L{twisted.python.usage.Options} instance,
    from Twisted's own tables (flags, parameters and C{opt_} methods).
    """
    shorts = {long: short for short, long in options.synonyms.items()
              if len(short) == 1 and short != long}
    docs = []
    for opt in options.longOpt:
        name = opt.rstrip("=")
        flag = not opt.endswith("=")
        group, metavar = LAYOUT.get(name, (OTHER, "" if flag else "VALUE"))
        docs.append(OptionDoc(name, shorts.get(name), metavar,
                              " ".join((options.docs.get(name) or
                                        "").split()),
                              None if flag else options.defaults.get(name),
                              flag))
    return docs


def _wrap(text: str, indent: int, first: int = 0) -> List[str]:
    """Wrap at spaces only: an option name or a path is never split."""
    return textwrap.wrap(text, WIDTH - indent, break_long_words=False,
                         break_on_hyphens=False,
                         initial_indent=" " * first) or [""]


def _entry(opt: OptionDoc) -> List[str]:
    head = "  " + ("-%s, " % (opt.short,) if opt.short else "") + \
        "--" + opt.name + (" " + opt.metavar if opt.metavar else "")
    doc = opt.doc
    if opt.default not in (None, "") and "[default" not in doc:
        doc += " [default: %s]" % (_shown(opt.default),)
    lines = _wrap(doc, _COLUMN)
    pad = " " * _COLUMN
    if len(head) + 2 <= _COLUMN:
        out = [head.ljust(_COLUMN) + lines[0]]
        rest = lines[1:]
    else:
        out = [head]
        rest = lines
    return out + [pad + line for line in rest]


def _shown(value: Any) -> str:
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


def linkLimitsText() -> str:
    """C{buffered=8M, transactions=8192, ...}: the names and defaults."""
    from xdiskd.dmsg.limits import DEFAULT_LIMITS
    parts = []
    for name, value in DEFAULT_LIMITS._asdict().items():
        if isinstance(value, float):
            parts.append("%s=%s (seconds)" % (name, _shown(value)))
        elif value >= 1 << 20 and value % (1 << 20) == 0:
            parts.append("%s=%dM (bytes)" % (name, value >> 20))
        else:
            parts.append("%s=%d" % (name, value))
    return ", ".join(parts)


def _rules() -> List[Tuple[str, str]]:
    from xdiskd.export.spec import MAX_BLKSIZE, MAX_SERIAL_BYTES, \
        MIN_BLKSIZE
    return [
        ("Exports (--export SERIAL=PATH[,ro][,blksize=N][,label=HOST/DEV])",
         "SERIAL is the disk's identity at every importer: at most %d bytes "
         "of UTF-8, unique among the exports.  PATH is a regular file or a "
         "block device; its size must be a multiple of blksize.  ro "
         "refuses writes.  blksize is the sector size announced: a power "
         "of two from %d to %d (default 512).  label defaults to "
         "HOST/BASENAME." % (MAX_SERIAL_BYTES, MIN_BLKSIZE, MAX_BLKSIZE)),
        ("Link limits (--link-limit NAME=VALUE, repeatable; defaults)",
         linkLimitsText() + ".  A link that exceeds one is closed, with a "
         "log line naming it."),
        ("Endpoints",
         "Twisted endpoint strings: unix:PATH, tcp:PORT:interface=ADDR "
         "(listening), tcp:HOST:PORT (connecting); tls: in front of any "
         "DMSG endpoint is mutual TLS (see TLS above).  UNIX "
         "listeners are mode 600 with a lock file unless mode= or "
         "lockfile= is given."),
        ("Defaults that cannot be used",
         "The default control socket (<state-dir>/control.sock) and the "
         "default NBD listener (127.0.0.1:10809) are skipped with a "
         "warning when another daemon holds them; options given "
         "explicitly must work, or the daemon does not start."),
    ]


#: (what, command lines) shown at the end of --help and in xdiskd(8).
EXAMPLES: List[Tuple[str, List[str]]] = [
    ("Export a file and serve it over NBD from one process (the demo):",
     ["twistd -n xdiskd --image /srv/d0.img=1G --export d0=/srv/d0.img \\",
      "    --listen unix:/run/xdisk.sock --connect unix:/run/xdisk.sock",
      "qemu-img info nbd://127.0.0.1:10809/xa0"]),
    ("Disk host: export a device and a read-only image over TCP:",
     ["twistd -n xdiskd --no-import --listen tcp:9870 \\",
      "    --export serno/disk0=/dev/sdb --export scratch=/srv/s.img,ro"]),
    ("Client host: import them, serve NBD on a UNIX socket:",
     ["twistd -n xdiskd --connect tcp:diskhost:9870 --nbd unix:/run/nbd.sock",
      "nbdinfo 'nbd+unix:///xa0?socket=/run/nbd.sock'"]),
    ("Mutual TLS between the two (see README: Security):",
     ["twistd -n xdiskd --no-import --listen tls:tcp:9870 --tls-cert d.pem \\",
      "    --tls-key d.key --tls-ca ca.pem --export serno/disk0=/dev/sdb"]),
]


def renderHelp(options: Any, longdesc: str) -> str:
    """
    The --help text of C{options} (a usage.Options instance) after
    Twisted's synopsis line.
    """
    byGroup: Dict[str, List[OptionDoc]] = {}
    order = {name: i for i, name in enumerate(LAYOUT)}
    for opt in optionDocs(options):
        group = LAYOUT.get(opt.name, (OTHER, ""))[0]
        byGroup.setdefault(group, []).append(opt)
    out = [""] + _wrap(longdesc, 0) + [""]
    for group in GROUPS + (OTHER,):
        opts = sorted(byGroup.get(group, []),
                      key=lambda o: order.get(o.name, len(order)))
        if not opts:
            continue
        out.append(group + ":")
        for opt in opts:
            out.extend(_entry(opt))
        out.append("")
    for title, text in _rules():
        out.append(title + ":")
        out.extend("  " + line for line in _wrap(text, 2))
        out.append("")
    out.append("Examples:")
    for what, lines in EXAMPLES:
        out.extend("  " + line for line in _wrap(what, 2))
        out.extend("      " + line for line in lines)
    out.append("")
    out.append("See xdiskd(8), xdisk(8) and README.rst for the whole story.")
    return "\n".join(out) + "\n"
