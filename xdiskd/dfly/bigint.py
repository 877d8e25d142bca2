"""
Modular arithmetic for the DragonFly handshake's raw RSA
(L{xdiskd.dfly.handshake}): GMP through gmpy2 when it is installed, else
Python's own C{pow}.  Both give the same integers; GMP is about 8 times
faster on the 1024-bit exponentiations of a 2048-bit key's CRT (0.44 ms
against 3.7 ms each, measured here), which is the time one handshake
keeps the reactor from every other link and NBD client.

L{BACKEND} says which one is in use (C{"gmpy2"} or C{"python"}).
"""

from __future__ import annotations

from typing import Any, Callable

_powmod: Callable[[int, int, int], Any]
_invert: Callable[[int, int], Any]

try:
    import gmpy2
except ImportError:                                   # pragma: no cover
    gmpy2 = None


def usePython() -> None:
    """Use Python's C{pow} (the fallback; tests compare both)."""
    global _powmod, _invert, BACKEND
    _powmod = pow
    _invert = lambda a, m: pow(a, -1, m)              # noqa: E731
    BACKEND = "python"


def useGMP() -> bool:
    """Use gmpy2 if it is installed; return whether it is."""
    global _powmod, _invert, BACKEND
    if gmpy2 is None:
        return False
    _powmod = gmpy2.powmod
    _invert = gmpy2.invert
    BACKEND = "gmpy2"
    return True


BACKEND = "python"
if not useGMP():
    usePython()


def releaseGIL() -> None:
    """Let GMP release the GIL in the calling thread (gmpy2 contexts
    are per thread); nothing with Python's pow."""
    if gmpy2 is not None and BACKEND == "gmpy2":
        gmpy2.get_context().allow_release_gil = True


def powmod(base: int, exponent: int, modulus: int) -> int:
    """C{base ** exponent % modulus} for a non-negative C{exponent}."""
    return int(_powmod(base, exponent, modulus))


def invert(a: int, modulus: int) -> int:
    """The inverse of C{a} modulo C{modulus} (C{a} coprime to it)."""
    return int(_invert(a, modulus))
