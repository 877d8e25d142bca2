"""
Old names of the I/O layer, now in L{xdiskd.io}, for branches written
before the move; import from L{xdiskd.io} instead.

TODO(issue 19): delete once the branches of issues 16-20 are merged.
"""

from xdiskd.io.malloc import tuneMalloc
from xdiskd.io.poll import SpinWindow
from xdiskd.io.read import READ_BUDGET, leanReader
from xdiskd.io.send import Sender, beginBatch, endBatch
from xdiskd.io.sockets import IO_CHUNK, SOCKET_BUFFER, tuneTransport

__all__ = ["IO_CHUNK", "READ_BUDGET", "SOCKET_BUFFER", "Sender",
           "SpinWindow", "beginBatch", "endBatch", "leanReader",
           "tuneMalloc", "tuneTransport"]
