"""xdiskd: DragonFly xdisk network disks over DMSG, re-served over NBD."""

from xdiskd.compiled import install as _install

__version__ = "0.1.0"

# Before any hot module is imported: XDISKD_PURE and stale builds load
# the .py (xdiskd/compiled.py).
_install()
