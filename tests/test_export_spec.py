"""
Tests for L{xdiskd.export.spec}.
"""

import socket

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.export.spec import (
    DEFAULT_BLKSIZE,
    ExportSpec,
    ExportSpecError,
    defaultLabel,
    parseExportSpec,
    validateExports,
)


class ParseValidTests(SynchronousTestCase):
    """
    L{parseExportSpec} accepts well-formed specs and fills in defaults.
    """

    def test_minimal(self) -> None:
        """
        C{SERIAL=PATH} is read-write, 512-byte blocks, labelled
        C{HOST/BASENAME}.
        """
        spec = parseExportSpec("disk0=/srv/images/disk0.img")
        self.assertEqual(spec.serial, "disk0")
        self.assertEqual(spec.path, "/srv/images/disk0.img")
        self.assertFalse(spec.readOnly)
        self.assertEqual(spec.blksize, 512)
        self.assertEqual(DEFAULT_BLKSIZE, 512)
        self.assertEqual(spec.label, f"{socket.gethostname()}/disk0.img")

    def test_defaultLabelDevice(self) -> None:
        """
        The default label of a device is C{HOST/DEV}, also with a trailing
        slash on the path.
        """
        self.assertEqual(defaultLabel("/dev/sdb"), f"{socket.gethostname()}/sdb")
        self.assertEqual(defaultLabel("/dev/sdb/"), f"{socket.gethostname()}/sdb")

    def test_allOptions(self) -> None:
        """
        C{ro}, C{blksize=N} and C{label=L} are all read, in any order.
        """
        for text in [
            "s1=/dev/vdb,ro,blksize=4096,label=box/vdb",
            "s1=/dev/vdb,label=box/vdb,blksize=4096,ro",
        ]:
            spec = parseExportSpec(text)
            self.assertEqual(
                spec, ExportSpec("s1", "/dev/vdb", True, 4096, "box/vdb")
            )

    def test_pathMayContainEquals(self) -> None:
        """
        Only the first C{=} separates serial and path.
        """
        spec = parseExportSpec("s=/tmp/a=b")
        self.assertEqual((spec.serial, spec.path), ("s", "/tmp/a=b"))

    def test_relativePath(self) -> None:
        """
        A relative path is kept as written.
        """
        self.assertEqual(parseExportSpec("s=disk.img").path, "disk.img")

    def test_serialLimit(self) -> None:
        """
        A serial of exactly 63 bytes of UTF-8 is accepted, also when made
        of multi-byte characters.
        """
        self.assertEqual(parseExportSpec("a" * 63 + "=/x").serial, "a" * 63)
        euros = "\u20ac" * 21  # 3 bytes each
        self.assertEqual(parseExportSpec(euros + "=/x").serial, euros)

    def test_labelLimit(self) -> None:
        """
        A label of exactly 127 bytes of UTF-8 is accepted.
        """
        label = "h/" + "d" * 125
        self.assertEqual(parseExportSpec(f"s=/x,label={label}").label, label)

    def test_blksizeLimits(self) -> None:
        """
        Every power of two from 512 to 65536 is a valid blksize.
        """
        for shift in range(9, 17):
            size = 1 << shift
            self.assertEqual(parseExportSpec(f"s=/x,blksize={size}").blksize, size)

    def test_unparseRoundTrip(self) -> None:
        """
        L{ExportSpec.unparse} gives text that parses to an equal spec.
        """
        for text in ["a=/x", "a=/x,ro", "a=/x,blksize=4096,label=h/x", "a=/x,ro,label=l"]:
            spec = parseExportSpec(text)
            self.assertEqual(parseExportSpec(spec.unparse()), spec)

    @given(
        serial=st.text(
            st.characters(exclude_characters="=\0", exclude_categories=["Cs"]),
            min_size=1,
            max_size=15,
        ),
        path=st.text(
            st.characters(exclude_characters=",\0", exclude_categories=["Cs"]),
            min_size=1,
            max_size=40,
        ),
        readOnly=st.booleans(),
        shift=st.integers(9, 16),
        label=st.text(
            st.characters(exclude_characters=",\0", exclude_categories=["Cs"]),
            max_size=30,
        ),
    )
    def test_unparseRoundTripProperty(
        self, serial: str, path: str, readOnly: bool, shift: int, label: str
    ) -> None:
        """
        Any valid spec survives L{ExportSpec.unparse} and
        L{parseExportSpec}.
        """
        spec = ExportSpec(serial, path, readOnly, 1 << shift, label or "h/d")
        self.assertEqual(parseExportSpec(spec.unparse()), spec)


