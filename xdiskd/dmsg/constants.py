"""
DMSG constants, from DragonFly BSD's sys/sys/dmsg.h as described in the
project's DMSG spec (§3 the cmd word, §5 constants).
"""

# §1.2, §1.3, §1.4: framing
HDR_MAGIC = 0x4832
HDR_MAGIC_REV = 0x3248
ALIGN = 64
ALIGN_MASK = ALIGN - 1
HDR_SIZE = 64            # base header
HDR_MAX = 2048
AUX_MAX = 1048576
LABEL_SIZE = 128
LISTEN_PORT = 987

# §3.1: flag bits of the cmd word
CREATE = 0x80000000
DELETE = 0x40000000
REPLY = 0x20000000
ABORT = 0x10000000
REVTRANS = 0x08000000
REVCIRC = 0x04000000
FLAG1 = 0x02000000
FLAG0 = 0x01000000

FLAGS = 0xFF000000
PROTOS = 0x00F00000
CMDS = 0x000FFF00
SIZE = 0x000000FF
BASECMDMASK = 0x00FFFFFF
CMDSWMASK = 0x20FFFFFF
TRANSMASK = 0xE0FFFFFF
BASEFLAGS = CREATE | DELETE | REPLY

# protocols
PROTO_LNK = 0x00000000
PROTO_DBG = 0x00100000
PROTO_HM2 = 0x00200000
PROTO_XX3 = 0x00300000
PROTO_XX4 = 0x00400000
PROTO_BLK = 0x00500000
PROTO_VOP = 0x00600000

# §3.2: base command values (the size byte is part of the identity)
LNK_PAD = 0x00000001
LNK_PING = 0x00000101
LNK_AUTH = 0x00001002
LNK_CONN = 0x00001106
LNK_SPAN = 0x00001207
LNK_HAMMER2_VOLCONF = 0x00002008
LNK_ERROR = 0x000FFF01
DBG_SHELL = 0x00100101
BLK_OPEN = 0x00500102
BLK_CLOSE = 0x00500202
BLK_READ = 0x00500302
BLK_WRITE = 0x00500402
BLK_FLUSH = 0x00500502
BLK_FREEBLKS = 0x00500602
BLK_ERROR = 0x005FFF03

# §5.1: peer types (also bit numbers of peer_mask)
PEER_NONE = 0
PEER_ROUTER = 1
PEER_BLOCK = 2
PEER_HAMMER2 = 3
PEER_CLIENT = 63
PEER_MAX = 64

# §5.2
PFSTYPE_DEFAULT = 0
PFSTYPE_MASK = 0x0F

# LNK_CONN reserved03 (xdiskd's LnkConn.xflags): zero from DragonFly.
#: "On this link we may both send aux_crc 0 and not check it"
#: (xdiskd.dmsg.integrity).
CONN_NO_AUX_CRC = 0x1

# §5.3
SPAN_PROTO_1 = 1
MAXPHYS = 131072
#: The largest READ/WRITE the stored DragonFly server accepts (§8.3): a
#: path whose span states no limit (media.block.reserved01 = 0) gets this.
DRAGONFLY_MAX_IO = MAXPHYS
DEV_BSIZE = 512

# §5.4
BLKOPEN_RD = 0x0001
BLKOPEN_WR = 0x0002

# §5.5: error codes on the wire
ERR_NOSUPP = 0x20
ERR_LOSTLINK = 0x21
ERR_IO = 0x22
ERR_PARAM = 0x23
ERR_CANTCIRC = 0x24

CMD_NAMES = {
    LNK_PAD: "LNK_PAD",
    LNK_PING: "LNK_PING",
    LNK_AUTH: "LNK_AUTH",
    LNK_CONN: "LNK_CONN",
    LNK_SPAN: "LNK_SPAN",
    LNK_HAMMER2_VOLCONF: "LNK_HAMMER2_VOLCONF",
    LNK_ERROR: "LNK_ERROR",
    DBG_SHELL: "DBG_SHELL",
    BLK_OPEN: "BLK_OPEN",
    BLK_CLOSE: "BLK_CLOSE",
    BLK_READ: "BLK_READ",
    BLK_WRITE: "BLK_WRITE",
    BLK_FLUSH: "BLK_FLUSH",
    BLK_FREEBLKS: "BLK_FREEBLKS",
    BLK_ERROR: "BLK_ERROR",
}


def cmdName(cmd: int) -> str:
    """
    Human-readable name of a cmd word: base command plus flag letters,
    e.g. C{"BLK_READ|C|D"}.  For logs, never for the hot path.
    """
    base = cmd & BASECMDMASK
    name = CMD_NAMES.get(base, "0x%06x" % (base,))
    for bit, letter in ((CREATE, "C"), (DELETE, "D"), (REPLY, "R"),
                        (ABORT, "A"), (REVTRANS, "RT"), (REVCIRC, "RC")):
        if cmd & bit:
            name += "|" + letter
    return name
