"""
DragonFly's link negotiation and encrypted stream (libdmsg C{crypto.c}):
what a C{hammer2 service} runs on every TCP connection before and under
DMSG.  See C{dmsg-crypto.md} and the README, "Connecting to a DragonFly
host".

  - L{xdiskd.dfly.keys}: the key files under C{--dfly-dir} (DragonFly's
    C{/etc/hammer2} layout) and what to do per peer address;
  - L{xdiskd.dfly.handshake}: the 512-byte RSA handshake and the choice
    of stream format (sans-IO);
  - L{xdiskd.dfly.stream}: the stream ciphers, formats U and T (sans-IO);
  - L{xdiskd.dfly.protocol}: the Twisted wrapper that runs them under a
    DMSG link.
"""
