"""Tests for L{xdiskd.io.malloc}."""

import sys

from twisted.trial.unittest import SynchronousTestCase

from xdiskd.io.malloc import tuneMalloc


class MallocTests(SynchronousTestCase):
    def test_glibc(self):
        """On glibc (Linux) the settings are taken."""
        if not sys.platform.startswith("linux"):
            raise self.skipTest("glibc only")
        self.assertTrue(tuneMalloc())
