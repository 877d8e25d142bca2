"""
xdiskd's socket I/O layer: what it does below Twisted's public transport
and reactor interfaces, and the list of Twisted internals it relies on
(L{xdiskd.io.internals}).
"""
