"""xdiskd: DragonFly xdisk network disks over DMSG, re-served over NBD."""

__version__ = "0.1.0"
