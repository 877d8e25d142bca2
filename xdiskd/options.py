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
import re
import socket
from typing import Any, Dict, List

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
        raise usage.UsageError("bad size %r (e.g. 512M, 1G)" % (text,))
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


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
         float],
        ["max-io", None, 1048576,
         "Largest DMSG I/O the importer sends (512..1048576).  Each path "
         "gets at most what its exporter states in its span (xdiskd: "
         "1048576); DragonFly exporters state nothing and get 131072.",
         int],
        ["store-threads", None, 4, "Export-side disk I/O threads.", int],
        ["inline-write-max", None, 1048576,
         "Page-aligned export writes up to this many bytes go to the page "
         "cache in the reactor thread while it has room for them (dirty "
         "pages under the kernel's background limit); 0: always "
         "on the I/O threads.", int],
        ["poll-us", None, 100,
         "Busy-poll for I/O up to this many microseconds before sleeping, "
         "adapting to how soon events come (0: always sleep at once).  "
         "Cuts latency at low queue depth; an idle daemon does not spin.",
         int],
        ["socket-mode", None, "600",
         "Octal mode of UNIX listening sockets without an explicit mode=."],
        ["hostname", None, None, "Host name used in labels."],
        ["control", None, None,
         "Control socket (UNIX, mode 0600) for the xdisk command "
         "[default: <state-dir>/control.sock]."],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on a server endpoint, "
         "e.g. tcp:9100:interface=127.0.0.1."],
        ["log-format", None, "text",
         "Log as readable text or as JSON objects, one per line "
         "(text|json)."],
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
         "Seconds an NBD client may take to reach transmission.", float],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        for key in _LISTS:
            self[key] = []
        self._given: Dict[str, Any] = {}

    def opt_listen(self, endpoint: str) -> None:
        """Accept DMSG links on a server endpoint (repeatable), e.g. unix:/run/xdisk.sock, tcp:987"""  # noqa
        self["listen"].append(endpoint)

    def opt_connect(self, endpoint: str) -> None:
        """Dial a DMSG peer on a client endpoint, reconnecting with backoff (repeatable), e.g. tcp:host:987"""  # noqa
        self["connect"].append(endpoint)

    def opt_export(self, spec: str) -> None:
        """Export SERIAL=PATH[,ro][,blksize=N][,label=HOST/DEV] (repeatable)."""  # noqa
        self["export"].append(spec)

    def opt_nbd(self, endpoint: str) -> None:
        """Serve units over NBD on a server endpoint (repeatable) [default: tcp:10809:interface=127.0.0.1]"""  # noqa
        self["nbd"].append(endpoint)

    def opt_image(self, spec: str) -> None:
        """PATH=SIZE: create a sparse image of SIZE (e.g. 1G) if PATH is absent (repeatable)."""  # noqa
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
        """NAME=VALUE: a per-link DMSG limit (repeatable): buffered, transactions, children, inflight (bytes/counts), handshake, stall (seconds)."""  # noqa
        self["link-limit"].append(spec)

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
        if not 512 <= self["max-io"] <= 1048576:
            raise usage.UsageError("--max-io must be 512..1048576")
        if not 0 <= self["inline-write-max"] <= 1048576:
            raise usage.UsageError("--inline-write-max must be 0..1048576")
        if not 0 <= self["poll-us"] <= 10000:
            raise usage.UsageError("--poll-us must be 0..10000")
        if self["linger"] < 0:
            raise usage.UsageError("--linger must be >= 0")
        try:
            int(self["socket-mode"], 8)
        except ValueError:
            raise usage.UsageError("--socket-mode must be octal, e.g. 600")
        images = []
        for spec in self["image"]:
            path, sep, size = spec.rpartition("=")
            if not sep or not path:
                raise usage.UsageError("--image wants PATH=SIZE, got %r" % (
                    spec,))
            images.append((path, parseSize(size)))
        self["images"] = images
        try:
            self["exports"] = validateExports(
                parseExportSpec(s) for s in self["export"])
        except ExportSpecError as e:
            raise usage.UsageError(str(e))
        if not self["nbd"] and not self["no-nbd"] and (
                not self["no-import"] or self["nbd-local"]):
            self["nbd"] = [DEFAULT_NBD]
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
            raise usage.UsageError(str(e))
        if self["nbd-handshake-timeout"] <= 0:
            raise usage.UsageError("--nbd-handshake-timeout must be > 0")
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
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")
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
                "control socket path longer than 107 bytes: %s" % (
                    self["control"],))

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
                        self[key] = coerce(value)
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
    for path, size in images:
        if os.path.exists(path):
            continue
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)
