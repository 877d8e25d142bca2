"""
malloc settings for a daemon that moves large buffers.
"""

# glibc malloc serves blocks of 128 KiB and more (every DMSG I/O payload)
# with a fresh mmap, and gives them back with munmap: each 128 KiB buffer
# then costs 32 page faults and zeroed pages.  Measured on 1 MiB reads
# through the importer, page faults were a third of its CPU.  Large
# blocks from the heap, and a heap that is not trimmed at every free,
# reuse the same pages instead.
MMAP_THRESHOLD = 8 << 20
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tuneMalloc(mmapThreshold: int = MMAP_THRESHOLD,
               trimThreshold: int = TRIM_THRESHOLD) -> bool:
    """
    Keep large buffers in the heap (glibc only; elsewhere a no-op).

    @return: whether both settings were taken.
    """
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmapThreshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trimThreshold))
