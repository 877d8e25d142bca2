"""
Which build of the hot modules is loaded: compiled or pure Python.

The .py files are the source.  C{scripts/compile} (run by
C{scripts/setup}) compiles the modules in L{MODULES} with Cython, in
place: C{xdiskd/dmsg/wire.py} gets C{wire.cpython-311-...so} beside it,
which Python's import prefers.  The build writes L{MANIFEST}: for each
module, the SHA-256 of the .py it was compiled from.

L{install} (called from C{xdiskd/__init__.py}, before any other xdiskd
module is imported) puts a finder first on C{sys.meta_path} that, for a
module of L{MODULES}, loads the .py instead of the extension module
when
  - C{XDISKD_PURE} is set (to anything but "" or "0"): the pure-Python
    build, on purpose; or
  - the extension module is stale: the manifest has no entry for it, or
    its .py no longer has the hash it was compiled from.  A stale
    module is never loaded: the .py is, with a warning on stderr, and
    L{describe} names it, so an edited .py always runs as written.

This module is never compiled itself (it decides what is).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence

#: The modules scripts/compile builds (the per-request path: codecs,
#: link, transactions, xa unit and requests, NBD server, export server,
#: the I/O layer).  Not xdiskd.buffers: its pool decides that a buffer
#: is free from sys.getrefcount, and compiled code holds other
#: references than the interpreter (its tests fail compiled).
MODULES = (
    "xdiskd.dmsg.wire",
    "xdiskd.dmsg.link",
    "xdiskd.dmsg.transaction",
    "xdiskd.nbd.wire",
    "xdiskd.nbd.server",
    "xdiskd.nbd.commands",
    "xdiskd.xa.unit",
    "xdiskd.xa.tags",
    "xdiskd.xa.request",
    "xdiskd.xa.stats",
    "xdiskd.xa.paths",
    "xdiskd.export.server",
    "xdiskd.export.sysio",
    "xdiskd.io.send",
    "xdiskd.io.read",
    "xdiskd.io.poll",
)

#: The environment variable that selects the pure-Python build.
PURE_ENV = "XDISKD_PURE"

#: Written by scripts/compile next to the package's __init__.py.
MANIFEST = "_compiled.json"

ROOT = os.path.dirname(os.path.abspath(__file__))


def pureRequested(environ: Any = None) -> bool:
    """True if C{XDISKD_PURE} asks for the pure-Python build."""
    value = (os.environ if environ is None else environ).get(PURE_ENV, "")
    return value not in ("", "0")


def sourceHash(path: str) -> str:
    """The SHA-256 (hex) of the file at C{path}."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def extensionPath(source: str) -> Optional[str]:
    """The extension module beside C{source} (C{x.py}), if there is one."""
    base = source[:-len(".py")]
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(base + suffix):
            return base + suffix
    return None


class Guard:
    """
    A C{sys.meta_path} finder for the modules of the package whose
    directory is C{root} (named by the first part of every name in
    C{names}, the modules meant to be compiled).  For any module of the
    package that has an extension module beside its .py (listed in
    C{names} or not: a left-over build must not load either), it
    returns a spec for the .py when the pure build is asked for or the
    extension module is stale, and None (the usual finders, which prefer
    the extension module) otherwise.

    @ivar stale: names whose extension module was refused as stale.
    @ivar pure: the pure build was asked for.
    """

    def __init__(self, root: str, names: Sequence[str],
                 pure: bool = False) -> None:
        self.root = root
        self.names = tuple(names)
        self.prefix = self.names[0].split(".")[0] + "." if names else "?"
        self.pure = pure
        self.stale: List[str] = []
        self._manifest: Optional[Dict[str, Any]] = None

    def manifest(self) -> Dict[str, Any]:
        if self._manifest is None:
            try:
                with open(os.path.join(self.root, MANIFEST)) as f:
                    self._manifest = json.load(f)
            except (OSError, ValueError):
                self._manifest = {}
        return self._manifest

    def sourceOf(self, name: str) -> str:
        parts = name.split(".")[1:]
        return os.path.join(self.root, *parts) + ".py"

    def isStale(self, name: str, source: str) -> bool:
        entry = self.manifest().get("modules", {}).get(name)
        if not isinstance(entry, dict):
            return True
        try:
            return bool(entry.get("sha256") != sourceHash(source))
        except OSError:
            return True

    def find_spec(self, name: str, path: Any = None,
                  target: Any = None) -> Any:
        if not name.startswith(self.prefix):
            return None
        source = self.sourceOf(name)
        if not os.path.exists(source) or extensionPath(source) is None:
            return None
        if not self.pure:
            if not self.isStale(name, source):
                return None
            if name not in self.stale:
                self.stale.append(name)
                sys.stderr.write(
                    "xdiskd: %s: the compiled module is stale (its .py "
                    "changed since scripts/compile built it): loading the "
                    ".py; run scripts/compile\n" % (name,))
        return importlib.util.spec_from_file_location(name, source)

    def invalidate_caches(self) -> None:
        self._manifest = None


_guard: Optional[Guard] = None


def install() -> Guard:
    """Put the guard for xdiskd's L{MODULES} first on C{sys.meta_path}."""
    global _guard
    if _guard is None:
        _guard = Guard(ROOT, MODULES, pureRequested())
        sys.meta_path.insert(0, _guard)
    return _guard


def isCompiled(module: ModuleType) -> bool:
    """True if C{module} was loaded from an extension module."""
    return isinstance(getattr(module, "__loader__", None),
                      importlib.machinery.ExtensionFileLoader)


def status() -> Dict[str, Any]:
    """
    What is loaded, importing L{MODULES}: C{compiled} and C{pure} (lists
    of names), C{stale} (refused extension modules), C{requested} (True
    if XDISKD_PURE is set), and C{compiler} from the manifest.
    """
    guard = install()
    compiled: List[str] = []
    pure: List[str] = []
    for name in MODULES:
        module = sys.modules.get(name) or importlib.import_module(name)
        (compiled if isCompiled(module) else pure).append(name)
    return {"compiled": compiled, "pure": pure, "stale": list(guard.stale),
            "requested": guard.pure,
            "compiler": guard.manifest().get("compiler", "")}


def describe() -> str:
    """
    One line: C{compiled: yes (16/16 modules, Cython 3.3.1)}, or
    C{compiled: no (XDISKD_PURE=1)}, C{compiled: no (not built)}, or
    C{compiled: partial (...; stale: xdiskd.dmsg.wire)}.
    """
    s = status()
    n, total = len(s["compiled"]), len(MODULES)
    if s["requested"]:
        return "compiled: no (%s=%s: pure Python)" % (
            PURE_ENV, os.environ.get(PURE_ENV, ""))
    stale = "; stale: %s" % (", ".join(s["stale"]),) if s["stale"] else ""
    if n == total:
        return "compiled: yes (%d/%d modules, %s)" % (n, total,
                                                      s["compiler"])
    if n == 0 and not stale:
        return "compiled: no (not built: scripts/compile)"
    return "compiled: %s (%d/%d modules, %s%s)" % (
        "partial" if n else "no", n, total, s["compiler"] or "-", stale)
