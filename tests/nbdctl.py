#!/usr/bin/python3
"""
Test helper: one NBD connection (libnbd) held open, driven a command at a
time from standard input, so a test can act between I/Os on the same
connection.  Run with Debian's python3, where python3-libnbd lives.

Commands, one per line; each answers one JSON line on standard output:
  write OFFSET LENGTH BYTE     {"ok": true, "seconds": s} or
                               {"ok": false, "error": "...", "errno": n}
  read OFFSET LENGTH           ... "sha256": hex digest of what was read
  flush
  quit
"""

import hashlib
import json
import sys
import time

import nbd


def main():
    h = nbd.NBD()
    h.connect_uri(sys.argv[1])
    print(json.dumps({"ok": True, "size": h.get_size()}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        started = time.monotonic()
        out = {"ok": True}
        try:
            if words[0] == "write":
                off, length, byte = (int(w, 0) for w in words[1:4])
                h.pwrite(bytes([byte]) * length, off)
            elif words[0] == "read":
                off, length = (int(w, 0) for w in words[1:3])
                out["sha256"] = hashlib.sha256(
                    h.pread(length, off)).hexdigest()
            elif words[0] == "flush":
                h.flush()
            else:
                out = {"ok": False, "error": "unknown command"}
        except nbd.Error as e:
            out = {"ok": False, "error": str(e), "errno": e.errno}
        out["seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps(out), flush=True)
    h.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
