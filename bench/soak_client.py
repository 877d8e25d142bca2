#!/usr/bin/python3
"""
Soak client: write-then-verify through a real NBD client (libnbd), run by
bench/soak.py with Debian's python3 (python3-libnbd).

Writes random data to random blocks of its region with up to --qd
commands in flight, reads each block back after its write completed and
compares, and at the end re-reads every block it wrote.  Prints one JSON
line: counts, errors (any NBD error is one), verify failures.
"""

import argparse
import hashlib
import json
import os
import random
import sys
import time

import nbd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--size", type=int, default=64 << 20)
    ap.add_argument("--block", type=int, default=65536)
    ap.add_argument("--qd", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--flush-every", type=int, default=0,
                    help="send a FLUSH after every N completed writes")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    h = nbd.NBD()
    h.connect_uri(a.uri)
    nblocks = a.size // a.block
    model = {}          # block -> sha256 of what was last written
    busy = set()
    stats = {"writes": 0, "reads": 0, "verifyFailures": 0, "errors": [],
             "maxLatency": 0.0, "maxErrorLatency": 0.0, "flushes": 0}
    sinceFlush = [0]
    inflight = {}       # cookie -> (kind, block, buf/hash, started)
    deadline = time.monotonic() + a.seconds

    def done(cookie):
        kind, block, payload, started = inflight.pop(cookie)
        if kind == "flush":
            try:
                h.aio_command_completed(cookie)
                stats["flushes"] += 1
            except nbd.Error as e:
                stats["errors"].append("flush: %s" % (e,))
            stats["maxLatency"] = max(stats["maxLatency"],
                                      time.monotonic() - started)
            return
        try:
            h.aio_command_completed(cookie)
        except nbd.Error as e:
            stats["errors"].append("%s block %d: %s" % (kind, block, e))
            stats["maxErrorLatency"] = max(stats["maxErrorLatency"],
                                           time.monotonic() - started)
            busy.discard(block)
            return
        stats["maxLatency"] = max(stats["maxLatency"],
                                  time.monotonic() - started)
        if kind == "write":
            stats["writes"] += 1
            model[block] = payload
            sinceFlush[0] += 1
            if a.flush_every and sinceFlush[0] >= a.flush_every:
                sinceFlush[0] = 0
                c = h.aio_flush()
                inflight[c] = ("flush", -1, None, time.monotonic())
            # Verify right after: read the block back.
            buf = nbd.Buffer(a.block)
            c = h.aio_pread(buf, a.offset + block * a.block)
            inflight[c] = ("read", block, buf, time.monotonic())
        else:
            stats["reads"] += 1
            got = hashlib.sha256(payload.to_bytearray()).digest()
            if got != model.get(block):
                stats["verifyFailures"] += 1
            busy.discard(block)

    while time.monotonic() < deadline or inflight:
        while time.monotonic() < deadline and len(inflight) < a.qd:
            block = rnd.randrange(nblocks)
            if block in busy:
                continue
            busy.add(block)
            data = os.urandom(a.block)
            c = h.aio_pwrite(data, a.offset + block * a.block)
            inflight[c] = ("write", block, hashlib.sha256(data).digest(),
                           time.monotonic())
        h.poll(1000)
        while inflight:
            c = h.aio_peek_command_completed()
            if not c:
                break
            done(c)
    # Final pass: every block written reads back as last written.
    final = 0
    for block, digest in sorted(model.items()):
        try:
            data = h.pread(a.block, a.offset + block * a.block)
        except nbd.Error as e:
            stats["errors"].append("final read block %d: %s" % (block, e))
            continue
        final += 1
        if hashlib.sha256(data).digest() != digest:
            stats["verifyFailures"] += 1
    stats["finalVerified"] = final
    h.shutdown()
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
