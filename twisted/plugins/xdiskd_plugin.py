"""twistd plugin: C{twistd -n xdiskd --help}."""

from twisted.application.service import ServiceMaker

xdiskd = ServiceMaker(
    "xdiskd",
    "xdiskd.tap",
    "DragonFly xdisk network disks: DMSG export/import, NBD front end.",
    "xdiskd",
)
