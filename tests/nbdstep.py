#!/usr/bin/python3
"""
One NBD connection (python3-libnbd), held open while a test drives it one
command per stdin line; one JSON line per command on stdout.  Run with
Debian's python3, where libnbd's module lives.

Commands (OFF, LEN in bytes; SEED names a deterministic pattern):
  write SEED OFF LEN [fua]   pwrite, optionally with FUA
  zero OFF LEN [nohole]      WRITE_ZEROES, optionally with NO_HOLE
  trim OFF LEN               TRIM
  flush                      FLUSH
  sha OFF LEN                pread, reply the sha256 of the data
  send-sha OFF LEN           start that pread, reply at once
  wait                       reply the result of the started pread
Replies: {"ok": true, ...} or {"ok": false, "error": "...", "errno": N}.
"""

import hashlib
import json
import random
import sys

import nbd


def pattern(seed, length):
    return random.Random(seed).randbytes(length)


def main():
    h = nbd.NBD()
    h.connect_uri(sys.argv[1])
    pending = None
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], words[1:]
        try:
            out = {"ok": True}
            if cmd == "write":
                seed, off, n = args[0], int(args[1]), int(args[2])
                flags = nbd.CMD_FLAG_FUA if args[3:] == ["fua"] else 0
                h.pwrite(pattern(seed, n), off, flags)
            elif cmd == "zero":
                flags = nbd.CMD_FLAG_NO_HOLE if args[2:] == ["nohole"] else 0
                h.zero(int(args[1]), int(args[0]), flags)
            elif cmd == "trim":
                h.trim(int(args[1]), int(args[0]))
            elif cmd == "flush":
                h.flush()
            elif cmd == "sha":
                out["sha"] = hashlib.sha256(
                    h.pread(int(args[1]), int(args[0]))).hexdigest()
            elif cmd == "send-sha":
                buf = nbd.Buffer(int(args[1]))
                pending = (buf, h.aio_pread(buf, int(args[0])))
            elif cmd == "wait":
                buf, cookie = pending
                while not h.aio_command_completed(cookie):
                    h.poll(-1)
                out["sha"] = hashlib.sha256(buf.to_bytearray()).hexdigest()
            else:
                out = {"ok": False, "error": "unknown command %r" % (cmd,)}
        except nbd.Error as e:
            out = {"ok": False, "error": str(e), "errno": e.errno}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    h.shutdown()


if __name__ == "__main__":
    main()
