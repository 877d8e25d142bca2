"""
Command line and config file of C{twistd xdiskd}.

The config file (C{--config FILE}) is INI with one C{[xdiskd]} section
whose keys are the long option names; repeatable options take several
values, one per line.  Anything given on the command line overrides the
file: a scalar replaces the file's value, a repeatable option given on
the command line replaces the file's whole list.
"""

from __future__ import annotations

import configparser
import os
import platform
import re
import socket
import sys
from typing import Any, Callable, Dict, List, Optional

from twisted.python import usage

from xdiskd.export.spec import ExportSpecError, parseExportSpec, \
    validateExports

DEFAULT_NBD = "tcp:10809:interface=127.0.0.1"
DEFAULT_STATE_DIR = "/var/lib/xdiskd"

_LISTS = ("listen", "connect", "export", "nbd", "image", "readonly-unit",
          "tls-allow", "nbd-tls-allow", "link-limit")
_SIZE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parseSize(text: str) -> int:
    """C{"1G"} → 1073741824; plain numbers are bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise usage.UsageError("%r is not a size (e.g. 512M, 1G)" % (text,))
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _seconds(option: str, positive: bool = False) -> Callable[[str], float]:
    """A coercer of C{--option SECONDS} whose error names both."""
    def coerce(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value >= (0 if not positive else 1e-9) or value == float(
                "inf"):
            raise usage.UsageError("--%s: %r is not a %snumber of seconds" % (
                option, text, "positive " if positive else ""))
        return value
    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _whole(option: str, what: str, low: int,
           high: Optional[int] = None) -> Callable[[str], int]:
    """A coercer of C{--option N} in C{low..high}, naming both on error."""
    def coerce(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and
                                            value > high):
            span = "%d to %d" % (low, high) if high is not None else \
                "at least %d" % (low,)
            raise usage.UsageError("--%s: %r is not a number of %s (%s)" % (
                option, text, what, span))
        return value
    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _choice(option: str, *choices: str) -> Callable[[str], str]:
    def coerce(text: str) -> str:
        if text not in choices:
            raise usage.UsageError("--%s: %r is not one of %s" % (
                option, text, ", ".join(choices)))
        return text
    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _sizeOption(option: str) -> Callable[[str], int]:
    """A coercer of C{--option SIZE} (C{64M}), naming both on error."""
    def coerce(text: str) -> int:
        try:
            return parseSize(text)
        except usage.UsageError:
            raise usage.UsageError("--%s: %r is not a size (e.g. 64M, "
                                   "1G)" % (option, text))
    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _octal(option: str) -> Callable[[str], str]:
    def coerce(text: str) -> str:
        try:
            int(text, 8)
        except ValueError:
            raise usage.UsageError("--%s: %r is not an octal mode (e.g. "
                                   "600)" % (option, text))
        return text
    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _linkTimeout(text: str) -> float:
    """--link-timeout: 0 (off) or 0.5 to 3600 seconds."""
    value = _seconds("link-timeout")(text)
    if value != 0 and not 0.5 <= value <= 3600:
        raise usage.UsageError("--link-timeout: %r is not 0 (off) or 0.5 "
                               "to 3600 seconds" % (text,))
    return value


_linkTimeout.coerceDoc = ""  # type: ignore[attr-defined]


#: How a plain coercer's value is described when it does not fit.
_KINDS: Dict[Any, str] = {int: "a whole number", float: "a number"}


def _named(option: str, coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    """
    C{coerce}, with a ValueError turned into a UsageError that names the
    option and the value (Twisted's says only "Parameter type enforcement
    failed: could not convert string to float: 'abc'"), so a parameter
    added with a plain C{int} or C{float} fails as clearly as ours.
    """
    def coerced(text: str) -> Any:
        try:
            return coerce(text)
        except ValueError as e:
            kind = _KINDS.get(coerce)
            raise usage.UsageError(
                "--%s: %r is not %s" % (option, text, kind) if kind else
                "--%s: %r: %s" % (option, text, e))
    coerced.coerceDoc = getattr(coerce, "coerceDoc", "")  # type: ignore
    return coerced


def versionText() -> str:
    """
    C{xdiskd 0.1.0 (Twisted 26.10.0, Python 3.11.7)} and a second line,
    which build of the hot modules is loaded: C{compiled: no (...)}
    (L{xdiskd.compiled.describe}).
    """
    import twisted
    from xdiskd import __version__
    from xdiskd.compiled import describe
    return "xdiskd %s (Twisted %s, Python %s)\n%s" % (
        __version__, twisted.__version__, platform.python_version(),
        describe())


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Export local files and block devices as DragonFly DMSG "
                "disks, import remote ones as xa units, and serve every "
                "unit over NBD.")

    optFlags: List[List[Any]] = [
        ["no-import", None, "Do not import spans (export only)."],
        ["no-nbd", None, "Do not serve units over NBD."],
        ["nbd-local", None,
         "Also serve this node's own exports over NBD, straight from "
         "their files (no DMSG), named by their serials."],
        ["relay", None,
         "Relay spans and the transactions on them between links, like "
         "DragonFly's hammer2 service (LNK_CONN peer type ROUTER)."],
        ["inline-io", None,
         "Do export-side disk I/O in the reactor thread (fast for files "
         "in the page cache; blocks on slow devices)."],
        ["seed-open-modes", None,
         "Let writes under a read-only BLK_OPEN through on read-write "
         "exports, for DragonFly's xdisk client (it opens read-only, then "
         "writes).  Read-only exports refuse writes either way."],
        ["no-control", None, "Do not open the control socket."],
        ["tls-no-client-auth", None,
         "tls: listeners accept clients without a certificate (TLS then "
         "only encrypts and authenticates the server)."],
        ["nbd-tls-verify-client", None,
         "NBD TLS clients must present a certificate signed by "
         "--nbd-tls-ca (default --tls-ca)."],
    ]
    optParameters: List[List[Any]] = [
        ["config", "c", None, "INI config file ([xdiskd] section)."],
        ["state-dir", None, DEFAULT_STATE_DIR,
         "Directory for sockets and images (created if absent)."],
        ["linger", None, 60.0,
         "Seconds an unused unit with no paths lingers before teardown.",
         _seconds("linger")],
        ["max-units", None, 1024,
         "Units the importer holds at most, from all links together "
         "(each link is also held to its units= limit, default 256).  At "
         "the limit, the unit that has lingered longest without paths or "
         "opens is torn down early; if there is none, the span is refused "
         "and logged.",
         _whole("max-units", "units", 1, 1 << 20)],
        ["link-timeout", None, 5.0,
         "Seconds of silence after which a DMSG link that owes us a reply "
         "(I/O, or a PING it would answer) is dead and closed; links are "
         "probed with LNK_PING every third of it, and TCP keepalive and "
         "TCP_USER_TIMEOUT are set to match (0: off; else 0.5 to 3600).",
         _linkTimeout],
        ["stall-timeout", None, 0.0,
         "Seconds a unit may be without a usable path before its queued "
         "and new I/O fail with EIO (until a path returns); 0: queue "
         "forever, as the seed and dm-multipath's queue_if_no_path do.",
         _seconds("stall-timeout")],
        ["max-io", None, 1048576,
         "Largest DMSG I/O the importer sends (512..1048576).  Each path "
         "gets at most what its exporter states in its span (xdiskd: "
         "1048576); DragonFly exporters state nothing and get 131072.",
         _whole("max-io", "bytes", 512, 1048576)],
        ["unflushed-window", None, "64M",
         "Per unit, keep up to this much of the data written since the "
         "last completed flush, to replay it if the exporter's host "
         "crashes or a failover lands on another node (e.g. 64M); at "
         "half of it the importer sends its own flush, and a full window "
         "holds acknowledgements until a flush made room.",
         _sizeOption("unflushed-window")],
        ["unflushed-memory", None, "256M",
         "What the unflushed windows of all units may hold together "
         "(e.g. 256M; 0: no daemon-wide bound).  Past half of it every "
         "unit holding over 512K flushes; at it, units holding 1M or more "
         "flush before they acknowledge more.",
         _sizeOption("unflushed-memory")],
        ["unflushed", None, "replay",
         "What a lost unflushed window does (replay|fail): replay it "
         "before any other I/O, or fail the held writes and the next "
         "flush with EIO.", _choice("unflushed", "replay", "fail")],
        ["store-threads", None, 4, "Export-side disk I/O threads (1..256).",
         _whole("store-threads", "threads", 1, 256)],
        ["inline-write-max", None, 1048576,
         "Page-aligned export writes up to this many bytes go to the page "
         "cache in the reactor thread while it has room for them (dirty "
         "pages under the kernel's background limit); 0: always "
         "on the I/O threads.",
         _whole("inline-write-max", "bytes", 0, 1048576)],
        ["write-thread", None, "auto",
         "Export writes under 64 KiB that arrive together (two or more "
         "in one read of the socket) or behind others not yet made go to "
         "one writer thread per export, a batch per read; other writes "
         "are made as with off (auto); every write goes to it (all); no "
         "writer thread (off).",
         _choice("write-thread", "off", "auto", "all")],
        ["poll-us", None, 100,
         "Busy-poll for I/O up to this many microseconds before sleeping, "
         "adapting to how soon events come (0: always sleep at once).  "
         "Cuts latency at low queue depth; an idle daemon does not spin.",
         _whole("poll-us", "microseconds", 0, 10000)],
        ["socket-mode", None, "600",
         "Octal mode of UNIX listening sockets without an explicit mode=.",
         _octal("socket-mode")],
        ["hostname", None, None, "Host name used in labels."],
        ["control", None, None,
         "Control socket (UNIX, mode 0600) for the xdisk command "
         "[default: <state-dir>/control.sock; skipped with a warning if "
         "another daemon holds it]."],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on a server endpoint, "
         "e.g. tcp:9100:interface=127.0.0.1."],
        ["log-format", None, "text",
         "Log as readable text or as JSON objects, one per line "
         "(text|json).", _choice("log-format", "text", "json")],
        ["tls-cert", None, None,
         "PEM certificate (then intermediates) for tls: DMSG endpoints."],
        ["tls-key", None, None,
         "Unencrypted PEM private key of --tls-cert [default: in it]."],
        ["tls-ca", None, None,
         "PEM CA certificates that sign DMSG peers' certificates."],
        ["dfly-dir", None, "/etc/hammer2",
         "DragonFly key directory for dfly: endpoints (rsa.prv, rsa.pub, "
         "remote/<peer-ip>.pub or .none), as hammer2 rsainit makes it."],
        ["nbd-tls", None, "off",
         "NBD STARTTLS: off, on (offered) or require."],
        ["nbd-tls-cert", None, None,
         "PEM certificate for NBD TLS [default: --tls-cert]."],
        ["nbd-tls-key", None, None,
         "PEM private key of --nbd-tls-cert [default: in it]."],
        ["nbd-tls-ca", None, None,
         "PEM CA certificates for NBD client certificates "
         "[default: --tls-ca]."],
        ["nbd-handshake-timeout", None, 30.0,
         "Seconds an NBD client may take to reach transmission.",
         _seconds("nbd-handshake-timeout", positive=True)],
        ["nbd-memory", None, "256M",
         "Request and reply bytes all NBD clients together may make the "
         "daemon hold (e.g. 256M); past it, the clients holding most are "
         "not read from until they take their replies."],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        for name, dispatcher in self._dispatch.items():
            if isinstance(dispatcher, usage.CoerceParameter) and (
                    dispatcher.coerce is not str):
                dispatcher.coerce = _named(name, dispatcher.coerce)
        for key in _LISTS:
            self[key] = []
        self._given: Dict[str, Any] = {}
        self.nbdIsDefault = False

    def opt_listen(self, endpoint: str) -> None:
        """Accept DMSG links on a server endpoint (repeatable), e.g. unix:/run/xdisk.sock, tcp:987"""  # noqa
        self["listen"].append(endpoint)

    def opt_connect(self, endpoint: str) -> None:
        """Dial a DMSG peer on a client endpoint, reconnecting with backoff (repeatable), e.g. tcp:host:987"""  # noqa
        self["connect"].append(endpoint)

    def opt_export(self, spec: str) -> None:
        """Export a file or block device as a DMSG disk (repeatable; rules below)."""  # noqa
        self["export"].append(spec)

    def opt_nbd(self, endpoint: str) -> None:
        """Serve units over NBD on a server endpoint (repeatable) [default: tcp:10809:interface=127.0.0.1; skipped with a warning if another daemon holds it]"""  # noqa
        self["nbd"].append(endpoint)

    def opt_image(self, spec: str) -> None:
        """Create a sparse image of SIZE (e.g. 1G) if PATH is absent (repeatable)."""  # noqa
        self["image"].append(spec)

    def opt_readonly_unit(self, name: str) -> None:
        """Serve this unit (xaN or serial) read-only over NBD (repeatable)."""  # noqa
        self["readonly-unit"].append(name)

    def opt_tls_allow(self, name: str) -> None:
        """Accept only DMSG TLS peers whose certificate subject CN is NAME (repeatable)."""  # noqa
        self["tls-allow"].append(name)

    def opt_nbd_tls_allow(self, name: str) -> None:
        """Accept only NBD TLS clients whose certificate subject CN is NAME (repeatable; implies --nbd-tls-verify-client)."""  # noqa
        self["nbd-tls-allow"].append(name)

    def opt_link_limit(self, spec: str) -> None:
        """A per-link DMSG limit (repeatable); the names and their defaults are listed below."""  # noqa
        self["link-limit"].append(spec)

    def opt_version(self) -> None:
        """Print xdiskd's version (and Twisted's and Python's) and exit."""
        print(versionText())
        sys.exit(0)

    def getUsage(self, width: Optional[int] = None) -> str:
        """--help: the options by group, rules and examples (helptext)."""
        from xdiskd.helptext import renderHelp
        return renderHelp(self, self.longdesc)

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError("unexpected arguments: %s" % (
                " ".join(args),))

    def postOptions(self) -> None:
        # Lists the command line gave override the file's (and reloads).
        self.fromCommandLine = {k for k in _LISTS if self[k]}
        if self["config"]:
            self._loadConfig(self["config"])
        if not self["hostname"]:
            self["hostname"] = socket.gethostname()
        for name in ("unflushed-window", "unflushed-memory"):
            if not isinstance(self[name], int):
                self[name] = _sizeOption(name)(str(self[name]))
        images = []
        for spec in self["image"]:
            path, sep, size = spec.rpartition("=")
            if not sep or not path:
                raise usage.UsageError("--image: %r is not PATH=SIZE" % (
                    spec,))
            try:
                images.append((path, parseSize(size)))
            except usage.UsageError as e:
                raise usage.UsageError("--image %s: %s" % (spec, e))
        self["images"] = images
        try:
            self["exports"] = validateExports(
                parseExportSpec(s) for s in self["export"])
        except ExportSpecError as e:
            raise usage.UsageError("--export: %s" % (e,))
        if not self["nbd"] and not self["no-nbd"] and (
                not self["no-import"] or self["nbd-local"]):
            self["nbd"] = [DEFAULT_NBD]
            self.nbdIsDefault = True
        if self["nbd-local"] and not self["export"]:
            raise usage.UsageError("--nbd-local needs an --export")
        if self["no-nbd"]:
            self["nbd"] = []
        self._operations()
        self._security()

    def _security(self) -> None:
        """TLS and link limits (README: Security); files checked now."""
        from xdiskd.dmsg.limits import parseLinkLimits
        from xdiskd.endpoints import tlsServerName
        from xdiskd.tls import fromOptions, isTLS
        try:
            self["link-limits"] = parseLinkLimits(self["link-limit"])
        except ValueError as e:
            raise usage.UsageError("--link-limit: %s" % (e,))
        self["nbd-memory"] = _nbdMemory(self["nbd-memory"])
        for desc in self["connect"]:
            if isTLS(desc):
                try:
                    tlsServerName(desc)
                except ValueError as e:
                    raise usage.UsageError("--connect %s" % (e,))
        self["tls"] = fromOptions(self)
        self["dfly"] = self._dflyKeys()

    def _dflyKeys(self) -> Any:
        """
        With any C{dfly:} endpoint, our DragonFly keys (read and checked
        now), else None; a numeric C{--connect} host must have its
        C{remote/} file.
        """
        from xdiskd.dfly.keys import DFlyKeyError, KeyDirectory, Refused
        from xdiskd.endpoints import dflyHost, isDFly, splitDFly
        descs = [d for d in self["listen"] + self["connect"] if isDFly(d)]
        if not descs:
            return None
        for desc in descs:
            try:
                splitDFly(desc)
            except ValueError as e:
                raise usage.UsageError(str(e))
        try:
            keys = KeyDirectory(self["dfly-dir"]).load()
        except DFlyKeyError as e:
            raise usage.UsageError("dfly: %s" % (e,))
        for desc in self["connect"]:
            host = dflyHost(desc) if isDFly(desc) else None
            if host is None:
                continue
            decision = keys.decide(host)
            if isinstance(decision, Refused) and not decision.why.startswith(
                    "peer address"):
                raise usage.UsageError("--connect %s: %s" % (
                    desc, decision.why))
        return keys

    def _operations(self) -> None:
        """Control socket, metrics and log format (README: Operations)."""
        if self["log-format"] == "json":
            from xdiskd.control.logs import useJSON
            useJSON(self.parent)
        # A default control socket is skipped (with a warning) where the
        # state dir is not writable; an explicit one must work.
        self.controlIsDefault = not self["control"]
        if self["no-control"]:
            self["control"] = None
        elif not self["control"]:
            self["control"] = os.path.join(self["state-dir"],
                                           "control.sock")
        if self["control"] and len(os.fsencode(self["control"])) > 107:
            raise usage.UsageError(
                "%s: %s is longer than 107 bytes, the most a UNIX socket "
                "path may have" % ("--state-dir" if self.controlIsDefault
                                   else "--control", self["control"]))

    def _loadConfig(self, path: str) -> None:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path) as f:
                parser.read_file(f)
        except (OSError, configparser.Error) as e:
            raise usage.UsageError("cannot read config %s: %s" % (path, e))
        if not parser.has_section("xdiskd"):
            raise usage.UsageError("config %s has no [xdiskd] section" % (
                path,))
        section = parser["xdiskd"]
        flags = {str(f[0]) for f in self.optFlags}
        params: Dict[str, Any] = {p[0]: p for p in self.optParameters}
        for key, value in section.items():
            if key in _LISTS:
                if not self[key]:
                    self[key] = [v.strip() for v in value.splitlines()
                                 if v.strip()]
            elif key in flags:
                if not self[key]:
                    try:
                        self[key] = section.getboolean(key)
                    except ValueError:
                        raise usage.UsageError(
                            "config %s: %s wants yes/no" % (path, key))
            elif key in params and key != "config":
                # Only where the command line left the default.
                if self[key] == params[key][2]:
                    coerce = params[key][4] if len(params[key]) > 4 else str
                    try:
                        self[key] = _named(key, coerce)(value)
                    except usage.UsageError as e:
                        raise usage.UsageError("config %s: %s" % (path, e))
                    except ValueError:
                        raise usage.UsageError(
                            "config %s: bad %s = %r" % (path, key, value))
            else:
                raise usage.UsageError("config %s: unknown key %r" % (
                    path, key))