class ParseErrorTests(SynchronousTestCase):
    """
    L{parseExportSpec} rejects malformed specs with an L{ExportSpecError}
    that names the problem and quotes the text.
    """

    def assertSpecError(self, text: str, *fragments: str) -> ExportSpecError:
        """
        Assert that parsing C{text} fails, quoting C{text} and containing
        every one of C{fragments}.
        """
        e = self.assertRaises(ExportSpecError, parseExportSpec, text)
        message = str(e)
        self.assertIn(repr(text), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return e

    def test_isValueError(self) -> None:
        """
        L{ExportSpecError} is a L{ValueError}, so option parsers report it.
        """
        self.assertTrue(issubclass(ExportSpecError, ValueError))

    def test_missingEquals(self) -> None:
        self.assertSpecError("/dev/sdb", "missing '='")

    def test_emptySerial(self) -> None:
        self.assertSpecError("=/dev/sdb", "empty serial")

    def test_emptyPath(self) -> None:
        self.assertSpecError("s=", "empty path")
        self.assertSpecError("s=,ro", "empty path")

    def test_serialTooLong(self) -> None:
        self.assertSpecError("a" * 64 + "=/x", "serial", "64 bytes", "63")

    def test_serialTooLongMultibyte(self) -> None:
        """
        The serial limit counts UTF-8 bytes, not characters.
        """
        self.assertSpecError("\u00e9" * 32 + "=/x", "64 bytes")

    def test_serialNul(self) -> None:
        self.assertSpecError("a\0b=/x", "serial", "NUL")

    def test_pathNul(self) -> None:
        self.assertSpecError("s=/x\0y", "path", "NUL")

    def test_unknownOption(self) -> None:
        self.assertSpecError("s=/x,rw", "unknown option 'rw'")
        self.assertSpecError("s=/x,ro,sync=1", "unknown option 'sync=1'")

    def test_emptyOption(self) -> None:
        self.assertSpecError("s=/x,", "empty option")
        self.assertSpecError("s=/x,,ro", "empty option")

    def test_roWithValue(self) -> None:
        self.assertSpecError("s=/x,ro=1", "'ro' takes no value")

    def test_optionTwice(self) -> None:
        self.assertSpecError("s=/x,ro,ro", "'ro' given twice")
        self.assertSpecError("s=/x,blksize=512,blksize=4096", "'blksize' given twice")
        self.assertSpecError("s=/x,label=a,label=b", "'label' given twice")

    def test_blksizeNotPowerOfTwo(self) -> None:
        for value in ["0", "3", "1000", "4095"]:
            self.assertSpecError(f"s=/x,blksize={value}", "not a positive power of two")

    def test_blksizeTooLarge(self) -> None:
        self.assertSpecError("s=/x,blksize=131072", "larger than 65536")

    def test_blksizeTooSmall(self) -> None:
        for value in (1, 256):
            self.assertSpecError(f"s=/x,blksize={value}", "smaller than 512")

    def test_blksizeNotANumber(self) -> None:
        for value in ["", "abc", "-512", "+512", " 512", "0x200", "5_12", "512.0"]:
            self.assertSpecError(f"s=/x,blksize={value}", "not a decimal number")

    def test_labelTooLong(self) -> None:
        self.assertSpecError("s=/x,label=" + "l" * 128, "128 bytes", "127")

    def test_labelEmpty(self) -> None:
        self.assertSpecError("s=/x,label=", "empty label")

    def test_labelNul(self) -> None:
        self.assertSpecError("s=/x,label=a\0b", "label", "NUL")

    def test_defaultLabelTooLong(self) -> None:
        """
        A path whose default label would exceed 127 bytes needs an explicit
        label, and the error says so.
        """
        self.assertSpecError("s=/x/" + "n" * 130, "default label", "label=")
        spec = parseExportSpec("s=/x/" + "n" * 130 + ",label=h/n")
        self.assertEqual(spec.label, "h/n")


class ExportSpecTests(SynchronousTestCase):
    """
    L{ExportSpec} built directly is validated like a parsed one.
    """

    def test_frozen(self) -> None:
        spec = ExportSpec("s", "/x")
        self.assertRaises(AttributeError, setattr, spec, "serial", "t")

    def test_defaults(self) -> None:
        spec = ExportSpec("s", "/dev/vdc")
        self.assertEqual(
            (spec.readOnly, spec.blksize, spec.label),
            (False, 512, f"{socket.gethostname()}/vdc"),
        )

    def test_validated(self) -> None:
        self.assertRaises(ExportSpecError, ExportSpec, "", "/x")
        self.assertRaises(ExportSpecError, ExportSpec, "s" * 64, "/x")
        self.assertRaises(ExportSpecError, ExportSpec, "s", "")
        self.assertRaises(ExportSpecError, ExportSpec, "s", "/x", False, 768)
        self.assertRaises(ExportSpecError, ExportSpec, "s", "/x", False, 512, "l" * 128)


class ValidateExportsTests(SynchronousTestCase):
    """
    L{validateExports} checks a set of exports for conflicts.
    """

    def test_distinct(self) -> None:
        """
        Distinct serials pass, and come back in order as a list.
        """
        specs = [parseExportSpec("b=/x"), parseExportSpec("a=/y")]
        self.assertEqual(validateExports(iter(specs)), specs)

    def test_empty(self) -> None:
        self.assertEqual(validateExports([]), [])

    def test_duplicateSerial(self) -> None:
        """
        A serial used twice is refused, naming it and both exports.
        """
        specs = [
            parseExportSpec("a=/x"),
            parseExportSpec("b=/y"),
            parseExportSpec("a=/z,ro"),
        ]
        e = self.assertRaises(ExportSpecError, validateExports, specs)
        message = str(e)
        self.assertIn("duplicate serial 'a'", message)
        self.assertIn("a=/x", message)
        self.assertIn("a=/z,ro", message)

    def test_samePathDifferentSerials(self) -> None:
        """
        Only serials must be unique: one file may be exported twice.
        """
        specs = [parseExportSpec("a=/x,ro"), parseExportSpec("b=/x,ro")]
        self.assertEqual(validateExports(specs), specs)
