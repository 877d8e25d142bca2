"""
Tests for L{xdiskd.labels}: the one rule for peer-supplied labels (bytes
kept, one escaped printable form shown).
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.labels import clean, parse, show, unitKey

#: Issue 18's inputs.
NOT_UTF8 = bytes(range(0x80, 0xC0))
FORGED = b"hx/\n[-] forged\x1b[31m"


class ShowTests(SynchronousTestCase):
    def test_issueInputs(self):
        """The attack run's two serials, shown."""
        self.assertEqual(show(NOT_UTF8),
                         "".join("\\x%02x" % b for b in NOT_UTF8))
        self.assertEqual(show(FORGED), "hx/\\x0a[-] forged\\x1b[31m")

    def test_plainAndUTF8Kept(self):
        """ASCII and printable UTF-8 are shown as they are."""
        self.assertEqual(show(b"serno/A"), "serno/A")
        self.assertEqual(show("disque-é".encode()), "disque-é")

    def test_escapes(self):
        """
        Backslash, DEL, C1 controls, bidi overrides and line separators
        are escaped; a raw byte 0x9b and U+009B stay apart.
        """
        self.assertEqual(show(b"a\\b"), "a\\\\b")
        self.assertEqual(show(b"\x7f"), "\\x7f")
        self.assertEqual(show("\u009b".encode()), "\\u009b")
        self.assertEqual(show(b"\x9b"), "\\x9b")
        self.assertEqual(show("\u202e\u2028".encode()), "\\u202e\\u2028")
        self.assertEqual(show("\U000e0001".encode()), "\\U000e0001")

    def test_clean(self):
        """Free text keeps its backslashes, loses its controls."""
        text = "xa0 (%s) has no live path\r\n" % (show(FORGED),)
        self.assertEqual(clean(text), "xa0 (hx/\\x0a[-] forged\\x1b[31m) "
                                      "has no live path\\x0d\\x0a")

    @given(st.binary(max_size=200))
    def test_roundTrip(self, raw):
        """Any bytes: shown is printable UTF-8, and parse gives them back."""
        shown = show(raw)
        self.assertTrue(shown.isprintable())
        shown.encode("utf-8")
        self.assertEqual(parse(shown), raw)

    @given(st.text(max_size=100))
    def test_parseText(self, text):
        """Text that is not a shown form is its UTF-8."""
        if "\\" not in text:
            self.assertEqual(parse(text), text.encode("utf-8",
                                                      "surrogatepass"))

    def test_unitKey(self):
        """The seed keeps 63 bytes, cutting inside a character if so."""
        self.assertEqual(unitKey(b"a" * 70), b"a" * 63)
        self.assertEqual(unitKey(("é" * 40).encode()),
                         ("é" * 40).encode()[:63])