def serverEndpointString(desc: str, mode: str) -> str:
    """
    Make UNIX listeners private by default: add C{mode=} (octal, 600
    unless configured) and C{lockfile=1} (a stale socket of a dead daemon
    is replaced) unless the description sets them; C{tls:} ones too.
    """
    if desc.startswith("tls:"):
        return "tls:" + serverEndpointString(desc[4:], mode)
    if desc.startswith("unix:"):
        if ":mode=" not in desc:
            desc += ":mode=" + mode
        if ":lockfile=" not in desc:
            desc += ":lockfile=1"
    return desc


def ensureImages(images: List[Any]) -> None:
    """Create each (path, size) sparse image that does not exist."""
    from twisted.logger import Logger
    for path, size in images:
        if os.path.exists(path):
            continue
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)
        Logger().info("created sparse image {path} of {size} bytes",
                      path=os.path.abspath(path), size=size)


def _nbdMemory(value: Any) -> int:
    """--nbd-memory: a size such as 256M, at least the budget's minimum."""
    from xdiskd.dmsg.limits import _size
    from xdiskd.nbd.budget import MIN_BUDGET
    try:
        size = value if isinstance(value, int) else _size(str(value))
    except ValueError:
        raise usage.UsageError(
            "--nbd-memory: %r is not a size (e.g. 256M)" % (value,))
    if size < MIN_BUDGET:
        raise usage.UsageError("--nbd-memory: %r is below %d bytes" % (
            value, MIN_BUDGET))
    return size
