"""The open states of an xa unit (drawn at the top of L{xdiskd.xa.unit})."""

CLOSED = "closed"
OPENING = "opening"
OPEN = "open"
STALLED = "stalled"
CLOSING = "closing"
