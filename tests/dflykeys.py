"""
Test helpers: RSA key pairs for DragonFly links (made once per process;
2048-bit keys take a moment), written as C{--dfly-dir} directories.
"""

import os
import shutil
import tempfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from xdiskd.dfly.keys import KeyDirectory, loadPrivate

_cache = {}


def rsaKey(name, bits=2048):
    """The cryptography private key called C{name} (same every call)."""
    key = _cache.get((name, bits))
    if key is None:
        key = _cache[(name, bits)] = rsa.generate_private_key(65537, bits)
    return key


def privatePEM(key, pkcs8=False):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8 if pkcs8
        else serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())


def publicPEM(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo)


def privateKey(name, bits=2048):
    """Our L{xdiskd.dfly.keys.PrivateKey} for C{name}."""
    d = tempfile.mkdtemp(prefix="i20k-")
    try:
        path = os.path.join(d, "k.prv")
        with open(path, "wb") as f:
            f.write(privatePEM(rsaKey(name, bits)))
        return loadPrivate(path)
    finally:
        shutil.rmtree(d)


def write(path, data, mode=0o600):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def keyDir(case, name, peers=(), none=(), bits=2048):
    """
    A key directory for C{name}: its own pair, C{remote/<ip>.pub} for
    each C{(ip, peerName)} of C{peers}, C{remote/<ip>.none} for each ip
    of C{none}.  Removed at cleanup.
    """
    d = tempfile.mkdtemp(prefix="i20d-", dir="/tmp")
    case.addCleanup(shutil.rmtree, d, True)
    key = rsaKey(name, bits)
    write(os.path.join(d, "rsa.prv"), privatePEM(key))
    write(os.path.join(d, "rsa.pub"), publicPEM(key), 0o644)
    os.mkdir(os.path.join(d, "remote"))
    for ip, peer in peers:
        write(os.path.join(d, "remote", ip + ".pub"),
              publicPEM(rsaKey(peer, bits)), 0o644)
    for ip in none:
        write(os.path.join(d, "remote", ip + ".none"), b"")
    return d


def loaded(case, name, peers=(), none=()):
    """A loaded L{KeyDirectory} made by L{keyDir}."""
    return KeyDirectory(keyDir(case, name, peers, none)).load()
